"""The iterations behind ``vaells.inference``: a batched proximal Levenberg-Marquardt method on flattened
problems (the method is described in ``vaells.inference`` and docs/method.md §1.3).

Every (pair, restart) is one of Q independent problems in one tensor program; ``solve`` iterates them
together, ``solve_scalar`` is the closed-form Newton step of one operator (M = 1), and ``Screen`` drops the
losers of competing groups (a sample's anchors) after a few iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vaells.transport import EigenTransportApply, TransportApply, check_finite, expm, generator_matrix, transport_apply


@dataclass
class InferenceResult:
    """Coefficients c (..., M), energies E(c) (...,) and iterations used (...,), all detached."""

    c: Tensor
    energy: Tensor
    num_iters: Tensor


def restart_inits(
    batch_shape: Sequence[int] | torch.Size,
    num_operators: int,
    restarts: Sequence[Sequence[float]],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Initial coefficients: restart r is uniform on [lo_r, hi_r]^M.  Returns (*batch_shape, R, M)."""
    if len(restarts) < 1:
        raise ValueError("restarts must name at least one (low, high) range")
    bounds = torch.tensor([[float(lo), float(hi)] for lo, hi in restarts], dtype=dtype, device=device)  # (R, 2)
    u = torch.rand(*batch_shape, len(restarts), num_operators, generator=generator, dtype=dtype, device=device)
    lo, hi = bounds[:, :1], bounds[:, 1:]  # (R, 1) each
    return lo + (hi - lo) * u


def _residual(
    kernel: TransportApply, z0: Tensor, z1: Tensor, c: Tensor, l1_weight: float | Tensor, max_norm: float
) -> tuple[Tensor, Tensor]:
    """Energy (Q,) and residual r = T z0 - z1 (Q, d) at c (Q, M); no Jacobian (the cheap trial evaluation).

    Points whose generator has ||A||_1 > max_norm get E = inf without being evaluated: expm there can grow
    like e^max_norm, which no latent transport needs, and the cost of expm grows with the norm. The solver
    rejects such trial points and shortens the step.
    """
    too_big = ~(kernel.generator_norm(c) <= max_norm)  # also catches NaN
    r = kernel(z0, torch.where(too_big[:, None], torch.zeros_like(c), c)) - z1
    e = 0.5 * r.pow(2).sum(-1) + l1_weight * c.abs().sum(-1)
    return torch.where(too_big, torch.full_like(e, math.inf), e), r


def _jacobian(kernel: TransportApply, z0: Tensor, c: Tensor, dtype: torch.dtype | None = None,
              exact: Tensor | None = None) -> Tensor:
    """dr/dc (Q, d, M) at c (Q, M); only ever asked for at accepted points. With ``exact`` (Q,) bool, only those
    rows are computed; the others are left as zeros for the caller to fill (Broyden updates)."""
    if exact is not None and not bool(exact.all()):
        jac = torch.zeros(c.shape[0], z0.shape[-1], c.shape[-1], dtype=c.dtype, device=c.device)  # Psi's dtype
        if bool(exact.any()):
            jac[exact] = _jacobian(kernel, z0[exact], c[exact], dtype)
        return jac
    # A Jacobian good to 1e-8 relative (1e-6 in float32) costs fewer tangent terms and changes no fixed
    # point: it only shapes the steps, while the energies that accept them and the converged c come from the
    # residual, in the solver's own dtype.
    return kernel.jacobian(z0, c, tangent_tol=1e-8, dtype=dtype)


def _broyden_update(jac: Tensor, step: Tensor, dr: Tensor) -> Tensor:
    """Broyden's rank-one update of the Jacobian (Q, d, M) after a step (Q, M) that changed the residual by dr (Q, d):
    the least change to J that makes J step = dr. Near a warm start's answer the steps are small and J changes
    little, so this replaces the M directional derivatives (M times a trial point's cost) by a few products."""
    step = step.to(jac.dtype)
    miss = dr.to(jac.dtype) - (jac @ step.unsqueeze(-1)).squeeze(-1)
    return jac + miss.unsqueeze(-1) * step.unsqueeze(-2) / step.pow(2).sum(-1).clamp_min(
        torch.finfo(jac.dtype).tiny)[:, None, None]


