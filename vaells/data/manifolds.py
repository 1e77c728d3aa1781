"""The manifold suite: eight manifolds with known coordinates and classes, generated offline (docs/manifolds.md).

Each manifold is a sampler ``name(num_points, generator=None, *, u=None) -> ManifoldSample``: it draws (or, given
``u``, evaluates at) parameters u in [0, 1]^k, uniform, and returns the noiseless points in the manifold's own space
R^m, their intrinsic coordinates (N, k) and their classes, class-major (the first N / K rows class 0, ...).
``MANIFOLDS`` maps each name to its ``ManifoldSpec``.

A data set lifts the points to R^D (``ManifoldEmbedding``), the same map for every split:

- ``linear``:    f(p) = W p, W (D, m) with entries U(-1, 1), as ``vaells.data.synthetic.random_projection``
  (for m = 2 the same matrix).
- ``nonlinear``: f(p) = W p + s V tanh(2 U (p - c) / s + b), the same W, U (m, m) with entries N(0, 1), b (m,)
  U(-1, 1), V (D, m) U(-1, 1); c and s are the centre and RMS radius of the noiseless manifold. f is the linear
  map [W V] of the graph (p, s tanh(...)), and a random [W V] has full column rank for D >= 2m, so f is a smooth
  embedding: it bends the manifold but never folds it onto itself.

Both are then standardised by the constant ``scale`` that gives the noiseless manifold features of RMS standard
deviation 0.5, and noise N(0, noise_std^2 I) is added in those units: x = scale f(p) + noise. Every manifold thus
gets the same noise relative to its spread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaells.data.datamodules import (
    MANIFOLD_POINTS,
    DictDataset,
    _check_anchor_count,
    _InMemoryDataModule,
    split_seeds,
)
from vaells.data.synthetic import CIRCLE_RADII, DEFAULT_PROJECTION_SEED, _circle_points, _roll_points

#: The RMS standard deviation of a feature of the noiseless manifold after standardisation: the scale that the
#: synthetic experiments' likelihood weight (backbone.recon_weight) suits.
FEATURE_STD = 0.5

#: The nonlinear map's frequency: tanh's input spans a few units over the manifold, where tanh bends clearly.
WARP_FREQUENCY = 2.0

EMBEDDINGS = ("linear", "nonlinear")

HELIX_TURNS = 2
#: Rise per turn: the strands, half a turn apart, then pass each other 0.75 apart along the axis.
HELIX_PITCH = 1.5
TORUS_RADII = (1.0, 0.4)  # (R, r): around the axis, around the tube
S_CURVE_HEIGHT = 2.0
SWISS_ROLL_HEIGHT = 21.0  # as scikit-learn's make_swiss_roll: about the roll's width
#: Centres of the circles of radius ``CIRCLE_RADII[k]``: apart (they neither touch nor nest) and off the origin.
CIRCLE_CENTRES = ((1.0, 0.5), (-1.0, -0.5))


@dataclass(frozen=True)
class ManifoldSample:
    """Noiseless points of a manifold in its own space.

    Attributes:
        points: (N, m) float64, the points in R^m.
        coords: (N, k) float64, their intrinsic coordinates: the points are a function of coords and labels.
        labels: (N,) long, their classes, class-major.
    """

    points: Tensor
    coords: Tensor
    labels: Tensor


@dataclass(frozen=True)
class ManifoldSpec:
    """A manifold of the suite: its sampler, intrinsic dimension k, dimension m of its own space, classes K."""

    sampler: Callable[..., ManifoldSample]
    intrinsic_dim: int
    manifold_dim: int
    num_classes: int


def _parameters(num_points: int, intrinsic_dim: int, num_classes: int, generator: torch.Generator | None,
                u: Tensor | None) -> tuple[Tensor, Tensor]:
    """Uniform parameters u (N, k) in [0, 1]^k, drawn from ``generator`` unless given, and class-major labels (N,)
    whose classes differ in size by at most one."""
    if u is None:
        u = torch.rand(num_points, intrinsic_dim, generator=generator, dtype=torch.float64)
    elif tuple(u.shape) != (num_points, intrinsic_dim):
        raise ValueError(f"u must have shape ({num_points}, {intrinsic_dim}), got {tuple(u.shape)}")
    labels = torch.arange(num_points) * num_classes // max(num_points, 1)
    return u.double(), labels


def helix(num_points: int, generator: torch.Generator | None = None, *, u: Tensor | None = None) -> ManifoldSample:
    """A double helix of radius 1 around the z axis, ``HELIX_TURNS`` turns: strand c (class c) at angle
    theta in [0, 2π · turns] is (cos(theta + πc), sin(theta + πc), pitch · theta / 2π). Coordinate: theta."""
    u, labels = _parameters(num_points, 1, 2, generator, u)
    theta = 2.0 * math.pi * HELIX_TURNS * u[:, 0]  # (N,)
    phase = theta + math.pi * labels
    points = torch.stack([torch.cos(phase), torch.sin(phase), HELIX_PITCH * theta / (2.0 * math.pi)], dim=-1)
    return ManifoldSample(points, theta[:, None], labels)


def torus(num_points: int, generator: torch.Generator | None = None, *, u: Tensor | None = None) -> ManifoldSample:
    """A torus with radii (R, r) = ``TORUS_RADII``: ((R + r cos phi) cos theta, (R + r cos phi) sin theta, r sin phi),
    theta and phi uniform in [0, 2π). Coordinates: (theta, phi); one class."""
    u, labels = _parameters(num_points, 2, 1, generator, u)
    theta, phi = 2.0 * math.pi * u[:, 0], 2.0 * math.pi * u[:, 1]
    big, small = TORUS_RADII
    ring = big + small * torch.cos(phi)
    points = torch.stack([ring * torch.cos(theta), ring * torch.sin(theta), small * torch.sin(phi)], dim=-1)
    return ManifoldSample(points, torch.stack([theta, phi], dim=-1), labels)


def sphere(num_points: int, generator: torch.Generator | None = None, *, u: Tensor | None = None) -> ManifoldSample:
    """The unit sphere, uniform by area: azimuth theta in [0, 2π), polar angle phi = arccos(1 - 2 u) in [0, π].
    Coordinates: (theta, phi); one class."""
    u, labels = _parameters(num_points, 2, 1, generator, u)
    theta, phi = 2.0 * math.pi * u[:, 0], torch.arccos(1.0 - 2.0 * u[:, 1])
    points = torch.stack([torch.sin(phi) * torch.cos(theta), torch.sin(phi) * torch.sin(theta), torch.cos(phi)],
                         dim=-1)
    return ManifoldSample(points, torch.stack([theta, phi], dim=-1), labels)


def s_curve(num_points: int, generator: torch.Generator | None = None, *, u: Tensor | None = None) -> ManifoldSample:
    """scikit-learn's S curve: t in [-3π/2, 3π/2], height h in [0, ``S_CURVE_HEIGHT``], the point
    (sin t, h, sign(t)(cos t - 1)). Coordinates: (t, h); one class."""
    u, labels = _parameters(num_points, 2, 1, generator, u)
    t, height = 3.0 * math.pi * (u[:, 0] - 0.5), S_CURVE_HEIGHT * u[:, 1]
    points = torch.stack([torch.sin(t), height, torch.sign(t) * (torch.cos(t) - 1.0)], dim=-1)
    return ManifoldSample(points, torch.stack([t, height], dim=-1), labels)


def off_centre_circles(num_points: int, generator: torch.Generator | None = None, *,
                       u: Tensor | None = None) -> ManifoldSample:
    """Two circles in the plane, radius ``CIRCLE_RADII[k]`` around ``CIRCLE_CENTRES[k]`` (class k): apart, and
    neither centred on the origin, so a rotation about the origin generates neither. Coordinate: the angle."""
    u, labels = _parameters(num_points, 1, len(CIRCLE_RADII), generator, u)
    angle = 2.0 * math.pi * u[:, 0]
    points = _circle_points(angle, labels) + torch.tensor(CIRCLE_CENTRES, dtype=torch.float64)[labels]
    return ManifoldSample(points, angle[:, None], labels)


def trefoil(num_points: int, generator: torch.Generator | None = None, *, u: Tensor | None = None) -> ManifoldSample:
    """The trefoil knot (sin t + 2 sin 2t, cos t - 2 cos 2t, -sin 3t), t in [0, 2π). Coordinate: t; one class."""
    u, labels = _parameters(num_points, 1, 1, generator, u)
    t = 2.0 * math.pi * u[:, 0]
    points = torch.stack([torch.sin(t) + 2.0 * torch.sin(2.0 * t), torch.cos(t) - 2.0 * torch.cos(2.0 * t),
                          -torch.sin(3.0 * t)], dim=-1)
    return ManifoldSample(points, t[:, None], labels)


def swiss_roll_3d(num_points: int, generator: torch.Generator | None = None, *,
                  u: Tensor | None = None) -> ManifoldSample:
    """The swiss roll surface: the 2-D roll of ``vaells.data.synthetic`` (t in [3π/2, 9π/2]) in the x-z plane,
    extended along y by a height h in [0, ``SWISS_ROLL_HEIGHT``]: (t cos t, h, t sin t). Coordinates: (t, h)."""
    u, labels = _parameters(num_points, 2, 1, generator, u)
    roll, t = _roll_points(u[:, 0])  # (N, 2), (N,)
    height = SWISS_ROLL_HEIGHT * u[:, 1]
    points = torch.stack([roll[:, 0], height, roll[:, 1]], dim=-1)
    return ManifoldSample(points, torch.stack([t, height], dim=-1), labels)


def linked_rings(num_points: int, generator: torch.Generator | None = None, *,
                 u: Tensor | None = None) -> ManifoldSample:
    """Two linked unit circles (a Hopf link): ring 0 (cos a, sin a, 0) in the x-y plane, ring 1 (1 + cos a, 0, sin a)
    in the x-z plane through ring 0's centre. Coordinate: the angle a; one class per ring."""
    u, labels = _parameters(num_points, 1, 2, generator, u)
    angle = 2.0 * math.pi * u[:, 0]
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    ring0 = torch.stack([cos, sin, zero], dim=-1)
    ring1 = torch.stack([1.0 + cos, zero, sin], dim=-1)
    points = torch.where((labels == 0)[:, None], ring0, ring1)
    return ManifoldSample(points, angle[:, None], labels)


