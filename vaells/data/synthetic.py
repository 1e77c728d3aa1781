"""Synthetic manifolds as generated in the authors' release (docs/method.md §4).

Both data sets are 2-D curves lifted to ``ambient_dim`` (20) dimensions by a random *linear* map with
entries U(-1, 1). The release's file is called "nonLinear", but the map is linear; we keep it so results
can be compared with the paper.

The map is a data-set constant: it is drawn from its own ``projection_seed`` so that train, validation
and test draws (which use different ``seed`` values) live on the same manifold; or it is given (``projection``,
read by ``load_projection``), such as the map that the release saved beside its trained model. Every returned set also
carries the map, so ``x ≈ scale * coords @ projection.T`` can be inverted by least squares to check that
points (anchors in particular) lie where they should.

Anchors are placed deterministically (the release's ``rand_flag = 0``) and mapped without noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: Seed of the random linear map shared by every split. Deliberately not 0, the usual sample seed:
#: two generators seeded alike would make the first draws of the map and of the samples identical.
DEFAULT_PROJECTION_SEED = 2021

#: The release divides the lifted swiss roll (noise included) by 10 to bring it to unit scale.
SWISS_ROLL_SCALE = 0.1

#: Circle radii; the circle with radius ``CIRCLE_RADII[k]`` has label k.
CIRCLE_RADII = (0.5, 1.0)


@dataclass(frozen=True)
class SyntheticSet:
    """Samples of a synthetic manifold together with their ground truth.

    Attributes:
        x:          (N, D) float32, the lifted samples: ``x = scale * (coords @ projection.T + noise)``.
        labels:     (N,) long, class index (0 for the swiss roll, the circle index for the circles).
        coords:     (N, 2) float32, the 2-D point before the lift (and before ``scale``).
        t:          (N,) float32, the curve's intrinsic parameter: the roll's t, or the circle's angle.
        projection: (D, 2) float32, the random linear map.
        scale:      the factor applied after the lift (0.1 for the swiss roll, 1 for the circles).
    """

    x: Tensor
    labels: Tensor
    coords: Tensor
    t: Tensor
    projection: Tensor
    scale: float

    def __len__(self) -> int:
        return self.x.shape[0]


def random_projection(ambient_dim: int = 20, *, projection_seed: int = DEFAULT_PROJECTION_SEED) -> Tensor:
    """The release's random linear map R^2 -> R^D, entries U(-1, 1). Returns (D, 2) float64."""
    if ambient_dim < 2:
        raise ValueError(f"ambient_dim must be at least 2 to embed a 2-D manifold, got {ambient_dim}")
    gen = torch.Generator().manual_seed(projection_seed)
    return 2.0 * torch.rand(ambient_dim, 2, generator=gen, dtype=torch.float64) - 1.0


def load_projection(path: str | Path, ambient_dim: int | None = None) -> Tensor:
    """A linear map R^2 -> R^D read from a file: the release's ``mapMat_*.mat`` (key ``mapMat``), a ``.npy``, or a
    ``.npz``/``.pt`` holding one array (or the key ``mapMat``). Returns (D, 2) float64; ``ambient_dim``, where
    given, must equal D (docs/running.md, "The authors' models")."""
    path = Path(path).expanduser()
    field = f"data.projection_file={path}"
    if not path.is_file():
        raise FileNotFoundError(f"{field} does not exist; give a (D, 2) map: the release's mapMat_*.mat, or a "
                                ".npy/.npz/.pt array")
    if path.suffix == ".mat":
        from scipy.io import loadmat  # only the release's files need it

        arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    elif path.suffix == ".npy":
        import numpy as np

        arrays = {"map": np.load(path)}
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path) as archive:
            arrays = dict(archive)
    elif path.suffix in (".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        arrays = loaded if isinstance(loaded, dict) else {"map": loaded}
    else:
        raise ValueError(f"{field}: unknown file type {path.suffix!r}; use .mat, .npy, .npz or .pt")
    if "mapMat" in arrays:
        arrays = {"mapMat": arrays["mapMat"]}
    if len(arrays) != 1:
        raise ValueError(f"{field} holds {sorted(arrays)}; it must hold one array, or one named 'mapMat'")
    projection = torch.as_tensor(next(iter(arrays.values())), dtype=torch.float64)
    if projection.ndim != 2 or projection.shape[1] != 2:
        raise ValueError(f"{field} holds an array of shape {tuple(projection.shape)}; the map must be (D, 2)")
    if ambient_dim is not None and projection.shape[0] != ambient_dim:
        raise ValueError(f"{field} maps to R^{projection.shape[0]} but data.ambient_dim={ambient_dim}; set "
                         f"data.ambient_dim={projection.shape[0]}")
    return projection


def _projection(ambient_dim: int, projection_seed: int, projection: Tensor | None) -> Tensor:
    # A given map (data.projection_file) replaces the seeded random one.
    return random_projection(ambient_dim, projection_seed=projection_seed) if projection is None else projection


def _lift(
    coords: Tensor, t: Tensor, labels: Tensor, *, projection: Tensor, scale: float, noise_std: float = 0.0,
    gen: torch.Generator | None = None,
) -> SyntheticSet:
    """Map (N, 2) float64 ``coords`` to (N, D), add noise drawn from ``gen``, package as float32."""
    x = coords @ projection.T  # (N, D)
    if noise_std > 0:
        # The same generator that drew the coordinates continues with the noise, so a seed fixes both.
        x = x + noise_std * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return SyntheticSet(
        x=(scale * x).float(),
        labels=labels.long(),
        coords=coords.float(),
        t=t.float(),
        projection=projection.float(),
        scale=scale,
    )


def _roll_points(u: Tensor) -> tuple[Tensor, Tensor]:
    """u in [0, 1] (N,) -> t = (3π/2)(1 + 2u) in [1.5π, 4.5π] and the point (t cos t, t sin t), (N, 2)."""
    t = 1.5 * math.pi * (1.0 + 2.0 * u)
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=-1), t


