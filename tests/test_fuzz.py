"""Property-based fuzzing (hypothesis) of the transport math and the coefficient solver: generic, defective,
nilpotent, near-singular, rotation and zero generators, large coefficients and restarts, zero vectors, float32
and float64. Wherever the exact result is representable, what comes out is finite and matches a reference
(``torch.linalg.matrix_exp``, its forward-mode derivative); the solver's answers are finite, consistent with
its own energy and never worse than their start; non-finite or ill-shaped input raises a ValueError that names
the argument.

The default profile keeps the run short; ``HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz.py`` searches
longer.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaells.inference import CoefficientSolver, energy, infer_coefficients, infer_jointly
from vaells.transport import TransportOperator, expm, expm_frechet_apply, generator_matrix

settings.register_profile("default", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DTYPES = st.sampled_from([torch.float32, torch.float64])
#: The solver's trust region on generators (inference.infer_coefficients' max_norm): the largest ||A||_1 that
#: training ever exponentiates.
MAX_NORM = 20.0
#: Relative accuracy of expm against the float64 reference, per dtype.
EXPM_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


# -- generators -----------------------------------------------------------------------------------------
def _entries(d: int, scale: float = 1.0):
    return hnp.arrays(np.float64, (d, d), elements=st.floats(-scale, scale, allow_nan=False, width=64))


@st.composite
def generators(draw, d: int | None = None) -> np.ndarray:
    """A (d, d) generator of one of the shapes where expm and its derivatives are delicate."""
    d = d if d is not None else draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["generic", "defective", "nilpotent", "near_singular", "rotation", "zero"]))
    if kind == "zero":
        return np.zeros((d, d))
    if kind == "generic":
        a = draw(_entries(d))
    elif kind == "defective":  # one Jordan block, seen through a well-conditioned change of basis
        lam = draw(st.floats(-2, 2))
        j = lam * np.eye(d) + np.diag(np.ones(d - 1), 1)
        q = np.linalg.qr(draw(_entries(d)) + 3 * np.eye(d))[0]
        a = q @ j @ q.T
    elif kind == "nilpotent":
        a = np.triu(draw(_entries(d)), 1)
    elif kind == "near_singular":  # rank one plus a perturbation at roundoff scale
        u, v = draw(hnp.arrays(np.float64, (2, d), elements=st.floats(-1, 1)))
        a = np.outer(u, v) + draw(st.floats(0, 1e-12)) * np.eye(d)
    else:  # skew-symmetric: a rotation's generator
        b = draw(_entries(d))
        a = b - b.T
    return a * draw(st.sampled_from([1e-8, 1e-3, 1.0, 10.0]))


def _bounded(a: np.ndarray, norm: float = MAX_NORM) -> np.ndarray:
    """``a`` scaled down to ||a||_1 <= norm, where expm stays far from overflow in float32 too."""
    n = np.abs(a).sum(0).max() if a.size else 0.0
    return a if n <= norm else a * (norm / n)


def _close(value: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float = 0.0) -> bool:
    return float((value.double() - ref).abs().max()) <= rtol * float(ref.abs().max()) + atol


# -- transport ------------------------------------------------------------------------------------------
@given(a=generators(), dtype=DTYPES)
def test_expm_is_finite_and_matches_matrix_exp(a: np.ndarray, dtype: torch.dtype) -> None:
    a = _bounded(a)
    ref = torch.linalg.matrix_exp(torch.as_tensor(a, dtype=dtype).double())
    out = expm(torch.as_tensor(a, dtype=dtype)[None])[0]
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    # expm's condition number grows with ||A|| for non-normal A: allow for it, not for more.
    assert _close(out, ref, EXPM_RTOL[dtype] * max(1.0, float(np.abs(a).sum(0).max())))


@given(d=st.integers(1, 5), dtype=DTYPES)
def test_expm_of_zero_is_the_identity(d: int, dtype: torch.dtype) -> None:
    assert torch.equal(expm(torch.zeros(3, d, d, dtype=dtype)), torch.eye(d, dtype=dtype).expand(3, d, d))


@given(data=st.data(), d=st.integers(1, 4), m=st.integers(1, 5), dtype=DTYPES,
       tangent_tol=st.sampled_from([None, 1e-8]))
def test_frechet_jacobian_matches_forward_mode_autograd(data, d: int, m: int, dtype: torch.dtype,
                                                         tangent_tol: float | None) -> None:
    """Both paths of ``expm_frechet_apply`` (forward over the M directions, and reverse over the d outputs when
    d < M with a tangent tolerance) against torch's jvp of matrix_exp, on bounded generators."""
    psi = np.stack([_bounded(data.draw(generators(d)), 2.0) for _ in range(m)])
    c = data.draw(hnp.arrays(np.float64, (m,), elements=st.floats(-3, 3)))
    z0 = data.draw(hnp.arrays(np.float64, (d,), elements=st.floats(-10, 10)))
    # The reference sees the inputs as rounded to the dtype under test (float32 flushes 1e-67 to 0).
    psi64, c64, z064 = (torch.as_tensor(v, dtype=dtype).double() for v in (psi, c, z0))
    a64 = generator_matrix(psi64, c64).to(dtype).double()
    tz0, jac = expm_frechet_apply(a64.to(dtype)[None], psi64.to(dtype), z064.to(dtype)[None], tangent_tol=tangent_tol)
    ref_tz0 = torch.linalg.matrix_exp(a64) @ z064
    ref_jac = torch.stack([torch.func.jvp(torch.linalg.matrix_exp, (a64,), (psi64[k],))[1] @ z064
                           for k in range(m)], -1)
    assert bool(torch.isfinite(tz0).all()) and bool(torch.isfinite(jac).all())
    rtol = 1e-7 if dtype == torch.float64 else 1e-3
    scale = float(ref_tz0.abs().max()) + float(ref_jac.abs().max()) + 1e-300
    assert _close(tz0[0], ref_tz0, rtol, rtol * scale)
    assert _close(jac[0], ref_jac, rtol, rtol * scale)


