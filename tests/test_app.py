"""The Hydra application: every config composes, one fast_dev_run per experiment, bad input stops before
training with a message naming the field, and evaluate.py reads a trained run.

train.py and evaluate.py are run through their ``@hydra.main`` entry points in-process (the same argv
parsing, composition and error reporting as on the command line, without ~10 s of imports per run); one
test runs ``python train.py`` as a real subprocess to pin the script's exit status.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF_DIR, ROOT, compose_train
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import train
from vaells.app.builders import build_datamodule, build_model

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SYNTHETIC = ["concentric_circles", "swiss_roll"]
NO_FIGURES = "~callbacks.latent_figures"


class _TrainingStarted(Exception):
    pass


@pytest.fixture
def no_fit(monkeypatch) -> list:
    """Like ``fit_calls``, but training never runs: a call is recorded and stopped at once."""
    calls: list = []

    def spy(self, model, *args, **kwargs):
        calls.append(model)
        raise _TrainingStarted("training started")

    monkeypatch.setattr(pl.Trainer, "fit", spy)
    return calls


def _message(err: str) -> str:
    """stderr without Hydra's echo of the overrides, which would name every field on its own."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("Error executing job with overrides"))


def _tensor_file(path: Path, with_x: bool = True) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"labels": np.repeat([0, 1], 100)}
    if with_x:
        arrays["x"] = rng.normal(size=(200, 5)).astype(np.float32)
    np.savez(path, **arrays)
    return path


# -- composing ----------------------------------------------------------------------------------------
def test_experiments_are_discovered() -> None:
    assert set(SYNTHETIC) <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str, tmp_path: Path) -> None:
    data = [f"data.path={_tensor_file(tmp_path / 'data.npz')}"] if experiment == "tensor_file" else []
    cfg = compose_train([f"experiment={experiment}", *data], tmp_path, latent_figures=True)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    for node in ("data", "model", "trainer", "logger"):
        assert "_target_" in resolved[node], node
    for name, callback in resolved["callbacks"].items():
        assert "_target_" in callback, name
    # what the experiment file sets is what the run gets
    body = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    body.pop("defaults", None)
    body.pop("hydra", None)  # Hydra's own settings (a sweep's grid: tests/test_sweep.py)
    assert OmegaConf.to_container(OmegaConf.merge(cfg, body), resolve=True) == resolved
    if experiment in [*SYNTHETIC, "tensor_file"]:  # cheap to build: catch a _target_ or argument that does not exist
        dm = build_datamodule(cfg)
        model = build_model(cfg, dm)
        assert model.transport.num_operators == cfg.model.num_operators
        assert model.run_config["model"]["num_operators"] == cfg.model.num_operators


def test_tensor_file_config_composes_and_takes_input_dims_from_the_data(tmp_path: Path) -> None:
    with pytest.raises(MissingMandatoryValue, match="path"):
        OmegaConf.to_container(compose_train(["data=tensor_file"], tmp_path), resolve=True, throw_on_missing=True)
    path = _tensor_file(tmp_path / "data.npz")
    cfg = compose_train(["data=tensor_file", f"data.path={path}"], tmp_path, latent_figures=True)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    model = build_model(cfg, build_datamodule(cfg))
    assert model.encoder.input_dim == 5 and model.decoder.output_dim == 5


