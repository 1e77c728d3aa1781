"""Settings that cannot run stop before any work (vaells/app/validation.py; docs/running.md, "Runs and output folders"):
each failure names the field, its value and the fix in a line or two, without a traceback, before the data loads
(or, for what needs the data, before training), and leaves no run folder or checkpoint behind. Every shipped
config passes the same checks.

The entry points run in-process (``cli``) as in tests/test_app.py; one case runs ``python train.py`` as a real
subprocess to time it end to end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF_DIR, ROOT, compose_train

import evaluate
import train
from vaells.app.runs import UsageError
from vaells.app.validation import check_train_config
from vaells.data.base import AnchoredDataModule

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
NO_FIGURES = "~callbacks.latent_figures"
#: Well above what a refused run takes in-process (~1 s) or as a fresh process (~10 s of imports).
LIMIT_S = 60


class _TrainingStarted(Exception):
    pass


@pytest.fixture
def guarded(monkeypatch) -> dict[str, int]:
    """Count the data modules set up and the fits started; a fit is stopped at once."""
    seen = {"setup": 0, "fit": 0}
    setup = AnchoredDataModule.setup

    def count_setup(self, *args, **kwargs):
        seen["setup"] += 1
        return setup(self, *args, **kwargs)

    def no_fit(self, *args, **kwargs):
        seen["fit"] += 1
        raise _TrainingStarted("training started")

    monkeypatch.setattr(AnchoredDataModule, "setup", count_setup)
    monkeypatch.setattr(pl.Trainer, "fit", no_fit)
    return seen


def _message(err: str) -> str:
    """stderr without Hydra's echo of the overrides, which would name every field on its own."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("Error executing job with overrides"))


def _vectors(path: Path, shape: tuple[int, ...] = (200, 5)) -> Path:
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.savez(path, x=x, labels=np.repeat([0, 1], shape[0] // 2))
    return path


# (overrides, what the message must say, what it must not say). The first block is the cases a new user met.
CASES = [
    (["model.weights.recon=-1"], ["model.weights.recon=-1", ">= 0"], []),
    (["model.psi_rule.lr=-1"], ["model.psi_rule.lr=-1", "> 0", "e.g. model.psi_rule.lr="], []),
    (["model.psi_optimizer.lr=0.5"], ["model.psi_optimizer.lr=0.5", "ignored", "model.psi_rule.lr=0.5"], []),
    (["data.anchors_per_class=0"], ["data.anchors_per_class=0", ">= 1"], ["lower"]),
    (["model.weights.post_l1=-0.5"], ["model.weights.post_l1=-0.5", "> 0"], ["latent_scale", "noise_std"]),
    (["model.optimizer.lr=-1"], ["model.optimizer.lr=-1", "> 0"], ["Invalid learning rate"]),
    # d and M, interpolated copies blamed on the key a user sets (one line, not one per copy)
    (["backbone.latent_dim=0"], ["backbone.latent_dim=0", ">= 1"], ["model.transport.latent_dim", "settings"]),
    (["model.num_operators=0"], ["model.num_operators=0", ">= 1"], []),
    # batch size, epochs, loss weights, solvers, names
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"], []),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"], []),
    (["model.weights.dictionary=-0.01"], ["model.weights.dictionary=-0.01", ">= 0"], []),
    (["model.prior_solver.max_iter=0"], ["model.prior_solver.max_iter=0", ">= 1"], []),
    (["model.posterior_solver.restarts=[[1.0,0.0]]"], ["model.posterior_solver.restarts=[[1.0,0.0]]", "low <= high"],
     []),
    (["model.prior_solver.restarts=[]"], ["model.prior_solver.restarts=[]", "[low, high]"], []),
    (["model.psi_rule.shrink=1.5"], ["model.psi_rule.shrink=1.5", "in (0, 1]"], []),
    (["model.transport.dtype=float16"], ["model.transport.dtype=float16", "float32 or float64"], []),
    (["model.prior_solver.jacobian_dtype=float16"],
     ["model.prior_solver.jacobian_dtype=float16", "float32 or float64"], []),
    (["model.psi_optimizer._target_=torch.optim.Adm"], ["model.psi_optimizer._target_=torch.optim.Adm"], []),
    (["model.psi_rule=null"], ["model.psi_optimizer.lr=null", "e.g. model.psi_optimizer.lr="], []),
    (["model.weights.recon=abc"], ["model.weights.recon=abc", "a finite number"], []),
    (["model.weights.recon=-1", "data.batch_size=0"], ["2 settings", "model.weights.recon=-1", "data.batch_size=0"],
     []),
    # the baselines' own keys
    (["model=vae", "model.optimizer.lr=-1"], ["model.optimizer.lr=-1", "> 0"], ["Invalid learning rate"]),
    (["model=vampprior", "model.num_pseudo_inputs=0"], ["model.num_pseudo_inputs=0", ">= 1"], []),
    (["model=svae", "model.beta=-1"], ["model.beta=-1", "> 0"], []),
    (["model=vae", "model.kl_warmup_steps=-5"], ["model.kl_warmup_steps=-5", ">= 0"], []),
]
#: Hydra's own refusals (an unknown group option, a key the config does not have): their messages name the field.
HYDRA_CASES = [
    (["model=nope"], ["model/nope", "vampprior"], []),
    (["experiment=swiss_roll", "data=nope"], ["data/nope", "tensor_file"], []),
    (["model.weights.recn=1"], ["model.weights.recn"], []),
]


