"""Synthetic manifolds: shapes, seeds, the shared projection, and anchors on the manifold."""

from __future__ import annotations

import math

import pytest
import torch

from vaells.data.datamodules import ConcentricCirclesDataModule, SwissRollDataModule
from vaells.data.synthetic import (
    CIRCLE_RADII,
    SyntheticSet,
    concentric_circle_anchors,
    load_projection,
    make_concentric_circles,
    make_swiss_roll,
    random_projection,
    swiss_roll_anchors,
)


def _preimage(data: SyntheticSet) -> torch.Tensor:
    """Invert the known lift x = scale * coords @ W^T by least squares: (N, 2) float64."""
    w = data.projection.double()  # (D, 2)
    rhs = data.x.double().T / data.scale  # (D, N)
    return torch.linalg.lstsq(w, rhs).solution.T  # (N, 2)


def test_swiss_roll_shapes_and_dtypes() -> None:
    data = make_swiss_roll(50, seed=0)
    assert data.x.shape == (50, 20) and data.x.dtype == torch.float32
    assert data.coords.shape == (50, 2) and data.coords.dtype == torch.float32
    assert data.t.shape == (50,) and data.labels.shape == (50,)
    assert data.labels.dtype == torch.long and (data.labels == 0).all()
    assert data.projection.shape == (20, 2) and data.scale == pytest.approx(0.1)
    # t = (3π/2)(1 + 2u) with u in [0, 1), and the 2-D point is (t cos t, t sin t)
    assert data.t.min() >= 1.5 * math.pi and data.t.max() <= 4.5 * math.pi
    expected = torch.stack([data.t * torch.cos(data.t), data.t * torch.sin(data.t)], dim=-1)
    torch.testing.assert_close(data.coords, expected)


def test_swiss_roll_is_the_scaled_noisy_lift() -> None:
    clean = make_swiss_roll(200, seed=3, noise_std=0.0)
    noisy = make_swiss_roll(200, seed=3, noise_std=0.01)
    torch.testing.assert_close(clean.x, 0.1 * clean.coords @ clean.projection.T, atol=1e-5, rtol=1e-5)
    # Same seed, same points; the noise (std 0.01 before the /10) is the only difference.
    torch.testing.assert_close(clean.coords, noisy.coords)
    residual = (noisy.x - clean.x) / 0.1
    assert residual.std().item() == pytest.approx(0.01, rel=0.1)


def test_circles_shapes_labels_and_radii() -> None:
    data = make_concentric_circles(40, seed=1, noise_std=0.0)
    assert data.x.shape == (80, 20) and data.x.dtype == torch.float32
    assert data.labels.tolist() == [0] * 40 + [1] * 40
    radius = data.coords.norm(dim=-1)
    torch.testing.assert_close(radius, torch.tensor(CIRCLE_RADII)[data.labels])
    assert data.t.min() >= 0 and data.t.max() < 2 * math.pi
    torch.testing.assert_close(_preimage(data).norm(dim=-1).float(), radius, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [make_swiss_roll, make_concentric_circles])
def test_same_seed_same_draw_other_seed_other_draw(make) -> None:
    a, b, c = make(30, seed=5), make(30, seed=5), make(30, seed=6)
    torch.testing.assert_close(a.x, b.x)
    assert not torch.allclose(a.x, c.x)


def test_projection_has_its_own_seed() -> None:
    a, b = make_swiss_roll(10, seed=0), make_swiss_roll(10, seed=1)
    torch.testing.assert_close(a.projection, b.projection)
    other = make_swiss_roll(10, seed=0, projection_seed=7)
    assert not torch.allclose(a.projection, other.projection)
    w = random_projection(20)
    assert w.shape == (20, 2) and w.abs().max() <= 1.0


def test_swiss_roll_anchors_on_the_roll_at_linspace_positions() -> None:
    anchors = swiss_roll_anchors(4)
    assert anchors.x.shape == (4, 20) and (anchors.labels == 0).all()
    u = torch.linspace(0.1, 0.9, 4, dtype=torch.float64)
    torch.testing.assert_close(anchors.t.double(), 1.5 * math.pi * (1 + 2 * u), atol=1e-5, rtol=1e-6)
    # Noise-free: the 2-D preimage through the known map is exactly the point of the roll, radius t.
    pre = _preimage(anchors)
    torch.testing.assert_close(pre.norm(dim=-1), anchors.t.double(), atol=1e-4, rtol=1e-5)


