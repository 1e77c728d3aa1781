"""Transport operators: T_Psi(c) = expm(sum_m c_m Psi_m)  (paper eq. 1-2).

Pure torch. Shapes follow the paper: ``d`` is the latent dimension, ``M`` (``num_operators``) the number of
dictionary elements; ``...`` is any batch of leading dimensions, broadcast as usual.

One algorithm, the exponential map and its derivatives, needs this module's length: expm by a Taylor sum with
scaling and squaring, its Frechet derivative in forward mode, the closed forms that replace both for one
operator and for d = 2 (with their wide-range branch), and the operator module built on them. Split, each part
would import the others' private helpers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_finite(name: str, value: Tensor) -> None:
    """Raise a ValueError naming ``name`` when ``value`` holds NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or inf values; check the inputs (or a diverged model) upstream")


def _taylor_degree(rho: float, dtype: torch.dtype, tol: float | None = None) -> int:
    """Smallest Taylor degree K with rho^(K+1) / (K+1)! below ``tol`` (default: the dtype's unit roundoff)."""
    eps, term, k = (tol if tol is not None else torch.finfo(dtype).eps / 2), rho, 1
    while term > eps and k < 30:
        k += 1
        term *= rho / k
    return k - 1 if k > 1 else 1


def _scale_for_taylor(a: Tensor, theta: float) -> tuple[Tensor, Tensor, int]:
    """Per-matrix scaling 2^-s with ||A / 2^s||_1 <= theta, and the Taylor degree that is then exact to
    roundoff for every matrix.  Returns (s (...,), scaled A, degree).

    The degree is theta's, not the batch's largest norm's: each matrix's result then does not depend on which
    other matrices share its batch (a joint solve equals separate ones, bit for bit), at the price of a few
    products for batches of tiny matrices."""
    norm = a.detach().abs().sum(-2).amax(-1)  # (...,) induced 1-norm
    s = torch.ceil(torch.log2(norm / theta)).clamp_min(0.0).nan_to_num(0.0, posinf=0.0)
    return s, a * torch.exp2(-s)[..., None, None], _taylor_degree(theta, a.dtype)


def _taylor_paterson_stockmeyer(a: Tensor, degree: int) -> Tensor:
    """sum_{k <= degree} A^k / k! with Paterson and Stockmeyer's grouping (Higham 2008, sec. 4.4.3): with
    p ~ sqrt(degree), A^2 .. A^p once, then Horner's rule in A^p over blocks of p terms, each block a linear
    combination of I, A, .., A^(p-1). That is about 2 sqrt(degree) products instead of Horner's degree
    (6 instead of 14 at float64's degree), and the same polynomial."""
    d = a.shape[-1]
    eye = torch.eye(d, dtype=a.dtype, device=a.device).expand_as(a)
    p = max(1, math.isqrt(degree))
    if p * p < degree:
        p += 1
    powers = [eye, a]  # A^0 .. A^p
    for _ in range(p - 1):
        powers.append(powers[-1] @ a)
    coeff = [1.0 / math.factorial(k) for k in range(degree + 1)]

    def block(j: int) -> Tensor:  # sum_{i < p, jp + i <= degree} A^i / (jp + i)!
        out = coeff[j * p] * powers[0]
        for i in range(1, min(p, degree - j * p + 1)):
            # Added one by one, not with stack().sum(): torch's reductions change their order with the batch
            # size, and then a matrix's result would depend on its batch (a joint solve must equal separate ones).
            out = out + coeff[j * p + i] * powers[i]
        return out

    last = degree // p
    x = block(last)
    for j in range(last - 1, -1, -1):
        x = x @ powers[p] + block(j)
    return x


def _expm_taylor(a: Tensor, theta: float = 0.5) -> Tensor:
    """Scaling and squaring with a truncated Taylor series (Horner form), batched and differentiable.

    Why not ``torch.linalg.matrix_exp``: on CPU it treats tiny batched matrices one at a time (about 50 us
    per 4 x 4 matrix); this version is a handful of batched matmuls, on any device.
    """
    s, a, degree = _scale_for_taylor(a, theta)
    x = _taylor_paterson_stockmeyer(a, degree)
    for j in range(int(s.max()) if s.numel() else 0):
        x = torch.where((s > j)[..., None, None], x @ x, x)  # square only the matrices scaled this far
    return x


