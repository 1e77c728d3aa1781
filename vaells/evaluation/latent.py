"""Latent-structure metrics: thin, validated wrappers around scikit-learn.

- ``knn_accuracy``: how well the classes separate in latent space (the class separation of Fig. 4).
- ``trustworthiness`` and ``continuity`` (Venna & Kaski 2001): whether latent neighbourhoods are true
  neighbourhoods of the ground-truth manifold coordinates, and the reverse (Fig. 2 and 4 in numbers).

Inputs may be numpy arrays or torch tensors; samples are rows, and any trailing axes are flattened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn import manifold
from sklearn.neighbors import KNeighborsClassifier


def _as_2d(name: str, a: Any) -> np.ndarray:
    """(N, ...) array or tensor -> (N, F) float64 numpy, with a ValueError naming ``name`` when unusable."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, ...) array, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _as_labels(name: str, a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {a.shape}")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arguments must have the same number of samples, got {lengths}")
    return next(iter(lengths.values()))


def knn_accuracy(train_z: Any, train_labels: Any, test_z: Any, test_labels: Any, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier fitted on (train_z, train_labels), scored on the test set.

    train_z (N, d), train_labels (N,), test_z (N', d), test_labels (N',). 1.0 when classes form separate
    clusters in latent space; chance level (1 / K) when the latent space ignores the class.
    """
    train_z, test_z = _as_2d("train_z", train_z), _as_2d("test_z", test_z)
    train_labels, test_labels = _as_labels("train_labels", train_labels), _as_labels("test_labels", test_labels)
    n_train = _same_length(train_z=train_z, train_labels=train_labels)
    _same_length(test_z=test_z, test_labels=test_labels)
    if train_z.shape[1] != test_z.shape[1]:
        raise ValueError(
            f"train_z and test_z must have the same dimension, got {train_z.shape[1]} and {test_z.shape[1]}"
        )
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be in [1, len(train_z)={n_train}], got {k}")
    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_z, train_labels)
    return float(classifier.score(test_z, test_labels))


def _check_neighbours(k: int, n: int) -> None:
    # sklearn's trustworthiness normalises by 2 / (n k (2n - 3k - 1)), which needs k < n / 2.
    if not 1 <= k < n / 2:
        raise ValueError(f"k must satisfy 1 <= k < n_samples / 2 = {n / 2:g} (got k={k}, n_samples={n})")


def trustworthiness(x_true: Any, z: Any, k: int = 10) -> float:
    """Trustworthiness (Venna & Kaski 2001) of the embedding z (N, d) of points x_true (N, D), in [0, 1].

    T(k) = 1 - 2 / (N k (2N - 3k - 1)) sum_i sum_{j in U_k(i)} (r(i, j) - k), where U_k(i) holds the
    points among the k nearest neighbours of i in z but not in x_true, and r(i, j) is j's rank around i in
    x_true. It penalises *false* neighbours: points that the embedding brings together although they are
    far apart on the true manifold (a collapsed or folded latent space). 1.0 for any isometry.
    """
    x_true, z = _as_2d("x_true", x_true), _as_2d("z", z)
    _check_neighbours(k, _same_length(x_true=x_true, z=z))
    return float(manifold.trustworthiness(x_true, z, n_neighbors=k))


def continuity(x_true: Any, z: Any, k: int = 10) -> float:
    """Continuity (Venna & Kaski 2001) of the embedding z (N, d) of points x_true (N, D), in [0, 1].

    The mirror image of ``trustworthiness``: it penalises *missing* neighbours, points that are close on
    the true manifold but torn apart in the embedding, ranked by their distance in z. Computed as
    trustworthiness with the two spaces swapped.
    """
    x_true, z = _as_2d("x_true", x_true), _as_2d("z", z)
    _check_neighbours(k, _same_length(x_true=x_true, z=z))
    return float(manifold.trustworthiness(z, x_true, n_neighbors=k))
