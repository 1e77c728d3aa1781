"""Faults a run must survive or refuse up front (docs/running.md, "Resume and interruption"):

* a batch whose input holds a NaN is skipped and counted like a non-finite loss, in the warm-up and after it;
* a VAELLS ``model.noise_std`` of 0 is refused before any work: the Gaussian terms of q(z|x) and p(z) divide by
  sigma_eps (docs/method.md §3);
* the closed 2 x 2 matrix exponential keeps its finite entries right where an entry overflows (expm(diag(800, 1))
  is [[inf, 0], [0, e]]), as scaling and squaring does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.linalg
import torch
from conftest import compose_train

from vaells.models.module import nonfinite_tensors

FAULT_RUN = ["data.num_train=150", "trainer.max_epochs=2", "evaluate=false", "~callbacks.latent_figures",
             "callbacks.interval_checkpoint.minutes=0"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- a NaN in a batch's input ----------------------------------------------------------------------------------
def _nan_input_at(monkeypatch, batch_number: int) -> None:
    """Put a NaN into one sample's input in training batch ``batch_number``, as bad data would."""
    from vaells.models.vaells import VAELLSModule

    original = VAELLSModule.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        if self.batch_counter == batch_number:
            batch["x"] = batch["x"].clone()
            batch["x"][1, 0] = float("nan")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VAELLSModule, "on_train_batch_start", on_train_batch_start)


@pytest.mark.parametrize("warmup", [0, 5], ids=["vaells-phase", "warm-up"])
def test_a_nan_input_batch_is_skipped_and_counted(cli, tmp_path, monkeypatch, warmup) -> None:
    """One batch of ten holds a NaN input: its step is skipped (the encoding is checked before inference, which
    refuses non-finite points), counted in train/skipped_steps, and the run finishes with finite checkpoints."""
    import train

    _nan_input_at(monkeypatch, 3)
    run = tmp_path / "run"
    code, _, err = cli(train.main, *FAULT_RUN, f"model.schedule.warmup_steps={warmup}", f"hydra.run.dir={run}")
    assert code == 0, err
    state = load(run / "checkpoints" / "last.ckpt")
    assert state["faults"] == {"skipped_steps": 1, "consecutive_skips": 0}
    assert state["vaells"]["batch_counter"] == 10
    text = (run / "train.log").read_text()
    assert "batch 3: step skipped" in text and "non-finite latent point(s) ['mu'" in text, text
    assert "train/skipped_steps=1" in text
    for path in (run / "checkpoints").glob("*.ckpt"):
        assert nonfinite_tensors({"s": load(path)["state_dict"], "o": load(path)["optimizer_states"]}) == []


def test_a_nan_input_outside_training_names_the_latent_point(tmp_path) -> None:
    """Validation and evaluation have no step to skip: a NaN input is an error that says what is not finite."""
    from vaells.models.module import NonFiniteLatent

    model, dm = _vaells_model(tmp_path)
    batch = next(iter(dm.val_dataloader()))
    batch["x"][0, 0] = float("nan")
    with pytest.raises(NonFiniteLatent, match=r"non-finite latent point\(s\) \['mu'"):
        model.forward_terms(batch, model.weights)


# -- noise_std = 0 ---------------------------------------------------------------------------------------------
def _vaells_model(out_dir: Path, *overrides: str):
    """The default VAELLS (swiss roll) on a small data module, built as train.py builds it."""
    from vaells.app.builders import build_datamodule, build_model

    cfg = compose_train(["data.num_train=60", "data.num_val=30", "data.num_test=30", *overrides], out_dir)
    dm = build_datamodule(cfg)
    return build_model(cfg, dm), dm


def test_noise_std_0_is_refused_before_any_work(cli, tmp_path, monkeypatch) -> None:
    import train
    from vaells.data.base import AnchoredDataModule

    seen = []
    monkeypatch.setattr(AnchoredDataModule, "setup", lambda self, *a, **k: seen.append("setup"))
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: seen.append("fit"))
    run = tmp_path / "run"
    code, _, err = cli(train.main, "model.noise_std=0", "~callbacks.latent_figures", f"hydra.run.dir={run}")
    assert code != 0 and seen == [], err
    assert "model.noise_std=0 must be > 0" in err and "divide by it" in err and "e.g. model.noise_std=1e-4" in err
    assert "Traceback" not in err and not run.exists()