def expm(a: Tensor) -> Tensor:
    """Matrix exponential of a batch of matrices, (..., d, d) -> (..., d, d); differentiable. 2 x 2 matrices
    (the synthetic experiments' latent space) in closed form, the rest by scaling and squaring."""
    return _expm_2x2(a) if a.shape[-1] == 2 else _expm_taylor(a)


_SERIES_BELOW = 1e-3  # |x| below which C, S and S' are summed as series


#: Where the plain closed form of ``_expm_2x2`` is right entry by entry: real eigenvalues alpha +- r at most 4
#: apart (delta = r^2 <= 4, so cosh and sinh cancel to at most e^4 roundoff in the smaller diagonal entry) and
#: e^alpha far from overflow and underflow (|alpha| at most this share of the log of the dtype's largest number:
#: 567 in float64, 71 in float32). Other batches take ``_expm_2x2_wide``.
_PLAIN_MAX_DELTA, _PLAIN_ALPHA_SHARE = 4.0, 0.8


def _expm_2x2(a: Tensor) -> Tensor:
    """A = alpha I + N with alpha = tr A / 2 and N = [[p, b], [q, -p]] traceless, so N^2 = delta I (delta = p^2 + bq)
    and expm(A) = e^alpha (C(delta) I + S(delta) N) (``_cosh_sinhc``): a dozen elementwise operations, where scaling
    and squaring takes ~30 small batched products, in the forward pass and again in the backward.

    Each entry is right to roundoff relative to itself where scaling and squaring gives that (a diagonal or
    triangular A, a rotation with dilation), and overflows only where it does itself: a batch with large arguments
    is taken by ``_expm_2x2_wide``, so that expm(diag(800, 1)) is [[inf, 0], [0, e]], not [[inf, 0], [0, 0]]. The
    training step's small generators keep the plain form's speed; the choice costs one comparison (a device sync
    on a GPU, as the scaling and squaring's count of squarings does)."""
    a00, a01, a10, a11 = a.flatten(-2).unbind(-1)
    alpha, p = (a00 + a11) * 0.5, (a00 - a11) * 0.5
    bq = a01 * a10
    delta = p * p + bq
    max_alpha = _PLAIN_ALPHA_SHARE * math.log(torch.finfo(a.dtype).max)
    if bool(((delta > _PLAIN_MAX_DELTA) | (alpha.abs() > max_alpha)).any()):
        return _expm_2x2_wide(alpha, p, a01, a10, bq, delta)
    cc, s = _cosh_sinhc(delta, derivative=False)
    ea = torch.exp(alpha)
    ec, es = ea * cc, ea * s
    esp = es * p
    return torch.stack([ec + esp, es * a01, es * a10, ec - esp], -1).unflatten(-1, (2, 2))


def _expm_2x2_wide(alpha: Tensor, p: Tensor, b: Tensor, q: Tensor, bq: Tensor, delta: Tensor) -> Tensor:
    """``_expm_2x2`` for any arguments, from its alpha, p, b, q, bq and delta. With real eigenvalues alpha +- r
    (delta = r^2 > 0) the smaller diagonal entry e^alpha (C - S |p|) is the difference of two numbers of size
    e^(alpha + r) (it comes out 0 instead of e at diag(700, 1)); here it is e^(alpha - r) + e^alpha S bq / (r + |p|),
    as r^2 - p^2 = bq. And the growth e^(alpha + r) multiplies the bounded e^-r (C I + S N) in three factors, so
    that a representable entry is not lost to an overflow of e^alpha or of cosh r, and an exact zero stays zero
    (not inf * 0). About twice the plain form's operations."""
    r, ch, sh = _scaled_cosh_sinhc(delta)  # e^-r C and e^-r S, with r = sqrt(delta) for delta >= 1e-3, else 0
    pos = p >= 0  # the larger diagonal entry is a_00's
    ap = torch.where(pos, p, -p)  # |p|, with the slope that abs lacks at p = 0 (where the gradient is +-S)
    real = r > 0
    big = ch + sh * ap  # e^-r (C + S |p|), no cancellation
    # The rest of the smaller entry, less its e^-2r (added below as e^(alpha - r)); r + |p| > 0 where real.
    small = torch.where(real, sh * bq / torch.where(real, r + ap, 1.0), ch - sh * ap)
    # Each factor is finite; past the clamp, e^(alpha + r) times even the least subnormal overflows (underflows).
    limit = 0.98 * math.log(torch.finfo(alpha.dtype).max)
    f = ((alpha + r) / 3).clamp(-limit, limit).exp().unsqueeze(-1)
    e_big, e01, e10, e_small = (torch.stack([big, sh * b, sh * q, small], -1) * f * f * f).unbind(-1)
    e_small = e_small + torch.where(real, alpha - r, -math.inf).exp()
    return torch.stack([torch.where(pos, e_big, e_small), e01, e10, torch.where(pos, e_small, e_big)],
                       -1).unflatten(-1, (2, 2))