@pytest.mark.parametrize(("overrides", "said", "unsaid"), CASES + HYDRA_CASES,
                         ids=[" ".join(c[0]) for c in CASES + HYDRA_CASES])
def test_a_bad_setting_stops_before_the_data_naming_field_value_and_fix(overrides, said, unsaid, tmp_path: Path,
                                                                        cli, guarded) -> None:
    run = tmp_path / "outputs" / "train" / "x" / "vaells" / "run"
    start = time.perf_counter()
    code, _, err = cli(train.main, *overrides, NO_FIGURES, f"hydra.run.dir={run}")
    assert time.perf_counter() - start < LIMIT_S
    message = _message(err)
    assert code != 0 and guarded == {"setup": 0, "fit": 0}, err
    assert "Traceback" not in err, err
    if (overrides, said, unsaid) in CASES:  # one or two lines per failure, the cleanup note and Hydra's hint
        assert len(message.strip().splitlines()) <= 2 * len([o for o in overrides if "=" in o]) + 2, err
    for text in said:
        assert text in message, (text, err)
    for text in unsaid:
        assert text not in message, (text, err)
    assert not run.exists()  # no checkpoint, no .hydra/ or empty train.log left behind


def test_anchors_above_the_smallest_class_stop_once_the_data_is_known(tmp_path: Path, cli, guarded) -> None:
    path = _vectors(tmp_path / "data.npz")  # two classes of 100 samples, ~80 of each in the training split
    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=tensor_file", f"data.path={path}", "data.anchors_per_class=150",
                       NO_FIGURES, f"hydra.run.dir={run}")
    message = _message(err)
    assert code != 0 and guarded["fit"] == 0 and "Traceback" not in err
    assert "data.anchors_per_class=150" in message and "lower data.anchors_per_class to at most" in message, err
    assert not run.exists()


def test_samples_the_networks_cannot_take_stop_before_training(tmp_path: Path, cli, guarded) -> None:
    """x of shape (200, 4, 5) passes the file's checks; the vector networks of backbone=mlp would crash in the
    first step's loss."""
    path = _vectors(tmp_path / "images.npz", shape=(200, 4, 5))
    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=tensor_file", f"data.path={path}", NO_FIGURES, f"hydra.run.dir={run}")
    message = _message(err)
    assert code != 0 and guarded["fit"] == 0 and "Traceback" not in err, err
    assert f"data.path={path}" in message and "(4, 5)" in message and "x.reshape(len(x), -1)" in message, err
    assert not run.exists()


def test_a_missing_data_file_stops_before_the_data(tmp_path: Path, cli, guarded) -> None:
    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=tensor_file", f"data.path={tmp_path / 'nope.npz'}", NO_FIGURES,
                       f"hydra.run.dir={run}")
    assert code != 0 and guarded == {"setup": 0, "fit": 0} and "Traceback" not in err
    assert f"data.path={tmp_path / 'nope.npz'} does not exist" in _message(err), err


def _run_with_data(tmp_path: Path, data: dict) -> Path:
    """A run folder whose checkpoint holds a run config with ``data`` (all evaluate.py reads before the data)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"run_config": {"data": data}, "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    return run


def test_evaluate_names_data_overrides_for_a_moved_data_file(tmp_path: Path, cli, guarded) -> None:
    gone = tmp_path / "moved_away.npz"
    run = _run_with_data(tmp_path, {"_target_": "vaells.data.datamodules.TensorFileDataModule", "path": str(gone),
                                    "anchors_per_class": 4, "batch_size": 64, "seed": 0, "num_workers": 0})
    code, _, err = cli(evaluate.main, f"ckpt_path={run}")
    message = _message(err)
    assert code != 0 and guarded["setup"] == 0 and "Traceback" not in err
    assert f"data.path={gone} does not exist" in message and "+data_overrides.path=" in message, err
    assert "set data.path" not in message
    # an override of the run's data is checked as such
    code, _, err = cli(evaluate.main, f"ckpt_path={run}", f"+data_overrides.path={_vectors(tmp_path / 'd.npz')}",
                       "+data_overrides.batch_size=0")
    assert code != 0 and "data.batch_size=0" in err and "+data_overrides.batch_size=" in err, err
    assert not (run / "evaluations").exists()


@pytest.mark.e2e
def test_a_bad_setting_stops_python_train_py_within_the_limit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", "model.weights.recon=-1", f"hydra.run.dir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=LIMIT_S)
    assert time.perf_counter() - start < LIMIT_S
    assert proc.returncode != 0 and "model.weights.recon=-1 must be >= 0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not run.exists()


# -- every shipped config passes ------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_config_passes(experiment: str, model: str, tmp_path: Path) -> None:
    data = [f"data.path={_vectors(tmp_path / 'data.npz')}"] if experiment == "tensor_file" else []
    check_train_config(compose_train([f"experiment={experiment}", f"model={model}", *data], tmp_path,
                                     latent_figures=True))


def test_the_plain_psi_optimizer_of_the_config_comment_passes(tmp_path: Path) -> None:
    """conf/model/vaells.yaml's recipe for a plain optimizer on Psi, and the rule's lr moved with it."""
    check_train_config(compose_train(["model.psi_rule=null", "model.psi_optimizer._target_=torch.optim.Adam",
                                      "model.psi_optimizer.lr=1e-3"], tmp_path))
    with pytest.raises(UsageError, match="model.psi_optimizer.lr=0.001 would be ignored"):
        check_train_config(compose_train(["model.psi_optimizer.lr=1e-3"], tmp_path))