def _soft(x: Tensor, t: float | Tensor) -> Tensor:
    return torch.sign(x) * (x.abs() - t).clamp_min(0.0)


def _orthant_newton_step(
    c: Tensor, g: Tensor, h: Tensor, mu: Tensor, l1_weight: Tensor, kernel: TransportApply, max_step: float,
    bound: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One damped orthant-wise Newton step on g.delta + 1/2 delta^T h delta + lambda ||c + delta||_1.

    c, g (Q, M); h (Q, M, M); mu, l1_weight (Q,).  Returns the trial point (Q, M) and its predicted decrease (Q,).
    The step is shortened so that the generator moves by at most ||sum_m delta_m Psi_m||_1 <= max_step:
    a trust region in the units that matter to expm. Without it, M > d problems (whose J^T J is singular)
    take huge null-space steps early on and wander to generators far larger than any solution needs.
    """
    lam = l1_weight.unsqueeze(-1)  # (Q, 1)
    at_zero = c == 0
    # Minimum-norm subgradient of E: the L1 term's slope where c != 0; a soft threshold where c == 0.
    pg = torch.where(at_zero, _soft(g, lam), g + lam * torch.sign(c))
    orthant = torch.where(at_zero, -torch.sign(pg), torch.sign(c))
    free = (orthant != 0).to(c.dtype)  # coordinates pinned at zero stay out of the solve
    eye = torch.eye(c.shape[-1], dtype=c.dtype, device=c.device)
    pinned = (1 - free).unsqueeze(-1)  # identity rows for pinned coordinates keep the system regular
    lhs = h * free.unsqueeze(-1) * free.unsqueeze(-2) + eye * (mu[:, None, None] * free.unsqueeze(-1) + pinned)
    delta = torch.linalg.solve_ex(lhs, (-pg * free).unsqueeze(-1))[0].squeeze(-1)
    x = c + delta
    x = torch.where(x * orthant < 0, torch.zeros_like(x), x)  # project onto the orthant
    delta = x - c
    step_norm = kernel.generator_norm(delta)  # (Q,)
    delta = delta * (max_step / step_norm.clamp_min(max_step)).unsqueeze(-1)
    x = c + delta
    if bound is not None:  # projected step onto the box |c_m| <= bound
        b = bound.unsqueeze(-1)
        x = torch.maximum(torch.minimum(x, b), -b)
        delta = x - c
    quad = (delta.unsqueeze(-2) @ h @ delta.unsqueeze(-1)).reshape(-1)
    predicted = -(g * delta).sum(-1) - 0.5 * quad + l1_weight * (c.abs().sum(-1) - x.abs().sum(-1))
    return x, predicted


def _secant_update(s: Tensor, delta: Tensor, y: Tensor, y_sharp: Tensor) -> Tensor:
    """Dennis-Gay-Welsch structured secant update of the second-order term S of the Hessian (NL2SOL).

    Gauss-Newton's J^T J misses sum_i r_i Hess(r_i), which dominates when the residual stays large (an
    anchor whose orbit passes z at a distance): there GN converges only linearly. S estimates that term
    from gradient differences: after the update, (J^T J + S) delta = y exactly along the last step.
    s (Q, M, M); delta, y = g_new - g_old, y_sharp = (J_new - J_old)^T r_new, all (Q, M).
    """
    s_delta = (s @ delta.unsqueeze(-1)).squeeze(-1)
    y_delta = (y * delta).sum(-1, keepdim=True)
    # NL2SOL's sizing: shrink S when it overestimates the curvature along delta.
    # finfo.tiny, not a literal 1e-300: that is 0 in float32, and 0 / 0 would put NaN into S (and every later step).
    curvature_s = (delta * s_delta).sum(-1, keepdim=True).abs().clamp_min(torch.finfo(s.dtype).tiny)
    size = ((delta * y_sharp).sum(-1, keepdim=True).abs() / curvature_s).clamp(max=1.0)
    s = s * size.unsqueeze(-1)
    w = y_sharp - size * s_delta
    ok = y_delta > 1e-12 * (y.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True))
    y_delta = torch.where(ok, y_delta, torch.ones_like(y_delta))
    update = (w.unsqueeze(-1) * y.unsqueeze(-2) + y.unsqueeze(-1) * w.unsqueeze(-2)) / y_delta.unsqueeze(-1) - (
        (w * delta).sum(-1, keepdim=True) / y_delta**2
    ).unsqueeze(-1) * y.unsqueeze(-1) * y.unsqueeze(-2)
    return s + update * ok.unsqueeze(-1)


@dataclass
class Flat:
    """Pairs and restarts flattened into Q = prod(batch_shape) * R independent problems."""

    z0: Tensor  # (Q, d)
    z1: Tensor  # (Q, d)
    c: Tensor  # (Q, M) starts
    batch_shape: torch.Size
    num_restarts: int
    warm: Tensor | None = None  # (Q,) bool: starts near their answer (``solve``'s warm budget), or None: none

    def best(self, c: Tensor, e: Tensor, it: Tensor) -> InferenceResult:
        """The lowest-energy restart of each pair, in the caller's batch shape."""
        m, shape, r = c.shape[-1], self.batch_shape, self.num_restarts
        c_all, e_all, it_all = c.view(*shape, r, m), e.view(*shape, r), it.view(*shape, r)
        best = e_all.argmin(-1, keepdim=True)  # (..., 1)
        return InferenceResult(
            c=c_all.gather(-2, best.unsqueeze(-1).expand(*shape, 1, m)).squeeze(-2),
            energy=e_all.gather(-1, best).squeeze(-1),
            num_iters=it_all.gather(-1, best).squeeze(-1),
        )