def _scaled_cosh_sinhc(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(r, e^-r C(x), e^-r S(x)), ``_cosh_sinhc``'s C and S with their growth e^r taken out: r = sqrt x for
    x >= 1e-3, where e^-r cosh r = 1 + expm1(-2r) / 2 and e^-r sinh(r) / r = -expm1(-2r) / (2r) lie in (0, 1] and
    are exact to roundoff for any r; r = 0 below (cos and sin, or the series near 0)."""
    small = x.abs() < _SERIES_BELOW
    xs = torch.where(small, 1.0, x)  # keeps the unused branch finite
    root = xs.abs().sqrt()
    pos = xs > 0
    em = torch.expm1(-2 * root)
    c = torch.where(pos, 1 + 0.5 * em, torch.cos(root))
    s = torch.where(pos, -0.5 * em, torch.sin(root)) / root
    c = torch.where(small, _series_c(x), c)
    s = torch.where(small, _series_s(x), s)
    return torch.where(pos & ~small, root, 0.0), c, s


def expm_frechet_apply(
    a: Tensor, psi: Tensor, z0: Tensor, theta: float = 0.5, tangent_tol: float | None = None
) -> tuple[Tensor, Tensor]:
    """T z0 = expm(A) z0 and its Jacobian columns L(A, Psi_m) z0, where L is the Frechet derivative of expm.

    a (Q, d, d), psi (M, d, d), z0 (Q, d) -> T z0 (Q, d), jacobian (Q, d, M). Not differentiable (inference).

    Forward-mode scaling and squaring: the pair (X, dX_m) is pushed through Horner's rule and the squarings
    with the product rule, which equals exponentiating the block matrix [[A, Psi_m], [0, A]] (Higham 2008,
    Thm 3.6) but shares the primal and costs d x d products only. The tangents are stored as one
    (Q, dM, d) tensor, row (i, m) holding row i of dX_m, so that every product is one batched GEMM:
    dX A is (Q, dM, d) @ (Q, d, d), X Psi is (Qd, d) @ (d, Md), and dX z0 is already the Jacobian.
    (Integrating expm(A) z0 with Taylor steps on vectors needs fewer flops per step but a number of
    steps linear in ||A|| instead of logarithmic.)
    """
    q, d, _ = a.shape
    m = psi.shape[0]
    if d < m and tangent_tol is not None:
        # Fewer outputs than directions: differentiate the d outputs instead (reverse mode). By the adjoint
        # of the Frechet derivative, e_i^T L(A, Psi_m) z0 = <L(A^T, e_i z0^T), Psi_m>_F, so d directions
        # e_i z0^T on A^T replace the M directions Psi_m on A (natural MNIST: 6 instead of 8).
        x, dx = _forward_mode_expm(a.transpose(1, 2), lambda xs: xs.unsqueeze(-1) * z0[:, None, None, :],
                                   d, theta, tangent_tol)
        jac = torch.einsum("qrik,mrk->qim", dx.view(q, d, d, d), psi)
        return (x.transpose(1, 2) @ z0.unsqueeze(-1)).squeeze(-1), jac
    psi_cat = psi.permute(1, 0, 2).reshape(d, m * d)  # [i, (m, j)] = Psi_m[i, j]
    x, dx = _forward_mode_expm(a, lambda xs: (xs.reshape(q * d, d) @ psi_cat).view(q, d, m, d), m, theta,
                               tangent_tol)
    tz0 = (x @ z0.unsqueeze(-1)).squeeze(-1)
    jac = (dx @ z0.unsqueeze(-1)).view(q, d, m)
    return tz0, jac


def _forward_mode_expm(a: Tensor, x_times_directions, k_dirs: int, theta: float, tangent_tol: float | None):
    """expm(A) and its Frechet derivatives along K directions E_k, as (X (Q, d, d), dX (Q, d K, d)) with row
    (i, k) of dX holding row i of L(A, E_k). ``x_times_directions(X)`` returns X E_k as (Q, d, K, d)."""
    q, d, _ = a.shape
    s, a, degree = _scale_for_taylor(a, theta)
    # The tangents need only the low-order terms of the series when a relative error `tangent_tol` will do
    # (a solver's Jacobian): ||A / 2^s|| <= theta, so the dropped terms are below theta^k / k!.
    tangent_degree = degree if tangent_tol is None else min(degree, _taylor_degree(theta, a.dtype, tangent_tol))
    dir_scale = torch.exp2(-s)[:, None, None]  # d(A / 2^s) = E / 2^s
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    x = eye.expand(q, d, d).contiguous()
    dx = a.new_zeros(q, d * k_dirs, d)
    for k in range(degree, 0, -1):  # X <- I + X A / k ;  dX_k <- (dX_k A + X E_k / 2^s) / k
        if k <= tangent_degree:
            dx = (torch.bmm(dx, a) + x_times_directions(x).reshape(q, d * k_dirs, d) * dir_scale) / k
        x = eye + torch.bmm(x, a) / k
    for j in range(int(s.max()) if s.numel() else 0):  # (X, dX) <- (X X, X dX + dX X)
        rows = (s > j).nonzero().squeeze(-1)  # only the matrices that were scaled this far
        xs, dxs = x[rows], dx[rows]
        dx[rows] = torch.bmm(xs, dxs.view(-1, d, k_dirs * d)).view(-1, d * k_dirs, d) + torch.bmm(dxs, xs)
        x[rows] = torch.bmm(xs, xs)
    return x, dx


class TransportApply:
    """T(c) z0 = expm(sum_m c_m Psi_m) z0 and its Jacobian in c, for many pairs (z0, c) at one fixed Psi: the two
    quantities coefficient inference evaluates at every iteration. ``transport_apply(psi)`` picks the cheapest
    exact evaluation for Psi's shape; this base class is the general one (scaling and squaring, above).

    z0 (Q, d), c (Q, M) -> T z0 (Q, d); ``with_jacobian`` also returns dT z0 / dc (Q, d, M). Not differentiable.
    """

    def __init__(self, psi: Tensor) -> None:
        self.psi = psi  # (M, d, d)

    def generator_norm(self, c: Tensor) -> Tensor:
        """||sum_m c_m Psi_m||_1 (Q,), the induced 1-norm that bounds expm's growth."""
        return generator_matrix(self.psi, c).abs().sum(-2).amax(-1)

    def __call__(self, z0: Tensor, c: Tensor) -> Tensor:
        return (expm(generator_matrix(self.psi, c)) @ z0.unsqueeze(-1)).squeeze(-1)

    def with_jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float | None = None) -> tuple[Tensor, Tensor]:
        return expm_frechet_apply(generator_matrix(self.psi, c), self.psi, z0, tangent_tol=tangent_tol)

    def jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float, dtype: torch.dtype | None = None) -> Tensor:
        """dT z0 / dc (Q, d, M) to a relative ``tangent_tol``, computed in ``dtype`` (default Psi's) and returned
        in Psi's: a coefficient solver's search direction, which may be cheaper than its residuals. In float32
        the tolerance is floored at 1e-6, what that precision can give."""
        dtype = dtype or self.psi.dtype
        if dtype == self.psi.dtype:
            return self.with_jacobian(z0, c, tangent_tol)[1]
        tol = max(tangent_tol, 1e-6) if dtype == torch.float32 else tangent_tol
        a = generator_matrix(self.psi, c).to(dtype)
        return expm_frechet_apply(a, self.psi.to(dtype), z0.to(dtype), tangent_tol=tol)[1].to(self.psi.dtype)


