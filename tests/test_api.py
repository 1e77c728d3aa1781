"""``vaells.load`` and the run it returns, on runs of a few batches: built from the checkpoint alone (the data may be
gone), float32 in and out, paths, prior samples and figures; clear errors for wrong shapes, baselines asked for
operators and checkpoints this project did not write; ``python paths.py`` writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, compose_train

import vaells
from vaells.app.builders import build_datamodule, build_model
from vaells.evaluation.summary import evaluate_model


def _train(overrides: list[str], out: Path) -> tuple[Path, object, object]:
    """Fit a few batches and save ``out/checkpoints/last.ckpt`` as train.py's checkpoint callback would."""
    cfg = compose_train(overrides, out)
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    ckpt = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, model, dm


@pytest.fixture(scope="module")
def circles(tmp_path_factory) -> tuple[Path, object, object]:
    # The paper's four circle operators (the experiment's default is one), so that c_hat and the per-operator
    # paths have more than one coefficient to get wrong.
    return _train(["experiment=concentric_circles", "model.num_operators=4", "model.prior_solver.max_coeff=10.0"],
                  tmp_path_factory.mktemp("circles"))


@pytest.fixture(scope="module")
def run(circles) -> vaells.Run:
    return vaells.load(circles[0])


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> vaells.Run:
    return vaells.load(_train(["experiment=concentric_circles", "model=vae"], tmp_path_factory.mktemp("vae"))[0])


@pytest.mark.e2e
def test_import_vaells_is_light() -> None:
    code = "import sys, vaells; print('torch' in sys.modules, callable(vaells.load))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_load_rebuilds_the_trained_model(run, circles) -> None:
    _, model, dm = circles
    x = dm.test_set.tensors["x"][:5]
    assert run.input_shape == (20,) and run.latent_dim == 2 and run.has_operators
    assert run.run_dir == circles[0].parent.parent
    torch.testing.assert_close(run.encode(x), model.encode(x).float())
    assert not run.model.training


def test_load_needs_no_data_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(120, 6)).astype(np.float32), labels=np.repeat([0, 1], 60))
    ckpt, model, _ = _train(["data=tensor_file", f"data.path={path}"], tmp_path / "run")
    path.unlink()
    loaded = vaells.load(ckpt)
    assert loaded.input_shape == (6,)
    x = torch.randn(4, 6)
    torch.testing.assert_close(loaded.encode(x), model.encode(x).float())
    assert loaded.sample_prior(1, 3, seed=0).shape == (3, 6)
    with pytest.raises(Exception, match="mine.npz does not exist"):  # hydra wraps the FileNotFoundError
        _ = loaded.datamodule  # the data are read only now


def test_encode_and_decode_take_and_give_float32(run) -> None:
    x = torch.randn(7, 20, dtype=torch.float64)
    z = run.encode(x)
    assert z.shape == (7, 2) and z.dtype == torch.float32
    assert run.encode(x[0]).shape == (2,)
    out = run.decode(z)
    assert out.shape == (7, 20) and out.dtype == torch.float32
    assert run.decode(z[0]).shape == (20,)


def test_interpolate_starts_at_z0_and_ends_at_the_transported_z0(run) -> None:
    x, _ = run.test_data()
    path = run.latent_path(x[0], x[1], num_steps=6)
    assert path.z.shape == (6, 2) and path.c.shape == (4,)
    z0 = run.model.encode(x[:1])
    torch.testing.assert_close(path.z[0], z0[0].float())
    torch.testing.assert_close(path.z[-1], run.model.transport.transport(z0, path.c.double())[0].float())
    frames = run.interpolate(x[0], x[1], num_steps=6)
    assert frames.shape == (6, 20) and frames.dtype == torch.float32
    torch.testing.assert_close(frames[0], run.decode(run.encode(x[0])))
    line = run.latent_path(x[0], x[1], num_steps=6, linear=True)
    assert line.c is None
    torch.testing.assert_close(line.z[[0, -1]], run.encode(x[:2]))


def test_extrapolate_along_an_operator_or_a_given_c(run) -> None:
    x, _ = run.test_data()
    assert run.extrapolate(x[0], operator=2, num_steps=5).shape == (5, 20)
    along_c = run.extrapolate(x[0], coefficients=torch.tensor([1.0, 0.0, -2.0, 0.5]), num_steps=4)
    assert along_c.shape == (4, 20)
    torch.testing.assert_close(along_c[0], run.decode(run.encode(x[0])))
    with pytest.raises(ValueError, match="exactly one"):
        run.extrapolate(x[0])
    with pytest.raises(ValueError, match="operator=7"):
        run.extrapolate(x[0], operator=7)
    with pytest.raises(ValueError, match=r"\(M,\) = \(4,\)"):
        run.extrapolate(x[0], coefficients=torch.zeros(2))