@given(d=st.integers(1, 5), m=st.integers(1, 4), c=st.floats(-1e6, 1e6), dtype=DTYPES)
def test_transport_of_the_zero_vector_and_at_zero_coefficients(d: int, m: int, c: float, dtype) -> None:
    op = TransportOperator(d, m, dtype=dtype)
    z0 = torch.randn(4, d, dtype=dtype)
    assert torch.allclose(op.transport(z0, torch.zeros(4, m)), z0, rtol=0, atol=0)  # T(0) = I exactly
    # Bounded coefficients move the zero vector nowhere; huge ones too where T itself is representable.
    coeff = torch.full((4, m), c, dtype=dtype)
    if float(op.generator(coeff).detach().abs().sum(-2).amax()) <= MAX_NORM:
        assert torch.equal(op.transport(torch.zeros(4, d), coeff), torch.zeros(4, d, dtype=dtype))


def test_transport_refuses_ill_shaped_input() -> None:
    op = TransportOperator(3, 2)
    with pytest.raises(ValueError, match="c must have shape"):
        op.transport(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="z0 must have shape"):
        op.transport(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="num_operators must be >= 1"):
        TransportOperator(3, 0)


# -- inference ------------------------------------------------------------------------------------------
@st.composite
def problems(draw):
    """A dictionary (M, d, d), pairs z0, z1 (P, d) (zero vectors included) and solver settings."""
    d, m, p = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    psi = np.stack([_bounded(draw(generators(d)), 2.0) for _ in range(m)])
    vectors = hnp.arrays(np.float64, (p, d), elements=st.floats(-5, 5))
    z0 = draw(st.one_of(vectors, st.just(np.zeros((p, d)))))
    z1 = draw(st.one_of(vectors, st.just(np.zeros((p, d))), st.just(z0)))
    lo = draw(st.floats(-1e4, 1e4))  # large restarts: starts beyond the trust region restart from 0
    restarts = [(lo, lo + draw(st.floats(0, 1e3))), (0.0, 1.0)]
    return {
        "psi": psi, "z0": z0, "z1": z1, "restarts": restarts,
        "l1_weight": draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0])),
        "max_iter": draw(st.integers(1, 30)),
        "max_coeff": draw(st.sampled_from([None, 0.5, 10.0])),
    }


def _tensors(problem: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.as_tensor(problem[k], dtype=dtype) for k in ("psi", "z0", "z1"))


@given(problem=problems(), dtype=DTYPES)
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_solver_answers_are_finite_consistent_and_no_worse_than_zero(problem: dict, dtype: torch.dtype) -> None:
    psi, z0, z1 = _tensors(problem, dtype)
    options = {k: problem[k] for k in ("l1_weight", "max_iter", "max_coeff")}
    out = infer_coefficients(psi, z0, z1, restarts=problem["restarts"], generator=torch.Generator().manual_seed(0),
                             **options)
    p, m = z0.shape[0], psi.shape[0]
    assert out.c.shape == (p, m) and out.energy.shape == (p,)
    assert bool(torch.isfinite(out.c).all()) and bool(torch.isfinite(out.energy).all())
    assert bool((out.num_iters >= 1).all()) and bool((out.num_iters <= problem["max_iter"]).all())
    if problem["max_coeff"] is not None:
        assert bool((out.c.abs() <= problem["max_coeff"]).all())
    # The energy reported is the energy of the coefficients returned.
    again = energy(psi, z0, z1, out.c, problem["l1_weight"])
    assert torch.allclose(out.energy, again, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-6)
    # Started at c = 0 the solver only accepts decreases, so it ends at or below E(0) = 1/2 ||z1 - z0||^2.
    start = infer_coefficients(psi, z0, z1, c_init=torch.zeros(p, m), **options)
    e0 = 0.5 * (z1 - z0).pow(2).sum(-1)
    assert bool(torch.isfinite(start.energy).all())
    assert bool((start.energy <= e0 * (1 + 1e-5) + 1e-6).all())


