"""The contract every VAELLS DataModule follows.

Batches are dicts of tensors so that models, callbacks and metrics can pick what they need:

- ``"x"``       (B, *input_shape) float32: the data.
- ``"label"``   (B,) long: the class that selects the sample's anchors (0 for single-class data).
- ``"coords"``  (B, k) float32, optional: ground-truth manifold coordinates (synthetic data only).
- ``"anchors"`` (B, N_a, *input_shape) float32, optional: per-sample anchors (rotated MNIST), used
  instead of the shared class-matched anchors.

Class-matched anchors (the paper's eq. 8) are *model parameters* initialised from the DataModule: it
exposes them as ``anchors`` (K * N_a, *input_shape), stored class-major (the N_a anchors of class k
form one contiguous block), with ``anchor_labels`` (K * N_a,).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class AnchoredDataModule(pl.LightningDataModule):
    """Base class: a DataModule that also supplies class-matched anchors.

    Subclasses fill ``anchors``, ``anchor_labels``, ``num_classes`` and ``input_shape`` in ``setup``
    (or earlier) and return dict batches as described in the module docstring.
    """

    anchors: torch.Tensor | None = None
    anchor_labels: torch.Tensor | None = None
    num_classes: int = 1
    input_shape: tuple[int, ...] = ()
    #: True when each batch carries its own ``"anchors"`` (rotated MNIST) instead of class-matched ones.
    per_sample_anchors: bool = False

    def score_on(self, split: str) -> None:
        """Serve ``split`` ("test" or "val") wherever the test split is read (``test_dataloader`` and ``test_set``),
        so that every metric of ``vaells.evaluation`` can score the validation split: settings are chosen there,
        and the test split is scored once."""
        if split not in ("test", "val"):
            raise ValueError(f"split={split!r} is not a split to score; use split=test (the default) or split=val")
        self.setup("fit")
        self.setup("test")
        if split == "val":
            self.test_set = self.val_set
