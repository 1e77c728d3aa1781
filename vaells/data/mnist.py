"""Natural MNIST and rotated MNIST as set up in the authors' release (docs/method.md §4).

Splits follow the release: the first 5/6 of the training file is the train split, the last 1/6 the
validation split (50k / 10k on full MNIST; ``round(n / 6)`` images of a smaller file), and the test split
is the test file. The order in the file is kept, so the splits are deterministic; only a file sorted by
label is split along a fixed permutation instead (``split_train_val``).

Rotated MNIST pads each digit to 32x32 and shows it at an angle drawn from U(0, ``max_angle``) degrees.
The release draws angles from a global RNG; here each angle is a pure function of
``(seed, epoch, index)`` (``_DigitAngles``), so a run is reproducible for any ``num_workers``, under
DDP, and after resuming. The epoch reaches the workers through the sampler (``_EpochSampler``), which
Lightning calls ``set_epoch`` on (also through its DDP sampler wrapper). Validation digits get one fixed
seeded angle each, so validation curves compare like with like across epochs; test digits are upright
(angle 0), as the release evaluates them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vaells.data.anchors import select_class_anchors
from vaells.data.base import AnchoredDataModule
from vaells.data.sampling import ResumableLoader, epoch_seed, rank_share, share_length

#: The raw IDX files torchvision's MNIST reads from ``<root>/MNIST/raw``.
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Seconds a download attempt may wait on the network before failing (torchvision tries two mirrors).
DOWNLOAD_TIMEOUT_S = 20.0

#: Zeros added on each side to bring 28x28 digits to the release's 32x32 (``--img_size 32``).
ROTATED_PAD = 2

#: Seed of the fixed permutation that splits a label-sorted training file (see ``split_train_val``).
SPLIT_SEED = 2021

# Streams that keep the train and validation angle draws independent for the same seed.
_TRAIN_STREAM, _VAL_STREAM = 0, 1


def mnist_raw_folder(root: str | Path) -> Path:
    """Where torchvision's MNIST looks for the raw IDX files: ``<root>/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def ensure_mnist(root: str | Path, *, download: bool) -> None:
    """Make sure the four raw MNIST files are in ``<root>/MNIST/raw``, downloading them if allowed.

    A download is attempted only when a file is missing, so an offline machine with the files never
    waits on the network. Raises FileNotFoundError, with how to point ``data.root`` at a copy, otherwise.
    """
    raw = mnist_raw_folder(root)
    if all((raw / name).is_file() for name in MNIST_RAW_FILES):
        return
    reason = "download=False"
    if download:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib waits forever by default
        try:
            torchvision.datasets.MNIST(str(root), train=True, download=True)
            return
        except Exception as err:  # any failure (no network, bad md5) gets the same advice
            reason = f"downloading failed ({type(err).__name__}: {str(err).strip()[:300]})"
        finally:
            socket.setdefaulttimeout(previous)
    missing = [name for name in MNIST_RAW_FILES if not (raw / name).is_file()]
    raise FileNotFoundError(
        f"MNIST not found: looked in {raw} (absolute: {raw.resolve()}) for {', '.join(MNIST_RAW_FILES)}; "
        f"missing: {', '.join(missing)}; {reason}. To fix it, point data.root at a folder holding "
        "MNIST/raw and set data.download=false, or allow the download."
    )


def load_mnist(root: str | Path, *, train: bool) -> tuple[Tensor, Tensor]:
    """Read one MNIST file pair. Returns images (N, 28, 28) uint8 and labels (N,) long."""
    ensure_mnist(root, download=False)
    dataset = torchvision.datasets.MNIST(str(root), train=train, download=False)
    return dataset.data, dataset.targets.long()


def num_val(num_train_file: int) -> int:
    """Size of the validation split: the last sixth of the training file (10k of 60k in the release)."""
    return round(num_train_file / 6)