def test_the_vaells_constructor_refuses_noise_std_0(tmp_path) -> None:
    """The model's own check, for models built outside train.py (the config check comes first there)."""
    with pytest.raises(Exception, match=r"model.noise_std=0.0 must be > 0 .*; e.g. model.noise_std=1e-4") as info:
        _vaells_model(tmp_path, "model.noise_std=0.0")
    assert isinstance(info.value.__cause__ or info.value, ValueError)  # Hydra wraps what the constructor raises


def test_densities_need_a_positive_noise_std_and_sampling_does_not() -> None:
    from vaells.distributions import AnchorPrior, TransportPosterior
    from vaells.transport import TransportOperator

    torch.manual_seed(0)
    transport = TransportOperator(2, 1)
    mu = torch.randn(4, 2, dtype=torch.float64)
    q = TransportPosterior(mu, transport, 1.0, 0.0)
    z = q.rsample()  # sampling without noise is the warm-up's
    assert torch.isfinite(z).all()
    with pytest.raises(ValueError, match="noise_std=0.0 must be > 0"):
        q.log_prob(z, torch.zeros(4, 1, dtype=torch.float64))
    p = AnchorPrior(mu.unsqueeze(1), transport, 1.0, 0.0)
    with pytest.raises(ValueError, match="noise_std=0.0 must be > 0"):
        p.log_prob(z)


# -- the closed 2 x 2 exponential at large arguments -----------------------------------------------------------
def _scaled_exp(x: float, factor: float) -> float:
    """e^x * factor without overflowing before the product does (Python floats overflow to inf on multiply)."""
    return math.exp(x / 2) * factor * math.exp(x / 2)


def _diag(a: float, d: float) -> tuple[list, list]:
    return [[a, 0.0], [0.0, d]], [[math.exp(a) if a < 709 else math.inf, 0.0], [0.0, math.exp(d)]]


def _rotation_dilation(a: float, w: float) -> tuple[list, list]:
    """expm([[a, -w], [w, a]]) = e^a [[cos w, -sin w], [sin w, cos w]]."""
    c, s = _scaled_exp(a, math.cos(w)), _scaled_exp(a, math.sin(w))
    return [[a, -w], [w, a]], [[c, -s], [s, c]]


def _triangular(a: float, b: float, d: float) -> tuple[list, list]:
    """expm([[a, b], [0, d]]) = [[e^a, b (e^a - e^d) / (a - d)], [0, e^d]]."""
    top = _scaled_exp(a, 1.0)
    return [[a, b], [0.0, d]], [[top, b * (top - math.exp(d)) / (a - d)], [0.0, math.exp(d)]]


EXACT = {
    "diag(800,1)": _diag(800.0, 1.0),
    "diag(700,1)": _diag(700.0, 1.0),
    "diag(1500,1)": _diag(1500.0, 1.0),
    "diag(40,1)": _diag(40.0, 1.0),
    "diag(-800,1)": _diag(-800.0, 1.0),
    "diag(1,700)": _diag(1.0, 700.0),
    "rotation-dilation(300,3)": _rotation_dilation(300.0, 3.0),
    "rotation-dilation(700,3)": _rotation_dilation(700.0, 3.0),
    "rotation-dilation(709.5,1.5)": _rotation_dilation(709.5, 1.5),
    "rotation-dilation(710,1.5)": _rotation_dilation(710.0, 1.5),  # cos entries representable, e^710 is not
    "rotation-dilation(-700,2)": _rotation_dilation(-700.0, 2.0),
    "triangular(30,5,1)": _triangular(30.0, 5.0, 1.0),
    "triangular(800,5,1)": _triangular(800.0, 5.0, 1.0),
    "triangular(1,-3,650)": _triangular(1.0, -3.0, 650.0),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_expm_2x2_large_arguments_keep_their_finite_entries(name: str) -> None:
    """Entry by entry against the exact exponential (inf where the entry itself overflows), and against
    torch.linalg.matrix_exp and scipy.linalg.expm where those are finite and right."""
    from vaells.transport import expm

    a, exact = EXACT[name]
    got = expm(torch.tensor(a, dtype=torch.float64)).numpy()
    exact = np.array(exact)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(exact))
    np.testing.assert_allclose(got[np.isfinite(exact)], exact[np.isfinite(exact)], rtol=1e-12, atol=0)
    with np.errstate(all="ignore"):
        references = scipy.linalg.expm(np.array(a)), torch.linalg.matrix_exp(torch.tensor(a, dtype=torch.float64))
        for reference in (np.asarray(r) for r in references):
            known = np.isfinite(reference)
            np.testing.assert_allclose(got[known], reference[known], rtol=1e-10, atol=0)