@dataclass
class Screen:
    """Pairs that compete: after ``after`` iterations only the ``keep`` lowest-energy pairs of each group go on
    iterating; the others return the c they have reached. ``groups`` (Q,) holds each pair's group, -1 for pairs
    that never compete."""

    groups: Tensor
    after: int
    keep: int

    def survivors(self, e: Tensor) -> Tensor:
        """Which of the Q pairs, at energies e (Q,) (those that already stopped at their final energy), may go on:
        the ``keep`` lowest of each group, and every pair of group -1."""
        order = torch.argsort(e, stable=True)
        order = order[torch.argsort(self.groups[order], stable=True)]  # by group, then by energy within it
        sorted_groups = self.groups[order]
        pos = torch.arange(order.numel(), device=e.device)
        starts = torch.ones_like(sorted_groups, dtype=torch.bool)
        starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
        rank = pos - torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
        keep = torch.empty_like(starts)
        keep[order] = (rank < self.keep) | (sorted_groups < 0)
        return keep


def screen_groups(flat: Flat, screened: bool, offset: int) -> Tensor:
    """Group ids (Q,) of a request's flattened pairs, from ``offset`` on: when ``screened``, the pairs
    that share every batch index but the last (a sample's anchors) and their restarts form one group; otherwise
    -1."""
    q = flat.c.shape[0]
    if not screened:
        return torch.full((q,), -1, dtype=torch.long, device=flat.c.device)
    per_group = flat.num_restarts * (flat.batch_shape[-1] if len(flat.batch_shape) else 1)
    return offset + torch.arange(q, device=flat.c.device) // per_group


