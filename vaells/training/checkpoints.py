"""Checkpoints that lose no work: written atomically, on a timer within an epoch, and when the job is told to stop.

- ``AtomicCheckpointIO`` (``conf/trainer``'s ``plugins``): every checkpoint is written to a temporary file in the
  checkpoint's own folder and renamed over the old one, so a kill during the write leaves the previous file intact.
  Lightning's own writer goes through an fsspec transaction whose temporary file is in the system's temp folder;
  where that is another file system (a cluster's local /tmp, a shared output disk) the final move is a copy, which
  a kill can cut short.
- ``IntervalCheckpoint``: ``last.ckpt`` every ``minutes`` of training, at a batch boundary, also within an epoch.
  ``ModelCheckpoint(train_time_interval=...)`` is Lightning's way, but Lightning 2.6 checks the interval only under
  automatic optimization (``ModelCheckpoint.on_train_batch_end``), and VAELLS optimizes manually.
- ``InterruptCheckpoint``: on SIGTERM (a scheduler's preemption or time limit, SLURM's requeue), Lightning finishes
  the batch and raises ``SIGTERMException``; this writes ``last.ckpt`` there and records it in the run's log.
  ``train.py`` then exits with status 143 (128 + SIGTERM), so the scheduler sees that the job did not finish.
  A first Ctrl-C (SIGINT) during training takes the same way, and exits with status 130 (128 + SIGINT); a second
  Ctrl-C stops at once, without that checkpoint.
- ``BestCheckpoint``: Lightning's ``ModelCheckpoint`` whose file names count epochs from 1, as the run's log does.
- ``expect_own_checkpoints``: a resumed run is not warned that its own checkpoint folder is not empty.

A checkpoint written within an epoch resumes exactly (``vaells.data.sampling``, ``vaells.models.module.ModelBase``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: The exit status of a run stopped by SIGTERM, as a shell reports a process killed by it.
SIGTERM_EXIT_STATUS = 143
#: The exit status of a run stopped by Ctrl-C (SIGINT), as a shell reports a process killed by it.
SIGINT_EXIT_STATUS = 130
_EXIT_STATUS = {"SIGTERM": SIGTERM_EXIT_STATUS, "SIGINT": SIGINT_EXIT_STATUS}
_SIGNAL_NAMES = {"SIGTERM": "SIGTERM", "SIGINT": "SIGINT (Ctrl-C)"}


def resume_command(checkpoint: str | Path) -> str:
    """The command that resumes the run of ``checkpoint``: its config comes from the checkpoint."""
    return f"python train.py ckpt_path={checkpoint}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes replace the old file in one rename (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic within one file system
        finally:
            tmp.unlink(missing_ok=True)


def _last_path(dirpath: str | Path, filename: str) -> Path:
    return Path(dirpath) / f"{filename}.ckpt"


class IntervalCheckpoint(Callback):
    """Write ``<dirpath>/<filename>.ckpt`` after the training batch that ends each interval of ``minutes``
    (0: after every batch). Rank zero's clock decides, for all ranks."""

    def __init__(self, dirpath: str | Path, minutes: float = 10.0, filename: str = "last") -> None:
        super().__init__()
        if minutes < 0:
            raise ValueError(f"callbacks.interval_checkpoint.minutes must be >= 0, got {minutes}")
        self.path = _last_path(dirpath, filename)
        self.seconds = 60.0 * minutes
        self._last = time.monotonic()
        self.num_saved = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        due = trainer.strategy.broadcast(time.monotonic() - self._last >= self.seconds)
        if not due:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last = time.monotonic()
        self.num_saved += 1


