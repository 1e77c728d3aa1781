"""Progress that suits where the output goes: Rich bars on a terminal, plain lines in a file or a CI log; and
the silencing of the known-harmless messages of the libraries underneath."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from vaells.evaluation.progress import interactive

log = logging.getLogger("vaells.training.progress")


def progress_bar(refresh_rate: int = 1, log_every_n_batches: int = 50) -> ProgressBar:
    """Rich on a terminal; ``LineProgressBar`` when stdout is a file or a CI log, where a bar's redraws would
    flood it (carriage returns, or one line per refresh)."""
    if interactive():
        return RichProgressBar(refresh_rate=refresh_rate)
    return LineProgressBar(every_n_batches=log_every_n_batches)


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def format_scalars(metrics: dict[str, Any], prefix: str) -> str:
    """The scalar metrics whose names start with ``prefix`` (e.g. Lightning's ``callback_metrics``), on one line;
    per-operator entries (``.../psi_norm_0``, ...) are left to TensorBoard."""
    scalars = {k: float(v) for k, v in metrics.items()
               if k.startswith(prefix) and not k.rsplit("_", 1)[-1].isdigit() and getattr(v, "numel", lambda: 1)() == 1}
    return _format_metrics(scalars) or "none logged"


class LineProgressBar(ProgressBar):
    """Training progress as plain log lines (``vaells.training.progress``, so also in the run's ``train.log``): one
    every ``every_n_batches`` training batches and at the end of each epoch, with the progress-bar metrics, and one per
    validation with its ``val/`` metrics. No carriage returns, nothing redrawn."""

    def __init__(self, every_n_batches: int = 50) -> None:
        super().__init__()
        if every_n_batches < 1:
            raise ValueError(f"callbacks.progress_bar.log_every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        total = self.total_train_batches
        done = batch_idx + 1
        if not self._enabled or (done % self.every_n_batches and done != total):
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        of = f"/{total}" if isinstance(total, int) else ""
        log.info("epoch %d%s batch %d%s  %s  (%.0f s)", trainer.current_epoch + 1, epochs, done, of,
                 _format_metrics(self.get_metrics(trainer, pl_module)), time.perf_counter() - self._start)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        log.info("validation after epoch %d: %s", trainer.current_epoch + 1,
                 format_scalars(trainer.callback_metrics, "val/"))


# -- evaluation -----------------------------------------------------------------------------------------


# -- known-harmless messages ------------------------------------------------------------------------------
class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_messages() -> None:
    """Silence, at their source, the library messages that say nothing about this run:

    - Lightning's advertisement for its cloud logger, logged by every Trainer that has no ``LitLogger``
      (``pytorch_lightning/trainer/connectors/logger_connector/logger_connector.py``, through ``rank_zero_info``).
    - torch 2.14's deprecation of ``isinstance(x, LeafSpec)``, which Lightning's own pytree helper
      (``pytorch_lightning/utilities/_pytree.py``) still uses at every batch; Lightning, not this project, has to
      change, and the behaviour is unchanged until torch removes ``LeafSpec``.
    """
    # rank_zero_info logs through whichever of these two module loggers was imported last.
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("💡 Tip: For seamless cloud logging"))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