def flatten(
    psi: Tensor,
    z0: Tensor,
    z1: Tensor,
    c_init: Tensor | None,
    restarts: Sequence[Sequence[float]],
    generator: torch.Generator | None,
    warm: Tensor | None = None,
) -> Flat:
    """Q = prod(batch) * R problems from pairs z0, z1 (..., d) and starts c_init ((..., M), (..., R, M) or None:
    ``restarts``' draws); ``warm`` (..., R) bool marks the starts that are warm (``solve``)."""
    m, d = psi.shape[0], psi.shape[-1]
    for name, z in (("z0", z0), ("z1", z1)):
        if z.shape[-1:] != (d,):
            raise ValueError(f"{name} must have shape (..., d={d}), got {tuple(z.shape)}")
        check_finite(name, z)
    batch_shape = torch.broadcast_shapes(z0.shape[:-1], z1.shape[:-1])
    if warm is not None and (c_init is None or warm.dtype != torch.bool):
        raise ValueError("warm marks explicit starts: give it as a bool tensor (..., R) together with c_init")
    if c_init is None:
        c_init = restart_inits(batch_shape, m, restarts, generator=generator, dtype=psi.dtype, device=psi.device)
    else:
        if c_init.shape[-1] != m:
            raise ValueError(f"c_init must have shape (..., M={m}) or (..., R, M), got {tuple(c_init.shape)}")
        check_finite("c_init", c_init)
        c_init = c_init.detach().to(psi.dtype)
        if c_init.shape[:-1] == batch_shape:
            c_init = c_init.unsqueeze(-2)
        c_init = c_init.expand(*batch_shape, c_init.shape[-2], m)
    r = c_init.shape[-2]
    if warm is not None:
        if warm.dim() == len(batch_shape):  # one flag per pair
            warm = warm.unsqueeze(-1)
        warm = warm.to(psi.device).expand(*batch_shape, r).reshape(-1)
    z0q = z0.detach().to(psi.dtype).expand(*batch_shape, d).unsqueeze(-2).expand(*batch_shape, r, d)
    z1q = z1.detach().to(psi.dtype).expand(*batch_shape, d).unsqueeze(-2).expand(*batch_shape, r, d)
    return Flat(z0q.reshape(-1, d), z1q.reshape(-1, d), c_init.reshape(-1, m).clone(), batch_shape, r, warm)


