"""Stopping and going on: Ctrl-C handled as SIGTERM is (a checkpoint after the batch, the resume command, exit
status 130; a second Ctrl-C stops at once), a finished run that is resumed without more epochs, the resume of a
run's own folder without Lightning's "not empty" warning, and best checkpoints whose names paste into a Hydra
override and number epochs as the log does (``vaells.training.checkpoints``, ``vaells.app.runs``).

The in-process runs train the swiss roll on 60 points (2 batches an epoch) without figures; ``CtrlCAt`` sends the
process its own SIGINT in the middle of a batch, at the batch's first optimizer step, as a user's Ctrl-C lands."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

import train
from vaells.app.runs import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_train=60", "evaluate=false", "~callbacks.latent_figures"]
NOT_EMPTY = "exists and is not empty"


class CtrlCAt(pl.Callback):
    """Send this process ``times`` SIGINTs in the middle of training batch ``at`` (the module's batch counter), at
    its first optimizer step. A resumed run, whose config still holds this callback, starts after that batch."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at, self.times, self.fired = at, times, False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if pl_module.batch_counter == self.at and not self.fired:
            self.fired = True
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def _ctrl_c(at: int, times: int = 1) -> list[str]:
    return [f"+callbacks.ctrl_c._target_={__name__}.CtrlCAt", f"+callbacks.ctrl_c.at={at}",
            f"+callbacks.ctrl_c.times={times}"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- Ctrl-C ---------------------------------------------------------------------------------------------------
@pytest.fixture
def python_ctrl_c():
    """SIGINT as an interactive run has it, whatever this test process inherited (a background job ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_batch_writes_last_ckpt_logs_the_resume_command_and_exits_130(cli, tmp_path,
                                                                                          python_ctrl_c) -> None:
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    code, out, err = cli(train.main, *TINY, "trainer.max_epochs=3", *_ctrl_c(at=2), f"hydra.run.dir={run}")
    assert code == 130, err
    assert ckpt.is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    state = load(ckpt)
    assert state["vaells"]["batch_counter"] == 3  # batch 2 was finished, then training stopped
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1  # within the second epoch
    log = (run / "train.log").read_text()
    assert "interrupted by SIGINT (Ctrl-C) at batch 3" in log
    assert f"Resume with: python train.py ckpt_path={ckpt}" in log
    assert "stopped by SIGINT (Ctrl-C) after 3 batches; exit status 130" in log
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Python's own again
    # The checkpoint resumes: the run trains its remaining batches (2 an epoch, 3 epochs).
    code, _, err = cli(train.main, f"ckpt_path={ckpt}")
    assert code == 0, err
    assert load(ckpt)["vaells"]["batch_counter"] == 6


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(cli, tmp_path, python_ctrl_c) -> None:
    run = tmp_path / "run"
    code, out, err = cli(train.main, *TINY, "trainer.max_epochs=3", *_ctrl_c(at=1, times=2), f"hydra.run.dir={run}")
    assert code == 130, err
    assert not (run / "checkpoints" / "last.ckpt").exists()  # stopped within the first epoch, before any checkpoint
    log = (run / "train.log").read_text()
    assert "stopped at once, without a checkpoint of this moment" in log and "exit status 130" in log
    assert "interrupted by SIGINT" not in log
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.e2e
def test_ctrl_c_of_a_real_process_checkpoints_and_exits_130(tmp_path) -> None:
    """A SIGINT from outside, as a terminal sends it, while train.py trains its second epoch."""
    run = tmp_path / "run"
    log_file = run / "train.log"
    args = ["data.num_train=240", "trainer.max_epochs=3", "evaluate=false", "~callbacks.latent_figures",
            "callbacks.progress_bar.log_every_n_batches=1", f"hydra.run.dir={run}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    # SIGINT as a terminal's process has it, even where this test runs as a background job (which ignores it)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while "epoch 2/3 batch 2/8" not in (log_file.read_text() if log_file.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == 130, err[-3000:]
    assert "Resume with: python train.py ckpt_path=" in out
    text = log_file.read_text()
    assert "interrupted by SIGINT (Ctrl-C) at batch" in text and f"python train.py ckpt_path={ckpt}" in text
    assert 8 < load(ckpt)["vaells"]["batch_counter"] < 24  # after the first epoch, before the last
    proc = subprocess.run([sys.executable, "train.py", f"ckpt_path={ckpt}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load(ckpt)["vaells"]["batch_counter"] == 24


# -- resuming a finished run ------------------------------------------------------------------------------------
def test_a_finished_run_is_not_trained_again(cli, tmp_path) -> None:
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = cli(train.main, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert code == 0, err
    (run / "metrics.json").write_text('{"elbo": 1.0}\n')  # as its end-of-run scoring left it
    before = (ckpt.stat().st_mtime_ns, (run / "train.log").read_text())

    for again in ([], ["trainer.max_epochs=1"]):  # the same limit, given or not: nothing left to train
        code, out, err = cli(train.main, f"ckpt_path={ckpt}", *again)
        assert code == 1
        assert "this run already finished" in err and "trainer.max_epochs=1" in err, err
        assert f"python train.py ckpt_path={ckpt} trainer.max_epochs=2" in err  # the fix, ready to paste
        assert (run / "metrics.json").read_text() == '{"elbo": 1.0}\n'
        assert (ckpt.stat().st_mtime_ns, (run / "train.log").read_text()) == before
        assert not list((run / ".hydra").glob("resumed_*")) and not (run / "FAILED").exists()


def _extend(cli, run: Path) -> Path:
    """Train ``run`` for one epoch, then resume it for a second; returns its last.ckpt."""
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = cli(train.main, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert code == 0, err
    code, _, err = cli(train.main, f"ckpt_path={ckpt}", "trainer.max_epochs=2")
    assert code == 0, err
    assert load(ckpt)["vaells"]["batch_counter"] == 4
    return ckpt


def test_an_extended_run_records_its_new_limit(cli, tmp_path) -> None:
    """Its summary in train.log and its record (what metrics.json reports) hold the raised limit."""
    ckpt = _extend(cli, tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "(overrides: data.num_train=60 evaluate=false trainer.max_epochs=2)" in log
    assert load(ckpt)["run_config"]["run"]["overrides"]["trainer.max_epochs"] == "2"


def test_a_resume_is_not_warned_that_its_own_checkpoint_folder_is_not_empty(cli, tmp_path, recwarn) -> None:
    _extend(cli, tmp_path / "run")
    assert not [str(w.message) for w in recwarn if NOT_EMPTY in str(w.message)]


def test_a_finished_run_stopped_during_its_scoring_is_scored_on_resume(cli, tmp_path) -> None:
    """The one resume of a finished run with work left: its final scoring, which a stop cut short."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = cli(train.main, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert code == 0, err
    code, _, err = cli(train.main, f"ckpt_path={ckpt}", "evaluate=true", "ll_points=5", "ll_samples=2")
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["overrides"]["evaluate"] == "true"
    assert load(ckpt)["vaells"]["batch_counter"] == 2  # nothing trained


def test_a_foreign_non_empty_checkpoint_folder_still_warns(cli, tmp_path, recwarn) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "other.ckpt").write_text("")
    code, _, err = cli(train.main, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert code == 0, err
    assert [str(w.message) for w in recwarn if NOT_EMPTY in str(w.message)]


# -- best checkpoints -------------------------------------------------------------------------------------------
def test_the_best_checkpoint_pastes_into_a_hydra_override_and_counts_epochs_from_1(tmp_path) -> None:
    cfg = compose_train([], tmp_path)
    callback = instantiate(cfg.callbacks.model_checkpoint)
    path = callback.format_checkpoint_name({"epoch": torch.tensor(59), "step": torch.tensor(2040)})
    assert Path(path).name == "best-epoch060.ckpt"  # "validation after epoch 60" in the log
    assert OverridesParser.create().parse_override(f"ckpt_path={path}").value() == path
    assert callback.state_key.startswith("ModelCheckpoint{")  # older runs resume their best so far


def test_best_is_found_under_the_new_name_and_the_old(tmp_path) -> None:
    new, old = tmp_path / "new" / "checkpoints", tmp_path / "old" / "checkpoints"
    for folder, name in ((new, "best-epoch060.ckpt"), (old, "best-epoch=059.ckpt")):
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_text("")
        (folder / name).write_text("")
        assert resolve_checkpoint(folder.parent, "best") == folder / name
    (new / "best-epoch1000.ckpt").write_text("")  # epochs past 999: by number, not by spelling
    assert resolve_checkpoint(new.parent, "best") == new / "best-epoch1000.ckpt"


def test_the_best_checkpoint_is_named_after_the_epoch_the_log_names(cli, tmp_path) -> None:
    run = tmp_path / "run"
    code, out, err = cli(train.main, *TINY, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
                         f"hydra.run.dir={run}")
    assert code == 0, err
    logged = {int(n) for n in re.findall(r"validation after epoch (\d+)", (run / "train.log").read_text())}
    best = [p.name for p in (run / "checkpoints").glob("best*.ckpt")]
    assert len(best) == 1 and "=" not in best[0], best
    assert logged == {1, 2} and int(re.fullmatch(r"best-epoch(\d+)\.ckpt", best[0]).group(1)) in logged
    assert resolve_checkpoint(run, "best").name == best[0]
