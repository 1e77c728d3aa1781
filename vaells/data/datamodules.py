"""In-memory DataModules: the synthetic manifolds and a user's own tensors from a ``.pt``/``.npz`` file.

All three generate or load their data in ``__init__``, not in ``setup``: the data are small and the draw
is deterministic, and a model needs ``anchors`` and ``input_shape`` before ``Trainer.fit`` calls
``setup``. Batches follow ``vaells.data.base``: dicts with ``"x"``, ``"label"`` and, for synthetic data,
``"coords"``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vaells.data.anchors import select_class_anchors
from vaells.data.base import AnchoredDataModule
from vaells.data.sampling import EpochSampler, ResumableLoader
from vaells.data.synthetic import (
    DEFAULT_PROJECTION_SEED,
    SyntheticSet,
    concentric_circle_anchors,
    concentric_circles_curve,
    load_projection,
    make_concentric_circles,
    make_swiss_roll,
    swiss_roll_anchors,
    swiss_roll_curve,
)

#: Points of the dense noiseless manifold that ``manifold_points`` returns by default: ~1e-3 apart in data
#: space for both sets, below the data's noise (~4e-3 for the swiss roll, ~4e-2 for the circles).
MANIFOLD_POINTS = 20000


class DictDataset(Dataset):
    """Equal-length tensors indexed together; item i is ``{key: tensor[i]}`` plus its ``index`` i, so batches are
    dicts (the index keys a training sample's warm starts, ``vaells.models.cache``)."""

    def __init__(self, **tensors: Tensor) -> None:
        lengths = {key: t.shape[0] for key, t in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all tensors need the same first dimension, got {lengths}")
        self.tensors = tensors
        self._len = next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: t[index] for key, t in self.tensors.items()} | {"index": torch.tensor(index)}


def split_seeds(seed: int, num_splits: int = 3) -> list[int]:
    """Independent seeds for train/val/test draws, derived from one user seed.

    ``seed``, ``seed + 1``, ... would make split 1 of seed s the same draw as split 0 of seed s + 1;
    numpy's SeedSequence hashes (seed, split) apart.
    """
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(num_splits)]


