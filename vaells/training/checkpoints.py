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

A checkpoint written within an epoch resumes exactly (``vaells.data.sampling``, ``vaells.models.module.ModelBase``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: The exit status of a run stopped by SIGTERM, as a shell reports a process killed by it.
SIGTERM_EXIT_STATUS = 143


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
    """On SIGTERM write ``<dirpath>/<filename>.ckpt`` and log the interruption and the resume command."""

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        super().__init__()
        self.path = _last_path(dirpath, filename)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        batch = getattr(pl_module, "batch_counter", trainer.global_step)
        log.warning("interrupted by SIGTERM at batch %d (epoch %d): wrote %s. Resume with: %s", batch,
                    trainer.current_epoch + 1, self.path, resume_command(self.path))