class InterruptCheckpoint(Callback):
    """On SIGTERM or a first Ctrl-C, write ``<dirpath>/<filename>.ckpt`` after the current batch and log the
    interruption and the resume command; a second Ctrl-C stops at once (see the module docstring).

    Ctrl-C is turned into Lightning's own SIGTERM stop (``Trainer.received_sigterm``): the loops then raise
    ``SIGTERMException`` at the end of the batch (under DDP, at the same batch on every rank), where the state is
    whole and resumes exactly. Lightning's own Ctrl-C handling raises ``KeyboardInterrupt`` wherever training is,
    possibly within an optimizer step, and then ignores any further Ctrl-C.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        super().__init__()
        self.path = _last_path(dirpath, filename)
        self.signal: str | None = None  # what stopped training: "SIGTERM" or "SIGINT"
        self.saved = False  # whether self.path was written at the interruption
        self._handler: Any = None
        self._previous: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here, after Trainer._run registered Lightning's handlers: its teardown then puts back the SIGINT
        # handler of before training, on every way out of fit.
        self.signal, self.saved = None, False
        if trainer.fast_dev_run or threading.current_thread() is not threading.main_thread():
            return
        # Only where Ctrl-C is Python's KeyboardInterrupt: a process started with SIGINT ignored (nohup, a background
        # job) or with a handler of its own keeps it.
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        self._handler = functools.partial(self._on_sigint, trainer)
        self._previous = signal.signal(signal.SIGINT, self._handler)

    def _on_sigint(self, trainer: pl.Trainer, signum: int, frame: Any) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        if self.signal is None and hasattr(connector, "received_sigterm"):
            self.signal = "SIGINT"
            connector.received_sigterm = True
            log.warning("Ctrl-C: stopping after this batch to write %s; press Ctrl-C again to stop at once, without it",
                        self.path)
            return
        self._restore_sigint()
        raise KeyboardInterrupt

    def _restore_sigint(self) -> None:
        if self._handler is not None and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._previous)
        self._handler = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigint()  # after training, nothing is left to stop at a batch's end

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()  # a Ctrl-C while the checkpoint is written stops at once; the old file stays whole
        if isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"
            return
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run:
            return
        self.signal = self.signal or "SIGTERM"
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved = True
        batch = getattr(pl_module, "batch_counter", trainer.global_step)
        log.warning("interrupted by %s at batch %d (epoch %d): wrote %s. Resume with: %s", _SIGNAL_NAMES[self.signal],
                    batch, trainer.current_epoch + 1, self.path, resume_command(self.path))


def stopped_by_signal(trainer: pl.Trainer, err: BaseException, batches: int) -> tuple[str, int] | None:
    """What ``train.py`` reports when ``trainer.fit`` ended with ``err`` after ``batches`` batches, and its exit
    status, as a shell reports a process killed by the signal; None where no signal stopped it.

    Lightning ends a SIGTERM stop with ``SIGTERMException``, a ``SystemExit`` with status 0 (a scheduler would take
    the job as done), and its own Ctrl-C handling with ``SystemExit(1)``."""
    stop = next((cb for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint) and cb.signal), None)
    name = stop.signal if stop is not None else None
    if name is None and isinstance(err, SIGTERMException):
        name = "SIGTERM"
    elif name is None and isinstance(err, KeyboardInterrupt):
        name = "SIGINT"
    if name is None:
        return None
    message = f"stopped by {_SIGNAL_NAMES[name]} after {batches} batches"
    if stop is not None and not stop.saved:
        message += "; stopped at once, without a checkpoint of this moment"
        if stop.path.is_file():
            written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stop.path.stat().st_mtime))
            message += f". Resume from the last one ({written}) with: {resume_command(stop.path)}"
    return message, _EXIT_STATUS[name]


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``{epoch}`` in ``filename`` counts from 1, as the run's log numbers epochs
    ("validation after epoch 60" writes ``best-epoch060.ckpt``); ``conf/callbacks/default.yaml`` names it without
    Lightning's ``epoch=``, whose ``=`` a Hydra override such as ``ckpt_path=...`` cannot take unquoted."""

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, as runs written before this class have it: a checkpoint's "callbacks" keep
        # one layout, and a best checkpoint's state loads into either class.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)


def expect_own_checkpoints(callbacks: Iterable[Callback]) -> None:
    """Silence Lightning's "Checkpoint directory ... exists and is not empty" for the folders of these checkpoint
    callbacks: a resumed run writes into its own folder, which holds its checkpoints. Any other folder still warns."""
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            warnings.filterwarnings("ignore", message=re.escape(f"Checkpoint directory {cb.dirpath} exists and is not "
                                                                "empty"))