def split_train_val(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (into the training file) of the train and validation splits, both in file order.

    As in the release, train is the head of the file and validation its last ``num_val`` images. A file
    sorted by label (the offline development copy is: 500 zeros, then 500 ones, ...) would leave the
    train split without 9s and give a validation split of 8s and 9s; such a file is split along a fixed
    permutation instead (``SPLIT_SEED``, the same for every run and every ``seed``). Full MNIST is not
    sorted, so there the split is exactly the release's 50k / 10k.
    """
    n = labels.shape[0]
    order = torch.arange(n)
    if labels.unique().numel() > 1 and bool((labels[1:] >= labels[:-1]).all()):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = n - num_val(n)
    return order[:n_train].sort().values, order[n_train:].sort().values


def rotate(images: Tensor, angles_deg: Tensor) -> Tensor:
    """Rotate each image about its centre by its own angle; the one place rotation happens.

    images (N, C, H, W), angles_deg (N,) in degrees, positive = counter-clockwise (torchvision's
    convention). Bilinear interpolation, zero fill, same size out. torchvision rotates a whole tensor by
    one angle, so images are grouped by angle: one call per distinct angle (N_a calls for a batch of
    anchors, whose angles repeat; multiples of 90° take torchvision's exact fast path).
    """
    if images.ndim != 4 or angles_deg.shape != images.shape[:1]:
        raise ValueError(f"expected images (N, C, H, W) and angles (N,), got {tuple(images.shape)} and "
                         f"{tuple(angles_deg.shape)}")
    out = torch.empty_like(images)
    for angle in torch.unique(angles_deg).tolist():
        same = angles_deg == angle
        out[same] = TF.rotate(images[same], angle, interpolation=InterpolationMode.BILINEAR)
    return out


def evenly_spaced_angles(anchors_per_class: int) -> Tensor:
    """The release's anchor angles 0, 360/N_a, ..., (N_a - 1) 360/N_a degrees. Returns (N_a,) float32."""
    return torch.arange(anchors_per_class, dtype=torch.float32) * (360.0 / anchors_per_class)


class _Digits(Dataset):
    """MNIST digits as dicts {"x": (1, 28, 28) float32 in [0, 1], "label": long, "index": long}.

    Indices may be plain ints or ``(epoch, index)`` pairs from ``_EpochSampler``; the epoch is unused.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels  # (N, 28, 28) uint8, (N,) long

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        index = key[1] if isinstance(key, tuple) else key
        return {"x": self.images[index, None].float() / 255.0, "label": self.labels[index],
                "index": torch.tensor(index)}


class _DigitAngles(_Digits):
    """Padded upright digits with the angle each is to be shown at; ``_collate_rotated`` rotates.

    Yields {"digit": (1, 32, 32) float32, "label": long, "angle": float32 degrees}. With ``stream=None``
    every angle is 0 (test); otherwise the angle is U(0, max_angle) from a generator seeded by
    ``(seed, stream, epoch, index)`` (plain int keys count as epoch 0, which is what validation uses).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, max_angle: float, seed: int,
                 stream: int | None) -> None:
        super().__init__(images, labels)
        self.max_angle, self.seed, self.stream = max_angle, seed, stream

    def angle(self, epoch: int, index: int) -> float:
        if self.stream is None:
            return 0.0
        rng = np.random.default_rng((self.seed, self.stream, epoch, index))
        return float(rng.uniform(0.0, self.max_angle))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        digit = F.pad(self.images[index, None].float() / 255.0, (ROTATED_PAD,) * 4)  # (1, 32, 32)
        angle = torch.tensor(self.angle(epoch, index), dtype=torch.float32)
        return {"digit": digit, "label": self.labels[index], "angle": angle, "index": torch.tensor(index)}


def _collate_rotated(items: list[dict[str, Tensor]], anchor_angles: Tensor) -> dict[str, Tensor]:
    """Stack ``_DigitAngles`` items and rotate the batch at once (a module-level function: picklable).

    Returns x (B, 1, 32, 32) at the drawn angles, anchors (B, N_a, 1, 32, 32) with each digit at the
    N_a evenly spaced ``anchor_angles``, label (B,), angle (B,) degrees and index (B,).
    """
    digits = torch.stack([item["digit"] for item in items])  # (B, 1, H, W)
    angles = torch.stack([item["angle"] for item in items])  # (B,)
    B, N_a = digits.shape[0], anchor_angles.shape[0]
    anchors = rotate(digits.repeat_interleave(N_a, dim=0), anchor_angles.repeat(B))  # (B * N_a, 1, H, W)
    return {
        "x": rotate(digits, angles),
        "label": torch.stack([item["label"] for item in items]),
        "angle": angles,
        "anchors": anchors.view(B, N_a, *digits.shape[1:]),
        "index": torch.stack([item["index"] for item in items]),
    }


class _EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` pairs, shuffled by a generator seeded with ``(seed, epoch)``; this rank's share of
    them under DDP (``vaells.data.sampling.rank_share``).

    Like DistributedSampler, it needs ``set_epoch`` before each epoch; Lightning calls it. Carrying the epoch in
    the key gets it to the dataset in the workers. ``start`` pairs of the next epoch are skipped once, for a run
    resumed within an epoch (``vaells.data.sampling.ResumableLoader``).
    """

    def __init__(self, num_samples: int, *, seed: int, epoch_size: int | None = None) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0
        self.epoch_size = epoch_size or num_samples
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return share_length(self.epoch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # An epoch of epoch_size samples is `passes` shuffled passes over the data, truncated. Pass k of epoch
        # e is keyed (e * passes + k): a digit shown twice in one epoch gets two independent angles.
        passes = -(-self.epoch_size // self.num_samples)
        keys = []
        for k in range(passes):
            key = self.epoch * passes + k
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed(self.seed, key)))
            keys += [(key, index) for index in order.tolist()]
        start, self.start = self.start, 0
        return iter(rank_share(keys[: self.epoch_size])[start:])


class _MNISTDataModule(AnchoredDataModule):
    """Shared loading, splitting, validation and data loaders of the two MNIST variants."""

    num_classes = 10

    def __init__(self, root: str, anchors_per_class: int, batch_size: int, seed: int, num_workers: int,
                 download: bool) -> None:
        super().__init__()
        if anchors_per_class < 1:
            raise ValueError(f"data.anchors_per_class must be at least 1, got {anchors_per_class}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be non-negative, got {num_workers}")
        self.root, self.anchors_per_class, self.batch_size = root, anchors_per_class, batch_size
        self.seed, self.num_workers, self.download = seed, num_workers, download
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.collate_fn = None
        self.epoch_size: int | None = None  # training samples per epoch; None: one pass over the train split

    def prepare_data(self) -> None:
        # Lightning runs this once per node before any setup: the only place that may download.
        ensure_mnist(self.root, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return  # every stage uses the same splits (and the anchors come from train)
        ensure_mnist(self.root, download=self.download)  # also covers use without a Trainer
        images, labels = load_mnist(self.root, train=True)
        train, val = split_train_val(labels)
        self._build((images[train], labels[train]), (images[val], labels[val]),
                    load_mnist(self.root, train=False))

    def _build(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor]) -> None:
        raise NotImplementedError

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        kwargs = dict(batch_size=self.batch_size, num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0, collate_fn=self.collate_fn)
        if not train:
            return DataLoader(dataset, **kwargs)
        # Resumable within an epoch: its position is in every checkpoint (vaells.data.sampling). The loader's own
        # generator seeds the workers, so that starting an epoch leaves training's global random stream alone.
        return ResumableLoader(dataset, sampler=_EpochSampler(len(dataset), seed=self.seed, epoch_size=self.epoch_size),
                               generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)


class MNISTDataModule(_MNISTDataModule):
    """Natural MNIST: 28x28 digits with class-matched anchors (paper eq. 8).

    Batches are {"x": (B, 1, 28, 28) float32 in [0, 1], "label": (B,) long}. After ``setup``,
    ``anchors`` (10 N_a, 1, 28, 28) holds N_a train-split images per class, class-major, drawn with
    ``seed``; the model learns them in pixel space from there.
    """

    input_shape = (1, 28, 28)

    def __init__(self, root: str = "data/", anchors_per_class: int = 8, batch_size: int = 32, seed: int = 0,
                 num_workers: int = 0, download: bool = True) -> None:
        super().__init__(root, anchors_per_class, batch_size, seed, num_workers, download)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)

    def _build(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor]) -> None:
        self.train_set, self.val_set, self.test_set = _Digits(*train), _Digits(*val), _Digits(*test)
        x_train = train[0][:, None].float() / 255.0  # (N, 1, 28, 28)
        self.anchors, self.anchor_labels = select_class_anchors(
            x_train, train[1], self.anchors_per_class, seed=self.seed
        )


class RotatedMNISTDataModule(_MNISTDataModule):
    """Rotated MNIST: digits padded to 32x32 and rotated by U(0, max_angle) degrees on the fly.

    Batches are {"x": (B, 1, 32, 32), "anchors": (B, N_a, 1, 32, 32), "label": (B,) digit class,
    "angle": (B,) degrees}. Each sample's anchors are its own upright digit at N_a evenly spaced angles
    (0, 360/N_a, ...), fixed rather than learned, so ``per_sample_anchors`` is True and ``anchors`` None.
    """

    input_shape = (1, 32, 32)
    per_sample_anchors = True
    rotates_digits = True  # batches hold upright "digit"s; the rotation metrics apply

    def __init__(self, root: str = "data/", anchors_per_class: int = 10, batch_size: int = 32, seed: int = 0,
                 max_angle: float = 350.0, num_workers: int = 0, download: bool = True,
                 epoch_size: int | None = None) -> None:
        super().__init__(root, anchors_per_class, batch_size, seed, num_workers, download)
        if not 0.0 <= max_angle <= 360.0:
            raise ValueError(f"data.max_angle must lie in [0, 360] degrees, got {max_angle}")
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"data.epoch_size must be a positive number of samples or null, got {epoch_size}")
        self.epoch_size = epoch_size
        self.max_angle = max_angle
        self.anchor_angles = evenly_spaced_angles(anchors_per_class)  # (N_a,)
        self.collate_fn = partial(_collate_rotated, anchor_angles=self.anchor_angles)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)

    def _build(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor]) -> None:
        angles = {"max_angle": self.max_angle, "seed": self.seed}
        self.train_set = _DigitAngles(*train, stream=_TRAIN_STREAM, **angles)
        self.val_set = _DigitAngles(*val, stream=_VAL_STREAM, **angles)
        self.test_set = _DigitAngles(*test, stream=None, **angles)


#: Side of the upsampled small digit inside its 28x28 frame: MNIST digits fill about the central 20x20.
SMALL_DIGIT_SIZE = 20


def load_small_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), upsampled bilinearly to 20x20 and
    centred in a 28x28 frame like an MNIST digit. Returns images (N, 28, 28) uint8 and labels (N,) long."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    big = F.interpolate(small, size=(SMALL_DIGIT_SIZE,) * 2, mode="bilinear", align_corners=False)
    pad = (28 - SMALL_DIGIT_SIZE) // 2
    images = F.pad(big, (pad,) * 4)[:, 0].clamp(0, 1)
    return (images * 255).round().to(torch.uint8), torch.as_tensor(bunch.target, dtype=torch.long)


class RotatedSmallDigitsDataModule(RotatedMNISTDataModule):
    """Rotated MNIST's pipeline on a second image set that ships offline: scikit-learn's 8x8 digits.

    Each digit is upsampled into a 28x28 frame (``load_small_digits``), then padded to 32x32, rotated and
    given its per-sample anchors exactly as ``RotatedMNISTDataModule`` does. Splits: the last sixth of the
    1,797 images (in a fixed permutation) is the test split, and the rest is split into train and validation
    as a training file is (``split_train_val``). ``epoch_size`` draws that many rotated samples per epoch
    (several passes, each digit at fresh angles), so an experiment's epoch-counted schedule can match the
    number of batches it was tuned with (``conf/data/rotated_small_digits.yaml``).
    """

    def __init__(self, anchors_per_class: int = 10, batch_size: int = 32, seed: int = 0, max_angle: float = 350.0,
                 num_workers: int = 0, epoch_size: int | None = None, root: str | None = None,
                 download: bool = False) -> None:
        # root and download are accepted (and unused) so that experiments written for MNIST compose with it.
        super().__init__("", anchors_per_class, batch_size, seed, max_angle, num_workers, False, epoch_size)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)

    def prepare_data(self) -> None:
        pass  # bundled with scikit-learn

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_small_digits()
        order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = num_val(labels.shape[0])
        test, rest = order[:n_test].sort().values, order[n_test:].sort().values
        train, val = split_train_val(labels[rest])
        self._build((images[rest][train], labels[rest][train]), (images[rest][val], labels[rest][val]),
                    (images[test], labels[test]))
