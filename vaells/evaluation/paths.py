"""Paths between two encodings, and whether they stay on the data manifold (paper sec. 1 and Fig. 3c-d: linear
latent paths leave the manifold, transport operator paths follow it).

The transport path from z0 to z1 is z_t = expm(t A(c_hat)) z0, t in [0, 1], with A(c) = sum_m c_m Psi_m and
c_hat = argmin_c 1/2 ||z1 - T(c) z0||^2 + lambda ||c||_1 (eq. 7; docs/method.md §1.3); it ends at T(c_hat) z0,
which is z1 where the operators can reach it. The linear path is z_t = (1 - t) z0 + t z1.

- ``path_manifold_error`` (synthetic data): over random same-class test pairs, how far from the dense noiseless
  manifold (``comparison.nearest_distance``) the decoded journey from z0 to z1 runs: the transport path, then,
  where it stops short, the straight line from its end to z1, each weighted by its latent length. A path that
  arrives is scored alone; a path that never moves scores exactly as the linear path, so it cannot win.
  ``linear_path_manifold_error`` is the same for the linear paths between the same encodings. Controls:
  ``_zero_psi`` and ``_init_psi``, the transport paths' score with Psi = 0 and with Psi at its initialisation
  (``operators.operator_controls``).
- ``path_endpoint_error`` (synthetic data): the median over pairs of ||z_end - z1|| / ||z1 - z0||, how far the
  transport path's end is from its target relative to the distance it had to go; 0 for the linear paths
  (``linear_path_endpoint_error``), 1 for a path that never moves. With its controls as above.
  ``path_endpoint_distance`` (and ``linear_``, ``_zero_psi``, ``_init_psi``): the same arrival in data space,
  the mean distance from the decoded end of the path to the input x1 it was meant to reach (for the linear path,
  the reconstruction error of x1).
- ``path_rotation_match`` (rotated MNIST): the paths from upright test digits to the same digits rotated by 90
  degrees; the mean Pearson correlation of each intermediate frame t with the digit truly rotated by t * 90
  degrees (``vaells.data.mnist.rotate``); ``linear_path_rotation_match`` the same for the linear paths.

Both need transport operators (``has_operators``); the linear numbers are the comparison.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vaells.data.mnist import rotate
from vaells.evaluation.common import decode_chunked, encode_chunked, evaluating, pearson, seeded_pick
from vaells.evaluation.comparison import nearest_distance
from vaells.evaluation.operators import operator_controls
from vaells.evaluation.rotation import coefficient_span
from vaells.inference import CoefficientSolver
from vaells.models.base import has_operators

#: Iteration cap of the path solver: a path is solved once, so it can afford to converge (training caps at 20).
PATH_MAX_ITER = 100
#: Restart ranges per side of zero that tile [-S, S] (``path_solver``).
SPAN_RESTARTS = 2


def path_solver(model: nn.Module, mu: Tensor) -> CoefficientSolver:
    """The solver of c_hat(z0 -> z1) for a path: the posterior's lambda (the path should reach z1, as a posterior
    sample is reached from its encoding), no coefficient bound, and restarts that tile [-S, S] besides the prior
    solver's own, S the widest ``coefficient_span`` (about half a turn) of the operators at the encodings mu (N, d).

    Why wide restarts: two inputs of a class can be half a turn apart, and with |w| ~ 0.03-0.08 for the learned
    operators that is |c| of 40-110, where a solver started at |c| <= 2.5 (the prior's restarts) stops at the nearer
    local minimum of a periodic energy.
    """
    psi = model.transport.psi
    span = max(coefficient_span(psi[m], mu) for m in range(psi.shape[0]))
    edges = [span * k / SPAN_RESTARTS for k in range(SPAN_RESTARTS + 1)]
    tiles = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    restarts = [*model.prior_solver.restarts, *tiles, *((-hi, -lo) for lo, hi in tiles)]
    return CoefficientSolver(l1_weight=model.posterior_solver.l1_weight, restarts=restarts, max_iter=PATH_MAX_ITER,
                             dtype=model.prior_solver.dtype)


@torch.no_grad()
def transport_interpolation(model: nn.Module, z0: Tensor, z1: Tensor, num_steps: int,
                            solver: CoefficientSolver | None = None) -> tuple[Tensor, Tensor]:
    """The transport paths z_t = expm(t A(c_hat)) z0, t in linspace(0, 1, num_steps), from each z0 to its z1.

    z0, z1 (P, d) -> path (num_steps, P, d) in the transport dtype, c_hat (P, M). ``solver`` defaults to
    ``path_solver(model, z0)``.
    """
    _check_steps(num_steps)
    solver = solver or path_solver(model, z0)
    c_hat = solver(model.transport.psi, z0, z1).c
    return model.transport.path(z0, c_hat, num_steps=num_steps), c_hat


def linear_interpolation(z0: Tensor, z1: Tensor, num_steps: int) -> Tensor:
    """z_t = (1 - t) z0 + t z1 for t in linspace(0, 1, num_steps).  z0, z1 (P, d) -> (num_steps, P, d)."""
    _check_steps(num_steps)
    t = torch.linspace(0.0, 1.0, num_steps, dtype=z0.dtype, device=z0.device).view(-1, 1, 1)
    return z0 + t * (z1.to(z0.dtype) - z0)


def _check_steps(num_steps: int) -> None:
    if int(num_steps) < 2:
        raise ValueError(f"num_steps must be at least 2 (the two ends), got {num_steps}")


def same_label_pairs(labels: Tensor, num_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``num_pairs`` random (start, end) index pairs of distinct points that share a label where possible.

    labels (N,) -> two (num_pairs',) long tensors, num_pairs' = min(num_pairs, N); draws from ``generator``.
    """
    labels = labels.cpu()
    n = labels.shape[0]
    starts = torch.randperm(n, generator=generator)[:num_pairs]
    ends = []
    for i in starts.tolist():
        partners = torch.nonzero((labels == labels[i]) & (torch.arange(n) != i)).flatten()
        if partners.numel() == 0:
            partners = torch.nonzero(torch.arange(n) != i).flatten()
        ends.append(partners[torch.randint(partners.numel(), (1,), generator=generator)])
    return starts, torch.cat(ends)


def manifold_error(points: Tensor, manifold: Tensor) -> float:
    """The mean distance of ``points`` (..., D) to their nearest point of ``manifold`` (N, D)."""
    return float(nearest_distance(points.reshape(-1, points.shape[-1]), manifold).mean())


def path_scores(model: nn.Module, path: Tensor, z1: Tensor, manifold: Tensor, x1: Tensor) -> dict[str, float]:
    """``manifold_error``, ``endpoint_error`` and ``endpoint_distance`` (see the module's docstring) of latent paths
    (T, P, d) that were meant to reach z1 (P, d), the encodings of the inputs x1 (P, D), against the noiseless
    ``manifold`` (M, D).

    The manifold error scores the whole journey to z1: the path, then the straight line from its end to z1
    (T points each), weighted by their latent lengths. A path that arrives is scored alone; a path that never
    moves scores exactly as the linear path; in between, the straight remainder counts as far as it is long.
    """
    steps, pairs, d = path.shape
    rest = linear_interpolation(path[-1], z1.to(path.dtype), steps)  # (T, P, d): the straight completion
    legs = torch.stack([path, rest])  # (2, T, P, d)
    decoded = decode_chunked(model, legs.reshape(-1, d))
    off = nearest_distance(decoded, manifold).view(2, steps, pairs).mean(1)  # (2, P): each leg's mean distance
    length = (legs[:, 1:] - legs[:, :-1]).double().norm(dim=-1).sum(1)  # (2, P)
    weight = torch.where(length.sum(0) > 0, length / length.sum(0).clamp_min(1e-300), torch.tensor([[1.0], [0.0]]))
    z0, z1 = path[0].double(), z1.double()
    relative = (path[-1].double() - z1).norm(dim=-1) / (z1 - z0).norm(dim=-1).clamp_min(1e-12)
    end = decoded.reshape(2, steps, pairs, -1)[0, -1].double()  # (P, D): the decoded end of the path itself
    arrival = (end - x1.reshape(pairs, -1).double()).norm(dim=-1)  # (P,): in data space
    return {"manifold_error": float((weight * off).sum(0).mean()), "endpoint_error": float(relative.median()),
            "endpoint_distance": float(arrival.mean())}


def path_manifold_errors(model: nn.Module, x: Tensor, labels: Tensor, manifold: Tensor, *, num_pairs: int = 100,
                         num_steps: int = 10, seed: int = 0) -> dict[str, float]:
    """``path_manifold_error``, ``path_endpoint_error``, their linear-path comparisons and their Psi controls over
    ``num_pairs`` random same-class pairs of the inputs x (N, D) with labels (N,), against the noiseless
    ``manifold`` (M, D)."""
    i0, i1 = same_label_pairs(labels, num_pairs, torch.Generator().manual_seed(seed))
    out = {}
    for suffix, scored in (("", model), *((f"_{name}", control) for name, control in operator_controls(model))):
        with evaluating(scored, seed):
            z0, z1 = encode_chunked(scored, x[i0]), encode_chunked(scored, x[i1])
            paths = {"path": transport_interpolation(scored, z0, z1, num_steps)[0]}
            if not suffix:
                paths["linear_path"] = linear_interpolation(z0, z1, num_steps)
            for name, path in paths.items():
                scores = path_scores(scored, path, z1, manifold, x[i1])
                out |= {f"{name}_{key}{suffix}": value for key, value in scores.items()}
    return out


def path_rotation_matches(model: nn.Module, digits: Tensor, *, angle: float = 90.0, num_steps: int = 7,
                          seed: int = 0) -> dict[str, float]:
    """``path_rotation_match`` and ``linear_path_rotation_match`` for upright digits (N, C, H, W): the mean, over
    digits and the num_steps - 2 intermediate frames t, of the correlation between frame t of the path from the
    digit to the digit rotated by ``angle`` degrees and the digit rotated by t * ``angle``. The two ends are left
    out: both paths start at the reconstruction of the upright digit."""
    _check_steps(num_steps)
    if num_steps < 3:
        raise ValueError(f"num_steps must be at least 3 (an intermediate frame), got {num_steps}")
    n, shape = digits.shape[0], digits.shape[1:]
    t = torch.linspace(0.0, 1.0, num_steps)[1:-1]  # (T',)
    digits = digits.float().cpu()
    truth = rotate(digits.repeat_interleave(t.numel(), 0), (t * angle).repeat(n)).view(n, -1, *shape)  # (N, T', ...)
    with evaluating(model, seed):
        z0 = encode_chunked(model, digits)
        z1 = encode_chunked(model, rotate(digits, torch.full((n,), float(angle))))
        transport, _ = transport_interpolation(model, z0, z1, num_steps)
        paths = {"path": transport, "linear_path": linear_interpolation(z0, z1, num_steps)}
        frames = {name: decode_chunked(model, path[1:-1].reshape(-1, path.shape[-1])).view(-1, n, *shape)
                  for name, path in paths.items()}  # (T', N, ...)
    return {f"{name}_rotation_match": float(pearson(f.transpose(0, 1), truth).mean()) for name, f in frames.items()}


def path_metrics(model: nn.Module, dm: object, *, num_pairs: int = 100, num_digits: int = 200,
                 seed: int = 0) -> dict[str, float]:
    """The path numbers above that the model and data allow: manifold errors where the data knows its manifold
    (``manifold_points``), rotation matches for rotated digits; {} for models without operators or other data."""
    if not has_operators(model):
        return {}
    dm.setup("test")
    if hasattr(dm, "manifold_points"):
        batches = list(dm.test_dataloader())
        x, labels = torch.cat([b["x"] for b in batches]), torch.cat([b["label"] for b in batches])
        return path_manifold_errors(model, x, labels, dm.manifold_points(), num_pairs=num_pairs, seed=seed)
    if getattr(dm, "rotates_digits", False):
        pick = seeded_pick(len(dm.test_set), num_digits, seed)
        digits = torch.stack([dm.test_set[int(i)]["digit"] for i in pick])  # upright, padded: (N, 1, 32, 32)
        return path_rotation_matches(model, digits, seed=seed)
    return {}

