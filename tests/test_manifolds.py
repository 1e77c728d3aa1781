"""The manifold suite (vaells.data.manifolds; docs/manifolds.md) and the ground truth of a user's tensor file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from vaells.data.datamodules import TensorFileDataModule
from vaells.data.manifolds import (
    CIRCLE_CENTRES,
    EMBEDDINGS,
    FEATURE_STD,
    HELIX_PITCH,
    MANIFOLDS,
    TORUS_RADII,
    ManifoldSuiteDataModule,
    anchor_parameters,
    make_embedding,
    manifold_grid,
)
from vaells.data.synthetic import CIRCLE_RADII, random_projection

NAMES = list(MANIFOLDS)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _affine_residual(points: torch.Tensor, x: torch.Tensor) -> float:
    """The share of x's variance that the best affine map of ``points`` leaves unexplained."""
    design = torch.cat([points.double(), torch.ones(len(points), 1, dtype=F64)], dim=1)
    fit = design @ torch.linalg.lstsq(design, x.double()).solution
    return float((x - fit).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# -- the manifolds in their own space ----------------------------------------------------------------------------
def test_the_suite_has_its_eight_manifolds() -> None:
    assert set(NAMES) >= {"helix", "torus", "sphere", "s_curve", "off_centre_circles", "trefoil", "swiss_roll_3d",
                          "linked_rings"}
    assert {n: MANIFOLDS[n].num_classes for n in ("helix", "off_centre_circles", "linked_rings")} == dict.fromkeys(
        ("helix", "off_centre_circles", "linked_rings"), 2)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_class_major_labels_follow_the_spec(name: str) -> None:
    spec = MANIFOLDS[name]
    sample = spec.sampler(101, _gen(0))
    assert sample.points.shape == (101, spec.manifold_dim) and sample.points.dtype == F64
    assert sample.coords.shape == (101, spec.intrinsic_dim)
    assert sample.labels.dtype == torch.long
    counts = torch.bincount(sample.labels, minlength=spec.num_classes)
    assert counts.numel() == spec.num_classes and int(counts.max() - counts.min()) <= 1
    assert (sample.labels.diff() >= 0).all()  # class-major
    assert torch.isfinite(sample.points).all()


@pytest.mark.parametrize("name", NAMES)
def test_the_generator_fixes_the_draw(name: str) -> None:
    sampler = MANIFOLDS[name].sampler
    a, b, c = sampler(50, _gen(3)), sampler(50, _gen(3)), sampler(50, _gen(4))
    assert torch.equal(a.points, b.points) and torch.equal(a.coords, b.coords)
    assert not torch.allclose(a.points, c.points)


def test_helix_coords_reproduce_its_points() -> None:
    sample = MANIFOLDS["helix"].sampler(200, _gen(0))
    theta, strand = sample.coords[:, 0], sample.labels
    expected = torch.stack([torch.cos(theta + math.pi * strand), torch.sin(theta + math.pi * strand),
                            HELIX_PITCH * theta / (2 * math.pi)], dim=-1)
    torch.testing.assert_close(sample.points, expected)
    assert theta.min() >= 0 and theta.max() <= 4 * math.pi
    # The two strands are half a turn apart: at the same theta, opposite points of the unit circle.
    torch.testing.assert_close(sample.points[:, :2].norm(dim=-1), torch.ones(200, dtype=F64))


def test_torus_and_sphere_points_lie_on_them() -> None:
    big, small = TORUS_RADII
    p = MANIFOLDS["torus"].sampler(300, _gen(0)).points
    tube = (p[:, :2].norm(dim=-1) - big).pow(2) + p[:, 2].pow(2)
    torch.testing.assert_close(tube, torch.full((300,), small**2, dtype=F64))
    sphere = MANIFOLDS["sphere"].sampler(2000, _gen(0))
    torch.testing.assert_close(sphere.points.norm(dim=-1), torch.ones(2000, dtype=F64))
    # Uniform by area: z = cos(phi) is uniform on [-1, 1], so its mean is ~0 and its variance ~1/3.
    z = sphere.points[:, 2]
    assert abs(float(z.mean())) < 0.05 and float(z.var()) == pytest.approx(1 / 3, rel=0.1)
    torch.testing.assert_close(torch.cos(sphere.coords[:, 1]), z)


def test_s_curve_trefoil_and_swiss_roll_follow_their_coordinates() -> None:
    s = MANIFOLDS["s_curve"].sampler(200, _gen(0))
    t, h = s.coords[:, 0], s.coords[:, 1]
    torch.testing.assert_close(s.points, torch.stack([torch.sin(t), h, torch.sign(t) * (torch.cos(t) - 1)], -1))
    k = MANIFOLDS["trefoil"].sampler(200, _gen(0))
    t = k.coords[:, 0]
    torch.testing.assert_close(k.points, torch.stack([torch.sin(t) + 2 * torch.sin(2 * t),
                                                      torch.cos(t) - 2 * torch.cos(2 * t), -torch.sin(3 * t)], -1))
    r = MANIFOLDS["swiss_roll_3d"].sampler(200, _gen(0))
    t, h = r.coords[:, 0], r.coords[:, 1]
    assert t.min() >= 1.5 * math.pi and t.max() <= 4.5 * math.pi
    torch.testing.assert_close(r.points, torch.stack([t * torch.cos(t), h, t * torch.sin(t)], -1))


def test_off_centre_circles_have_their_radii_around_centres_off_the_origin() -> None:
    sample = MANIFOLDS["off_centre_circles"].sampler(400, _gen(0))
    centres = torch.tensor(CIRCLE_CENTRES, dtype=F64)
    assert (centres.norm(dim=-1) > 0.5).all()
    radius = (sample.points - centres[sample.labels]).norm(dim=-1)
    torch.testing.assert_close(radius, torch.tensor(CIRCLE_RADII, dtype=F64)[sample.labels])
    # Apart: every point of one circle is farther than the other's radius from the other's centre.
    for k in (0, 1):
        other = sample.points[sample.labels == 1 - k]
        assert ((other - centres[k]).norm(dim=-1) > CIRCLE_RADII[k] + 0.1).all()


def test_linked_rings_are_unit_circles_that_link() -> None:
    sample = MANIFOLDS["linked_rings"].sampler(400, _gen(0))
    ring0, ring1 = sample.points[sample.labels == 0], sample.points[sample.labels == 1]
    assert torch.allclose(ring0[:, 2], torch.zeros(1, dtype=F64))
    assert torch.allclose(ring0.norm(dim=-1), torch.ones(1, dtype=F64))
    assert torch.allclose(ring1[:, 1], torch.zeros(1, dtype=F64))
    torch.testing.assert_close((ring1[:, [0, 2]] - torch.tensor([1.0, 0.0], dtype=F64)).norm(dim=-1),
                               torch.ones(len(ring1), dtype=F64))
    # Linked: ring 1 crosses ring 0's plane once inside its disc ((0, 0, 0)) and once outside ((2, 0, 0)).
    angles = torch.tensor([[0.0], [0.5]], dtype=F64)  # u = 0 and 1/2: a = 0 and π
    crossings = MANIFOLDS["linked_rings"].sampler(4, u=angles.repeat(2, 1)).points[2:]
    torch.testing.assert_close(crossings, torch.tensor([[2.0, 0, 0], [0.0, 0, 0]], dtype=F64), atol=1e-12, rtol=0)
    assert float(torch.cdist(ring0, ring1).min()) > 0.3


# -- the map into data space ------------------------------------------------------------------------------------
def test_the_linear_map_of_a_planar_manifold_is_the_synthetic_sets_projection() -> None:
    embedding = make_embedding("off_centre_circles", "linear", 20, projection_seed=7)
    torch.testing.assert_close(embedding.linear, random_projection(20, projection_seed=7))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_standardised_to_features_of_std_one_half(name: str, embedding: str) -> None:
    dm = ManifoldSuiteDataModule(name, embedding=embedding, num_train=400, num_val=10, num_test=10, noise_std=0.01)
    manifold = dm.manifold_points(5000).double()
    assert float(manifold.var(dim=0).mean().sqrt()) == pytest.approx(FEATURE_STD, rel=0.02)
    assert float(dm.train_data.x.double().var(dim=0).mean().sqrt()) == pytest.approx(FEATURE_STD, rel=0.15)


@pytest.mark.parametrize("name", NAMES)
def test_the_nonlinear_map_is_smooth_one_to_one_and_not_linear(name: str) -> None:
    spec = MANIFOLDS[name]
    linear, nonlinear = make_embedding(name, "linear"), make_embedding(name, "nonlinear")
    grid = manifold_grid(spec, 3000).points
    assert _affine_residual(grid, linear(grid)) < 1e-20
    assert _affine_residual(grid, nonlinear(grid)) > 0.01
    # Both share the linear part W; the nonlinear map is linear in (p, tanh(...)) through [W V], which has full
    # column rank, so it never folds the manifold onto itself.
    torch.testing.assert_close(linear.linear, nonlinear.linear)
    stacked = torch.cat([nonlinear.linear, nonlinear.warp_out], dim=1)  # (D, 2m)
    assert int(torch.linalg.matrix_rank(stacked)) == 2 * spec.manifold_dim
    # Smooth: the second difference along a parameter shrinks as h^2 (a fourth for half the step).
    u = torch.full((spec.num_classes, spec.intrinsic_dim), 0.37, dtype=F64)

    def second_difference(h: float) -> float:
        at = [nonlinear(spec.sampler(len(u), u=u + d).points) for d in (-h, 0.0, h)]
        return float((at[0] - 2 * at[1] + at[2]).norm())

    assert second_difference(1e-3) / second_difference(5e-4) == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_every_split_and_seed_shares_the_map(embedding: str) -> None:
    kwargs = dict(embedding=embedding, num_train=300, num_val=50, num_test=60, noise_std=0.0)
    dm = ManifoldSuiteDataModule("torus", seed=0, **kwargs)
    other = ManifoldSuiteDataModule("torus", seed=5, **kwargs)
    splits = (dm.train_data, dm.val_data, dm.test_data, other.train_data)
    for data in splits:  # noiseless: x is the one map of the points
        torch.testing.assert_close(data.x, dm.embedding(data.points).float())
    assert other.embedding.scale == dm.embedding.scale
    assert not torch.allclose(dm.train_data.x, other.train_data.x)  # the run seed draws other points
    if embedding == "linear":  # one linear map fits every split exactly
        points = torch.cat([d.points for d in splits])
        assert _affine_residual(points, torch.cat([d.x for d in splits]).double()) < 1e-10
    moved = ManifoldSuiteDataModule("torus", projection_seed=1, **kwargs)
    assert not torch.allclose(moved.embedding.linear, dm.embedding.linear)


def test_the_noise_is_in_standardised_units() -> None:
    clean = ManifoldSuiteDataModule("swiss_roll_3d", noise_std=0.0, num_val=10, num_test=10)
    noisy = ManifoldSuiteDataModule("swiss_roll_3d", noise_std=0.05, num_val=10, num_test=10)
    torch.testing.assert_close(clean.train_data.points, noisy.train_data.points)
    assert float((noisy.train_data.x - clean.train_data.x).std()) == pytest.approx(0.05, rel=0.05)


# -- the data module -----------------------------------------------------------------------------------------------
def test_the_data_module_is_deterministic_and_batches_carry_coords() -> None:
    a, b = ManifoldSuiteDataModule("helix", seed=2), ManifoldSuiteDataModule("helix", seed=2)
    for key in ("x", "label", "coords"):
        torch.testing.assert_close(a.train_set.tensors[key], b.train_set.tensors[key])
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"x", "label", "coords", "index"}
    assert batch["x"].shape == (30, 30) and batch["coords"].shape == (30, 1) and batch["x"].dtype == torch.float32
    assert a.input_shape == (30,) and a.num_classes == 2
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (1000, 200, 1000)


