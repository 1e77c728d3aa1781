"""Progress of long work that suits where the output goes: a line when each step of an evaluation starts and
ends, and a transient bar on a terminal (or a line every few seconds in a log file) through long loops.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger(__name__)


T = TypeVar("T")


def interactive() -> bool:
    """Whether stdout is a terminal (a bar redraws in place there; in a file every redraw stays)."""
    return sys.stdout.isatty()


@contextmanager
def stage(description: str) -> Iterator[None]:
    """A line when a step of an evaluation starts and one with its time when it ends, so a long evaluation is
    never silent."""
    log.info("%s ...", description)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", description, time.perf_counter() - start)


def track(items: Iterable[T], description: str, total: int | None = None, every_s: float = 10.0) -> Iterator[T]:
    """``items``, with progress: a transient bar on a terminal, otherwise a line every ``every_s`` seconds and
    one at the end."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if interactive():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=description, total=total, leave=False, dynamic_ncols=True)
        return
    start = last = time.perf_counter()
    count = 0
    of = f"/{total}" if total is not None else ""
    log.info("%s ...", description)
    for item in items:
        yield item
        count += 1
        now = time.perf_counter()
        if now - last >= every_s:
            log.info("%s: %d%s (%.0f s)", description, count, of, now - start)
            last = now
    log.info("%s: %d%s done in %.1f s", description, count, of, time.perf_counter() - start)