def solve(
    psi: Tensor, z0: Tensor, z1: Tensor, c: Tensor, l1_weight: Tensor, max_iter: int, ftol: float | None,
    max_norm: float,
    max_step: float = 1.0,
    bound: Tensor | None = None,
    jacobian_dtype: torch.dtype | None = None,
    screen: Screen | None = None,
    warm: Tensor | None = None,
    warm_iter: Tensor | int | None = None,
    broyden: Tensor | None = None,
) -> InferenceResult:
    """Proximal Levenberg-Marquardt on Q flattened problems: z0, z1 (Q, d), c (Q, M) initial, lambda (Q,),
    and an optional box |c_m| <= bound (Q,) (inf: none), kept by projecting every step onto it. ``screen``
    drops the losers of each competing group from the working set after its first iterations.

    ``warm`` (Q,) bool marks starts already near their answer (a cached c_hat, the sampled c of a posterior
    sample): they skip the L1 continuation, which would first pull them back towards c = 0, and stop after
    ``warm_iter`` (an int, or (Q,) per pair) iterations if they have not converged before (docs/method.md §1.3).
    ``broyden`` (Q,) bool: these pairs compute the Jacobian once, at their start, and then update it by Broyden's rule
    (``_broyden_update``) instead of recomputing it after every accepted step."""
    q, m = c.shape
    limit = _limits(q, max_iter, warm, warm_iter, c.device)
    if bound is not None:
        c = torch.maximum(torch.minimum(c, bound.unsqueeze(-1)), -bound.unsqueeze(-1))
    z0_all, z1_all, l1_all = z0, z1, l1_weight
    eps = torch.finfo(c.dtype).eps
    xtol = eps**0.5  # relative step size at which a pair counts as converged
    ftol = ftol if ftol is not None else max(16 * eps, 1e-12)

    kernel = transport_apply(psi)  # the evaluation of T(c) z0 and its Jacobian that suits Psi's shape
    if isinstance(kernel, EigenTransportApply):
        return InferenceResult(*solve_scalar(kernel, z0, z1, c[:, 0], l1_weight, max_iter, ftol, max_norm, max_step,
                                              bound, screen, limit))
    e, r = _residual(kernel, z0, z1, c, l1_weight, max_norm)
    bad = ~torch.isfinite(e)
    if bool(bad.any()):
        # A start so large that expm overflows (or beyond max_norm): restart it from c = 0, where T = I.
        c = torch.where(bad.unsqueeze(-1), torch.zeros_like(c), c)
        e, r = _residual(kernel, z0, z1, c, l1_weight, max_norm)
    jac = _jacobian(kernel, z0, c, jacobian_dtype)

    c = c.clone()  # updated in place below
    out_c = c.clone()
    out_it = torch.zeros(q, dtype=torch.long, device=c.device)
    idx = torch.arange(q, device=c.device)  # original index of each working-set row
    g = (jac.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)  # (Q, M) gradient of the smooth part
    s2 = torch.zeros(q, m, m, dtype=c.dtype, device=c.device)  # secant estimate of the 2nd-order term
    mu = 1e-3 * torch.diagonal(jac.transpose(1, 2) @ jac, dim1=-2, dim2=-1).amax(-1) + eps
    nu = torch.full_like(mu, 2.0)
    its = torch.zeros(q, dtype=torch.long, device=c.device)
    # L1 continuation when M > d. Then J^T J is singular: the residual can be driven to zero along a whole
    # (M - d)-dimensional manifold, and a tiny lambda alone makes LM land on that manifold wherever the
    # start points and then creep along it for hundreds of iterations. Starting with lambda boosted to the
    # scale of the gradient and shrinking it geometrically keeps the path near the sparse end of the
    # manifold (the homotopy of LARS / SpaRSA-style continuation); the boost is gone after ~25 iterations.
    boost = 0.5 * g.abs().amax(-1) if m > z0.shape[-1] else torch.zeros_like(mu)
    if warm is not None:
        boost = torch.where(warm, torch.zeros_like(boost), boost)
    unboosted = 1e-3 * l1_weight  # below this the boost no longer changes E measurably
    # Geometric decay that reaches `unboosted` after 40% of the iteration budget, leaving the rest to converge
    # at the true lambda (0.6 per iteration for max_iter = 100; tuned on the benchmark problems).
    decay = (unboosted / boost.clamp_min(unboosted)).clamp_max(1.0) ** (2.5 / max_iter)

    # With screening, the energies at which pairs stopped, so that a pair that converged early still counts
    # among its group's best.
    stopped_e = None if screen is None else torch.full((q,), math.inf, dtype=c.dtype, device=c.device)
    for it in range(1, max_iter + 1):
        lam = l1_weight + boost
        e = 0.5 * r.pow(2).sum(-1) + lam * c.abs().sum(-1)
        h = jac.transpose(1, 2) @ jac + s2  # (Q, M, M)
        x, predicted = _orthant_newton_step(c, g, h, mu, lam, kernel, max_step, bound)
        e_new, r_new = _residual(kernel, z0, z1, x, lam, max_norm)
        accept = torch.isfinite(e_new) & (e_new < e)
        rho = ((e - e_new) / predicted.clamp_min(eps * e.clamp_min(eps))).clamp(0.0, 1.0)
        # Nielsen (1999): shrink mu smoothly with the gain ratio on success, grow it geometrically on failure.
        mu = torch.where(accept, mu * torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3), mu * nu)
        nu = torch.where(accept, torch.full_like(nu, 2.0), nu * 2)
        # Converged: the step no longer moves c, or neither the actual nor the predicted decrease is
        # above ftol relative to E (the model has nothing left to give), or damping has run away.
        small_step = accept & ((x - c).abs().amax(-1) <= xtol * (c.abs().amax(-1) + xtol))
        stalled = (predicted.abs() <= ftol * e) | (accept & ((e - e_new) <= ftol * e))
        converged = small_step | stalled | (nu > 2.0**10) | (e <= eps * eps)
        done = (converged & (boost <= unboosted)) | (its + 1 >= limit)
        # Accepted steps move: new point, residual, Jacobian (computed only here, where it will be used:
        # the M directional derivatives cost about M times the trial evaluation), gradient, secant term.
        moved = accept.nonzero().squeeze(-1)
        if moved.numel():
            x_a, r_a = x[moved], r_new[moved]
            cheap = None if broyden is None else broyden[moved]
            jac_a = _jacobian(kernel, z0[moved], x_a, jacobian_dtype, exact=None if cheap is None else ~cheap)
            if cheap is not None and bool(cheap.any()):
                jac_a[cheap] = _broyden_update(jac[moved][cheap], (x_a - c[moved])[cheap], (r_a - r[moved])[cheap])
            g_a = (jac_a.transpose(1, 2) @ r_a.unsqueeze(-1)).squeeze(-1)
            y_sharp = g_a - (jac[moved].transpose(1, 2) @ r_a.unsqueeze(-1)).squeeze(-1)
            s2[moved] = _secant_update(s2[moved], x_a - c[moved], g_a - g[moved], y_sharp)
            c[moved], r[moved], g[moved], jac[moved] = x_a, r_a, g_a, jac_a
        boost = torch.where(boost > unboosted, decay * boost, torch.zeros_like(boost))
        its = its + 1
        if screen is not None and it <= screen.after:
            e_now = 0.5 * r.pow(2).sum(-1) + l1_weight * c.abs().sum(-1)
            if it == screen.after:
                done = done | ~screen.survivors(stopped_e.index_put((idx,), e_now))[idx]
            stopped_e[idx[done]] = e_now[done]
        if bool(done.any()):
            out_c[idx[done]], out_it[idx[done]] = c[done], its[done]
            keep = ~done
            idx, c, r, g, jac, s2, mu, nu, its, boost, decay, l1_weight, unboosted, limit = (
                t[keep] for t in (idx, c, r, g, jac, s2, mu, nu, its, boost, decay, l1_weight, unboosted, limit)
            )
            broyden = None if broyden is None else broyden[keep]
            bound = None if bound is None else bound[keep]
            z0, z1 = z0[keep], z1[keep]
            if idx.numel() == 0:
                break
    if idx.numel():
        out_c[idx], out_it[idx] = c, its
    # Energies at the true lambda, from the residuals the solver already has (no boost left in them).
    out_e = energy(psi, z0_all, z1_all, out_c, l1_all)
    return InferenceResult(c=out_c, energy=out_e, num_iters=out_it)