def test_trainer_debug_overrides_need_no_plus(tmp_path: Path) -> None:
    compose_train(["trainer.fast_dev_run=true", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"],
                  tmp_path)


# -- fast_dev_run ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", SYNTHETIC)
def test_fast_dev_run(experiment: str, tmp_path: Path, cli, fit_calls) -> None:
    code, out, err = cli(train.main, f"experiment={experiment}", "++trainer.fast_dev_run=true", NO_FIGURES,
                         f"hydra.run.dir={tmp_path}")
    assert code == 0, err
    assert len(fit_calls) == 1 and fit_calls[0].batch_counter >= 1
    assert f"Run directory: {tmp_path}" in out
    saved = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert saved.model.num_operators == fit_calls[0].transport.num_operators
    # The smoke batch went through the solvers and the anchor prior (its loss term was logged) ...
    assert "batch 0: VAELLS phase" in out
    last_batch = next(line for line in out.splitlines() if "last training batch:" in line)
    assert "train/prior=" in last_batch and "train/post_transport=" in last_batch
    # ... and no checkpoint was written, so no evaluation is offered, and evaluate.py says why in one message.
    assert "No checkpoint was written" in out and "Evaluate with" not in out
    assert not (tmp_path / "checkpoints").exists()
    import evaluate

    code, _, err = cli(evaluate.main, f"ckpt_path={tmp_path}")
    assert code != 0 and "holds no checkpoint (a fast_dev_run writes none)" in err and "Traceback" not in err
    assert not (tmp_path / "evaluations").exists()


def test_tensor_file_fast_dev_run(tmp_path: Path, cli, fit_calls) -> None:
    path = _tensor_file(tmp_path / "data.npz")
    code, out, err = cli(train.main, "experiment=tensor_file", f"data.path={path}", "++trainer.fast_dev_run=true",
                         NO_FIGURES, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    model = fit_calls[0]
    assert model.encoder.input_dim == 5 and model.decoder.output_dim == 5
    assert model.anchor_labels.tolist() == [0] * 4 + [1] * 4 and model.batch_counter >= 1
    assert "batch 0: VAELLS phase" in out


def _hydra_compose(overrides: list[str]):
    """The composed config with Hydra's own node, resolvable as in a run (for ``hydra.run.dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return cfg
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("model", ["vaells", "vae", "vampprior", "svae"])
def test_tensor_file_experiment_is_filed_under_its_own_name_with_its_own_model(model: str) -> None:
    cfg = _hydra_compose(["experiment=tensor_file", "data.path=my.npz", f"model={model}"])
    assert cfg.hydra.run.dir.startswith(f"outputs/train/tensor_file/{model}/")
    assert cfg.data._target_.endswith("TensorFileDataModule") and cfg.model.latent_dim == 4
    if model == "vaells":  # conf/model_experiment/vaells_tensor_file.yaml, not the swiss roll's settings
        assert cfg.model.num_operators == 2 and not cfg.model.schedule.alternate and not cfg.model.closest_anchor
        assert cfg.model.schedule.warmup_steps == 0 and cfg.model.prior_solver.max_coeff == 10.0


def test_data_tensor_file_alone_stops_and_names_the_experiment(tmp_path: Path, cli, no_fit) -> None:
    """Without experiment=, data=tensor_file would train the swiss roll's d = 2, M = 1 model and be filed under
    swiss_roll: refused with the command to use, and nothing is left behind."""
    path = _tensor_file(tmp_path / "data.npz")
    run = tmp_path / "run"
    code, _, err = cli(train.main, "data=tensor_file", f"data.path={path}", NO_FIGURES, f"hydra.run.dir={run}")
    assert not no_fit and code != 0
    assert "use experiment=tensor_file" in err and "swiss_roll" in err and "Traceback" not in err, err
    assert not run.exists()
    # An experiment named together with other data is a choice, and passes.
    cli(train.main, "experiment=concentric_circles", "data=swiss_roll", NO_FIGURES, f"hydra.run.dir={run}")
    assert len(no_fit) == 1


# -- bad input stops before training --------------------------------------------------------------------
@pytest.mark.e2e
def test_unknown_experiment_exits_nonzero_listing_the_options(tmp_path: Path) -> None:
    """The one real subprocess: ``python train.py`` itself exits non-zero on a bad override."""
    proc = subprocess.run(
        [sys.executable, "train.py", "experiment=nope", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    err = _message(proc.stderr)
    assert "experiment" in err and "nope" in err, proc.stderr
    for name in EXPERIMENTS:  # "Available options in 'experiment'"
        assert name in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.num_operators=0"], "num_operators"),
        (["experiment=swiss_roll", "data.anchors_per_class=0"], "anchors_per_class"),
        (["experiment=concentric_circles", "data.anchors_per_class=0"], "anchors_per_class"),
        (["experiment=concentric_circles", "data.anchors_per_class=500"], "anchors_per_class"),
        (["ll_samples=0"], "ll_samples"),
        # anchor screening: only for a closest-anchor prior, and before the solver's last iteration
        (["model.closest_anchor=false", "model.prior_solver.screen_after=4"], "screen_after"),
        (["model.prior_solver.screen_after=20"], "screen_after"),
        (["model.prior_solver.screen_keep=0"], "screen_keep"),
        (["model.transport.norm=0"], "norm"),
        (["model.schedule.prior_ramp_to=-1"], "prior_ramp_to"),
    ],
)
def test_bad_settings_stop_before_training(overrides, field, tmp_path: Path, cli, no_fit) -> None:
    run = tmp_path / "outputs" / "train" / "x" / "vaells" / "run"
    code, _, err = cli(train.main, *overrides, NO_FIGURES, f"hydra.run.dir={run}")
    assert not no_fit, "training started"
    assert code != 0
    assert field in _message(err) and "Traceback" not in err, err
    assert not run.exists()  # no .hydra/ and empty train.log left behind


def test_a_failed_run_in_a_used_folder_leaves_a_failed_marker(tmp_path: Path, cli, no_fit) -> None:
    run = tmp_path / "run"
    (run / "notes").mkdir(parents=True)  # something that was there before: the folder is not removed
    code, _, err = cli(train.main, "model.num_operators=0", NO_FIGURES, f"hydra.run.dir={run}")
    assert code != 0 and not no_fit
    assert (run / "notes").is_dir() and "num_operators" in (run / "FAILED").read_text()
    assert str(run / "FAILED") in err


def test_tensor_file_without_x_stops_before_training(tmp_path: Path, cli, no_fit) -> None:
    path = _tensor_file(tmp_path / "data.npz", with_x=False)
    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=tensor_file", f"data.path={path}", NO_FIGURES, f"hydra.run.dir={run}")
    assert not no_fit and code != 0
    assert "'x'" in _message(err) and str(path) in _message(err), err
    assert not run.exists()


def test_last_checkpoint_is_the_final_epoch_and_a_short_run_has_a_best(tmp_path: Path, cli) -> None:
    """last.ckpt holds the final model (Lightning's save_last alone left it at the last improving validation
    epoch), and a run shorter than the validation interval still validates at its last epoch, so it writes
    best-epochNNN.ckpt (NNN counted from 1, as the log counts epochs)."""
    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=concentric_circles", "data.num_test_per_class=40",
                       "++trainer.max_epochs=3", "++trainer.check_val_every_n_epoch=5",
                       "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", NO_FIGURES,
                       "evaluate=false", f"hydra.run.dir={run}")
    assert code == 0, err
    assert not (run / "metrics.json").exists()  # evaluate=false: no test metrics
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2  # epochs 0, 1, 2 (the last, validated although 3 < 5)
    assert last["vaells"]["batch_counter"] == 3 * 3
    assert [p.name for p in (run / "checkpoints").glob("best*.ckpt")] == ["best-epoch003.ckpt"]


# -- evaluate.py ----------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("experiment", "data_override", "num_test", "num_val", "structure_keys"),
    [
        ("concentric_circles", "data.num_test_per_class=40", 80, 200, ["knn_accuracy"]),
        ("swiss_roll", "data.num_test=60", 60, 200, ["trustworthiness", "continuity"]),
    ],
)
def test_evaluate_a_short_run(experiment, data_override, num_test, num_val, structure_keys, tmp_path: Path,
                              cli) -> None:
    import evaluate

    run = tmp_path / "run"
    # A small log-likelihood (the defaults, 1000 points x K = 100, are for real runs).
    code, _, err = cli(train.main, f"experiment={experiment}", data_override, "++trainer.max_epochs=1",
                       "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", NO_FIGURES,
                       "ll_points=0", f"hydra.run.dir={run}")
    assert code == 0, err
    assert "log_likelihood" not in json.loads((run / "metrics.json").read_text())  # ll_points=0: skipped
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "eval"
    code, stdout, err = cli(evaluate.main, f"ckpt_path={ckpt}", "ll_points=25", "ll_samples=4",
                            f"hydra.run.dir={out}")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["log_likelihood_points"], metrics["log_likelihood_k"]) == (25, 4)
    assert math.isfinite(metrics["log_likelihood"]) and metrics["log_likelihood_stderr"] > 0
    # num_test comes from the run's own config (the override above), not from conf/data defaults
    assert metrics["num_test"] == num_test
    for key in ["mse", "sample_mse", "vaells_objective", *structure_keys]:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert "mse" in stdout
    assert metrics["split"] == "test"
    # split=val scores the validation split with the same metrics, for choosing settings away from the test split
    code, _, err = cli(evaluate.main, f"ckpt_path={ckpt}", "split=val", "ll_points=0", f"hydra.run.dir={out}_val")
    assert code == 0, err
    val = json.loads((tmp_path / "eval_val" / "metrics.json").read_text())
    assert (val["split"], val["num_test"]) == ("val", num_val)
    assert set(metrics) - {"log_likelihood", "log_likelihood_stderr", "log_likelihood_k", "log_likelihood_points",
                           "log_likelihood_release_recipe", "log_likelihood_release_recipe_stderr"} <= set(val)
    assert val["mse"] != metrics["mse"]
    code, _, err = cli(evaluate.main, f"ckpt_path={ckpt}", "split=train", f"hydra.run.dir={out}_train")
    assert code != 0 and "split" in err and "Traceback" not in err, err
