"""Progress bars that suit where the output goes: for a Trainer, and for a plain loop."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import rich.progress
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

T = TypeVar("T")


def progress_bar(refresh_rate: int = 1) -> RichProgressBar | TQDMProgressBar:
    """Rich on a terminal; a plain TQDM bar when stdout is a file or a CI log, where Rich's redraws
    would flood it (one line per refresh), updating every 20 batches there."""
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return TQDMProgressBar(refresh_rate=max(refresh_rate, 20))


def track(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    """``iterable`` with a progress bar, for loops outside a Trainer: rich's on a terminal; when stdout is a file
    or a CI log, a plain line at every tenth of the way instead of redraws."""
    if sys.stdout.isatty():
        yield from rich.progress.track(iterable, total=total, description=description, transient=True)
        return
    marks = {max(1, round(total * i / 10)) for i in range(1, 11)}
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i in marks:
            print(f"{description}: {i}/{total} ({time.perf_counter() - start:.0f} s)", flush=True)