def solve_scalar(
    kernel: EigenTransportApply, z0: Tensor, z1: Tensor, c: Tensor, l1_weight: Tensor, max_iter: int, ftol: float,
    max_norm: float, max_step: float, bound: Tensor | None, screen: Screen | None = None,
    iter_cap: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One operator (M = 1) in Psi's eigenbasis: exact proximal Newton on the scalar problem
    E(c) = 1/2 ||r(c)||^2 + lambda |c|, r(c) = V (e^(c Lambda) * V^-1 z0) - z1 (docs/method.md §1.3).

    With one coefficient the second derivative E'' = r'.r' + r.r'' is as cheap as the residual
    (``EigenTransportApply.derivatives``), so no Gauss-Newton approximation, secant term or linear solve is
    needed: the step minimises g d + 1/2 h d^2 + lambda |c + d| in closed form (a soft threshold), within a
    trust radius that doubles after a success and shrinks to a quarter of the failed step. Where E is not
    convex (h <= |g| / radius) the curvature is raised to |g| / radius, a step of the radius downhill.
    This is a few elementwise operations per pair and iteration, against the general solver's hundreds of
    small tensor operations; the minimiser sought is the same. c (Q,) starts, lambda and bound (Q,), ``screen``
    as in ``solve``, ``iter_cap`` (Q,) each pair's iteration cap (default max_iter); returns c_hat (Q, 1), E(c_hat) (Q,)
    and the iterations each pair used (Q,).
    """
    q = c.shape[0]
    eps = torch.finfo(c.dtype).eps
    xtol = eps**0.5
    # Coefficients beyond max_norm / ||Psi||_1 are never needed (``_residual``): they are a box here.
    limit = torch.full_like(c, max_norm) / kernel.psi_norm.clamp_min(torch.finfo(c.dtype).tiny)
    hi = limit if bound is None else torch.minimum(bound, limit)
    w0 = kernel.eigen_coordinates(z0)

    def evaluate(x: Tensor, w0: Tensor, z1: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = kernel.derivatives(w0, x)  # (Q, 3, d)
        r = t[:, 0] - z1
        e = 0.5 * r.pow(2).sum(-1) + lam * x.abs()
        return e, (r * t[:, 1]).sum(-1), t[:, 1].pow(2).sum(-1) + (r * t[:, 2]).sum(-1)

    c = torch.maximum(torch.minimum(c, hi), -hi)
    lam = l1_weight
    e, g, h = evaluate(c, w0, z1, lam)
    radius = torch.full_like(c, max_step) / kernel.psi_norm.clamp_min(torch.finfo(c.dtype).tiny)
    out_c, out_e = c.clone(), e.clone()
    out_it = torch.full((q,), max_iter, dtype=torch.long, device=c.device)
    idx = torch.arange(q, device=c.device)
    its = out_it.clone()
    live = torch.ones(q, dtype=torch.bool, device=c.device)
    for it in range(1, max_iter + 1):
        curv = torch.maximum(h, g.abs() / radius).clamp_min(torch.finfo(c.dtype).tiny)
        x = _soft(c - g / curv, lam / curv)
        x = torch.maximum(torch.minimum(c + (x - c).clamp(-radius, radius), hi), -hi)
        delta = x - c
        predicted = -(g * delta + 0.5 * curv * delta * delta) + lam * (c.abs() - x.abs())
        e_new, g_new, h_new = evaluate(x, w0, z1, lam)
        accept = live & torch.isfinite(e_new) & (e_new < e)
        step = delta.abs()
        scale = xtol * (c.abs() + xtol)
        done = ((accept & (step <= scale)) | (predicted.abs() <= ftol * e) | (accept & (e - e_new <= ftol * e))
                | (radius <= scale) | (e <= eps * eps))
        if iter_cap is not None:
            done = done | (iter_cap <= it)
        radius = torch.where(live, torch.where(accept, torch.maximum(radius, 2 * step), 0.25 * step), radius)
        c, e, g, h = (torch.where(accept, new, old) for new, old in ((x, c), (e_new, e), (g_new, g), (h_new, h)))
        if screen is not None and it == screen.after:  # out_e holds the energies of the pairs compacted away
            done = done | ~screen.survivors(out_e.index_put((idx,), e))[idx]
        its = torch.where(done & live, it, its)
        live = live & ~done
        left = int(live.sum())
        if left == 0:
            break
        # Converged pairs stay frozen in place (masked) until they are half the working set: compacting costs
        # a dozen gathers, which would outweigh an iteration's arithmetic if done every time.
        if left <= live.shape[0] // 2:
            out = ~live
            out_c[idx[out]], out_e[idx[out]], out_it[idx[out]] = c[out], e[out], its[out]
            idx, c, e, g, h, radius, hi, lam, w0, z1, its = (
                t[live] for t in (idx, c, e, g, h, radius, hi, lam, w0, z1, its))
            iter_cap = None if iter_cap is None else iter_cap[live]
            live = live[live]
    out_c[idx], out_e[idx], out_it[idx] = c, e, its
    return out_c.unsqueeze(-1), out_e, out_it


def _limits(q: int, max_iter: int, warm: Tensor | None, warm_iter: Tensor | int | None,
            device: torch.device) -> Tensor:
    """Each pair's iteration cap (Q,): ``warm_iter`` for warm starts (capped at max_iter), max_iter for the rest."""
    limit = torch.full((q,), max_iter, dtype=torch.long, device=device)
    if warm is None or warm_iter is None:
        return limit
    warm_iter = torch.as_tensor(warm_iter, dtype=torch.long, device=device).expand(q)
    return torch.where(warm, warm_iter.clamp(1, max_iter), limit)


def energy(psi: Tensor, z0: Tensor, z1: Tensor, c: Tensor, l1_weight: float | Tensor) -> Tensor:
    """E(c) = 1/2 ||z1 - T(c) z0||^2 + lambda ||c||_1.  z0, z1 (..., d), c (..., M) -> (...,)."""
    tz0 = (expm(generator_matrix(psi, c)) @ z0.to(psi.dtype).unsqueeze(-1)).squeeze(-1)
    return 0.5 * (z1.to(psi.dtype) - tz0).pow(2).sum(-1) + l1_weight * c.to(psi.dtype).abs().sum(-1)