class _InMemoryDataModule(AnchoredDataModule):
    """Serves three ``DictDataset`` splits that subclasses build in ``__init__``."""

    train_set: DictDataset
    val_set: DictDataset
    test_set: DictDataset

    def __init__(self, *, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def _loader(self, dataset: DictDataset, *, shuffle: bool) -> DataLoader:
        kwargs = dict(batch_size=self.batch_size, num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0)
        if not shuffle:
            return DataLoader(dataset, **kwargs)
        # Epoch e is shuffled by (seed, e) alone, and the loader's position is in every checkpoint, so a run
        # resumed mid-epoch sees the rest of that epoch's order (vaells.data.sampling). The loader's own
        # generator only seeds workers: iterating it leaves the global torch stream that training draws from alone.
        return ResumableLoader(dataset, sampler=EpochSampler(len(dataset), self.seed),
                               generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def _synthetic_dataset(data: SyntheticSet) -> DictDataset:
    return DictDataset(x=data.x, label=data.labels, coords=data.coords)


class SwissRollDataModule(_InMemoryDataModule):
    """The 2-D swiss roll in R^20 (docs/method.md §4): one class, N_a anchors spread along t.

    The ``SyntheticSet`` of each split stays available as ``train_data``/``val_data``/``test_data`` (with
    the roll parameter ``t``) for latent-structure metrics and figures.
    """

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 1000,
        anchors_per_class: int = 4,
        batch_size: int = 30,
        seed: int = 0,
        noise_std: float = 0.01,
        ambient_dim: int = 20,
        projection_seed: int = DEFAULT_PROJECTION_SEED,
        projection_file: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)
        self.projection = None if projection_file is None else load_projection(projection_file, ambient_dim)
        _check_anchor_count(anchors_per_class, num_train)
        seeds = split_seeds(seed)
        kwargs = dict(noise_std=noise_std, ambient_dim=ambient_dim, projection_seed=projection_seed,
                      projection=self.projection)
        self.train_data = make_swiss_roll(num_train, seed=seeds[0], **kwargs)
        self.val_data = make_swiss_roll(num_val, seed=seeds[1], **kwargs)
        self.test_data = make_swiss_roll(num_test, seed=seeds[2], **kwargs)
        self.train_set, self.val_set, self.test_set = (
            _synthetic_dataset(d) for d in (self.train_data, self.val_data, self.test_data)
        )
        anchor_data = swiss_roll_anchors(anchors_per_class, ambient_dim=ambient_dim,
                                         projection_seed=projection_seed, projection=self.projection)
        self.anchors = anchor_data.x  # (N_a, D)
        self.anchor_labels = anchor_data.labels  # (N_a,)
        self.anchors_per_class = anchors_per_class
        self.num_classes = 1
        self.input_shape = (ambient_dim,)

    def manifold_points(self, num_points: int = MANIFOLD_POINTS) -> Tensor:
        """A dense sample of the noiseless roll in data space (N, D): the true manifold of the data."""
        return swiss_roll_curve(num_points, ambient_dim=self.hparams.ambient_dim,
                                projection_seed=self.hparams.projection_seed, projection=self.projection)


def _check_anchor_count(anchors_per_class: int, train_per_class: int) -> None:
    """The synthetic anchors are generated on the manifold, but more of them than training samples in a
    class is a mistake (the prior would outnumber the data it regularises): stop before training."""
    if not 1 <= anchors_per_class <= train_per_class:
        fix = "raise it to at least 1" if anchors_per_class < 1 else f"lower it to at most {train_per_class}"
        raise ValueError(
            f"data.anchors_per_class={anchors_per_class} must be between 1 and the number of training samples "
            f"per class ({train_per_class}); {fix}"
        )


class ConcentricCirclesDataModule(_InMemoryDataModule):
    """Two concentric circles (radii 0.5 and 1) in R^20 (docs/method.md §4), N_a evenly spaced anchors each."""

    def __init__(
        self,
        num_train_per_class: int = 200,
        num_val_per_class: int = 100,
        num_test_per_class: int = 200,
        anchors_per_class: int = 3,
        batch_size: int = 30,
        seed: int = 0,
        noise_std: float = 0.01,
        ambient_dim: int = 20,
        projection_seed: int = DEFAULT_PROJECTION_SEED,
        projection_file: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)
        self.projection = None if projection_file is None else load_projection(projection_file, ambient_dim)
        _check_anchor_count(anchors_per_class, num_train_per_class)
        seeds = split_seeds(seed)
        kwargs = dict(noise_std=noise_std, ambient_dim=ambient_dim, projection_seed=projection_seed,
                      projection=self.projection)
        self.train_data = make_concentric_circles(num_train_per_class, seed=seeds[0], **kwargs)
        self.val_data = make_concentric_circles(num_val_per_class, seed=seeds[1], **kwargs)
        self.test_data = make_concentric_circles(num_test_per_class, seed=seeds[2], **kwargs)
        self.train_set, self.val_set, self.test_set = (
            _synthetic_dataset(d) for d in (self.train_data, self.val_data, self.test_data)
        )
        anchor_data = concentric_circle_anchors(anchors_per_class, ambient_dim=ambient_dim,
                                                projection_seed=projection_seed, projection=self.projection)
        self.anchors = anchor_data.x  # (K * N_a, D)
        self.anchor_labels = anchor_data.labels  # (K * N_a,)
        self.anchors_per_class = anchors_per_class
        self.num_classes = 2
        self.input_shape = (ambient_dim,)

    def manifold_points(self, num_points: int = MANIFOLD_POINTS) -> Tensor:
        """A dense sample of the noiseless circles in data space (N, D), half on each circle."""
        return concentric_circles_curve(num_points // 2, ambient_dim=self.hparams.ambient_dim,
                                        projection_seed=self.hparams.projection_seed, projection=self.projection)


# ----------------------------------------------------------------------------------------------------
# A user's own tensors


_FILE_KEYS = ("x", "labels", "anchors", "anchor_labels", "coords", "manifold")
_HINT = ("the file must hold a dict with 'x' (N, ...) and optionally 'labels' (N,), 'anchors', 'anchor_labels', "
         "'coords' (N, k), 'manifold' (P, ...)")


def load_tensor_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``torch.save``-d dict (``.pt``/``.pth``) or a ``np.savez`` archive (``.npz``) into tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} does not exist; set data.path to a .pt or .npz file ({_HINT})"
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        # allow_pickle=False: an .npz of plain arrays never needs pickle, and refusing it avoids running
        # code from an untrusted file.
        with np.load(path, allow_pickle=False) as archive:
            raw = {key: archive[key] for key in archive.files}
    elif suffix in (".pt", ".pth"):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... depending on the cause
            raise ValueError(
                f"could not load {path} safely with torch.load(weights_only=True); save plain tensors, "
                f"e.g. torch.save({{'x': torch.as_tensor(x)}}, path) ({_HINT}). torch says: {err}"
            ) from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path} holds a {type(raw).__name__}, not a dict; {_HINT}")
    else:
        raise ValueError(f"unknown suffix {path.suffix!r} of data.path={path}; use .pt, .pth or .npz")
    unknown = sorted(set(raw) - set(_FILE_KEYS))
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}; known keys are {list(_FILE_KEYS)}",
                      stacklevel=2)
    arrays = {}
    for key in set(raw) & set(_FILE_KEYS):
        try:
            arrays[key] = torch.as_tensor(raw[key])
        except (TypeError, ValueError, RuntimeError) as err:
            kind = type(raw[key]).__name__
            raise ValueError(f"'{key}' in {path} is a {kind}, not an array of numbers: {err}") from err
    return arrays


