"""Batched MAP inference of transport-operator coefficients (paper sec. 2.3, eq. 7; docs/method.md §1.3).

For P pairs (z0, z1) we solve, all at once,

    c_hat = argmin_c  E(c),   E(c) = 1/2 ||z1 - T_Psi(c) z0||^2 + lambda ||c||_1.

The pairs are every (sample, anchor, restart) triple of a training step, flattened into one tensor program;
there is no Python loop over pairs. The solver is a proximal Levenberg-Marquardt method:

* Jacobian. d/dc_m [T(c) z0] = L(A, Psi_m) z0, where L(A, E) is the Frechet derivative of expm at A in
  direction E. ``transport.expm_frechet_apply`` computes expm(A) z0 and all M derivatives in one batched pass
  (forward-mode scaling and squaring, equivalent to exponentiating [[A, Psi_m], [0, A]]); no autograd and
  no eigendecomposition of A, which the release used and which is ill-conditioned exactly where training
  starts, at A = 0 with repeated eigenvalues. Where Psi's shape allows an exact shortcut
  (``transport.transport_apply``: one operator, whose eigenbasis does not depend on c, or d = 2) it is used
  instead (docs/method.md §1.3).
* Step. With J (P, d, M) and r = T z0 - z1, minimise the composite model
  g.delta + 1/2 delta^T (J^T J + mu I) delta + lambda ||c + delta||_1 by an orthant-wise Newton step
  (Andrew & Gao 2007): minimum-norm pseudo-gradient of the L1 term, a Newton solve on the free coordinates,
  then projection back onto the current orthant, so coefficients that cross zero land exactly on zero.
* Damping. Nielsen's gain-ratio rule for mu; a step is taken only if E decreases, so E is monotone and a
  non-finite trial point (expm overflow for huge coefficients) is simply rejected.
* Each pair stops on its own (small step, no decrease, or ten rejections in a row) and leaves the working
  set, so later iterations only pay for the pairs that still move.
* One operator (M = 1) with a well-conditioned eigenbasis has its own solver (``solve_scalar``): the
  problem is then one-dimensional and its exact second derivative costs no more than the residual, so a
  proximal Newton step in closed form replaces the Jacobian products, the secant term and the M x M solves.

M is small (1 to 8 in the paper), so the M x M solves are cheap and the method converges quadratically near
a minimum: typically in 5-15 iterations where scipy's CG in the authors' release takes its full 50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vaells.solver import InferenceResult, Screen, energy, flatten, restart_inits, screen_groups, solve
from vaells.transport import check_finite

# The energy, the result type and the restarts' draw live beside the iterations; they are part of this API.
__all__ = ["DEFAULT_RESTARTS", "CoefficientSolver", "InferenceResult", "energy", "infer_coefficients", "infer_jointly",
           "restart_inits"]

#: The release's prior restarts: restart r draws c0 ~ U[-2.5 + 2.5 r, 2.5 r] (docs/method.md §1.3).
DEFAULT_RESTARTS: tuple[tuple[float, float], ...] = ((-2.5, 0.0), (0.0, 2.5))


@torch.no_grad()
def infer_coefficients(
    psi: Tensor,
    z0: Tensor,
    z1: Tensor,
    *,
    l1_weight: float = 1e-6,
    restarts: Sequence[Sequence[float]] = DEFAULT_RESTARTS,
    c_init: Tensor | None = None,
    max_iter: int = 100,
    ftol: float | None = None,
    max_norm: float = 20.0,
    max_coeff: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    jacobian_dtype: torch.dtype | None = None,
    screen_after: int | None = None,
    screen_keep: int = 1,
    warm: Tensor | None = None,
    warm_iter: int | None = None,
    broyden: bool = False,
) -> InferenceResult:
    """MAP coefficients c_hat(z0 -> z1) for a batch of pairs, with random restarts; the lowest energy wins.

    Args:
        psi: (M, d, d) dictionary.
        z0, z1: (..., d) start and end points; broadcast against each other.
        l1_weight: lambda >= 0.
        restarts: R ranges (low, high); restart r starts from c0 ~ U[low_r, high_r]^M.
        c_init: optional explicit starts, (..., M) or (..., R', M); used *instead of* ``restarts`` (give a
            warm start together with random ones by concatenating ``restart_inits`` yourself).
        max_iter: iteration cap per pair and restart.
        ftol: a pair stops when an iteration's actual and predicted decrease of E fall below ftol * E;
            default max(16 eps, 1e-12): past that, convergence is quadratic and the gap is below roundoff.
        max_norm: trial points with ||sum_m c_m Psi_m||_1 above this are rejected (expm would grow like
            e^max_norm); a start beyond it is replaced by c = 0.
        max_coeff: optional box |c_m| <= max_coeff on the solution (see ``CoefficientSolver``).
        generator: random generator for the restart draws.
        dtype: the dtype to solve in; defaults to psi's (float64 in the project's default configuration).
        jacobian_dtype: the dtype of the Jacobian (the search direction only; energies, acceptance and the
            returned c stay in ``dtype``); defaults to ``dtype``.
        screen_after, screen_keep: for callers that keep only the lowest-energy entry along the last batch
            dimension (a closest-anchor prior: z0 (B, N_a, d) anchors, z1 (B, 1, d)): after ``screen_after``
            iterations only the ``screen_keep`` lowest-energy pairs of each group (one sample's anchors and their
            restarts) go on iterating; the others return the c they have reached, with its true energy (docs/
            method.md §1.3). None: no screening.
        warm: optional (..., R) bool, or (...) for one start per pair: which of ``c_init``'s starts are warm, i.e.
            already near their answer (a cached c_hat, a posterior sample's own c). Warm starts skip the L1
            continuation and stop after ``warm_iter`` iterations (default ``max_iter``) if not converged before.
        broyden: warm starts compute the Jacobian once and then update it by Broyden's rank-one rule.

    Returns:
        ``InferenceResult`` with c (..., M), energy (...,) and num_iters (...,) of the winning restart.

    The returned coefficients are detached, and callers treat them as constants. For E itself that is exact:
    c_hat minimises E(c; psi, z0, z1), so dE/dc = 0 there (up to the L1 kink), and by the envelope theorem the
    total derivative of E(c_hat(theta); theta) equals the partial derivative at fixed c_hat. For any other
    function of c_hat, such as a loss whose L1 weight differs from this ``l1_weight``, it is an approximation,
    the release's (docs/method.md §1.3).
    """
    _check_settings(psi, l1_weight, max_iter)
    dtype = dtype or psi.dtype
    psi = psi.detach().to(dtype)
    flat = flatten(psi, z0, z1, c_init, restarts, generator, warm)
    l1 = torch.full((flat.c.shape[0],), float(l1_weight), dtype=dtype, device=psi.device)
    screen = None
    if screen_after is not None:
        groups = screen_groups(flat, True, 0)
        screen = Screen(groups, int(screen_after), int(screen_keep))
    solution = solve(psi, flat.z0, flat.z1, flat.c, l1, max_iter, ftol, max_norm, bound=_bound(max_coeff, l1),
                      jacobian_dtype=_dtype(jacobian_dtype), screen=screen, warm=flat.warm, warm_iter=warm_iter,
                      broyden=flat.warm if broyden else None)
    return flat.best(solution.c, solution.energy, solution.num_iters)


@torch.no_grad()
def infer_jointly(psi: Tensor, requests: Sequence[tuple]) -> list[InferenceResult]:
    """Several inference problems, each with its own solver settings (lambda, restarts), in one program.

    ``requests`` holds (solver, z0, z1, c_init) or (solver, z0, z1, c_init, warm) tuples, e.g. a training step's
    posterior (mu -> z) and prior (anchors -> z) problems; ``warm`` marks warm starts as in ``infer_coefficients``,
    each request's under its own solver's ``warm_iter``. They share one solver loop, so its per-iteration overhead,
    which dominates for small d and M, is paid once instead of once per problem. The iteration cap is the largest
    of the solvers', ftol the smallest. Returns one ``InferenceResult`` per request, as
    ``infer_coefficients`` would.
    """
    requests = [(*r, None) if len(r) == 4 else tuple(r) for r in requests]
    solvers = [r[0] for r in requests]
    dtype = next((sv.dtype for sv in solvers if sv.dtype is not None), psi.dtype)
    for sv in solvers:
        _check_settings(psi, sv.l1_weight, sv.max_iter)
    psi = psi.detach().to(dtype)
    flats = [flatten(psi, z0, z1, c_init, sv.restarts, None, warm) for sv, z0, z1, c_init, warm in requests]
    sizes = [f.c.shape[0] for f in flats]
    warm, warm_iter, broyden = None, None, None
    if any(f.warm is not None for f in flats):
        warm = torch.cat([torch.zeros(n, dtype=torch.bool, device=psi.device) if f.warm is None else f.warm
                          for f, n in zip(flats, sizes, strict=True)])
        warm_iter = torch.cat([torch.full((n,), sv.warm_iter or sv.max_iter, dtype=torch.long, device=psi.device)
                               for sv, n in zip(solvers, sizes, strict=True)])
        broyden = torch.cat([part & sv.broyden for part, sv in zip(warm.split(sizes), solvers, strict=True)])
    l1 = torch.cat([torch.full((n,), sv.l1_weight, dtype=dtype, device=psi.device)
                    for sv, n in zip(solvers, sizes, strict=True)])
    ftols = [sv.ftol for sv in solvers if sv.ftol is not None]
    bound = None
    if any(sv.max_coeff is not None for sv in solvers):
        bound = torch.cat([_bound(sv.max_coeff, l1[:n], inf=True) for sv, n in zip(solvers, sizes, strict=True)])
    screen = None
    if any(sv.screen_after is not None for sv in solvers):
        groups, offset = [], 0
        for f, sv in zip(flats, solvers, strict=True):  # group ids unique across the requests
            groups.append(screen_groups(f, sv.screen_after is not None, offset))
            offset += f.c.shape[0]
        afters = {sv.screen_after for sv in solvers} - {None}
        keeps = {sv.screen_keep for sv in solvers if sv.screen_after is not None}
        if len(afters) > 1 or len(keeps) > 1:
            raise ValueError(f"solvers solved jointly must screen alike; got screen_after {sorted(afters)} and "
                             f"screen_keep {sorted(keeps)}")
        screen = Screen(torch.cat(groups), afters.pop(), keeps.pop())
    solution = solve(
        psi, torch.cat([f.z0 for f in flats]), torch.cat([f.z1 for f in flats]), torch.cat([f.c for f in flats]),
        l1, max(sv.max_iter for sv in solvers), min(ftols) if ftols else None, 20.0, bound=bound,
        jacobian_dtype=_joint_jacobian_dtype(solvers), screen=screen, warm=warm, warm_iter=warm_iter,
        broyden=broyden,
    )
    parts = zip(*(t.split(sizes) for t in (solution.c, solution.energy, solution.num_iters)), strict=True)
    return [f.best(c, e, it) for f, (c, e, it) in zip(flats, parts, strict=True)]


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    return getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype


def _joint_jacobian_dtype(solvers: Sequence[CoefficientSolver]) -> torch.dtype | None:
    """One Jacobian dtype for a joint solve: a lower precision only when every solver asks for it."""
    dtypes = {sv.jacobian_dtype for sv in solvers}
    return dtypes.pop() if len(dtypes) == 1 else None


def _bound(max_coeff: float | None, like: Tensor, inf: bool = False) -> Tensor | None:
    """The per-pair box (Q,) for ``solve``: max_coeff, or inf (when other pairs have one) or None."""
    if max_coeff is None and not inf:
        return None
    return torch.full_like(like, math.inf if max_coeff is None else float(max_coeff))


def _check_settings(psi: Tensor, l1_weight: float, max_iter: int) -> None:
    if psi.dim() != 3 or psi.shape[1] != psi.shape[2]:
        raise ValueError(f"psi must have shape (M, d, d), got {tuple(psi.shape)}")
    if l1_weight < 0:
        raise ValueError(f"l1_weight must be >= 0, got {l1_weight}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    check_finite("psi", psi)


class CoefficientSolver:
    """Configured coefficient inference, so that configs can hold it as data (``_target_``).

    The posterior (mu -> z) and prior (anchor -> z) use different solvers: the release infers the
    posterior with lambda_post = 1e-6 and one start in U(0, 1), and the prior with its own lambda_prior
    and R restarts (docs/method.md §1.3).

    ``max_coeff`` bounds every coefficient, |c_m| <= max_coeff (None: unbounded). With M > d the residual can
    be driven to zero along a whole family of coefficients, and operators near their small initialisation
    reach any target with a large |c|; the prior's residual, Psi's only gradient from the prior (c_hat is a
    constant), then vanishes and the operators never grow. A bound keeps the residual until Psi has grown
    enough for plausible coefficients to reach the anchors.

    ``warm_iter`` caps the iterations of warm starts (``infer_coefficients``' ``warm``; None: ``max_iter``): a pair
    that starts near its answer needs a few refining iterations, and the cap keeps the pairs that do not converge
    (M > d, where lambda alone picks among exact solutions) from running to ``max_iter`` (docs/method.md §1.3).
    ``broyden``: warm starts compute their Jacobian once and update it by Broyden's rank-one rule after that, for
    about half the cost of an iteration where M is large; cold starts always recompute it.
    """

    def __init__(
        self,
        l1_weight: float = 1e-6,
        restarts: Sequence[Sequence[float]] = DEFAULT_RESTARTS,
        max_iter: int = 100,
        ftol: float | None = None,
        dtype: str | torch.dtype | None = None,
        max_coeff: float | None = None,
        jacobian_dtype: str | torch.dtype | None = None,
        screen_after: int | None = None,
        screen_keep: int = 1,
        warm_iter: int | None = None,
        broyden: bool = False,
    ) -> None:
        if warm_iter is not None and not 1 <= int(warm_iter) <= int(max_iter):
            raise ValueError(f"warm_iter={warm_iter} must lie in [1, max_iter={max_iter}], or be null for max_iter")
        self.warm_iter = None if warm_iter is None else int(warm_iter)
        self.broyden = bool(broyden)
        if l1_weight < 0:
            raise ValueError(f"l1_weight must be >= 0, got {l1_weight}")
        if screen_after is not None and not 1 <= int(screen_after) < int(max_iter):
            raise ValueError(f"screen_after={screen_after} must lie in [1, max_iter={max_iter}): set it below "
                             "max_iter, or null for no screening")
        if int(screen_keep) < 1:
            raise ValueError(f"screen_keep must be >= 1, got {screen_keep}")
        self.screen_after = None if screen_after is None else int(screen_after)
        self.screen_keep = int(screen_keep)
        if max_coeff is not None and not max_coeff > 0:
            raise ValueError(f"max_coeff must be > 0 (or null for no bound), got {max_coeff}")
        self.max_coeff = None if max_coeff is None else float(max_coeff)
        if not restarts:
            raise ValueError("restarts must name at least one (low, high) range")
        self.l1_weight = float(l1_weight)
        self.restarts = tuple((float(lo), float(hi)) for lo, hi in restarts)
        self.max_iter = int(max_iter)
        self.ftol = ftol
        self.dtype = _dtype(dtype)
        self.jacobian_dtype = _dtype(jacobian_dtype)

    def __call__(
        self,
        psi: Tensor,
        z0: Tensor,
        z1: Tensor,
        c_init: Tensor | None = None,
        generator: torch.Generator | None = None,
        warm: Tensor | None = None,
    ) -> InferenceResult:
        return infer_coefficients(
            psi, z0, z1, l1_weight=self.l1_weight, restarts=self.restarts, c_init=c_init,
            max_iter=self.max_iter, ftol=self.ftol, max_coeff=self.max_coeff, generator=generator, dtype=self.dtype,
            jacobian_dtype=self.jacobian_dtype, screen_after=self.screen_after, screen_keep=self.screen_keep,
            warm=warm, warm_iter=self.warm_iter, broyden=self.broyden,
        )

    def __repr__(self) -> str:
        return (f"CoefficientSolver(l1_weight={self.l1_weight}, restarts={self.restarts}, max_iter={self.max_iter}, "
                f"max_coeff={self.max_coeff})")