def test_circle_anchors_class_major_evenly_spaced_on_their_circles() -> None:
    anchors = concentric_circle_anchors(3)
    assert anchors.x.shape == (6, 20)
    assert anchors.labels.tolist() == [0, 0, 0, 1, 1, 1]
    degrees = torch.rad2deg(anchors.t)
    torch.testing.assert_close(degrees, torch.tensor([0.0, 120.0, 240.0] * 2))
    radii = _preimage(anchors).norm(dim=-1)
    torch.testing.assert_close(radii, torch.tensor([0.5] * 3 + [1.0] * 3, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("anchors", [swiss_roll_anchors, concentric_circle_anchors])
def test_anchor_count_must_be_positive(anchors) -> None:
    with pytest.raises(ValueError, match="data.anchors_per_class must be at least 1"):
        anchors(0)


def test_swiss_roll_datamodule_splits_share_the_map_but_not_the_draw() -> None:
    dm = SwissRollDataModule(num_train=60, num_val=20, num_test=25, anchors_per_class=4)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (60, 20, 25)
    for split in (dm.val_data, dm.test_data):
        torch.testing.assert_close(split.projection, dm.train_data.projection)
    assert not torch.allclose(dm.train_data.t[:20], dm.val_data.t)
    assert dm.anchors.shape == (4, 20) and dm.anchor_labels.tolist() == [0] * 4
    assert dm.num_classes == 1 and dm.input_shape == (20,)
    # Anchors lie on the same roll as the data: same map, so the preimage has radius t.
    pre = torch.linalg.lstsq(dm.train_data.projection.double(), dm.anchors.double().T / 0.1).solution.T
    torch.testing.assert_close(pre.norm(dim=-1), swiss_roll_anchors(4).t.double(), atol=1e-4, rtol=1e-5)


def test_circles_datamodule_batches_and_anchors() -> None:
    dm = ConcentricCirclesDataModule(num_train_per_class=20, num_val_per_class=5, num_test_per_class=5,
                                     anchors_per_class=3, batch_size=8)
    assert dm.num_classes == 2 and dm.input_shape == (20,)
    assert dm.anchors.shape == (6, 20) and dm.anchor_labels.tolist() == [0, 0, 0, 1, 1, 1]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "label", "coords", "index"}
    assert batch["x"].shape == (8, 20) and batch["x"].dtype == torch.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.long
    assert batch["coords"].shape == (8, 2)
    torch.testing.assert_close(batch["coords"].norm(dim=-1), torch.tensor(CIRCLE_RADII)[batch["label"]])


def test_datamodule_is_deterministic_and_only_train_shuffles() -> None:
    kwargs = dict(num_train=40, num_val=10, num_test=10, batch_size=10, seed=3)
    dm1, dm2 = SwissRollDataModule(**kwargs), SwissRollDataModule(**kwargs)
    torch.testing.assert_close(dm1.train_data.x, dm2.train_data.x)
    train1 = torch.cat([b["x"] for b in dm1.train_dataloader()])
    train2 = torch.cat([b["x"] for b in dm2.train_dataloader()])
    torch.testing.assert_close(train1, train2)  # seeded shuffle
    assert not torch.equal(train1, dm1.train_data.x)  # ... that does shuffle
    val = torch.cat([b["x"] for b in dm1.val_dataloader()])
    torch.testing.assert_close(val, dm1.val_data.x)
    test = torch.cat([b["x"] for b in dm1.test_dataloader()])
    torch.testing.assert_close(test, dm1.test_data.x)
    other = SwissRollDataModule(**{**kwargs, "seed": 4})
    assert not torch.allclose(other.train_data.x, dm1.train_data.x)


@pytest.mark.parametrize("suffix", [".mat", ".npy", ".npz", ".pt"])
def test_a_map_file_replaces_the_random_map(tmp_path, suffix):
    import numpy as np
    import scipy.io

    mapping = np.random.default_rng(5).uniform(-1, 1, (20, 2))
    path = tmp_path / f"map{suffix}"
    if suffix == ".mat":
        scipy.io.savemat(path, {"mapMat": mapping})
    elif suffix == ".npy":
        np.save(path, mapping)
    elif suffix == ".npz":
        np.savez(path, m=mapping)
    else:
        torch.save(torch.tensor(mapping), path)
    dm = SwissRollDataModule(num_train=50, num_val=10, num_test=10, projection_file=str(path))
    data = dm.train_data
    # x = 0.1 (coords W^T + noise): the noise is 0.01, so the noiseless lift is within a few noise widths.
    lifted = 0.1 * data.coords.double() @ torch.tensor(mapping).T
    assert (data.x.double() - lifted).abs().max() < 0.1 * 0.06
    assert torch.allclose(dm.anchors.double(), 0.1 * swiss_roll_anchors(4).coords.double() @ torch.tensor(mapping).T,
                          atol=1e-5)
    assert dm.manifold_points(100).shape == (100, 20)


def test_a_map_file_of_the_wrong_shape_is_refused_with_the_fix(tmp_path):
    import numpy as np

    path = tmp_path / "map.npy"
    np.save(path, np.zeros((20, 3)))
    with pytest.raises(ValueError, match=r"data.projection_file=.*shape \(20, 3\); the map must be \(D, 2\)"):
        load_projection(path)
    np.save(path, np.zeros((12, 2)))
    with pytest.raises(ValueError, match="set data.ambient_dim=12"):
        load_projection(path, ambient_dim=20)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_projection(tmp_path / "missing.mat")
