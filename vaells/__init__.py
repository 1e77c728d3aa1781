"""VAELLS: Variational Autoencoder with Learned Latent Structure.

``run = vaells.load("RUN")`` returns a trained run (``vaells.api.Run``: encode, decode, latent_path, interpolate,
extrapolate, sample_prior, sample_around, figures), given a run folder, a folder of runs or a checkpoint file.
The API (torch, Lightning) is imported on first use, so ``import vaells`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from vaells.api import LatentPath, Run

__version__ = "0.1.0"
__all__ = ["LatentPath", "Run", "load"]

#: What ``vaells.api`` provides on first access (``__getattr__``); ``load`` is a function of its own so that
#: ``help(vaells)`` shows it.
_LAZY = ("LatentPath", "Run")


def load(ckpt_path: str | Path, *, checkpoint: str = "last", data_overrides: dict[str, Any] | None = None) -> Run:
    """The trained run that ``ckpt_path`` names (``vaells.api.Run``), on the CPU, in eval mode.

    ``ckpt_path`` is any path that ``evaluate.py ckpt_path=`` takes: a run folder such as
    ``outputs/train/<experiment>/<model>/<date_time>`` (its ``checkpoints/last.ckpt``, or with
    ``checkpoint="best"`` its best one), a folder of runs such as ``outputs/train/<experiment>/<model>`` (its newest
    run), or a ``.ckpt`` file written by this project's ``train.py``. The model is rebuilt from the run's config
    stored in the checkpoint; no data need be on disk. ``data_overrides`` change the stored data settings for when
    the data are read, e.g. ``{"root": "/path/to/folder/with/MNIST/raw", "download": False}`` on another machine.

    Raises FileNotFoundError for a path that names no checkpoint (the message says what the folder holds) and
    ValueError for a checkpoint this project did not write.
    """
    from vaells import api

    return api.load(ckpt_path, checkpoint=checkpoint, data_overrides=data_overrides)


def __getattr__(name: str) -> Any:
    """``Run`` and ``LatentPath``, imported from ``vaells.api`` on first use."""
    if name in _LAZY:
        from vaells import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaells' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
