"""VAELLS: Variational Autoencoder with Learned Latent Structure.

``vaells.load("RUN/checkpoints/last.ckpt")`` returns a trained run (``vaells.api.Run``): encode, decode,
interpolate, extrapolate, sample_prior. It is imported on first use, so ``import vaells`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LatentPath", "Run", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vaells import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaells' has no attribute {name!r}")