@pytest.mark.parametrize("name", NAMES)
def test_anchors_are_class_major_noiseless_and_spread_along_the_coordinates(name: str) -> None:
    spec = MANIFOLDS[name]
    dm = ManifoldSuiteDataModule(name, anchors_per_class=5, num_val=10, num_test=10, seed=0)
    again = ManifoldSuiteDataModule(name, anchors_per_class=5, num_val=10, num_test=10, seed=9)
    assert dm.anchors.shape == (5 * spec.num_classes, 30) and dm.anchors_per_class == 5
    assert dm.anchor_labels.tolist() == [k for k in range(spec.num_classes) for _ in range(5)]
    torch.testing.assert_close(dm.anchors, again.anchors)  # not drawn: the run seed leaves them alone
    u = anchor_parameters(spec, 5)
    torch.testing.assert_close(u[:5, 0], torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64))
    expected = dm.embedding(spec.sampler(len(u), u=u).points).float()
    torch.testing.assert_close(dm.anchors, expected)
    # Spread out: no two anchors of a class close together (the data's features have std 0.5).
    for k in range(spec.num_classes):
        block = dm.anchors[dm.anchor_labels == k]
        assert float(torch.pdist(block).min()) > 0.2


@pytest.mark.parametrize("name", NAMES)
def test_manifold_points_cover_the_noiseless_data(name: str) -> None:
    dm = ManifoldSuiteDataModule(name, noise_std=0.0, num_train=200, num_val=10, num_test=200)
    points = dm.manifold_points()
    assert points.shape[0] <= 20000 and points.shape[1] == 30 and points.dtype == torch.float32
    assert dm.manifold_points(500).shape[0] <= 500
    gap = torch.cdist(dm.test_data.x, points).min(dim=1).values  # (200,)
    # Curves are sampled finely; surfaces by a grid with cells about square on the manifold, spaced like the data
    # (so the sphere's rows leave a small cap around each pole).
    if MANIFOLDS[name].intrinsic_dim == 1:
        assert float(gap.max()) < 0.01
    else:
        assert float(gap.mean()) < 0.05 and float(gap.max()) < 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="cube"), r"data\.name='cube' is not a manifold of the suite; use one of helix, torus, sphere, "
                            r"s_curve, off_centre_circles, trefoil, swiss_roll_3d, linked_rings"),
        (dict(name="torus", embedding="curved"), r"data\.embedding='curved' is not an embedding; use linear .* or "
                                                 r"nonlinear"),
        (dict(name="torus", ambient_dim=2), r"data\.ambient_dim=2 is too small for torus .*at least 3"),
        (dict(name="torus", embedding="nonlinear", ambient_dim=5), r"data\.ambient_dim=5 .*nonlinear.*at least 6"),
        (dict(name="linked_rings", anchors_per_class=501), r"data\.anchors_per_class=501 .*at most 500"),
        (dict(name="helix", noise_std=-0.1), r"data\.noise_std=-0\.1 must be at least 0"),
    ],
)
def test_bad_settings_name_the_field_the_value_and_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ManifoldSuiteDataModule(**kwargs)


