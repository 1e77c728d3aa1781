"""Affine transport operators in the model (docs/method.md §1.5): encodings gain the constant coordinate, decoding
drops it, and training moves Psi but never its last row."""

from __future__ import annotations

import torch
from conftest import compose_train


def test_the_model_lifts_encodings_and_trains_affine_operators(tmp_path) -> None:
    from vaells.app.builders import build_datamodule, build_model

    cfg = compose_train(["data.num_train=60", "data.num_val=30", "data.num_test=30", "model.transport.affine=true",
                         "model.schedule.warmup_steps=0"], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_model(cfg, dm)
    batch = next(iter(dm.train_dataloader()))
    mu = model.encode(batch["x"])
    assert model.latent_dim == 3 and mu.shape == (batch["x"].shape[0], 3) and bool((mu[:, -1] == 1).all())
    assert model.decode(mu).shape == batch["x"].shape
    model.train()
    out = model.forward_terms(batch, model.weights)
    assert out.z.shape == mu.shape and torch.isfinite(out.terms["loss"])
    psi_opt = torch.optim.SGD([model.transport.psi], lr=1.0)
    out.terms["loss"].backward()
    psi_opt.step()
    assert torch.equal(model.transport.psi[:, -1], torch.zeros_like(model.transport.psi[:, -1]))
    assert not torch.equal(model.transport.psi, model.transport.psi_init)