MANIFOLDS: dict[str, ManifoldSpec] = {
    "helix": ManifoldSpec(helix, intrinsic_dim=1, manifold_dim=3, num_classes=2),
    "torus": ManifoldSpec(torus, intrinsic_dim=2, manifold_dim=3, num_classes=1),
    "sphere": ManifoldSpec(sphere, intrinsic_dim=2, manifold_dim=3, num_classes=1),
    "s_curve": ManifoldSpec(s_curve, intrinsic_dim=2, manifold_dim=3, num_classes=1),
    "off_centre_circles": ManifoldSpec(off_centre_circles, intrinsic_dim=1, manifold_dim=2, num_classes=2),
    "trefoil": ManifoldSpec(trefoil, intrinsic_dim=1, manifold_dim=3, num_classes=1),
    "swiss_roll_3d": ManifoldSpec(swiss_roll_3d, intrinsic_dim=2, manifold_dim=3, num_classes=1),
    "linked_rings": ManifoldSpec(linked_rings, intrinsic_dim=1, manifold_dim=3, num_classes=2),
}


def manifold_spec(name: str) -> ManifoldSpec:
    """The suite's manifold ``name``; a ValueError listing the names for any other."""
    if name not in MANIFOLDS:
        raise ValueError(f"data.name={name!r} is not a manifold of the suite; use one of {', '.join(MANIFOLDS)} "
                         "(docs/manifolds.md)")
    return MANIFOLDS[name]


