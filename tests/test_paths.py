"""Paths between encodings (``vaells.evaluation.paths``): the transport path from z0 ends at T(c_hat) z0 close to
z1; on an exact rotation it stays on the circle where the straight line cuts the chord; the manifold error is small
on the manifold and large across it; the rotation match of an oracle that rotates is ~1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from vaells.data.mnist import rotate
from vaells.data.synthetic import swiss_roll_curve
from vaells.evaluation.paths import (
    linear_interpolation,
    manifold_error,
    path_manifold_errors,
    path_metrics,
    path_rotation_matches,
    path_scores,
    path_solver,
    same_label_pairs,
    transport_interpolation,
)
from vaells.inference import CoefficientSolver
from vaells.transport import TransportOperator

ROTATION = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)  # expm(c Psi) turns by c radians


class CircleModel(nn.Module):
    """A 2-D latent that is the data's own plane: x = z E for a fixed orthonormal E (2, D), and one operator that
    is an exact rotation, so the manifold of unit-norm data is the orbit of every point on it."""

    def __init__(self, ambient_dim: int = 20) -> None:
        super().__init__()
        self.transport = TransportOperator(2, 1)
        with torch.no_grad():
            self.transport.psi.copy_(ROTATION)
        q, _ = torch.linalg.qr(torch.randn(ambient_dim, 2, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64))
        self.register_buffer("embed", q.T.contiguous())  # (2, D)
        self.posterior_solver = CoefficientSolver(l1_weight=1e-6, restarts=[(0.0, 1.0)])
        self.prior_solver = CoefficientSolver(l1_weight=1e-6)

    def encode(self, x: Tensor) -> Tensor:
        return x.double() @ self.embed.T

    def decode(self, z: Tensor) -> Tensor:
        return (z.double() @ self.embed).float()


def _circle(angles: Tensor) -> Tensor:
    return torch.stack([angles.cos(), angles.sin()], -1).double()  # (N, 2)


def test_transport_path_starts_at_z0_and_ends_at_t_of_c_hat_z0_close_to_z1() -> None:
    model = CircleModel()
    z0, z1 = _circle(torch.tensor([0.3, -2.0, 1.0])), _circle(torch.tensor([2.5, 0.9, 1.2]))
    path, c_hat = transport_interpolation(model, z0, z1, num_steps=9)
    assert path.shape == (9, 3, 2) and c_hat.shape == (3, 1)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], model.transport.transport(z0, c_hat))
    assert float((path[-1] - z1).norm(dim=-1).max()) < 1e-4


def test_on_an_exact_rotation_the_path_stays_on_the_circle_and_the_line_cuts_the_chord() -> None:
    model = CircleModel()
    z0, z1 = _circle(torch.tensor([0.0])), _circle(torch.tensor([0.75 * math.pi]))  # 135 degrees apart
    path, c_hat = transport_interpolation(model, z0, z1, num_steps=11)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(11, 1, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(abs(float(c_hat)) - 0.75 * math.pi) < 1e-3  # the short way round, at constant speed
    line = linear_interpolation(z0, z1, num_steps=11)
    torch.testing.assert_close(line[0], z0)
    torch.testing.assert_close(line[-1], z1)
    assert float(line[5].norm()) < 0.5  # the chord's midpoint: cos(67.5 degrees) = 0.38 from the centre


def test_path_manifold_error_is_small_on_the_manifold_and_large_on_a_chord_across_the_roll() -> None:
    manifold = swiss_roll_curve(20000)
    on = swiss_roll_curve(777)  # other points of the same noiseless roll
    assert manifold_error(on, manifold) < 2e-3
    a, b = manifold[2000], manifold[-2000]  # across the roll
    t = torch.linspace(0.0, 1.0, 50).unsqueeze(-1)
    chord = (1 - t) * a + t * b  # (50, D)
    assert manifold_error(chord, manifold) > 0.05


def test_path_manifold_errors_of_a_model_whose_operator_traces_the_manifold() -> None:
    model = CircleModel()
    angles = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 2 * math.pi
    x = model.decode(_circle(angles))
    manifold = model.decode(_circle(torch.linspace(0, 2 * math.pi, 20000)))
    errors = path_manifold_errors(model, x, torch.zeros(200, dtype=torch.long), manifold, num_pairs=50)
    scores = ("manifold_error", "endpoint_error", "endpoint_distance")
    assert set(errors) == ({f"{path}_{score}" for path in ("path", "linear_path") for score in scores}
                           | {f"path_{score}_{control}" for score in scores for control in ("zero_psi", "init_psi")})
    # the encoder and decoder are exact: an arriving path, and the line, end on x1 itself
    assert errors["path_endpoint_distance"] < 1e-3 and errors["linear_path_endpoint_distance"] < 1e-6
    assert errors["path_endpoint_distance_zero_psi"] > 0.5  # a path that never moves ends at x0
    assert errors["path_manifold_error"] < 1e-3 and errors["path_endpoint_error"] < 1e-4
    assert errors["linear_path_manifold_error"] > 0.1 and errors["linear_path_endpoint_error"] < 1e-12
    # Psi = 0: the path never moves, arrives nowhere, and scores exactly as the straight line it must still travel
    assert errors["path_endpoint_error_zero_psi"] == 1.0
    assert errors["path_manifold_error_zero_psi"] == pytest.approx(errors["linear_path_manifold_error"], rel=1e-12)
    # Psi at a small random start barely moves the points either: no better than the line
    assert errors["path_manifold_error_init_psi"] > 0.5 * errors["linear_path_manifold_error"]


def test_a_path_that_stops_short_pays_for_the_rest_of_the_way() -> None:
    model = CircleModel()
    manifold = model.decode(_circle(torch.linspace(0, 2 * math.pi, 20000)))
    z0, z1 = _circle(torch.tensor([0.0])), _circle(torch.tensor([0.75 * math.pi]))
    full = model.transport.path(z0, torch.tensor([[0.75 * math.pi]], dtype=torch.float64), num_steps=11)
    half = model.transport.path(z0, torch.tensor([[0.375 * math.pi]], dtype=torch.float64), num_steps=11)
    still = z0.expand(11, 1, 2)
    x1 = model.decode(z1)
    scores = {name: path_scores(model, path, z1, manifold, x1) for name, path in
              [("full", full), ("half", half), ("still", still), ("line", linear_interpolation(z0, z1, 11))]}
    assert scores["full"]["manifold_error"] < 1e-3 and scores["full"]["endpoint_error"] < 1e-6
    assert scores["still"]["manifold_error"] == pytest.approx(scores["line"]["manifold_error"], rel=1e-12)
    assert scores["still"]["endpoint_error"] == pytest.approx(1.0)
    assert scores["full"]["manifold_error"] < scores["half"]["manifold_error"] < scores["line"]["manifold_error"]
    assert 0.3 < scores["half"]["endpoint_error"] < 0.7


def test_same_label_pairs_share_a_label_and_differ() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    i0, i1 = same_label_pairs(labels, 6, torch.Generator().manual_seed(0))
    assert len(i0) == len(i1) == 6
    assert bool((labels[i0] == labels[i1]).all()) and bool((i0 != i1).all())


class RotatingOracle(nn.Module):
    """Images of one template digit: z = (cos a, sin a) decodes to the template turned by a; encode finds a by
    matching 1-degree turns of the template. Its rotation operator is exact."""

    def __init__(self, template: Tensor) -> None:
        super().__init__()
        self.transport = TransportOperator(2, 1)
        with torch.no_grad():
            self.transport.psi.copy_(ROTATION)
        self.template = template  # (1, H, W)
        self.posterior_solver = CoefficientSolver(l1_weight=1e-6, restarts=[(0.0, 1.0)])
        self.prior_solver = CoefficientSolver(l1_weight=1e-6)
        grid = torch.arange(360.0)
        self.grid = grid
        self.turned = rotate(template.expand(360, *template.shape), grid)  # (360, 1, H, W)

    def encode(self, x: Tensor) -> Tensor:
        a = self.turned.flatten(1)
        best = (x.flatten(1) @ a.T - 0.5 * a.pow(2).sum(-1)).argmax(-1)  # the nearest turn
        return _circle(torch.deg2rad(self.grid[best]))

    def decode(self, z: Tensor) -> Tensor:
        degrees = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0])).float()
        return rotate(self.template.expand(z.shape[0], *self.template.shape), degrees)


def test_path_rotation_match_of_a_rotating_oracle_is_one_and_beats_the_line() -> None:
    template = torch.zeros(1, 32, 32)
    template[0, 6:26, 14:18] = 1.0  # the stem of a "7"
    template[0, 6:10, 8:22] = 1.0  # its bar
    model = RotatingOracle(template)
    scores = path_rotation_matches(model, template[None], num_steps=7)
    assert scores["path_rotation_match"] > 0.99
    assert scores["linear_path_rotation_match"] < scores["path_rotation_match"]


def test_path_solver_restarts_cover_half_a_turn() -> None:
    model = CircleModel()
    solver = path_solver(model, _circle(torch.tensor([0.0, 1.0])))
    assert max(hi for _, hi in solver.restarts) == pytest.approx(math.pi)
    assert min(lo for lo, _ in solver.restarts) == pytest.approx(-math.pi)
    assert solver.max_coeff is None and solver.l1_weight == model.posterior_solver.l1_weight


def test_no_path_metrics_without_operators() -> None:
    assert path_metrics(nn.Linear(2, 2), object()) == {}


def test_too_few_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        linear_interpolation(torch.zeros(1, 2), torch.ones(1, 2), 1)
