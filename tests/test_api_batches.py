"""The Python API past single inputs: batches of pairs and of starts (one solve for all pairs), ``vaells.load`` of a
run folder or a folder of runs (what ``evaluate.py ckpt_path=`` takes), sampling the prior around a digit on rotated
MNIST (``Run.sample_around``), and ``help(vaells)`` showing ``load``."""

from __future__ import annotations

import os
import pydoc
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train
from torch import Tensor

import vaells
from vaells.api import Run
from vaells.app.builders import build_datamodule, build_model
from vaells.data.mnist import rotate
from vaells.inference import CoefficientSolver


def _train(overrides: list[str], out: Path) -> Path:
    """Fit two batches and save ``out/checkpoints/last.ckpt`` as train.py's checkpoint callback would."""
    cfg = compose_train(overrides, out)
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder of two runs, as outputs/train/<experiment>/<model> holds them; "b" was written last."""
    parent = tmp_path_factory.mktemp("concentric_circles") / "vaells"
    first = _train(["experiment=concentric_circles", "model.num_operators=4"], parent / "a")
    second = parent / "b"
    shutil.copytree(first, second)
    os.utime(second / "checkpoints" / "last.ckpt")
    return parent


@pytest.fixture(scope="module")
def run(runs) -> Run:
    return vaells.load(runs / "a" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def rotated() -> Run:
    """An untrained VAELLS on rotated digits (scikit-learn's, offline): each digit's anchors are its rotated
    copies. Untrained is enough: what is checked is which anchors the samples are drawn around."""
    cfg = compose_train(["experiment=rotated_mnist", "data=rotated_small_digits"], Path("unused"))
    dm = build_datamodule(cfg)
    return Run(build_model(cfg, dm).eval(), cfg, Path("unused/checkpoints/last.ckpt"))


def _record_anchors(run: Run, monkeypatch) -> list[Tensor]:
    """Spy on the model's sample_around: the latent anchors (A, d) each draw is made around."""
    seen: list = []
    original = run.model.sample_around

    def spy(anchors, num_samples):
        seen.append(anchors.detach().clone())
        return original(anchors, num_samples)

    monkeypatch.setattr(run.model, "sample_around", spy)
    return seen


# -- batches of pairs and of starts ------------------------------------------------------------------
def test_interpolate_and_latent_path_take_a_batch_of_pairs(run) -> None:
    x, _ = run.test_data()
    x0, x1 = x[:3], x[10:13]
    path = run.latent_path(x0, x1, num_steps=5)
    assert path.z.shape == (3, 5, 2) and path.c.shape == (3, 4) and path.z.dtype == torch.float32
    z0 = run.model.encode(x0)
    torch.testing.assert_close(path.z[:, 0], z0.float())
    torch.testing.assert_close(path.z[:, -1], run.model.transport.transport(z0, path.c.double()).float())
    frames = run.interpolate(x0, x1, 5)
    assert frames.shape == (3, 5, 20) and frames.dtype == torch.float32
    torch.testing.assert_close(frames[:, 0], run.decode(run.encode(x0)))
    # the straight line has no solver: pair i of the batch is exactly its single path
    lines = run.interpolate(x0, x1, 5, linear=True)
    assert lines.shape == (3, 5, 20)
    for i in range(3):
        torch.testing.assert_close(lines[i], run.interpolate(x0[i], x1[i], 5, linear=True))
    # single inputs keep their shapes
    assert run.interpolate(x[0], x[1], 5).shape == (5, 20) and run.latent_path(x[0], x[1], 5).c.shape == (4,)


def test_a_batch_of_pairs_is_solved_in_one_call(run, monkeypatch) -> None:
    calls: list[int] = []
    original = CoefficientSolver.__call__

    def count(self, psi, z0, z1, *args, **kwargs):
        calls.append(z0.shape[0])
        return original(self, psi, z0, z1, *args, **kwargs)

    monkeypatch.setattr(CoefficientSolver, "__call__", count)
    x, _ = run.test_data()
    assert run.interpolate(x[:6], x[6:12], 4).shape == (6, 4, 20)
    assert calls == [6]


def test_extrapolate_takes_a_batch_of_starts(run) -> None:
    x, _ = run.test_data()
    starts = x[:3]
    along = run.extrapolate(starts, operator=2, num_steps=5)  # each start over its own half-turn
    assert along.shape == (3, 5, 20)
    for i in range(3):
        torch.testing.assert_close(along[i], run.extrapolate(starts[i], operator=2, num_steps=5), atol=1e-5, rtol=0)
    c = torch.tensor([[1.0, 0.0, -2.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    per_start = run.extrapolate(starts, coefficients=c, num_steps=4, t_range=(0.0, 2.0))
    shared = run.extrapolate(starts, coefficients=c[0], num_steps=4)
    assert per_start.shape == shared.shape == (3, 4, 20)
    for i in range(3):
        torch.testing.assert_close(per_start[i], run.extrapolate(starts[i], coefficients=c[i], num_steps=4,
                                                                 t_range=(0.0, 2.0)))
        torch.testing.assert_close(shared[i], run.extrapolate(starts[i], coefficients=c[0], num_steps=4))
    with pytest.raises(ValueError, match=r"\(M,\) = \(4,\) or \(B, M\) = \(3, 4\).*got \(2, 4\)"):
        run.extrapolate(starts, coefficients=c[:2])


def test_pairs_of_different_shapes_are_refused(run) -> None:
    with pytest.raises(ValueError, match=r"x0 must have shape \(2, 20\) like x1.*got \(3, 20\)"):
        run.interpolate(torch.zeros(3, 20), torch.zeros(2, 20))
    with pytest.raises(ValueError, match=r"x0 must have shape \(20,\) like x1.*got \(2, 20\)"):
        run.latent_path(torch.zeros(2, 20), torch.zeros(20), linear=True)


# -- vaells.load takes what evaluate.py ckpt_path= takes ---------------------------------------------
def test_load_takes_a_run_folder_or_a_folder_of_runs(runs, tmp_path: Path) -> None:
    folder = vaells.load(runs / "a")
    assert folder.ckpt_path == runs / "a" / "checkpoints" / "last.ckpt" and folder.run_dir == runs / "a"
    assert vaells.load(runs / "a" / "checkpoints").ckpt_path == folder.ckpt_path
    newest = vaells.load(runs)  # a folder of runs: its newest
    assert newest.run_dir == runs / "b"
    x = torch.randn(4, 20)
    torch.testing.assert_close(newest.encode(x), folder.encode(x))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no last checkpoint in"):
        vaells.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="checkpoint=newest is not one of last, best"):
        vaells.load(runs / "a", checkpoint="newest")


# -- the prior around a digit (rotated MNIST) --------------------------------------------------------
def test_sample_prior_on_rotated_digits_points_to_sample_around(rotated) -> None:
    for label in (None, 3):
        with pytest.raises(ValueError, match=r"own anchors.*rotated copies.*run\.sample_around\(x, n\)"):
            rotated.sample_prior(label, 4)


def test_sample_around_draws_around_the_digits_rotated_copies(rotated, monkeypatch) -> None:
    x, _ = rotated.test_data()
    digit = x[0]
    seen = _record_anchors(rotated, monkeypatch)
    samples = rotated.sample_around(digit, 40, seed=0)
    assert samples.shape == (40, 1, 32, 32) and samples.dtype == torch.float32
    # the anchors are the digit at the run's anchor angles (data.anchors_per_class = 5: 0, 72, ... degrees)
    angles = torch.arange(5) * 72.0
    with torch.no_grad():
        copies = rotated.model.encode(rotate(digit[None].expand(5, -1, -1, -1), angles))  # (5, d)
    (anchors,) = seen
    distance = torch.cdist(anchors, copies)  # (40, 5)
    assert float(distance.min(1).values.max()) < 1e-5
    assert distance.argmin(1).unique().numel() == 5  # drawn from all five copies
    torch.testing.assert_close(rotated.sample_around(digit, 40, seed=0), samples)  # seeded: repeatable
    batch = rotated.sample_around(x[:2], 3, seed=1, decoded=False)
    assert batch.shape == (2, 3, 10)


def test_sample_around_elsewhere_draws_around_the_input(run, monkeypatch) -> None:
    x, _ = run.test_data()
    seen = _record_anchors(run, monkeypatch)
    assert run.sample_around(x[0], 6, seed=0).shape == (6, 20)
    torch.testing.assert_close(seen[0], run.model.encode(x[:1]).expand(6, -1))
    baseline_cfg = compose_train(["experiment=concentric_circles", "model=vae"], Path("unused"))
    baseline = Run(build_model(baseline_cfg, build_datamodule(baseline_cfg)).eval(), baseline_cfg, Path("x.ckpt"))
    with pytest.raises(TypeError, match="transport operators"):
        baseline.sample_around(x[0], 4)


# -- help(vaells) ---------------------------------------------------------------------------------
def test_help_shows_load() -> None:
    text = pydoc.render_doc(vaells, renderer=pydoc.plaintext)
    functions = text.split("FUNCTIONS", 1)[1]
    assert "load(ckpt_path" in functions and "evaluate.py ckpt_path=" in functions


@pytest.mark.e2e
def test_a_folder_named_vaells_beside_a_script_does_not_hide_the_package(tmp_path: Path) -> None:
    """A script next to a clone's folder (named vaells, holding the checkout) imports the installed package, not
    the folder as an empty namespace package."""
    import subprocess
    import sys

    (tmp_path / "vaells" / "vaells").mkdir(parents=True)  # a clone's folder, as `git clone` names it
    script = tmp_path / "use.py"
    script.write_text("import vaells\nprint(callable(getattr(vaells, 'load', None)), vaells.__file__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[0] == "True", out.stdout + out.stderr
