"""The train.py and evaluate.py commands as a user meets them: the end-of-run metrics of train.py are evaluate.py's
on the same checkpoint, a misspelt key gets the key it misspells, a run that never left its warm-up says so, and
``--help`` answers before torch loads.

train.py and evaluate.py run in-process through their ``@hydra.main`` entry points (``cli`` in conftest.py) on a
few swiss-roll batches; the ``--help`` check is a subprocess (e2e).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT

import evaluate
import train
from vaells.models.schedule import Schedule

# Three training batches, one validation batch, 60 test points, a small log-likelihood, no figures: seconds.
SHORT = ["experiment=swiss_roll", "data.num_test=60", "++trainer.max_epochs=1", "++trainer.limit_train_batches=3",
         "++trainer.limit_val_batches=1", "~callbacks.latent_figures", "ll_points=10", "ll_samples=4"]
WARMUP_ONLY = "The VAELLS phase never began"


def _train_and_evaluate(cli, tmp_path: Path, *overrides: str) -> tuple[dict, dict, str, str]:
    """train.py's metrics.json and evaluate.py's on the run's last.ckpt, with both logs."""
    run, out = tmp_path / "run", tmp_path / "eval"
    code, _, err = cli(train.main, *SHORT, *overrides, f"hydra.run.dir={run}")
    assert code == 0, err
    code, _, err = cli(evaluate.main, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "ll_points=10", "ll_samples=4",
                       f"hydra.run.dir={out}")
    assert code == 0, err
    return (json.loads((run / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text()),
            (run / "train.log").read_text(), (out / "evaluate.log").read_text())


@pytest.mark.parametrize(
    "overrides",
    [
        # past a one-batch warm-up into alternating phases of one batch each: the operators are stepped too
        ["model.schedule.warmup_steps=1", "model.schedule.net_steps=1", "model.schedule.psi_steps=1"],
        ["model=vae"],
    ],
    ids=["vaells", "vae"],
)
def test_train_and_evaluate_agree_on_the_same_checkpoint(overrides, tmp_path: Path, cli) -> None:
    trained, evaluated, train_log, _ = _train_and_evaluate(cli, tmp_path, *overrides)
    # Every metric evaluate.py reports, train.py reported with the same value (mse and elbo are posterior samples:
    # they differed when each drew them from wherever its global RNG happened to be).
    assert {"mse", "sample_mse", "trustworthiness", "log_likelihood"} <= set(evaluated)
    only_evaluate = {"ckpt_path", "split"}  # what evaluate.py scored; train.py always scores the test split
    differ = {k: (trained.get(k), v) for k, v in evaluated.items() if k not in only_evaluate and trained.get(k) != v}
    assert differ == {}
    if "model=vae" not in overrides:
        assert trained["vaells_batches"] == 2  # 3 batches, the first of them the warm-up
    assert WARMUP_ONLY not in train_log


def test_a_run_inside_its_warmup_says_so(tmp_path: Path, cli) -> None:
    trained, evaluated, train_log, evaluate_log = _train_and_evaluate(cli, tmp_path, "model.schedule.warmup_steps=50")
    assert trained["vaells_batches"] == evaluated["vaells_batches"] == 0
    assert trained["operator_drift"] == [0.0]  # what the message explains: Psi is still its initialisation
    for log in (train_log, evaluate_log):
        assert WARMUP_ONLY in log and "after 3 batches, inside the warm-up of 50 batches" in log


def test_vaells_batches_count_the_warmups_a_flow_check_added() -> None:
    from vaells.evaluation.summary import vaells_record, warmup_only_message

    # A checkpoint's model has its config's schedule; the fresh warm-ups of WarmupFlowCheck are in its state.
    model = SimpleNamespace(transport=object(), schedule=Schedule(warmup_steps=10), batch_counter=12)
    assert vaells_record(model) == {"vaells_batches": 2} and warmup_only_message(model) is None
    added = {"WarmupFlowCheck{'threshold': 0.93}": {"scores": [0.5], "added_batches": 5, "added_epochs": 1}}
    assert vaells_record(model, added) == {"vaells_batches": 0}
    assert "inside the warm-up of 15 batches" in warmup_only_message(model, added)
    assert vaells_record(SimpleNamespace(transport=None, batch_counter=3)) == {}  # no operators: no such metric


@pytest.mark.parametrize(
    ("command", "argv", "advice"),
    [
        ("train", ["trainer.max_epoch=3"], "Did you mean trainer.max_epochs=3?"),
        ("train", ["max_epochs=3"], "Did you mean trainer.max_epochs=3?"),
        ("train", ["model.num_operator=2"], "Did you mean model.num_operators=2?"),
        ("evaluate", ["ckpt_path=RUN", "chekpoint=best"], "Did you mean checkpoint=best?"),
        # nothing close: the keys that are there, and how a key of one's own is added
        ("train", ["trainer.foo=3"], "trainer holds: _target_, max_epochs"),
    ],
)
def test_a_misspelt_key_gets_the_key_it_misspells(command, argv, advice, cli) -> None:
    code, _, err = cli({"train": train.main, "evaluate": evaluate.main}[command], *argv)
    assert code == 1
    assert advice in err
    if "Did you mean" in advice:
        # Hydra's own advice, "+trainer.max_epoch=3", would pass the typo on (to the Trainer: a TypeError)
        assert "To append to your config" not in err and f"+{argv[-1]}" not in err


@pytest.mark.e2e
@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_answers_before_torch_loads(script: str) -> None:
    # -X importtime lists every module imported (on stderr); no timing, which a busy machine would make flaky.
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Usage: python {script}" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "pytorch_lightning", "lightning_fabric"))
    assert heavy == []