def test_sample_prior_is_class_matched_and_repeatable(run) -> None:
    a, b = run.sample_prior(1, 5, seed=3), run.sample_prior(1, 5, seed=3)
    assert a.shape == (5, 20) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    # the class-1 prior is built from the class-1 anchors only: same draw, other class, other samples
    assert not torch.allclose(run.sample_prior(0, 5, seed=3), a)
    with pytest.raises(ValueError, match="label=2 must be a class of this run, 0..1"):
        run.sample_prior(2, 5)


def test_wrong_shapes_get_clear_errors(run) -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(20,\) or \(B, 20\).*got \(3, 7\)"):
        run.encode(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"x0 must have shape \(20,\).*got \(2, 20\)"):
        run.interpolate(torch.zeros(2, 20), torch.zeros(20))
    with pytest.raises(ValueError, match="d=2"):
        run.decode(torch.zeros(3))
    with pytest.raises(TypeError, match="float"):
        run.encode(torch.zeros(20, dtype=torch.long))


def test_a_checkpoint_this_project_did_not_write_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="holds no run config"):
        vaells.load(foreign)
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(ValueError, match="holds no run config"):
        vaells.load(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vaells.load(tmp_path / "missing.ckpt")


def test_a_baseline_loads_and_refuses_what_needs_operators(vae_run) -> None:
    x, _ = vae_run.test_data()
    assert not vae_run.has_operators
    with pytest.raises(TypeError, match="GaussianVAE.*linear=True"):
        vae_run.interpolate(x[0], x[1])
    with pytest.raises(TypeError, match="transport operators"):
        vae_run.extrapolate(x[0], operator=0)
    assert vae_run.interpolate(x[0], x[1], 5, linear=True).shape == (5, 20)
    assert vae_run.sample_prior(None, 4).shape == (4, 20)


def test_figures_are_saved(run, tmp_path: Path) -> None:
    x, _ = run.test_data()
    paths = torch.stack([run.latent_path(x[0], x[1], 8).z, run.latent_path(x[0], x[1], 8, linear=True).z])
    assert run.save_latent_plot(tmp_path / "paths.png", paths, titles=["transport", "linear"]).stat().st_size > 0
    assert run.save_latent_plot(tmp_path / "latent.png").is_file()
    assert run.save_images(torch.rand(6, 1, 8, 8), tmp_path / "grid.png", nrow=3).is_file()
    with pytest.raises(ValueError, match="save_latent_plot"):
        run.save_images(torch.rand(6, 20), tmp_path / "no.png")


@pytest.mark.e2e
def test_evaluation_reports_the_path_metrics(circles) -> None:
    _, model, dm = circles
    metrics = evaluate_model(model, dm)
    assert metrics["path_manifold_error"] > 0 and metrics["linear_path_manifold_error"] > 0


def test_paths_command_writes_a_figure_per_pair(circles, cli) -> None:
    import paths

    ckpt = circles[0]
    code, out, err = cli(paths.main, f"ckpt_path={ckpt}", "pairs=[[3,17],[5,40]]", "num_steps=5")
    assert code == 0, err
    (folder,) = (ckpt.parent.parent / "paths").iterdir()  # RUN/paths/<date_time>/
    assert {p.name for p in folder.glob("*.png")} == {"pair_3_17.png", "pair_5_40.png"}
    record = json.loads((folder / "paths.json").read_text())["pairs"][0]
    assert record["start"] == 3 and len(record["c_hat"]) == 4 and record["end_error"] >= 0
    code, _, err = cli(paths.main, f"ckpt_path={ckpt}", "pairs=[[3,100000]]", f"hydra.run.dir={folder}/bad")
    assert code != 0 and "pairs: [3, 100000] is not a pair of test indices" in err


def test_checkpoints_saved_before_the_input_shape_was_stored_still_load(circles, tmp_path: Path) -> None:
    from vaells.app.builders import checkpoint_input_shape

    checkpoint = torch.load(circles[0], weights_only=False)
    assert checkpoint.pop("input_shape") == [20]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert vaells.load(old).input_shape == (20,)  # from the learned anchors
    for overrides, shape in ((["experiment=rotated_mnist"], (1, 32, 32)), (["model=vae"], (20,))):
        cfg = compose_train(overrides, tmp_path)
        assert checkpoint_input_shape(cfg, {"state_dict": {}}) == shape  # the DataModule class; ambient_dim