# -- deterministic samples: the dense manifold and the anchors --------------------------------------------------
def _side_lengths(spec: ManifoldSpec, num: int = 16, step: float = 1e-4) -> Tensor:
    """The median length of dp/du_i over a num^k grid of parameters, for each i: how long the manifold is along
    each parameter.  -> (k,) float64."""
    u = _midpoint_grid([num] * spec.intrinsic_dim)  # (n, k), at least 1 / 2num from the edges
    u = u.repeat(spec.num_classes, 1)
    lengths = []
    for i in range(spec.intrinsic_dim):
        shift = torch.zeros(spec.intrinsic_dim, dtype=torch.float64)
        shift[i] = step
        ahead = spec.sampler(len(u), u=u + shift).points
        behind = spec.sampler(len(u), u=u - shift).points
        lengths.append(((ahead - behind).norm(dim=-1) / (2.0 * step)).median())
    return torch.stack(lengths)


def _midpoint_grid(sizes: list[int]) -> Tensor:
    """The midpoints of a grid of sizes[0] x sizes[1] x ... cells of [0, 1]^k.  -> (prod(sizes), k) float64."""
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in sizes]
    return torch.cartesian_prod(*axes).reshape(-1, len(sizes))


def manifold_grid(spec: ManifoldSpec, num_points: int = MANIFOLD_POINTS) -> ManifoldSample:
    """About ``num_points`` noiseless points (at most that many), evenly spread over every class's parameters, so
    spread like the data: for curves, evenly spaced parameters; for surfaces, a grid of parameters whose sides
    follow the manifold's lengths along them, so that the cells are about square on the manifold (the sphere's
    rows, evenly spaced in area, leave a cap of about 0.15 rad around each pole). Class-major."""
    per_class = max(num_points // spec.num_classes, 1)
    if spec.intrinsic_dim == 1:
        sizes = [per_class]
    else:
        length_0, length_1 = _side_lengths(spec).tolist()
        first = min(max(round(math.sqrt(per_class * length_0 / length_1)), 1), per_class)
        sizes = [first, max(per_class // first, 1)]
    u = _midpoint_grid(sizes).repeat(spec.num_classes, 1)
    return spec.sampler(len(u), u=u)


def anchor_parameters(spec: ManifoldSpec, anchors_per_class: int) -> Tensor:
    """The anchors' parameters, class-major: anchor j of each class at u = (j + 1/2) / N_a in every parameter (along
    a curve evenly; across a surface along the diagonal of its parameter square).  -> (K * N_a, k) float64."""
    steps = (torch.arange(anchors_per_class, dtype=torch.float64) + 0.5) / anchors_per_class
    return steps[:, None].expand(-1, spec.intrinsic_dim).repeat(spec.num_classes, 1)


# -- the map to data space ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifoldEmbedding:
    """The map of a manifold's points p (N, m) into data space: scale * (W p + s V tanh(2 U (p - c) / s + b)),
    the tanh term only for the nonlinear embedding (module docstring; docs/manifolds.md).

    Attributes:
        linear: W (D, m).
        warp_in, warp_bias, warp_out: U (m, m), b (m,), V (D, m); None for the linear embedding.
        centre, radius: c (m,) and s of the noiseless manifold.
        scale: the standardisation: the noiseless manifold's features have RMS standard deviation ``FEATURE_STD``.
    """

    linear: Tensor
    warp_in: Tensor | None
    warp_bias: Tensor | None
    warp_out: Tensor | None
    centre: Tensor
    radius: float
    scale: float = 1.0

    def __call__(self, points: Tensor) -> Tensor:
        """(N, m) points -> (N, D) float64, noiseless."""
        points = points.double()
        x = points @ self.linear.T
        if self.warp_in is not None:
            hidden = torch.tanh(WARP_FREQUENCY * ((points - self.centre) / self.radius) @ self.warp_in.T
                                + self.warp_bias)
            x = x + self.radius * hidden @ self.warp_out.T
        return self.scale * x


def make_embedding(name: str, embedding: str = "linear", ambient_dim: int = 30,
                   projection_seed: int = DEFAULT_PROJECTION_SEED) -> ManifoldEmbedding:
    """The map of manifold ``name`` into R^``ambient_dim``, drawn from ``projection_seed`` (W first, so both
    embeddings share it), standardised on the dense noiseless manifold (``manifold_grid``)."""
    spec = manifold_spec(name)
    if embedding not in EMBEDDINGS:
        raise ValueError(f"data.embedding={embedding!r} is not an embedding; use linear (a random linear map) or "
                         "nonlinear (the linear map plus a smooth random warp; docs/manifolds.md)")
    m = spec.manifold_dim
    # The nonlinear map is linear in (p, tanh(...)), 2m numbers: it stays one-to-one only in at least 2m dimensions.
    needed = m if embedding == "linear" else 2 * m
    if ambient_dim < needed:
        raise ValueError(f"data.ambient_dim={ambient_dim} is too small for {name} (a manifold in R^{m}) with the "
                         f"{embedding} embedding; set data.ambient_dim to at least {needed} (the default 30 fits "
                         "every manifold)")
    gen = torch.Generator().manual_seed(projection_seed)
    linear = 2.0 * torch.rand(ambient_dim, m, generator=gen, dtype=torch.float64) - 1.0
    warp = (None, None, None)
    if embedding == "nonlinear":
        warp = (torch.randn(m, m, generator=gen, dtype=torch.float64),
                2.0 * torch.rand(m, generator=gen, dtype=torch.float64) - 1.0,
                2.0 * torch.rand(ambient_dim, m, generator=gen, dtype=torch.float64) - 1.0)
    points = manifold_grid(spec).points
    centre = points.mean(dim=0)
    radius = float((points - centre).pow(2).sum(dim=-1).mean().sqrt())
    raw = ManifoldEmbedding(linear, *warp, centre=centre, radius=radius)
    feature_std = float(raw(points).var(dim=0).mean().sqrt())
    return dataclasses.replace(raw, scale=FEATURE_STD / feature_std)


# -- data sets ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifoldSet:
    """Samples of a suite manifold in data space with their ground truth.

    Attributes:
        x:      (N, D) float32, ``embedding(points)`` plus noise.
        labels: (N,) long, class-major.
        coords: (N, k) float32, the intrinsic coordinates.
        points: (N, m) float64, the noiseless points in the manifold's own space.
    """

    x: Tensor
    labels: Tensor
    coords: Tensor
    points: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def _lift(sample: ManifoldSample, embedding: ManifoldEmbedding, noise_std: float = 0.0,
          generator: torch.Generator | None = None) -> ManifoldSet:
    x = embedding(sample.points)
    if noise_std > 0:
        # The generator that drew the points continues with the noise, so one seed fixes both.
        x = x + noise_std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return ManifoldSet(x=x.float(), labels=sample.labels, coords=sample.coords.float(), points=sample.points)


def make_manifold_set(spec: ManifoldSpec, num_points: int, *, seed: int, embedding: ManifoldEmbedding,
                      noise_std: float = 0.01) -> ManifoldSet:
    """``num_points`` random points of the manifold in data space, noise N(0, noise_std^2) in the standardised
    units; ``seed`` fixes points and noise."""
    gen = torch.Generator().manual_seed(seed)
    return _lift(spec.sampler(num_points, gen), embedding, noise_std, gen)


def manifold_anchors(spec: ManifoldSpec, anchors_per_class: int, embedding: ManifoldEmbedding) -> ManifoldSet:
    """The N_a noiseless anchors of every class at ``anchor_parameters``, in data space, class-major."""
    u = anchor_parameters(spec, anchors_per_class)
    return _lift(spec.sampler(len(u), u=u), embedding)


class ManifoldSuiteDataModule(_InMemoryDataModule):
    """A manifold of the suite in R^D (docs/manifolds.md): ``name`` one of ``MANIFOLDS``, ``embedding`` linear or
    nonlinear. N_a noiseless anchors per class along its parameters; ``manifold_points`` for the path and prior
    metrics. Each split's ``ManifoldSet`` stays available as ``train_data``/``val_data``/``test_data``.
    """

    def __init__(
        self,
        name: str,
        embedding: str = "linear",
        ambient_dim: int = 30,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 1000,
        anchors_per_class: int = 4,
        batch_size: int = 30,
        seed: int = 0,
        noise_std: float = 0.01,
        projection_seed: int = DEFAULT_PROJECTION_SEED,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.save_hyperparameters(logger=False)  # the logger gets the whole run config (train.py)
        self.spec = manifold_spec(name)
        if noise_std < 0:
            raise ValueError(f"data.noise_std={noise_std} must be at least 0; 0 gives noiseless data")
        _check_anchor_count(anchors_per_class, num_train // self.spec.num_classes)
        self.embedding = make_embedding(name, embedding, ambient_dim, projection_seed)
        seeds = split_seeds(seed)
        self.train_data, self.val_data, self.test_data = (
            make_manifold_set(self.spec, num, seed=s, embedding=self.embedding, noise_std=noise_std)
            for num, s in zip((num_train, num_val, num_test), seeds, strict=True)
        )
        self.train_set, self.val_set, self.test_set = (
            DictDataset(x=d.x, label=d.labels, coords=d.coords)
            for d in (self.train_data, self.val_data, self.test_data)
        )
        anchor_data = manifold_anchors(self.spec, anchors_per_class, self.embedding)
        self.anchors = anchor_data.x  # (K * N_a, D)
        self.anchor_labels = anchor_data.labels  # (K * N_a,)
        self.anchors_per_class = anchors_per_class
        self.num_classes = self.spec.num_classes
        self.input_shape = (ambient_dim,)

    def manifold_points(self, num_points: int = MANIFOLD_POINTS) -> Tensor:
        """A dense sample of the noiseless manifold in data space (at most ``num_points``, D) float32."""
        return self.embedding(manifold_grid(self.spec, num_points).points).float()