# -- configs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vaells", "vae"])
def test_the_experiment_composes_with_tensor_files_settings_and_builds(model: str, tmp_path: Path) -> None:
    from vaells.app.builders import build_datamodule, build_model

    cfg = compose_train(["experiment=manifold_suite", "data.name=trefoil", "data.embedding=nonlinear",
                         f"model={model}"], tmp_path)
    reference = compose_train(["experiment=tensor_file", "data.path=unused.npz", f"model={model}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"] == OmegaConf.to_container(reference, resolve=True)["model"]
    assert resolved["backbone"]["latent_dim"] == 4 and resolved["data"]["name"] == "trefoil"
    dm = build_datamodule(cfg)
    built = build_model(cfg, dm)
    assert built.encoder.input_dim == 30


def test_the_suite_names_its_jobs_by_manifold_and_embedding() -> None:
    from vaells.results.suites import load_suite

    jobs = load_suite("manifolds")
    assert len(jobs) == len(NAMES) * len(EMBEDDINGS) * 3
    names = {job.name for job in jobs}
    assert "manifold_suite/helix/linear/vaells/seed0" in names
    assert "manifold_suite/linked_rings/nonlinear/vaells/seed2" in names
    one = next(job for job in jobs if job.name == "manifold_suite/torus/nonlinear/vaells/seed1")
    assert one.overrides == ("experiment=manifold_suite", "data.name=torus", "data.embedding=nonlinear",
                             "model=vaells", "seed=1", "ll_points=250")


@pytest.mark.e2e
def test_train_py_scores_a_manifold_with_every_manifold_metric(tmp_path: Path, cli) -> None:
    import json

    import train

    code, _, err = cli(train.main, "experiment=manifold_suite", "data.name=helix", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=3", "ll_points=20", "~callbacks.latent_figures",
                       f"hydra.run.dir={tmp_path}")
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("path_manifold_error", "prior_fit", "knn_accuracy", "trustworthiness", "continuity"):
        assert math.isfinite(metrics[key]), key


# -- a user's tensor file: coords and manifold ------------------------------------------------------------------
def _file(tmp_path: Path, suffix: str = ".npz", num: int = 300, **extra) -> Path:
    """x[i] is filled with i and coords[i] = (i, -i), so a split can be traced back to the file's rows."""
    rows = np.arange(num, dtype=np.float32)
    arrays = {"x": np.repeat(rows[:, None], 4, axis=1), "coords": np.stack([rows, -rows], axis=1)} | extra
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_tensor_file_coords_are_split_with_x(tmp_path: Path, suffix: str) -> None:
    dm = TensorFileDataModule(str(_file(tmp_path, suffix)), anchors_per_class=2)
    for split in (dm.train_set, dm.val_set, dm.test_set):
        row = split.tensors["x"][:, 0]
        torch.testing.assert_close(split.tensors["coords"], torch.stack([row, -row], dim=1))
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"x", "label", "coords", "index"} and batch["coords"].dtype == torch.float32
    assert not hasattr(dm, "manifold_points")  # no manifold in the file: no manifold metrics