def test_expm_2x2_float32_keeps_representable_entries() -> None:
    from vaells.transport import expm

    got = expm(torch.tensor([[[90.0, 0.0], [0.0, 1.0]], [[88.0, -1.5], [1.5, 88.0]]]))
    assert torch.isinf(got[0, 0, 0]) and got[0, 1, 1].item() == pytest.approx(math.e, rel=1e-6)
    assert torch.isfinite(got[1]).all()
    assert got[1, 0, 0].item() == pytest.approx(_scaled_exp(88.0, math.cos(1.5)), rel=1e-5)


@pytest.mark.parametrize("norm", [1e-3, 0.5, 3.0, 20.0, 100.0, 600.0])
def test_expm_2x2_matches_torch_and_scipy_over_a_range_of_norms(norm: float) -> None:
    """Random 2 x 2 generators: within roundoff of both references, normwise (each entry relative to the largest),
    in batches that take the plain closed form (small norms) and the careful one."""
    from vaells.transport import expm

    a = np.random.default_rng(int(norm * 1000)).standard_normal((200, 2, 2))
    a *= norm / np.abs(a).sum(-2).max(-1)[..., None, None]
    got = expm(torch.from_numpy(a)).numpy()
    references = torch.linalg.matrix_exp(torch.from_numpy(a)).numpy(), np.stack([scipy.linalg.expm(m) for m in a])
    for reference in references:
        scale = np.abs(reference).max((-2, -1), keepdims=True)
        assert float((np.abs(got - reference) / scale).max()) < 1e-11 * max(1.0, norm / 10)


def test_expm_2x2_gradient_in_a_batch_with_large_arguments() -> None:
    """A batch that holds one large argument takes the careful form for all its matrices: their gradients equal
    torch.linalg.matrix_exp's, at A = 0, at p = 0 (a diagonal entry's slope is +-S there), near delta = 0
    and in both signs of delta."""
    from vaells.transport import expm

    g = torch.Generator().manual_seed(3)
    special = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.3, 0.0], [0.0, 0.3]], [[0.0, 1.0], [1e-3, 0.0]],
                            [[0.0, 1.0], [-1e-3, 0.0]], [[1e-3, 1.0], [-1e-6, -1e-3]], [[2.0, -5.0], [5.0, 3.0]],
                            [[6.0, 0.3], [0.2, 1.0]], [[-30.0, 2.0], [0.5, 4.0]]], dtype=torch.float64)
    a = torch.cat([special, 2 * torch.randn(24, 2, 2, dtype=torch.float64, generator=g)]).requires_grad_(True)
    large = torch.tensor([[[50.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    w = torch.randn(a.shape, dtype=torch.float64, generator=g)
    (got,) = torch.autograd.grad((expm(torch.cat([a, large]))[:-1] * w).sum(), a)
    (want,) = torch.autograd.grad((torch.linalg.matrix_exp(a) * w).sum(), a)
    scale = want.abs().amax((-2, -1), keepdim=True).clamp_min(1.0)
    assert float(((got - want).abs() / scale).max()) < 1e-10
    assert torch.autograd.gradcheck(lambda m: expm(torch.cat([m, large]))[:-1], (special.clone().requires_grad_(),))


def test_expm_2x2_normal_arguments_keep_the_plain_closed_form(monkeypatch) -> None:
    """The training step's arguments (small generators) never pay for the careful form."""
    import vaells.transport as transport

    def refuse(*args):
        raise AssertionError("the careful form ran for normal arguments")

    monkeypatch.setattr(transport, "_expm_2x2_wide", refuse)
    a = 0.5 * torch.randn(500, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(transport.expm(a), torch.linalg.matrix_exp(a), rtol=1e-13, atol=1e-14)