class EigenTransportApply(TransportApply):
    """M = 1: Psi = V diag(lambda) V^-1 once, so expm(c Psi) z0 = V (e^(c lambda) * V^-1 z0) and its derivative
    V (lambda e^(c lambda) * V^-1 z0) cost O(d^2) per pair instead of a matrix exponential (complex arithmetic,
    real results). Only used when V is well conditioned (``transport_apply``), which makes both exact to
    roundoff times cond(V)."""

    def __init__(self, psi: Tensor, lam: Tensor, v: Tensor, v_inv: Tensor) -> None:
        super().__init__(psi)
        self.lam, self.v_t, self.v_inv_t = lam, v.T, v_inv.T  # (d,), (d, d), (d, d), complex
        self.psi_norm = psi[0].abs().sum(-2).amax(-1)
        self.lam_powers = torch.stack([torch.ones_like(lam), lam, lam * lam])  # (3, d): the k-th derivative's factor

    def generator_norm(self, c: Tensor) -> Tensor:
        return c[:, 0].abs() * self.psi_norm

    def jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float, dtype: torch.dtype | None = None) -> Tensor:
        return self.with_jacobian(z0, c)[1]  # exact and cheap: no reason for a lower precision

    def _modes(self, z0: Tensor, c: Tensor) -> Tensor:
        """e^(c lambda) * V^-1 z0, (Q, d) complex."""
        return (z0.to(self.v_inv_t.dtype) @ self.v_inv_t) * torch.exp(c[:, :1] * self.lam)

    def __call__(self, z0: Tensor, c: Tensor) -> Tensor:
        return (self._modes(z0, c) @ self.v_t).real

    def with_jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float | None = None) -> tuple[Tensor, Tensor]:
        w = self._modes(z0, c)
        return (w @ self.v_t).real, ((w * self.lam) @ self.v_t).real.unsqueeze(-1)

    def eigen_coordinates(self, z0: Tensor) -> Tensor:
        """V^-1 z0, (Q, d) complex: what ``derivatives`` needs of z0, computed once per solve."""
        return z0.to(self.v_inv_t.dtype) @ self.v_inv_t

    def derivatives(self, w0: Tensor, c: Tensor) -> Tensor:
        """T(c) z0 and its first and second derivatives in the scalar c, (Q, 3, d): d^k/dc^k T(c) z0 =
        V (lambda^k e^(c lambda) * w0), w0 = V^-1 z0 (``eigen_coordinates``), c (Q,). One product for all three."""
        u = w0 * torch.exp(c[:, None] * self.lam)  # (Q, d)
        return ((u.unsqueeze(1) * self.lam_powers) @ self.v_t).real


