"""Property tests of the transport operator T_Psi(c) = expm(sum_m c_m Psi_m) (paper eq. 1-2), in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from vaells.transport import (
    Closed2x2TransportApply,
    EigenTransportApply,
    TransportApply,
    TransportOperator,
    expm,
    expm_frechet_apply,
    transport_apply,
)

_NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_GPU)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _operator(d: int, m: int, seed: int, init_std: float = 0.3, **kwargs) -> TransportOperator:
    torch.manual_seed(seed)
    return TransportOperator(d, m, init_std=init_std, **kwargs)


def _random_matrices(shape: tuple[int, ...], norm: float, seed: int) -> np.ndarray:
    """Gaussian matrices rescaled to a given induced 1-norm."""
    a = np.random.default_rng(seed).standard_normal(shape)
    return a * (norm / np.abs(a).sum(-2).max(-1))[..., None, None]


def _rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float((np.linalg.norm(x - ref, axis=(-2, -1)) / np.linalg.norm(ref, axis=(-2, -1))).max())


def _rotation(angle: float) -> torch.Tensor:
    return torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )


# -- c = 0 ------------------------------------------------------------------------------------------------
def test_zero_coefficients_give_identity() -> None:
    op = _operator(4, 3, seed=0)
    c = torch.zeros(5, 3, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    torch.testing.assert_close(op.matrix(c), eye, rtol=0, atol=1e-15)
    z0 = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    torch.testing.assert_close(op.transport(z0, c), z0, rtol=0, atol=1e-15)
    torch.testing.assert_close(op(z0, c), z0, rtol=0, atol=1e-15)  # forward is transport


# -- skew generator -> rotation ---------------------------------------------------------------------------
@pytest.mark.parametrize("coeff", [0.3, -1.2, 2.9, 4.0, -7.5, 40.0, 300.0])
def test_skew_generator_gives_rotation(coeff: float) -> None:
    """[[0, -w], [w, 0]] with coefficient c rotates by w c; |w c| > pi exercises scaling and squaring."""
    w = 1.3
    op = TransportOperator(2, 1)
    with torch.no_grad():
        op.psi.copy_(torch.tensor([[[0.0, -w], [w, 0.0]]], dtype=torch.float64))
    t = op.matrix(torch.tensor([coeff], dtype=torch.float64)).detach()
    torch.testing.assert_close(t.T @ t, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.linalg.det(t).item() == pytest.approx(1.0, abs=1e-12)
    angle = math.atan2(t[1, 0].item(), t[0, 0].item())
    expected = math.remainder(w * coeff, 2 * math.pi)  # wrapped to [-pi, pi]
    assert math.remainder(angle - expected, 2 * math.pi) == pytest.approx(0.0, abs=1e-11)
    torch.testing.assert_close(t, _rotation(w * coeff), rtol=0, atol=1e-11)


# -- expm against torch and scipy -------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [1e-3, 0.1, 1.0, 5.0, 20.0, 50.0])
def test_expm_matches_torch_and_scipy_float64(norm: float) -> None:
    for d in (2, 3, 6):
        a = _random_matrices((6, d, d), norm, seed=d)
        ref = np.stack([scipy.linalg.expm(x) for x in a])
        ours = expm(torch.from_numpy(a)).numpy()
        torch_ref = torch.linalg.matrix_exp(torch.from_numpy(a)).numpy()
        # The condition number of expm grows with ||A||: allow for it, as scipy and torch also differ there.
        tol = 1e-14 if norm <= 1 else 1e-10
        assert _rel_err(ours, ref) < tol
        assert _rel_err(ours, torch_ref) < tol


@pytest.mark.parametrize("norm", [1e-3, 0.1, 1.0, 5.0, 20.0, 50.0])
def test_expm_matches_torch_and_scipy_float32(norm: float) -> None:
    for d in (2, 3, 6):
        a = _random_matrices((6, d, d), norm, seed=10 + d)
        ref = np.stack([scipy.linalg.expm(x) for x in a])
        ours = expm(torch.from_numpy(a).float())
        assert ours.dtype == torch.float32
        tol = 1e-6 if norm <= 1 else 1e-4
        assert _rel_err(ours.double().numpy(), ref) < tol
        torch_ref = torch.linalg.matrix_exp(torch.from_numpy(a).float()).double().numpy()
        assert _rel_err(ours.double().numpy(), torch_ref) < tol


def test_expm_mixed_norm_batch() -> None:
    """Matrices that need different numbers of squarings share one batch."""
    a = np.concatenate([_random_matrices((3, 3, 3), n, seed=i) for i, n in enumerate((1e-3, 1.0, 30.0))])
    ref = np.stack([scipy.linalg.expm(x) for x in a])
    assert _rel_err(expm(torch.from_numpy(a).reshape(3, 3, 3, 3)).reshape(9, 3, 3).numpy(), ref) < 1e-11


@pytest.mark.parametrize("norm", [1e-3, 0.5, 3.0, 25.0])
def test_expm_frechet_apply_matches_scipy(norm: float) -> None:
    """T z0 and the Jacobian columns L(A, Psi_m) z0 against scipy.linalg.expm_frechet."""
    q, d, m = 5, 3, 2
    a = _random_matrices((q, d, d), norm, seed=1)
    rng = np.random.default_rng(2)
    psi, z0 = rng.standard_normal((m, d, d)), rng.standard_normal((q, d))
    tz0, jac = expm_frechet_apply(torch.from_numpy(a), torch.from_numpy(psi), torch.from_numpy(z0))
    assert tz0.shape == (q, d) and jac.shape == (q, d, m)
    for i in range(q):
        for j in range(m):
            ref_x, ref_l = scipy.linalg.expm_frechet(a[i], psi[j])
            # errors are relative to the norms of the operators, not to each entry
            tol_x = 1e-11 * np.linalg.norm(z0[i]) * np.linalg.norm(ref_x)
            tol_l = 1e-10 * np.linalg.norm(z0[i]) * np.linalg.norm(ref_l)
            np.testing.assert_allclose(tz0[i].numpy(), ref_x @ z0[i], rtol=0, atol=tol_x)
            np.testing.assert_allclose(jac[i, :, j].numpy(), ref_l @ z0[i], rtol=0, atol=tol_l)


def test_expm_frechet_apply_is_the_derivative_of_transport() -> None:
    """The Jacobian columns are d/dc_m expm(sum_m c_m Psi_m) z0: compare with autograd through expm."""
    g = _gen(3)
    psi = 0.8 * torch.randn(3, 4, 4, dtype=torch.float64, generator=g)
    c = 3 * torch.randn(6, 3, dtype=torch.float64, generator=g)  # a spread of squaring counts
    z0 = torch.randn(6, 4, dtype=torch.float64, generator=g)
    a = torch.einsum("qm,mij->qij", c, psi)
    tz0, jac = expm_frechet_apply(a, psi, z0)

    def transport(cc: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
        return expm(torch.einsum("m,mij->ij", cc, psi)) @ zz

    auto = torch.stack([torch.autograd.functional.jacobian(transport, (c[i], z0[i]))[0] for i in range(6)])
    torch.testing.assert_close(tz0, (expm(a) @ z0.unsqueeze(-1)).squeeze(-1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(jac, auto, rtol=1e-10, atol=1e-10)


# -- gradients --------------------------------------------------------------------------------------------
def test_transport_gradcheck() -> None:
    op = _operator(3, 2, seed=0, init_std=0.5)
    g = _gen(5)
    psi = op.psi.detach().clone().requires_grad_(True)
    c = (2 * torch.rand(4, 2, dtype=torch.float64, generator=g) - 1).requires_grad_(True)
    z0 = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_(True)

    def fn(psi: torch.Tensor, c: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(op, {"psi": psi}, (z0, c))

    assert torch.autograd.gradcheck(fn, (psi, c, z0))


@pytest.mark.parametrize("kind", ["rotation", "saddle", "near_nilpotent", "mixed"])
def test_expm_2x2_closed_form_gradient(kind: str) -> None:
    """d = 2 takes the closed form; its value and gradient equal scaling and squaring's, also where
    delta = -det N is near 0 (the series branch) or of either sign."""
    from vaells.transport import _expm_taylor

    g = _gen(7)
    base = {"rotation": [[0.0, -2.0], [2.0, 0.0]], "saddle": [[1.5, 0.3], [0.2, -1.5]],
            "near_nilpotent": [[1e-3, 1.0], [-1e-6, -1e-3]], "mixed": [[0.3, -1.2], [0.9, 0.1]]}[kind]
    a = (torch.tensor(base, dtype=torch.float64) + 1e-3 * torch.randn(5, 2, 2, dtype=torch.float64, generator=g))
    a.requires_grad_(True)
    torch.testing.assert_close(expm(a), _expm_taylor(a), rtol=1e-13, atol=1e-13)
    w = torch.randn(5, 2, 2, dtype=torch.float64, generator=g)
    (got,) = torch.autograd.grad((expm(a) * w).sum(), a)
    (want,) = torch.autograd.grad((_expm_taylor(a) * w).sum(), a)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(expm, (a,))


def test_transport_gradcheck_across_squarings() -> None:
    """Large coefficients go through several squarings; their gradient must still be exact."""
    op = _operator(3, 2, seed=1, init_std=0.5)
    g = _gen(6)
    psi = op.psi.detach().clone().requires_grad_(True)
    c = (6 * torch.rand(4, 2, dtype=torch.float64, generator=g) - 3).requires_grad_(True)
    z0 = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_(True)

    def fn(psi: torch.Tensor, c: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(op, {"psi": psi}, (z0, c))

    assert torch.autograd.gradcheck(fn, (psi, c, z0))


# -- paths and orbits -------------------------------------------------------------------------------------
def test_path_end_points_and_extrapolation() -> None:
    op = _operator(3, 2, seed=2)
    g = _gen(7)
    z0 = torch.randn(4, 3, dtype=torch.float64, generator=g)
    c = torch.randn(4, 2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        p = op.path(z0, c, num_steps=7)
        assert p.shape == (7, 4, 3)
        torch.testing.assert_close(p[0], z0, rtol=0, atol=1e-14)
        torch.testing.assert_close(p[-1], op.transport(z0, c), rtol=1e-12, atol=1e-12)
        # interior points lie on the flow: t = 1/2 applied twice is t = 1
        p3 = op.path(z0, c, num_steps=3)
        half = op.matrix(0.5 * c)
        torch.testing.assert_close(p3[1], (half @ z0.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=1e-12)
        # t in [-1, 1]: first point runs the flow backwards, the middle one is z0
        q = op.path(z0, c, num_steps=5, t_min=-1.0, t_max=1.0)
        assert q.shape == (5, 4, 3)
        torch.testing.assert_close(q[0], op.transport(z0, -c), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(q[2], z0, rtol=0, atol=1e-14)
        torch.testing.assert_close(q[-1], op.transport(z0, c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_steps", [4, 5])
def test_path_broadcasts_one_coefficient_over_many_points(num_steps: int) -> None:
    op = _operator(3, 2, seed=3)
    g = _gen(8)
    z0 = torch.randn(5, 3, dtype=torch.float64, generator=g)
    c = torch.randn(2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        p = op.path(z0, c, num_steps=num_steps)
        assert p.shape == (num_steps, 5, 3)
        torch.testing.assert_close(p[-1], op.transport(z0, c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [0, 2])
def test_orbit_matches_path_with_one_hot_coefficients(m: int) -> None:
    op = _operator(3, 3, seed=4)
    z0 = torch.randn(2, 4, 3, dtype=torch.float64, generator=_gen(9))
    t = torch.linspace(-2.0, 3.0, 6, dtype=torch.float64)
    one_hot = torch.zeros(3, dtype=torch.float64)
    one_hot[m] = 1.0
    with torch.no_grad():
        orbit = op.orbit(z0, m, t)
        path = op.path(z0, one_hot.expand(2, 4, 3), num_steps=6, t_min=-2.0, t_max=3.0)
        assert orbit.shape == (6, 2, 4, 3)
        torch.testing.assert_close(orbit, path, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(orbit[-1], op.transport(z0, 3.0 * one_hot), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="m must index"):
        op.orbit(z0, 3, t)


def test_frobenius_is_sum_of_squares() -> None:
    op = _operator(4, 3, seed=5)
    expected = sum(torch.linalg.matrix_norm(op.psi[m].detach(), "fro") ** 2 for m in range(3))
    assert op.frobenius().item() == pytest.approx(expected.item(), rel=1e-14)
    assert op.frobenius().item() == pytest.approx(float((op.psi.detach().numpy() ** 2).sum()), rel=1e-14)
    op.frobenius().backward()
    torch.testing.assert_close(op.psi.grad, 2 * op.psi.detach())


# -- batching, broadcasting, dtype and device -------------------------------------------------------------
def test_batching_and_broadcasting_over_leading_dims() -> None:
    d, m, b, a = 3, 2, 4, 5
    op = _operator(d, m, seed=6)
    g = _gen(10)
    z0 = torch.randn(b, 1, d, dtype=torch.float64, generator=g)
    c = torch.randn(1, a, m, dtype=torch.float64, generator=g)
    with torch.no_grad():
        assert op.matrix(c).shape == (1, a, d, d)
        z1 = op.transport(z0, c)
    assert z1.shape == (b, a, d)
    psi = op.psi.detach().numpy()
    for i in range(b):
        for j in range(a):
            t = scipy.linalg.expm(np.tensordot(c[0, j].numpy(), psi, axes=1))
            np.testing.assert_allclose(z1[i, j].numpy(), t @ z0[i, 0].numpy(), rtol=1e-12, atol=1e-12)
    # three leading dims, no broadcasting, equals the flattened call
    z0f = torch.randn(2, 3, 4, d, dtype=torch.float64, generator=g)
    cf = torch.randn(2, 3, 4, m, dtype=torch.float64, generator=g)
    with torch.no_grad():
        out = op.transport(z0f, cf)
        flat = op.transport(z0f.reshape(-1, d), cf.reshape(-1, m)).reshape(2, 3, 4, d)
    torch.testing.assert_close(out, flat, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_and_device_follow_the_parameter(device: str) -> None:
    op = _operator(3, 2, seed=7).to(device)
    assert op.psi.dtype == torch.float64  # the default
    z0, c = torch.randn(4, 3, device=device), torch.randn(4, 2, device=device)  # float32 inputs
    with torch.no_grad():
        out = op.transport(z0, c)
        assert out.dtype == torch.float64 and out.device == op.psi.device
        assert op.path(z0, c, num_steps=3).dtype == torch.float64
        assert op.orbit(z0, 0, torch.linspace(0, 1, 3)).dtype == torch.float64
    for dtype in ("float32", "torch.float32", torch.float32):
        op32 = TransportOperator(3, 2, dtype=dtype).to(device)
        assert op32.psi.dtype == torch.float32
        with torch.no_grad():
            out32 = op32.transport(z0.double(), c.double())
            assert out32.dtype == torch.float32 and out32.device == op32.psi.device
            assert op32.matrix(c).dtype == torch.float32
            assert op32.path(z0, c, num_steps=3).dtype == torch.float32
    # .to(dtype) on the module moves the math with it
    with torch.no_grad():
        assert op.float().transport(z0.double(), c.double()).dtype == torch.float32


# -- argument validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_operators", [0, -1])
def test_bad_num_operators_raise(num_operators: int) -> None:
    with pytest.raises(ValueError, match="num_operators"):
        TransportOperator(3, num_operators)


def test_bad_latent_dim_raises() -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        TransportOperator(0, 2)


def test_wrong_shapes_raise_naming_the_argument() -> None:
    op = _operator(3, 2, seed=8)
    z0, c = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^c must have shape"):
        op.transport(z0, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^c must have shape"):
        op.matrix(torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^c must have shape"):
        op.path(z0, torch.randn(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^z0 must have shape"):
        op.transport(torch.randn(4, 2, dtype=torch.float64), c)
    with pytest.raises(ValueError, match=r"^z0 must have shape"):
        op.path(torch.randn(4, 4, dtype=torch.float64), c)
    with pytest.raises(ValueError, match=r"^z0 must have shape"):
        op.orbit(torch.randn(4, 2, dtype=torch.float64), 0, torch.linspace(0, 1, 3))


@pytest.mark.parametrize(("d", "m"), [(2, 4), (6, 8)])
def test_solver_jacobian_adjoint_mode_matches_forward_mode(d: int, m: int) -> None:
    """With a tangent tolerance and d < M the Jacobian is taken in adjoint mode (d directions on A^T);
    it must agree with the exact forward-mode one, including for norms that need squarings."""
    from vaells.transport import expm_frechet_apply

    g = torch.Generator().manual_seed(5)
    psi = 0.05 * torch.randn(m, d, d, dtype=torch.float64, generator=g)
    c = 10 * torch.randn(7, m, dtype=torch.float64, generator=g)
    a = torch.einsum("qm,mij->qij", c, psi)
    z0 = torch.randn(7, d, dtype=torch.float64, generator=g)
    tz_exact, jac_exact = expm_frechet_apply(a, psi, z0)
    tz, jac = expm_frechet_apply(a, psi, z0, tangent_tol=1e-12)
    torch.testing.assert_close(tz, tz_exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jac, jac_exact, rtol=1e-9, atol=1e-11)


# -- the solver's evaluations of T(c) z0 and its Jacobian (transport_apply) ---------------------------------------

def _kernel_problem(d: int, m: int, scale: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    psi = scale * torch.randn(m, d, d, generator=gen, dtype=torch.float64)
    z0 = torch.randn(300, d, generator=gen, dtype=torch.float64)
    c = 4 * torch.randn(300, m, generator=gen, dtype=torch.float64)
    c[:10] = 0.0  # A = 0: repeated eigenvalues, where eigenvector-based derivatives break down
    return psi, z0, c


@pytest.mark.parametrize(("d", "m", "scale", "kind"), [
    (2, 1, 0.03, EigenTransportApply), (10, 1, 0.05, EigenTransportApply), (2, 4, 0.03, Closed2x2TransportApply),
    (2, 3, 0.5, Closed2x2TransportApply), (6, 8, 0.05, TransportApply), (3, 2, 0.2, TransportApply),
])
def test_transport_apply_picks_a_closed_form_that_matches_scaling_and_squaring(d, m, scale, kind) -> None:
    psi, z0, c = _kernel_problem(d, m, scale)
    fast = transport_apply(psi)
    assert type(fast) is kind
    general = TransportApply(psi)
    y0, j0 = general.with_jacobian(z0, c)
    y1, j1 = fast.with_jacobian(z0, c)
    assert torch.allclose(y1, y0, rtol=1e-12, atol=1e-12 * float(y0.abs().max()))
    assert torch.allclose(j1, j0, rtol=1e-10, atol=1e-12 * float(j0.abs().max()))
    assert torch.allclose(fast(z0, c), y0, rtol=1e-12, atol=1e-12 * float(y0.abs().max()))
    assert torch.allclose(fast.generator_norm(c), general.generator_norm(c), rtol=1e-12)
    # The residual along a direction matches its derivative (the closed forms' chain rule, checked directly).
    step = 1e-6 * torch.randn_like(c)
    fd = (fast(z0, c + step) - fast(z0, c - step)) / 2
    assert torch.allclose(fd, (j1 @ step.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-9)


def test_closed_2x2_form_near_and_across_zero_discriminant() -> None:
    """delta = -det N crosses zero between a rotation (delta < 0) and a hyperbolic flow (delta > 0); the series
    branch must join the cosh/cos branches without a jump."""
    psi = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    t = torch.linspace(-1e-2, 1e-2, 401, dtype=torch.float64)
    c = torch.stack([torch.full_like(t, 0.1), (0.01 + t).clamp_min(0).sqrt()], -1)  # delta = c2^2 - c1^2 ~ t
    z0 = torch.tensor([[0.3, -0.7]], dtype=torch.float64).expand(len(t), 2)
    y0, j0 = TransportApply(psi).with_jacobian(z0, c)
    y1, j1 = Closed2x2TransportApply(psi).with_jacobian(z0, c)
    assert torch.allclose(y1, y0, rtol=1e-13, atol=1e-14)
    assert torch.allclose(j1, j0, rtol=1e-11, atol=1e-13)


def test_ill_conditioned_single_operator_falls_back_to_scaling_and_squaring() -> None:
    """A defective generator (a Jordan block) has no eigenbasis; the solver must not use one."""
    psi = torch.tensor([[[0.1, 1.0], [0.0, 0.1]]], dtype=torch.float64)
    assert type(transport_apply(psi)) is Closed2x2TransportApply
    psi3 = torch.zeros(1, 3, 3, dtype=torch.float64)
    psi3[0, 0, 1] = psi3[0, 1, 2] = 1.0
    assert type(transport_apply(psi3)) is TransportApply


def test_float32_jacobian_is_close_to_float64() -> None:
    psi, z0, c = _kernel_problem(6, 8, 0.05)
    general = TransportApply(psi)
    j64 = general.jacobian(z0, c, tangent_tol=1e-8)
    j32 = general.jacobian(z0, c, tangent_tol=1e-8, dtype=torch.float32)
    assert j32.dtype == torch.float64
    assert float((j32 - j64).abs().max() / j64.abs().max()) < 1e-5


# -- affine operators (homogeneous coordinates) -----------------------------------------------------------------
def test_affine_operators_turn_about_any_centre_and_keep_the_constant_coordinate() -> None:
    op = TransportOperator(latent_dim=2, num_operators=1, affine=True)
    assert op.latent_dim == 3 and torch.equal(op.psi[:, -1], torch.zeros(1, 3, dtype=torch.float64))
    centre = torch.tensor([1.5, -0.5], dtype=torch.float64)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():  # d/dt z = R (z - centre): a rotation about the centre, not the origin
        op.psi.zero_()
        op.psi[0, :2, :2] = rotation
        op.psi[0, :2, 2] = -rotation @ centre
    z0 = torch.tensor([2.5, -0.5, 1.0], dtype=torch.float64)  # radius 1 about the centre
    orbit = op.orbit(z0, 0, torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64))
    assert torch.allclose(orbit[:, 2], torch.ones(9, dtype=torch.float64))
    assert torch.allclose((orbit[:, :2] - centre).norm(dim=-1), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(orbit[-1], z0, atol=1e-12)


def test_no_step_moves_an_affine_operators_last_row() -> None:
    op = TransportOperator(latent_dim=3, num_operators=2, affine=True)
    opt = torch.optim.Adam(op.parameters(), lr=0.1)
    z0 = torch.randn(8, 4, dtype=torch.float64)
    z0[:, -1] = 1.0
    for _ in range(3):
        opt.zero_grad()
        (op.transport(z0, torch.ones(8, 2)).pow(2).sum() + op.frobenius()).backward()
        opt.step()
    assert torch.equal(op.psi[:, -1], torch.zeros(2, 4, dtype=torch.float64))
    assert not torch.equal(op.psi[:, :-1], op.psi_init[:, :-1])  # the rest did move


# -- normalised operators --------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [False, True])
def test_normalised_operators_start_and_stay_at_their_norm_after_any_step(affine: bool) -> None:
    op = TransportOperator(latent_dim=3, num_operators=2, norm=0.5, affine=affine)
    assert torch.allclose(op.norms(), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.allclose(torch.linalg.matrix_norm(op.psi_init), torch.full((2,), 0.5, dtype=torch.float64))
    start = op.psi.detach().clone()
    opt = torch.optim.SGD(op.parameters(), lr=0.5)
    z0 = torch.randn(8, op.latent_dim, dtype=torch.float64)
    opt.zero_grad()
    (op.transport(z0, torch.ones(8, 2)).pow(2).sum() + op.frobenius()).backward()
    opt.step()
    assert not torch.allclose(op.norms(), torch.full((2,), 0.5, dtype=torch.float64))  # the step moved the norm
    op.renormalise_()
    assert torch.allclose(op.norms(), torch.full((2,), 0.5, dtype=torch.float64))
    assert not torch.allclose(op.psi, start)  # and kept its direction's change
    if affine:
        assert torch.equal(op.psi[:, -1], torch.zeros(2, 4, dtype=torch.float64))


def test_free_operators_are_left_alone_and_a_bad_norm_is_refused() -> None:
    op = TransportOperator(latent_dim=3, num_operators=2)
    before = op.psi.detach().clone()
    op.renormalise_()
    assert torch.equal(op.psi, before)
    with pytest.raises(ValueError, match="model.transport.norm"):
        TransportOperator(latent_dim=3, num_operators=2, norm=0.0)


def test_wrong_eigenvectors_of_a_nearly_defective_operator_are_not_used() -> None:
    """LAPACK returns perfectly conditioned but wrong eigenvectors for this rank-one, nearly nilpotent u v^T (a case
    hypothesis found): the eigenbasis shortcut must check them, and the solver then reaches the closed-form optimum
    c* = -(w . z0) / ||w||^2 of T(c) z0 = z0 + c w, w = (v . z0) u."""
    from vaells.inference import infer_coefficients
    from vaells.transport import EigenTransportApply, transport_apply

    u = torch.tensor([8.29753103e-35, 1.10177667e-233, 9.83736580e-01], dtype=torch.float64)
    v = torch.tensor([-2.76180036e-37, 1.0, -4.33680869e-19], dtype=torch.float64)
    psi = torch.outer(u, v)[None]
    assert not isinstance(transport_apply(psi), EigenTransportApply)
    z0 = torch.ones(1, 3, dtype=torch.float64)
    w = (v @ z0[0]) * u
    out = infer_coefficients(psi, z0, torch.zeros(1, 3, dtype=torch.float64), c_init=torch.zeros(1, 1),
                             l1_weight=0.0, max_iter=50)
    assert float(out.c) == pytest.approx(float(-(w @ z0[0]) / (w @ w)), rel=1e-8)
