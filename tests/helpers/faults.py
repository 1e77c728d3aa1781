"""Callbacks for the resume tests, run in train.py's own process (PYTHONPATH=tests/helpers)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """Send this process the signal named by $KILL_SIGNAL (default SIGKILL) in the middle of the training batch
    $KILL_AT_BATCH (the module's batch counter): at its first optimizer step, after the forward pass and the
    coefficient solvers. Without $KILL_AT_BATCH it does nothing: the resumed run, whose config (from the
    checkpoint) still holds this callback, trains on."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        at = os.environ.get("KILL_AT_BATCH")
        if at is not None and pl_module.batch_counter == int(at):
            os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))