def _series_c(x: Tensor) -> Tensor:
    return 1 + x * (1 / 2 + x * (1 / 24 + x * (1 / 720 + x / 40320)))  # sum x^k / (2k)!


def _series_s(x: Tensor) -> Tensor:
    return 1 + x * (1 / 6 + x * (1 / 120 + x * (1 / 5040 + x / 362880)))  # sum x^k / (2k+1)!


def _cosh_sinhc(x: Tensor, derivative: bool = True) -> tuple[Tensor, ...]:
    """C(x) = cosh(sqrt x), S(x) = sinh(sqrt x) / sqrt x and (with ``derivative``) S'(x) = (C - S) / (2 x), entire in
    x (for x < 0 they are cos(sqrt -x), sin(sqrt -x) / sqrt -x); series near x = 0, where the closed forms lose
    digits."""
    small = x.abs() < _SERIES_BELOW
    xs = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch finite
    root = xs.abs().sqrt()
    pos = xs > 0
    c = torch.where(pos, torch.cosh(root), torch.cos(root))
    s = torch.where(pos, torch.sinh(root), torch.sin(root)) / root
    # Series: C = sum x^k / (2k)!, S = sum x^k / (2k+1)!, S' = sum (k+1) x^k / (2k+3)!; |x| < 1e-3 makes the
    # first dropped terms ~1e-19 relative.
    if not derivative:
        return torch.where(small, _series_c(x), c), torch.where(small, _series_s(x), s)
    ds = (c - s) / (2 * xs)
    c = torch.where(small, _series_c(x), c)
    s = torch.where(small, _series_s(x), s)
    ds = torch.where(small, 1 / 6 + x * (1 / 60 + x * (1 / 1680 + x / 90720)), ds)
    return c, s, ds


