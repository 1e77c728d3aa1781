"""Class-matched anchors drawn from training data (the paper's eq. 8 prior, natural MNIST in the release).

The release's ``select_mnist_anchors`` draws ``num_anchor`` random training images per class; this is
the same draw for any labelled tensor data, returned in the class-major layout that
``vaells.data.base`` promises.
"""

from __future__ import annotations

import torch
from torch import Tensor


def select_class_anchors(
    x: Tensor, labels: Tensor, anchors_per_class: int, *, seed: int
) -> tuple[Tensor, Tensor]:
    """Draw ``anchors_per_class`` (N_a) distinct samples of every class 0..K-1, without replacement.

    Args:
        x:                 (N, *sample_shape) training samples.
        labels:            (N,) integer class indices in 0..K-1, with K = labels.max() + 1.
        anchors_per_class: N_a, the paper's number of anchors per class.
        seed:              seeds the draw, so the same data and seed always give the same anchors.

    Returns:
        anchors (K * N_a, *sample_shape), a copy of the chosen samples, class-major, and
        anchor_labels (K * N_a,) long: [0]*N_a + [1]*N_a + ...

    Raises:
        ValueError: if N_a < 1, ``labels`` does not match ``x``, or some class has fewer than N_a samples.
    """
    if anchors_per_class < 1:
        raise ValueError(
            f"data.anchors_per_class must be at least 1, got {anchors_per_class}; "
            "every class needs an anchor for the prior p(z)"
        )
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"labels must have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("cannot draw anchors from an empty training set")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or int(labels.min()) < 0:
        raise ValueError("labels must be non-negative integers 0..K-1")

    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels.long(), minlength=num_classes)  # (K,)
    short = (counts < anchors_per_class).nonzero().flatten()
    if short.numel() > 0:
        k = int(short[0])
        raise ValueError(
            f"class {k} has only {int(counts[k])} training samples, fewer than "
            f"data.anchors_per_class={anchors_per_class}; lower data.anchors_per_class to at most "
            f"{int(counts.min())} (the smallest class) or add samples of class {k}"
        )

    gen = torch.Generator().manual_seed(seed)
    chosen = []
    # A loop over classes (K is small), not over samples: each class draws N_a of its members at once.
    for k in range(num_classes):
        members = (labels == k).nonzero().flatten()  # (n_k,)
        pick = torch.randperm(members.numel(), generator=gen)[:anchors_per_class]  # (N_a,)
        chosen.append(members[pick])
    index = torch.cat(chosen)  # (K * N_a,), class-major
    anchor_labels = torch.arange(num_classes).repeat_interleave(anchors_per_class)  # (K * N_a,)
    return x[index].clone(), anchor_labels
