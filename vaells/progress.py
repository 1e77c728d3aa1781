"""A progress bar that suits where the output goes."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar


def progress_bar(refresh_rate: int = 1) -> RichProgressBar | TQDMProgressBar:
    """Rich on a terminal; a plain TQDM bar when stdout is a file or a CI log, where Rich's redraws
    would flood it (one line per refresh), updating every 20 batches there."""
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return TQDMProgressBar(refresh_rate=max(refresh_rate, 20))
