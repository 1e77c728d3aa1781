"""What a newcomer meets: the help texts, the run folder (checkpoints, the whole config in hparams.yaml,
train.log), evaluation beside its run (found from the experiment's folder of runs), plain progress lines in a
log, and nothing left behind by a run that was refused. The entry points run in-process (``cli``), with stdout
captured, i.e. not a terminal."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR, documented_metrics

import evaluate
import train
from vaells.app.runs import UsageError, discard_failed_run, resolve_checkpoint, run_folder

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
NO_FIGURES = "~callbacks.latent_figures"


# -- help -----------------------------------------------------------------------------------------------
def test_train_help_is_a_short_usage_text_naming_every_choice(cli) -> None:
    code, out, _ = cli(train.main, "--help")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("Train VAELLS") and len(lines) <= 50, out  # not the 159-line config dump
    assert "_target_" not in out
    for name in [*EXPERIMENTS, *MODELS, *DATA]:
        assert re.search(rf"\b{name}\b", out), name
    for needed in ("outputs/train/<experiment>/<model>/<date_time>/", "--cfg job", "trainer.fast_dev_run",
                   "best-epochNNN.ckpt", "python evaluate.py ckpt_path=outputs/train/<experiment>/<model> "):
        assert needed in out, needed


def test_evaluate_help_names_its_inputs_and_outputs(cli) -> None:
    code, out, _ = cli(evaluate.main, "--help")
    assert code == 0 and len(out.strip().splitlines()) <= 30 and "_target_" not in out
    for needed in ("ckpt_path=", "checkpoint=", "RUN/evaluations/<date_time>/", "metrics.json", "--cfg job"):
        assert needed in out, needed


def test_the_full_config_stays_available(cli) -> None:
    code, out, _ = cli(train.main, "experiment=natural_mnist", "--cfg", "job")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["model"]["num_operators"] == 8 and cfg["data"]["_target_"].endswith("MNISTDataModule")


# -- a short run, its folder and its evaluation --------------------------------------------------------------
@pytest.mark.e2e
def test_a_short_run_its_logs_and_its_evaluation_beside_it(tmp_path: Path, cli) -> None:
    group = tmp_path / "outputs" / "train" / "concentric_circles" / "vaells"
    run = group / "2026-01-01_00-00-00"
    code, out, err = cli(train.main, "experiment=concentric_circles", "data.num_test_per_class=40",
                         "++trainer.max_epochs=2", "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1",
                         "callbacks.progress_bar.log_every_n_batches=2", NO_FIGURES, f"hydra.run.dir={run}")
    assert code == 0, err
    # Progress as plain lines every 2 batches: stdout is not a terminal here.
    assert "\r" not in out and "\r" not in err
    assert re.search(r"epoch 1/2 batch 2/4 .*train/loss=", out) and re.search(r"epoch 2/2 batch 4/4 ", out), out
    assert "validation after epoch 2: " in out
    # (Library chatter is checked on real subprocesses, whose output is all captured: test_mnist_experiments.py.)
    assert f"Evaluate with: python evaluate.py ckpt_path={run}" in out
    # train.log: the config summary, the phase, the checkpoints and the time.
    log = (run / "train.log").read_text()
    assert "\r" not in log
    for needed in ("experiment=concentric_circles model=vaells", "d = 2, M = 1",
                   "schedule: network and operators updated together", "batch 0: VAELLS phase",
                   "checkpoint with the best val/loss", "best-epoch002.ckpt",
                   f"checkpoint of the final state: {run / 'checkpoints' / 'last.ckpt'}", "fit took"):
        assert needed in log, needed
    # hparams.yaml holds the whole run config, not only the data's keys.
    hparams = yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["model"]["num_operators"] == 1 and hparams["data"]["num_test_per_class"] == 40
    assert hparams["run"]["experiment"] == "concentric_circles"
    # train.py's own metrics.json carries the run's record too.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["experiment"] == "concentric_circles" and metrics["model"] == "vaells"

    # evaluate.py on the experiment's folder of runs: its newest run (this one), into the run's own evaluations/,
    # with the run's record; progress lines throughout.
    (group / "older" / "checkpoints").mkdir(parents=True)
    (group / "older" / "checkpoints" / "last.ckpt").write_text("")
    os.utime(group / "older" / "checkpoints" / "last.ckpt", (0, 0))
    code, out, err = cli(evaluate.main, f"ckpt_path={group}")
    assert code == 0, err
    evaluations = list((run / "evaluations").iterdir())
    assert len(evaluations) == 1 and (evaluations[0] / "evaluate.log").is_file()
    metrics = json.loads((evaluations[0] / "metrics.json").read_text())
    assert metrics["experiment"] == "concentric_circles" and metrics["model"] == "vaells"
    assert metrics["overrides"]["data.num_test_per_class"] == "40" and metrics["overrides"]["trainer.max_epochs"]
    assert metrics["ckpt_path"].endswith("last.ckpt") and metrics["num_test"] == 80
    assert set(metrics) <= documented_metrics(), set(metrics) - documented_metrics()  # docs/metrics.md explains each
    for step in ("test split: mse and the objective", "latent structure", "comparative metrics", "figures"):
        assert re.search(rf"{re.escape(step)}.*done in", out), step
    # The best checkpoint without quoting its "=", and elsewhere on request.
    code, out, err = cli(evaluate.main, f"ckpt_path={run}", "checkpoint=best", f"hydra.run.dir={tmp_path / 'e'}")
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["ckpt_path"].endswith("best-epoch002.ckpt")


# -- checkpoints and failed runs, as functions ---------------------------------------------------------------
def test_resolve_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no checkpoint"):
        resolve_checkpoint(run)
    for name in ("last.ckpt", "best-epoch=007.ckpt"):
        (run / "checkpoints" / name).write_text("")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(run / "checkpoints", "best") == run / "checkpoints" / "best-epoch=007.ckpt"
    assert resolve_checkpoint(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"
    with pytest.raises(UsageError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(UsageError, match="checkpoint=worst"):
        resolve_checkpoint(run, "worst")
    assert run_folder(run / "checkpoints" / "last.ckpt") == run.resolve() == run_folder(run)
    # A folder of runs: the run whose checkpoint was written last.
    newer = tmp_path / "newer" / "checkpoints"
    newer.mkdir(parents=True)
    (newer / "last.ckpt").write_text("")
    os.utime(run / "checkpoints" / "last.ckpt", (0, 0))
    assert resolve_checkpoint(tmp_path) == newer / "last.ckpt"
    assert resolve_checkpoint(tmp_path, "best") == run / "checkpoints" / "best-epoch=007.ckpt"


def test_discard_failed_run(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    run = outputs / "train" / "x" / "vaells" / "t"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (outputs / "train" / "other").mkdir()
    assert "removed" in discard_failed_run(run, "bad", root=outputs)
    # the run and the folders it alone filled are gone, up to the first one that holds something else
    assert not (outputs / "train" / "x").exists() and (outputs / "train" / "other").is_dir()
    used = tmp_path / "used"
    (used / ".hydra").mkdir(parents=True)
    (used / "checkpoints").mkdir()
    assert "FAILED" in discard_failed_run(used, "data.path=x does not exist", root=tmp_path)
    assert (used / "FAILED").read_text().strip() == "data.path=x does not exist" and (used / "checkpoints").is_dir()


def test_evaluate_without_a_checkpoint_says_so_and_leaves_nothing(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(evaluate.main)
    assert code != 0 and "ckpt_path is required" in err and "Traceback" not in err
    code, _, err = cli(evaluate.main, "ckpt_path=typo/last.ckpt")
    assert code != 0 and "ckpt_path=typo/last.ckpt does not exist" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no outputs/evaluate/<time>/ left behind