class Closed2x2TransportApply(TransportApply):
    """d = 2: with A = alpha I + N (alpha = tr A / 2, N traceless, N^2 = delta I with delta = -det N),
    expm(A) = e^alpha (C(delta) I + S(delta) N) (``_cosh_sinhc``), and the derivative along Psi_m follows by the
    chain rule in closed form: a few elementwise operations per pair, for any M."""

    def __init__(self, psi: Tensor) -> None:
        super().__init__(psi)
        self.tr_half = (psi[:, 0, 0] + psi[:, 1, 1]) / 2  # (M,) d alpha / d c_m
        self.p = (psi[:, 0, 0] - psi[:, 1, 1]) / 2  # (M,) N = [[p, b], [q, -p]]
        self.b, self.q = psi[:, 0, 1], psi[:, 1, 0]

    def jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float, dtype: torch.dtype | None = None) -> Tensor:
        return self.with_jacobian(z0, c)[1]  # exact and cheap: no reason for a lower precision

    def _parts(self, c: Tensor):
        alpha, p, b, q = c @ self.tr_half, c @ self.p, c @ self.b, c @ self.q  # (Q,) each
        delta = p * p + b * q
        return alpha, p, b, q, delta

    @staticmethod
    def _n_times(p: Tensor, b: Tensor, q: Tensor, z0: Tensor) -> Tensor:
        """N z0 for N = [[p, b], [q, -p]]; p, b, q (..., ) broadcast against z0 (..., 2)."""
        x, y = z0[..., 0], z0[..., 1]
        return torch.stack([p * x + b * y, q * x - p * y], -1)

    def __call__(self, z0: Tensor, c: Tensor) -> Tensor:
        alpha, p, b, q, delta = self._parts(c)
        cc, s = _cosh_sinhc(delta, derivative=False)
        return torch.exp(alpha)[:, None] * (cc[:, None] * z0 + s[:, None] * self._n_times(p, b, q, z0))

    def with_jacobian(self, z0: Tensor, c: Tensor, tangent_tol: float | None = None) -> tuple[Tensor, Tensor]:
        alpha, p, b, q, delta = self._parts(c)
        cc, s, ds = _cosh_sinhc(delta)
        ea = torch.exp(alpha)[:, None]
        nz = self._n_times(p, b, q, z0)  # (Q, 2)
        tz0 = ea * (cc[:, None] * z0 + s[:, None] * nz)
        # Along Psi_m: d alpha = tr_m / 2, dN = N_m (its traceless part), d delta = 2 p p_m + b q_m + q b_m,
        # dC = S / 2 d delta, dS = S' d delta.
        d_delta = 2 * p[:, None] * self.p + b[:, None] * self.q + q[:, None] * self.b  # (Q, M)
        dnz = self._n_times(self.p, self.b, self.q, z0[:, None, :])  # (Q, M, 2)
        jac = (tz0[:, None, :] * self.tr_half[:, None]
               + ea[:, None] * ((0.5 * s[:, None] * d_delta)[..., None] * z0[:, None, :]
                                + (ds[:, None] * d_delta)[..., None] * nz[:, None, :]
                                + s[:, None, None] * dnz))  # (Q, M, 2)
        return tz0, jac.transpose(1, 2)


def transport_apply(psi: Tensor, max_cond: float | None = None) -> TransportApply:
    """The fastest exact ``TransportApply`` for Psi (M, d, d): the eigenbasis when M = 1 and Psi's eigenvectors
    are well conditioned (cond(V) eps <= 1e-11 by default, so that both results stay within ~1e-11 of exact) and
    accurate (||Psi V - V diag(lambda)|| <= 1e-11 ||Psi|| ||V||), the closed 2 x 2 form when d = 2, else scaling and
    squaring."""
    m, d, _ = psi.shape
    if m == 1:
        lam, v = torch.linalg.eig(psi[0])
        v_inv, info = torch.linalg.inv_ex(v)  # a defective Psi (a Jordan block) has a singular V
        finite = int(info) == 0 and bool(torch.isfinite(torch.view_as_real(v_inv)).all())
        cond = float(torch.linalg.matrix_norm(v, 2) * torch.linalg.matrix_norm(v_inv, 2)) if finite else math.inf
        limit = max_cond if max_cond is not None else 1e-11 / torch.finfo(psi.dtype).eps
        # A nearly defective Psi can come back with well-conditioned eigenvectors that are simply wrong (LAPACK's
        # eig on a rank-one, nearly nilpotent u v^T): the residual Psi V - V diag(lambda) tells them apart.
        residual = torch.linalg.matrix_norm(psi[0].to(v.dtype) @ v - v * lam)
        accurate = bool(residual <= 1e-11 * torch.linalg.matrix_norm(psi[0]) * torch.linalg.matrix_norm(v))
        if cond <= limit and accurate:
            return EigenTransportApply(psi, lam, v, v_inv)
    if d == 2:
        return Closed2x2TransportApply(psi)
    return TransportApply(psi)


