"""The figure of one interpolation: the transport path over the linear path (``python paths.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vaells.figures import plotting
from vaells.figures.images import _frame_grid


def path_pair_figure(paths: Sequence[Tensor], labels: Sequence[str], *, background: Tensor | None = None,
                     target: Tensor | None = None, title: str = "") -> Figure:
    """Decoded paths (each (T, *input_shape), t from 0 to 1), one row each, labelled ``labels``.

    Images (T, C, H, W): a grid, one path a row, the columns t. Vectors (T, D): one panel a path, one over the
    other, drawn over ``background`` (N, D) (e.g. the test inputs) on its first two principal components, with
    the start (cyan circle) and ``target`` (D,) (red x; default: each path's end).
    """
    if len(paths) != len(labels) or not paths:
        raise ValueError(f"need one label per path, got {len(paths)} paths and {len(labels)} labels")
    stacked = torch.stack([p.detach().float().cpu() for p in paths])  # (R, T, *input_shape)
    if stacked.dim() == 5:
        columns = [f"t={t:.2g}" for t in np.linspace(0.0, 1.0, stacked.shape[1])]
        return _frame_grid(stacked, list(labels), columns, title, None)
    if stacked.dim() != 3:
        raise ValueError(f"paths must have shape (T, C, H, W) or (T, D), got {tuple(paths[0].shape)}")
    reference = background if background is not None else stacked.flatten(0, 1)
    targets = None if target is None else target.reshape(1, -1).expand(len(paths), -1)
    titles = [f"{title}: {label}" if title else label for label in labels]
    return plotting.transport_paths(reference, stacked, targets=targets, titles=titles, ncols=1)
