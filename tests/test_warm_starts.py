"""Warm starts of training's coefficient inference (docs/method.md §1.3): the per-sample cache of c_hat, its shift
by the new posterior sample, and the model that uses it."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train

from vaells.models.cache import CoefficientCache

F64 = torch.float64


def test_starts_shift_the_stored_answer_by_the_new_sample() -> None:
    cache = CoefficientCache()
    c_hat = torch.arange(2 * 3 * 2, dtype=F64).view(2, 3, 2)
    cache.store(torch.tensor([5, 1]), c_hat, torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64), step=7)
    assert len(cache) == 2 and cache.step.tolist() == [-1, 7, -1, -1, -1, 7]
    c_new = torch.tensor([[0.5, 0.5], [3.0, 3.0], [9.0, 9.0]], dtype=F64)
    start, hit = cache.starts(torch.tensor([1, 5, 2]), c_new, num_anchors=3)
    assert hit.tolist() == [True, True, False]
    assert torch.equal(start[0], c_hat[1] - torch.tensor([0.0, 2.0], dtype=F64) + c_new[0])
    assert torch.equal(start[1], c_hat[0] - torch.tensor([1.0, 0.0], dtype=F64) + c_new[1])
    assert torch.equal(start[2], torch.zeros(3, 2, dtype=F64))
    _, hit = cache.starts(torch.tensor([1, 40]), c_new[:2], num_anchors=4)  # other anchors, beyond the end: none
    assert not hit.any()


def test_merge_keeps_each_samples_newest_entry_and_state_round_trips() -> None:
    a, b = CoefficientCache(), CoefficientCache()
    a.store(torch.tensor([0, 1]), torch.ones(2, 2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64), step=3)
    b.store(torch.tensor([1, 4]), 2 * torch.ones(2, 2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64), step=5)
    a.merge(b)
    assert a.step.tolist() == [3, 5, -1, -1, 5]
    assert a.c_hat[:, 0, 0].tolist() == [1.0, 2.0, 0.0, 0.0, 2.0]
    copy = CoefficientCache()
    copy.load_state_dict(a.state_dict())
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in a.state_dict().items())


def _model(tmp_path, *overrides: str):
    from vaells.app.builders import build_datamodule, build_model

    cfg = compose_train(["data.num_train=60", "data.num_val=30", "data.num_test=30", "model.warm_starts=true",
                         "model.prior_solver.warm_iter=2", "model.schedule.warmup_steps=0", *overrides], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_model(cfg, dm)
    return model, next(iter(dm.train_dataloader()))


def test_training_fills_the_cache_and_starts_from_it(tmp_path) -> None:
    model, batch = _model(tmp_path)
    model.train()
    torch.manual_seed(0)
    first = model.forward_terms(batch, model.weights)
    assert len(model.coefficient_cache) == batch["x"].shape[0]
    second = model.forward_terms(batch, model.weights)
    assert (second.prior.num_iters <= 2).all() and (first.prior.num_iters > 2).any()
    model.eval()  # validation neither reads nor writes the cache
    third = model.forward_terms(batch, model.weights)
    assert (third.prior.num_iters > 2).any()
    assert model.coefficient_cache.step.max() == model.batch_counter


def test_warm_starts_without_sample_indices_say_what_to_do(tmp_path) -> None:
    model, batch = _model(tmp_path)
    model.train()
    with pytest.raises(ValueError, match="model.warm_starts=true needs training batches that carry each sample's"):
        model.forward_terms({k: v for k, v in batch.items() if k != "index"}, model.weights)
