"""Latent-structure metrics: each must reach its best value on a perfect embedding and fail on a bad one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaells.evaluation.latent import continuity, knn_accuracy, trustworthiness


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _blobs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, n)
    return rng.normal(size=(n, 2)) + 10.0 * labels[:, None], labels


def test_knn_accuracy_separable_vs_random_labels(rng: np.random.Generator) -> None:
    train_z, train_y = _blobs(rng, 100)
    test_z, test_y = _blobs(rng, 60)
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=5) == 1.0
    shuffled = rng.integers(0, 2, 100)  # labels unrelated to position
    assert knn_accuracy(train_z, shuffled, test_z, test_y, k=5) < 0.75


def test_knn_accuracy_accepts_tensors(rng: np.random.Generator) -> None:
    z, y = _blobs(rng, 40)
    assert knn_accuracy(torch.from_numpy(z), torch.from_numpy(y), z, y, k=3) == 1.0


def test_trustworthiness_and_continuity_identity_vs_permutation(rng: np.random.Generator) -> None:
    x = rng.normal(size=(150, 3))
    assert trustworthiness(x, x, k=10) == pytest.approx(1.0)
    assert continuity(x, x, k=10) == pytest.approx(1.0)
    scrambled = x[rng.permutation(150)]  # the same cloud, but each point embedded at a random other point
    assert trustworthiness(x, scrambled, k=10) < 0.7
    assert continuity(x, scrambled, k=10) < 0.7


def test_collapse_hurts_trustworthiness_not_continuity(rng: np.random.Generator) -> None:
    """Two parallel sheets projected onto each other: false neighbours (low T), none missing (high C).
    This pins the argument order of ``continuity`` (trustworthiness with the spaces swapped)."""
    grid = rng.uniform(size=(100, 2))
    upper = grid + 0.01 * rng.normal(size=grid.shape)
    x = np.concatenate([np.c_[grid, np.zeros(100)], np.c_[upper, np.full(100, 5.0)]])
    z = x[:, :2]
    t, c = trustworthiness(x, z, k=10), continuity(x, z, k=10)
    assert t < 0.8 < 0.95 < c
    assert continuity(z, x, k=10) == pytest.approx(t)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: trustworthiness(x, x[:-1]), "same number of samples"),
        (lambda x: continuity(x, x, k=30), "k must satisfy"),
        (lambda x: trustworthiness(np.empty((0, 2)), x), "x_true"),
        (lambda x: continuity(x, np.full_like(x, np.nan)), "z contains NaN"),
        (lambda x: knn_accuracy(x, np.zeros(len(x) - 1), x, np.zeros(len(x))), "train_labels"),
        (lambda x: knn_accuracy(x, np.zeros(len(x)), x[:, :1], np.zeros(len(x))), "same dimension"),
        (lambda x: knn_accuracy(x, np.zeros(len(x)), x, np.zeros(len(x)), k=0), "k must be in"),
        (lambda x: knn_accuracy(x, np.zeros((len(x), 2)), x, np.zeros(len(x))), "train_labels must be a 1-D"),
    ],
)
def test_invalid_inputs_name_the_argument(call, message: str, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match=message):
        call(rng.normal(size=(50, 2)))