def _circle_points(angles: Tensor, labels: Tensor) -> Tensor:
    """(N,) angles and (N,) circle indices -> (N, 2) points on the circles of radius ``CIRCLE_RADII``."""
    radius = torch.tensor(CIRCLE_RADII, dtype=torch.float64)[labels]  # (N,)
    return radius[:, None] * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def make_swiss_roll(
    num_points: int,
    *,
    seed: int,
    noise_std: float = 0.01,
    ambient_dim: int = 20,
    projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> SyntheticSet:
    """Draw ``num_points`` points of the 2-D swiss roll lifted to R^D (one class, label 0).

    t = (3π/2)(1 + 2u) with u ~ U(0, 1); x = ((t cos t, t sin t) W^T + ε) / 10, ε ~ N(0, noise_std² I).
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(num_points, generator=gen, dtype=torch.float64)  # (N,)
    coords, t = _roll_points(u)
    labels = torch.zeros(num_points, dtype=torch.long)
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(coords, t, labels, projection=projection, scale=SWISS_ROLL_SCALE, noise_std=noise_std,
                 gen=gen)


def swiss_roll_anchors(
    anchors_per_class: int, *, ambient_dim: int = 20, projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> SyntheticSet:
    """N_a noise-free anchors at positions linspace(0.1, 0.9, N_a) of the t range (release, rand_flag = 0).

    Returns a ``SyntheticSet`` with ``x`` of shape (N_a, D), all labels 0.
    """
    _check_anchors_per_class(anchors_per_class)
    u = torch.linspace(0.1, 0.9, anchors_per_class, dtype=torch.float64)  # (N_a,)
    coords, t = _roll_points(u)
    labels = torch.zeros(anchors_per_class, dtype=torch.long)
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(coords, t, labels, projection=projection, scale=SWISS_ROLL_SCALE)


def make_concentric_circles(
    num_points_per_class: int,
    *,
    seed: int,
    noise_std: float = 0.01,
    ambient_dim: int = 20,
    projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> SyntheticSet:
    """Draw ``num_points_per_class`` points on each of the circles of radius 0.5 (label 0) and 1 (label 1).

    Angles ~ U(0, 2π); x = (r cos θ, r sin θ) W^T + ε, ε ~ N(0, noise_std² I), no rescaling.
    Samples are stored class-major (all of class 0, then all of class 1); loaders shuffle them.
    """
    num_classes = len(CIRCLE_RADII)
    gen = torch.Generator().manual_seed(seed)
    num = num_classes * num_points_per_class
    angles = 2.0 * math.pi * torch.rand(num, generator=gen, dtype=torch.float64)  # (K * N,)
    labels = torch.arange(num_classes).repeat_interleave(num_points_per_class)  # (K * N,)
    coords = _circle_points(angles, labels)
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(coords, angles, labels, projection=projection, scale=1.0, noise_std=noise_std, gen=gen)


def concentric_circle_anchors(
    anchors_per_class: int, *, ambient_dim: int = 20, projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> SyntheticSet:
    """N_a noise-free anchors per circle at angles 2πj/N_a (0°, 120°, 240° for N_a = 3), class-major.

    Returns a ``SyntheticSet`` with ``x`` of shape (K * N_a, D) and labels [0]*N_a + [1]*N_a.
    """
    _check_anchors_per_class(anchors_per_class)
    num_classes = len(CIRCLE_RADII)
    angles = 2.0 * math.pi * torch.arange(anchors_per_class, dtype=torch.float64) / anchors_per_class
    angles = angles.repeat(num_classes)  # (K * N_a,)
    labels = torch.arange(num_classes).repeat_interleave(anchors_per_class)  # (K * N_a,)
    coords = _circle_points(angles, labels)
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(coords, angles, labels, projection=projection, scale=1.0)


def swiss_roll_curve(
    num_points: int, *, ambient_dim: int = 20, projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> Tensor:
    """The noiseless swiss roll in data space: ``num_points`` points at evenly spaced t over its whole range,
    lifted and scaled like the data.  -> (num_points, D) float32. The true manifold of ``make_swiss_roll``."""
    coords, t = _roll_points(torch.linspace(0.0, 1.0, num_points, dtype=torch.float64))
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(coords, t, torch.zeros(num_points), projection=projection, scale=SWISS_ROLL_SCALE).x


def concentric_circles_curve(
    num_points_per_class: int, *, ambient_dim: int = 20, projection_seed: int = DEFAULT_PROJECTION_SEED,
    projection: Tensor | None = None,
) -> Tensor:
    """The noiseless circles in data space: ``num_points_per_class`` evenly spaced angles on each circle, lifted
    like the data.  -> (K * num_points_per_class, D) float32, class-major."""
    angles = (2.0 * math.pi / num_points_per_class) * torch.arange(num_points_per_class, dtype=torch.float64)
    angles = angles.repeat(len(CIRCLE_RADII))
    labels = torch.arange(len(CIRCLE_RADII)).repeat_interleave(num_points_per_class)
    projection = _projection(ambient_dim, projection_seed, projection)
    return _lift(_circle_points(angles, labels), angles, labels, projection=projection, scale=1.0).x


def _check_anchors_per_class(anchors_per_class: int) -> None:
    if anchors_per_class < 1:
        raise ValueError(
            f"data.anchors_per_class must be at least 1, got {anchors_per_class}; "
            "every class needs an anchor for the prior p(z)"
        )