def test_tensor_file_manifold_gives_manifold_points(tmp_path: Path) -> None:
    manifold = np.random.default_rng(0).normal(size=(50, 4))
    dm = TensorFileDataModule(str(_file(tmp_path, manifold=manifold)))
    torch.testing.assert_close(dm.manifold_points(), torch.as_tensor(manifold, dtype=torch.float32))
    torch.testing.assert_close(dm.manifold_points(2), dm.manifold_points()[[0, 49]])
    assert not hasattr(TensorFileDataModule, "manifold_points")  # the instance's alone, given a manifold


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(coords=np.zeros(300)), r"'coords' must have shape \(300, k\).*use shape \(300, 1\)"),
        (dict(coords=np.zeros((299, 2))), r"'coords' must have shape \(300, k\).*got \(299, 2\)"),
        (dict(coords=np.full((300, 2), np.nan)), r"'coords' has non-finite values"),
        (dict(coords=np.zeros((300, 2), dtype=complex)), r"'coords' must be real numbers"),
        (dict(manifold=np.zeros((10, 3))), r"'manifold' must have shape \(P, 4\).*got \(10, 3\)"),
        (dict(manifold=np.zeros((0, 4))), r"'manifold' must have shape \(P, 4\): P >= 1"),
        (dict(manifold=np.full((10, 4), np.inf)), r"'manifold' has non-finite values"),
    ],
)
def test_tensor_file_ground_truth_is_validated(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorFileDataModule(str(_file(tmp_path, **extra)))


def test_tensor_file_coords_need_a_test_split_for_their_metrics(tmp_path: Path) -> None:
    path = _file(tmp_path, num=100)
    with pytest.raises(ValueError, match=r"needs at least 21 samples .* holds 10; raise data\.test_fraction"):
        TensorFileDataModule(str(path))
    TensorFileDataModule(str(path), test_fraction=0.3)
