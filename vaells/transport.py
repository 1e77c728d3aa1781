"""Transport operators: T_Psi(c) = expm(sum_m c_m Psi_m)  (paper eq. 1-2).

Pure torch. Shapes follow the paper: ``d`` is the latent dimension, ``M`` (``num_operators``) the number of
dictionary elements; ``...`` is any batch of leading dimensions, broadcast as usual.
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
    roundoff for every matrix in the batch.  Returns (s (...,), scaled A, degree)."""
    norm = a.detach().abs().sum(-2).amax(-1)  # (...,) induced 1-norm
    s = torch.ceil(torch.log2(norm / theta)).clamp_min(0.0).nan_to_num(0.0, posinf=0.0)
    scale = torch.exp2(-s)
    rho = float((norm * scale).max()) if norm.numel() else 0.0
    return s, a * scale[..., None, None], _taylor_degree(min(rho, theta), a.dtype)


def _expm_taylor(a: Tensor, theta: float = 0.5) -> Tensor:
    """Scaling and squaring with a truncated Taylor series (Horner form), batched and differentiable.

    Why not ``torch.linalg.matrix_exp``: on CPU it treats tiny batched matrices one at a time (about 50 us
    per 4 x 4 matrix); this version is a handful of batched matmuls, on any device.
    """
    s, a, degree = _scale_for_taylor(a, theta)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    x = eye.expand_as(a)
    for k in range(degree, 0, -1):  # X <- I + X A / k
        x = eye + (x @ a) / k
    for j in range(int(s.max()) if s.numel() else 0):
        x = torch.where((s > j)[..., None, None], x @ x, x)  # square only the matrices scaled this far
    return x


def expm(a: Tensor) -> Tensor:
    """Matrix exponential of a batch of matrices, (..., d, d) -> (..., d, d); differentiable."""
    return _expm_taylor(a)


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
    steps linear in ||A|| instead of logarithmic; measured 2-10x slower on the benchmark problems.)
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
    """

    def __init__(
        self,
        latent_dim: int,
        num_operators: int,
        init_std: float = 0.01,
        dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__()
        if int(num_operators) < 1:
            raise ValueError(
                f"num_operators must be >= 1 (got {num_operators}); set model.num_operators to a positive integer"
            )
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1 (got {latent_dim}); set model.latent_dim")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."))
        self.latent_dim = int(latent_dim)
        self.num_operators = int(num_operators)
        shape = (self.num_operators, self.latent_dim, self.latent_dim)
        self.psi = nn.Parameter(init_std * torch.randn(shape, dtype=dtype))
        # The starting point, kept so that ``drift`` can tell a learned operator from its random init.
        self.register_buffer("psi_init", self.psi.detach().clone())

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
        return f"latent_dim={self.latent_dim}, num_operators={self.num_operators}, dtype={self.psi.dtype}"


#: Readings of an operator's spectrum (``operator_reading``).
ROTATION, SPIRAL, DILATION, MIXED = "rotation", "spiral", "dilation", "mixed"


def operator_reading(psi_m: Tensor, max_turn_growth: float = 0.25, ratio: float = 3.0) -> tuple[str, Tensor]:
    """What a generator Psi_m (d, d) does, read from its eigenvalues a +- i w.

    An eigenvalue pair turns its plane by w per unit of c and scales it by e^a, so over one full turn the
    orbit's radius changes by the factor e^(2 pi |a| / |w|). The pair reads "rotation" when that log-growth
    per turn is at most ``max_turn_growth`` (orbits close, as the circles' and a rotated digit's should),
    "dilation" when |a| >= ratio |w| (growth or decay with little turning), and "spiral" in between (the swiss
    roll's operator, -0.0026 +- 0.0267i, grows by e^0.61 per turn). The operator's reading is that of its
    dominant eigenvalue (largest modulus), or "mixed" when another eigenvalue of at least half that modulus
    reads differently. Returns the reading and the eigenvalues (complex, by decreasing modulus).
    """
    lam = torch.linalg.eigvals(psi_m.detach().to("cpu", torch.float64))
    lam = lam[lam.abs().argsort(descending=True)]

    def read(v: Tensor) -> str:
        a, w = abs(float(v.real)), abs(float(v.imag))
        if a >= ratio * w:
            return DILATION
        return ROTATION if 2 * math.pi * a <= max_turn_growth * w else SPIRAL

    top = float(lam[0].abs()) if lam.numel() else 0.0
    if top == 0.0:
        return MIXED, lam
    readings = {read(v) for v in lam if float(v.abs()) >= 0.5 * top}
    return (readings.pop() if len(readings) == 1 else MIXED), lam