def _check_finite(name: str, values: Tensor) -> None:
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)  # (N,)
    if bad.any():
        raise ValueError(
            f"'{name}' has non-finite values (NaN or inf) in {int(bad.sum())} samples, the first at index "
            f"{int(bad.nonzero()[0])}; drop or impute them before saving the file"
        )


def _check_class_indices(name: str, labels: Tensor, length: int, length_name: str) -> None:
    if labels.shape != (length,):
        raise ValueError(
            f"'{name}' must have shape ({length},), one per {length_name}, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"'{name}' must be integers 0..K-1, got dtype {labels.dtype}")
    if length > 0 and int(labels.min()) < 0:
        raise ValueError(f"'{name}' must be non-negative class indices 0..K-1, found {int(labels.min())}")


class TensorFileDataModule(_InMemoryDataModule):
    """A user's tensors: ``x`` (N, ...), optional ``labels`` (N,) in 0..K-1, ``anchors``, ``anchor_labels``, and the
    ground truth ``coords`` (N, k) and ``manifold`` (P, ...) (docs/running.md, "Your own data").

    Without ``labels`` the data form one class. Without ``anchors``, ``anchors_per_class`` samples of each
    class are drawn from the training split (seeded); with them, the file's anchors are used, sorted
    class-major, and ``anchors_per_class`` is taken from the file. ``x`` is cast to float32 but not
    rescaled. The split is a seeded random permutation: ``test_fraction`` of N for test, ``val_fraction``
    for validation, the rest for training. Every problem with the file is reported in ``__init__``.

    ``coords``, the samples' true coordinates, are split with ``x`` and go into the batches as ``"coords"``, which
    gives trustworthiness and continuity. ``manifold``, a dense sample of the noiseless manifold in data space,
    gives the data module a ``manifold_points`` (only then), which gives the path and prior metrics.
    """

    #: The fewest test samples with ``coords`` for which trustworthiness and continuity at k = 10 neighbours
    #: (vaells.evaluation.summary) are defined: they need k < N / 2.
    MIN_COORD_TEST = 21

    def __init__(
        self,
        path: str,
        anchors_per_class: int = 4,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)
        if anchors_per_class < 1:
            raise ValueError(f"data.anchors_per_class must be at least 1, got {anchors_per_class}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each lie in "
                "[0, 1) and sum to less than 1, leaving samples for training"
            )
        arrays = load_tensor_file(path)
        if "x" not in arrays:
            raise ValueError(f"{path} has no 'x' (keys: {sorted(arrays)}); {_HINT}")
        x = arrays["x"]
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"'x' must have shape (N, ...) with N >= 1 and a sample shape, got "
                             f"{tuple(x.shape)}; for scalar samples use shape (N, 1)")
        x = x.float()
        _check_finite("x", x)
        num = x.shape[0]

        labels = arrays.get("labels")
        if labels is None:
            labels = torch.zeros(num, dtype=torch.long)
        _check_class_indices("labels", labels, num, "sample in 'x'")
        labels = labels.long()
        present = torch.unique(labels)
        num_classes = int(present.max()) + 1
        if present.numel() != num_classes:
            missing = sorted(set(range(num_classes)) - set(present.tolist()))
            raise ValueError(
                f"'labels' must number the classes 0..K-1 with none missing, but {missing} never occur; "
                "remap them, e.g. labels = np.unique(labels, return_inverse=True)[1]"
            )

        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num, generator=gen)  # (N,)
        num_test, num_val = round(test_fraction * num), round(val_fraction * num)
        if num - num_test - num_val < 1:
            raise ValueError(f"{num} samples leave none for training with val_fraction={val_fraction}, "
                             f"test_fraction={test_fraction}; lower the fractions")
        test_idx, val_idx, train_idx = perm.split([num_test, num_val, num - num_test - num_val])
        truth = {}
        if "coords" in arrays:
            truth["coords"] = self._file_coords(arrays["coords"], num, num_test)
        self.train_set, self.val_set, self.test_set = (
            DictDataset(x=x[idx], label=labels[idx], **{key: t[idx] for key, t in truth.items()})
            for idx in (train_idx, val_idx, test_idx)
        )
        if "manifold" in arrays:
            # Set on the instance, and only with a manifold: the evaluation computes the path and prior metrics for
            # every data module that has manifold_points (vaells.evaluation.paths, vaells.evaluation.comparison).
            self.manifold_points = functools.partial(TensorFileDataModule._manifold_rows,
                                                     self._file_manifold(arrays["manifold"], tuple(x.shape[1:])))

        if ("anchors" in arrays) != ("anchor_labels" in arrays):
            have, lack = ("anchors", "anchor_labels") if "anchors" in arrays else ("anchor_labels", "anchors")
            raise ValueError(f"{path} has '{have}' but no '{lack}'; save both (anchor_labels are class "
                             "indices, zeros for single-class data) or neither to draw anchors from the data")
        if "anchors" in arrays:
            anchors, anchor_labels, anchors_per_class = self._file_anchors(
                arrays["anchors"], arrays["anchor_labels"], tuple(x.shape[1:]), num_classes
            )
        else:
            anchors, anchor_labels = select_class_anchors(
                x[train_idx], labels[train_idx], anchors_per_class, seed=seed
            )
        self.anchors = anchors  # (K * N_a, *input_shape)
        self.anchor_labels = anchor_labels  # (K * N_a,)
        self.anchors_per_class = anchors_per_class
        self.num_classes = num_classes
        self.input_shape = tuple(x.shape[1:])

    @staticmethod
    def _file_coords(coords: Tensor, num: int, num_test: int) -> Tensor:
        """Check the file's coordinates (N, k) and return them as float32."""
        if coords.ndim != 2 or coords.shape[0] != num or coords.shape[1] == 0:
            raise ValueError(f"'coords' must have shape ({num}, k), k >= 1 true coordinates for each sample in 'x', "
                             f"got {tuple(coords.shape)}; for one coordinate use shape ({num}, 1)")
        coords = TensorFileDataModule._real_floats("coords", coords)
        least = TensorFileDataModule.MIN_COORD_TEST
        if num_test < least:
            raise ValueError(f"'coords' are scored on the test split, which needs at least {least} samples for "
                             f"trustworthiness and continuity but holds {num_test}; raise data.test_fraction or add "
                             "samples")
        return coords

    @staticmethod
    def _manifold_rows(manifold: Tensor, num_points: int | None = None) -> Tensor:
        """The file's dense manifold sample (P, ...): all of it, or ``num_points`` of its rows spread evenly over it.
        A static method in a ``functools.partial``, so that the data module still pickles."""
        if num_points is None or num_points >= manifold.shape[0]:
            return manifold
        return manifold[torch.linspace(0, manifold.shape[0] - 1, num_points).round().long()]

    @staticmethod
    def _file_manifold(manifold: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
        """Check the file's dense sample of the manifold (P, ...) and return it as float32."""
        shape = ", ".join(map(str, sample_shape))
        if tuple(manifold.shape[1:]) != sample_shape or manifold.ndim < 2 or manifold.shape[0] == 0:
            raise ValueError(f"'manifold' must have shape (P, {shape}): P >= 1 noiseless points in the space of 'x', "
                             f"got {tuple(manifold.shape)}")
        return TensorFileDataModule._real_floats("manifold", manifold)

    @staticmethod
    def _real_floats(name: str, values: Tensor) -> Tensor:
        """``values`` as float32, refused if complex (a cast would drop the imaginary part) or not finite."""
        if values.dtype.is_complex:
            raise ValueError(f"'{name}' must be real numbers, got dtype {values.dtype}")
        values = values.float()
        _check_finite(name, values)
        return values

    @staticmethod
    def _file_anchors(
        anchors: Tensor, anchor_labels: Tensor, sample_shape: tuple[int, ...], num_classes: int
    ) -> tuple[Tensor, Tensor, int]:
        """Check the file's anchors and return them class-major, with N_a."""
        if tuple(anchors.shape[1:]) != sample_shape or anchors.shape[0] == 0:
            raise ValueError(f"'anchors' must have shape (K * N_a, {', '.join(map(str, sample_shape))}) to "
                             f"match the samples in 'x', got {tuple(anchors.shape)}")
        anchors = anchors.float()
        _check_finite("anchors", anchors)
        _check_class_indices("anchor_labels", anchor_labels, anchors.shape[0], "anchor")
        counts = torch.bincount(anchor_labels.long(), minlength=num_classes)  # (>= K,)
        if counts.numel() > num_classes:
            raise ValueError(f"'anchor_labels' refer to class {counts.numel() - 1}, but 'labels' has only "
                             f"{num_classes} classes (0..{num_classes - 1})")
        if (counts != counts[0]).any() or counts[0] == 0:
            raise ValueError(f"every class needs the same number of anchors, got counts {counts.tolist()} "
                             "for classes 0..K-1")
        # Stable sort so that the file's order within a class is kept.
        order = torch.sort(anchor_labels.long(), stable=True).indices
        return anchors[order], anchor_labels.long()[order], int(counts[0])
