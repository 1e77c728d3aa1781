"""Helpers every family of metrics shares: seeded evaluation mode, chunked encoding and decoding, correlations
and seeded picks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn
from torch.utils.data import Dataset

#: Images per decoder call (bounds the activations of 64-channel conv layers to ~100 MB).
CHUNK = 512


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@contextmanager
def evaluating(model: nn.Module, seed: int) -> Iterator[None]:
    """Eval mode, no gradients and seeded global RNGs in a fork (training's stream is left alone)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def decode_chunked(model: nn.Module, z: Tensor) -> Tensor:
    """model.decode over (N, d) in chunks, returned float32 on the CPU.  -> (N, *image_shape)."""
    return torch.cat([model.decode(part).float().cpu() for part in z.split(CHUNK)])


def encode_chunked(model: nn.Module, x: Tensor) -> Tensor:
    """model.encode over (N, *image_shape) in chunks, on the model's device.  -> (N, d)."""
    device = _device(model)
    return torch.cat([model.encode(part.to(device)) for part in x.split(CHUNK)])


def _standardise(a: Tensor) -> Tensor:
    """Flatten the last 3 axes (C, H, W) and scale each image to zero mean and unit norm (float64)."""
    a = a.flatten(-3).double()
    a = a - a.mean(-1, keepdim=True)
    return a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation over pixels of matching images.  a, b (..., C, H, W) -> (...,).

    A constant image has correlation 0 with everything.
    """
    return (_standardise(a) * _standardise(b)).sum(-1)


def pearson_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Correlation of every image of a with every image of b.  a (..., A, C, H, W), b (..., F, C, H, W)
    -> (..., A, F), as one batched matmul."""
    return _standardise(a) @ _standardise(b).transpose(-1, -2)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks); 0 when either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def dataset_tensors(dataset: Dataset, key: str = "x") -> tuple[Tensor, Tensor]:
    """Stack a dict dataset's images (``key``) and labels.  -> (N, C, H, W) float32, (N,) long."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it[key] for it in items]).float(), torch.stack([it["label"] for it in items]).long()


def seeded_pick(n_total: int, num: int, seed: int) -> Tensor:
    """``num`` distinct indices of ``n_total``, a fixed seeded draw."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[: min(num, n_total)]