@given(problem=problems())
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_joint_inference_is_finite_for_every_request(problem: dict) -> None:
    psi, z0, z1 = _tensors(problem, torch.float64)
    solvers = [CoefficientSolver(l1_weight=problem["l1_weight"], restarts=problem["restarts"],
                                 max_iter=problem["max_iter"], max_coeff=problem["max_coeff"]),
               CoefficientSolver(l1_weight=1e-6, restarts=[(0.0, 1.0)], max_iter=5)]
    results = infer_jointly(psi, [(solvers[0], z0, z1, None), (solvers[1], z1, z0, None)])
    for result in results:
        assert bool(torch.isfinite(result.c).all()) and bool(torch.isfinite(result.energy).all())


@given(problem=problems(), where=st.sampled_from(["psi", "z0", "z1", "c_init"]),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_non_finite_input_raises_naming_it(problem: dict, where: str, bad: float) -> None:
    psi, z0, z1 = _tensors(problem, torch.float64)
    args = {"psi": psi.clone(), "z0": z0.clone(), "z1": z1.clone(),
            "c_init": torch.zeros(z0.shape[0], psi.shape[0], dtype=torch.float64)}
    args[where].view(-1)[0] = bad
    with pytest.raises(ValueError, match=f"{where} contains NaN or inf"):
        infer_coefficients(args["psi"], args["z0"], args["z1"], c_init=args["c_init"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"l1_weight": -1.0}, "l1_weight must be >= 0"),
    ({"max_iter": 0}, "max_iter must be >= 1"),
    ({"restarts": []}, "restarts must name at least one"),
])
def test_bad_solver_settings_raise(kwargs: dict, match: str) -> None:
    psi, z = torch.zeros(2, 3, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        infer_coefficients(psi, z, z, **kwargs)


def test_ill_shaped_solver_input_raises() -> None:
    psi, z = torch.zeros(2, 3, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="psi must have shape"):
        infer_coefficients(torch.zeros(2, 3, 4), z, z)
    with pytest.raises(ValueError, match="z1 must have shape"):
        infer_coefficients(psi, z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="c_init must have shape"):
        infer_coefficients(psi, z, z, c_init=torch.zeros(4, 3))


# -- a convex family with a known optimum ----------------------------------------------------------------
def _vector(scale: float):
    return hnp.arrays(np.float64, (3,), elements=st.floats(-scale, scale))


@given(u=_vector(2), v=_vector(2), z0=_vector(3), z1=_vector(3), l1_weight=st.sampled_from([0.0, 1e-3, 0.1]),
       dtype=DTYPES)
def test_solver_finds_the_closed_form_optimum_of_a_linear_residual(u, v, z0, z1, l1_weight, dtype) -> None:
    """Psi = u v^T with v . u = 0 squares to zero, so T(c) z0 = z0 + c w with w = (v . z0) u: E is a convex
    quadratic plus lambda |c|, minimised at c* = soft(-w . (z0 - z1), lambda) / ||w||^2. The solver reaches E(c*),
    in float32 as in float64."""
    v = v - (v @ u) / max(u @ u, 1e-300) * u  # v . u = 0
    w = (v @ z0) * u
    ww = float(w @ w)
    if ww < 1e-2:  # a flat direction: any c is (nearly) optimal
        return
    g = -float(w @ (z0 - z1))
    c_star = math.copysign(max(abs(g) - l1_weight, 0.0), g) / ww
    if abs(c_star) > 5.0:  # keep T(c) z0 well inside float32's accuracy
        return
    if abs(c_star) * np.abs(np.outer(u, v)).sum(0).max() > 0.9 * MAX_NORM:
        return  # the solver refuses generators beyond ||A||_1 = max_norm (an expm guard): c* is out of its reach
    psi = torch.as_tensor(np.outer(u, v)[None], dtype=dtype)
    out = infer_coefficients(psi, torch.as_tensor(z0, dtype=dtype)[None], torch.as_tensor(z1, dtype=dtype)[None],
                             c_init=torch.zeros(1, 1), l1_weight=l1_weight, max_iter=50)
    # Judged by the energy (in float64): near a minimum E is flat in c, and the solver stops on E's resolution.
    z0_64, z1_64 = torch.as_tensor(z0)[None], torch.as_tensor(z1)[None]
    e_out = float(energy(psi.double(), z0_64, z1_64, out.c.double(), l1_weight))
    e_star = float(energy(psi.double(), z0_64, z1_64, torch.tensor([[c_star]], dtype=torch.float64), l1_weight))
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-10, 1e-14)
    assert e_out <= e_star + rtol * e_star + atol, (float(out.c), c_star, e_out, e_star)


def test_float32_solver_reaches_the_optimum_of_a_linear_residual() -> None:
    """Regression (found by the test above): in float32 the secant term's guard clamp_min(1e-300) was 0, so its
    first update was 0 / 0 = NaN; every later trial point was NaN and rejected, and the solver stopped after its
    first (trust-region-capped) step at c = 1, E = 1.125, instead of c = 2.5, E = 0."""
    psi = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    out = infer_coefficients(psi, torch.tensor([[0.0, 1.0]]), torch.tensor([[2.5, 1.0]]), c_init=torch.zeros(1, 1),
                             l1_weight=0.0, max_iter=50)
    assert abs(float(out.c) - 2.5) < 1e-4 and float(out.energy) < 1e-8