def generator_matrix(psi: Tensor, c: Tensor) -> Tensor:
    """A = sum_m c_m Psi_m (eq. 1).  psi (M, d, d), c (..., M) -> A (..., d, d)."""
    return torch.einsum("...m,mij->...ij", c.to(psi.dtype), psi)


def transport_matrix(psi: Tensor, c: Tensor) -> Tensor:
    """T_Psi(c) = expm(A).  psi (M, d, d), c (..., M) -> (..., d, d)."""
    return expm(generator_matrix(psi, c))


class TransportOperator(nn.Module):
    """A learnable dictionary of M transport operators Psi_m in R^{d x d}.

    Args:
        latent_dim: d.
        num_operators: M >= 1.
        init_std: Psi is initialised as ``init_std * N(0, 1)``; 0.01 as in the authors' release.
        dtype: the dtype of Psi and of all transport math. float64 by default, because the matrix
            exponential of a slowly-learned generator and the coefficient inference built on it need the
            extra precision (coefficients reach O(100) for operators of norm O(0.01)).
        affine: flows that turn about any centre, not only the origin (docs/method.md §1.5): the operators act on
            homogeneous coordinates (z, 1), so ``self.latent_dim`` is latent_dim + 1, and the last row of every
            Psi_m is zero and stays so (its gradient is masked), which keeps T(c) (z, 1) = (A' z + b', 1). The
            model appends and drops the constant coordinate (``VAELLSModule.encode`` and ``decode``).
        norm: normalised operators (docs/method.md §1.6): every Psi_m starts at, and is put back to, this
            Frobenius norm after each step (``renormalise_``). c and Psi trade scale freely (T depends on c_m Psi_m
            only), so fixing ||Psi_m|| puts the whole scale in c, where the Laplace scale, the L1 weights and
            the coefficient bound are set. None (the paper): Psi's norm is free, held only by the dictionary term.
    """

    def __init__(
        self,
        latent_dim: int,
        num_operators: int,
        init_std: float = 0.01,
        dtype: torch.dtype | str = torch.float64,
        affine: bool = False,
        norm: float | None = None,
    ) -> None:
        super().__init__()
        if norm is not None and not float(norm) > 0:
            raise ValueError(f"model.transport.norm must be > 0 or null (got {norm}); e.g. 1.0")
        self.norm = None if norm is None else float(norm)
        if int(num_operators) < 1:
            raise ValueError(
                f"num_operators must be >= 1 (got {num_operators}); set model.num_operators to a positive integer"
            )
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1 (got {latent_dim}); set model.latent_dim")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."))
        self.affine = bool(affine)
        self.latent_dim = int(latent_dim) + int(self.affine)
        self.num_operators = int(num_operators)
        shape = (self.num_operators, self.latent_dim, self.latent_dim)
        psi = init_std * torch.randn(shape, dtype=dtype)
        if self.affine:
            psi[:, -1, :] = 0.0
        self.psi = nn.Parameter(psi)
        self.renormalise_()
        if self.affine:  # no step may move the last row: the constant coordinate stays constant under every flow
            mask = torch.ones(shape, dtype=dtype)
            mask[:, -1, :] = 0.0
            self.register_buffer("affine_mask", mask, persistent=False)
            self.psi.register_hook(lambda grad: grad * self.affine_mask)
        # The starting point, kept so that ``drift`` can tell a learned operator from its random init.
        self.register_buffer("psi_init", self.psi.detach().clone())

    @torch.no_grad()
    def renormalise_(self) -> None:
        """Put every Psi_m back to Frobenius norm ``norm`` (a no-op without one): a projected step on the sphere,
        as for the unit-norm atoms of a sparse-coding dictionary."""
        if self.norm is not None:
            self.psi.mul_(self.norm / torch.linalg.matrix_norm(self.psi).clamp_min(torch.finfo(self.psi.dtype).tiny)
                          .view(-1, 1, 1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before psi_init existed: their start is unknown, so drift reads NaN.
        if prefix + "psi" in state_dict and prefix + "psi_init" not in state_dict:
            state_dict[prefix + "psi_init"] = torch.full_like(state_dict[prefix + "psi"], float("nan"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- shape checks ---------------------------------------------------------------------------------
    def _check_c(self, c: Tensor) -> Tensor:
        if c.shape[-1:] != (self.num_operators,):
            raise ValueError(f"c must have shape (..., M={self.num_operators}), got {tuple(c.shape)}")
        return c.to(self.psi.dtype)

    def _check_z(self, name: str, z: Tensor) -> Tensor:
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"{name} must have shape (..., d={self.latent_dim}), got {tuple(z.shape)}")
        return z.to(self.psi.dtype)

    # -- the operator ---------------------------------------------------------------------------------
    def generator(self, c: Tensor) -> Tensor:
        """A = sum_m c_m Psi_m.  c (..., M) -> (..., d, d)."""
        return generator_matrix(self.psi, self._check_c(c))

    def matrix(self, c: Tensor) -> Tensor:
        """T(c) = expm(A).  c (..., M) -> (..., d, d)."""
        return expm(self.generator(c))

    def transport(self, z0: Tensor, c: Tensor) -> Tensor:
        """z1 = T(c) z0.  z0 (..., d), c (..., M), broadcast -> (..., d), in Psi's dtype."""
        z0 = self._check_z("z0", z0)
        return (self.matrix(c) @ z0.unsqueeze(-1)).squeeze(-1)

    forward = transport

    def path(self, z0: Tensor, c: Tensor, num_steps: int = 20, t_min: float = 0.0, t_max: float = 1.0) -> Tensor:
        """Points z_t = expm(t A) z0 on the path generated by A = sum_m c_m Psi_m.

        t runs over ``linspace(t_min, t_max, num_steps)``: [0, 1] interpolates from z0 to T(c) z0; values
        outside that range extrapolate along the same flow in either direction (t < 0 runs it backwards).

        z0 (..., d), c (..., M) -> (num_steps, ..., d).
        """
        z0 = self._check_z("z0", z0)
        t = torch.linspace(t_min, t_max, num_steps, dtype=self.psi.dtype, device=self.psi.device)
        batch = torch.broadcast_shapes(z0.shape[:-1], c.shape[:-1])
        a = self.generator(c).expand(*batch, self.latent_dim, self.latent_dim)  # (..., d, d)
        expm_ta = expm(t.view(-1, *([1] * a.dim())) * a)  # (T, ..., d, d)
        return (expm_ta @ z0.expand(*batch, self.latent_dim).unsqueeze(-1)).squeeze(-1)

    def orbit(self, z0: Tensor, m: int, t_values: Tensor) -> Tensor:
        """The path along a single operator: z_t = expm(t Psi_m) z0.  z0 (..., d), t_values (T,) -> (T, ..., d)."""
        if not 0 <= m < self.num_operators:
            raise ValueError(f"m must index an operator in [0, {self.num_operators}), got {m}")
        z0 = self._check_z("z0", z0)
        t = torch.as_tensor(t_values, dtype=self.psi.dtype, device=self.psi.device).reshape(-1)
        expm_t = expm(t.view(-1, 1, 1) * self.psi[m])  # (T, d, d)
        expm_t = expm_t.view(t.shape[0], *([1] * (z0.dim() - 1)), self.latent_dim, self.latent_dim)
        return (expm_t @ z0.unsqueeze(-1)).squeeze(-1)

    def frobenius(self) -> Tensor:
        """sum_m ||Psi_m||_F^2, the dictionary regulariser of eq. 9 (without its eta/2 weight)."""
        return self.psi.pow(2).sum()

    def norms(self) -> Tensor:
        """||Psi_m||_F for each operator.  -> (M,)."""
        return torch.linalg.matrix_norm(self.psi.detach())

    def drift(self) -> Tensor:
        """||Psi_m - Psi_m^init||_F / ||Psi_m^init||_F: how far each operator moved from its random start (M,)."""
        return torch.linalg.matrix_norm(self.psi.detach() - self.psi_init) / torch.linalg.matrix_norm(self.psi_init)

    def extra_repr(self) -> str:
        affine = ", affine (homogeneous coordinates)" if self.affine else ""
        norm = f", norm={self.norm:g}" if self.norm is not None else ""
        return (f"latent_dim={self.latent_dim}, num_operators={self.num_operators}, dtype={self.psi.dtype}{affine}"
                f"{norm}")
