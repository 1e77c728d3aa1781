"""Distributions of VAELLS: Laplace coefficients, the transport posterior q(z|x) and the anchor prior p(z).

Pure torch (paper eq. 5-8, docs/method.md §1.1-1.4). This is the one home of the Laplace and Gaussian
log-densities used anywhere in the project.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from vaells.inference import CoefficientSolver, InferenceResult
from vaells.transport import TransportOperator, check_finite

#: |u| is kept at most 1/2 - U_MARGIN, so l(u; b) <= b * log(1 / (2 * U_MARGIN)), about 23 b: finite.
U_MARGIN = 5e-11


def laplace_from_uniform(u: Tensor, scale: float | Tensor) -> Tensor:
    """c = l(u; b) = -b sign(u) log(1 - 2|u|): maps u ~ U(-1/2, 1/2) to c ~ Laplace(0, b) (inverse CDF).

    |u| is clamped to 1/2 - U_MARGIN first, so the result is finite even at |u| = 1/2, where the exact
    map is infinite; the clamp moves only a probability mass of ~1e-10 and leaves every moment intact.
    """
    # The margin must survive rounding: in float32, 0.5 - 5e-11 is 0.5, so use at least the dtype's eps.
    margin = max(U_MARGIN, torch.finfo(u.dtype).eps) if u.is_floating_point() else U_MARGIN
    u_abs = u.abs().clamp(max=0.5 - margin)
    return -scale * torch.sign(u) * torch.log1p(-2.0 * u_abs)


def sample_laplace(
    shape: tuple[int, ...] | torch.Size,
    scale: float | Tensor,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw c ~ Laplace(0, b)^shape through l(u; b); differentiable in ``scale``."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device) - 0.5
    return laplace_from_uniform(u, scale)


def laplace_log_prob(c: Tensor, scale: float | Tensor) -> Tensor:
    """log prod_m Lap(c_m; 0, b) = -||c||_1 / b - M log(2b).  c (..., M) -> (...,)."""
    scale = torch.as_tensor(scale, dtype=c.dtype, device=c.device)
    return -c.abs().sum(-1) / scale - c.shape[-1] * torch.log(2 * scale)



def gaussian_log_prob(residual: Tensor, std: float | Tensor) -> Tensor:
    """log N(residual; 0, std^2 I) summed over the last axis.  residual (..., d) -> (...,)."""
    std = torch.as_tensor(std, dtype=residual.dtype, device=residual.device)
    d = residual.shape[-1]
    return -0.5 * residual.pow(2).sum(-1) / std**2 - d * torch.log(std) - 0.5 * d * math.log(2 * math.pi)


def check_noise_std(noise_std: float | Tensor) -> None:
    """A density needs sigma_eps > 0: its Gaussian term divides by it (eq. 7). Sampling alone may use 0."""
    if not noise_std > 0:  # also refuses NaN
        raise ValueError(f"noise_std={float(noise_std)} must be > 0 for log_prob (its Gaussian term divides by "
                         "sigma_eps); e.g. model.noise_std=1e-4")


def log_mean_exp(log_weights: Tensor) -> Tensor:
    """log (1/N) sum_n exp(w_n) over the last axis, stably: a uniform mixture (eq. 8) or an importance-sampling
    mean (docs/method.md §3).  (..., N) -> (...,)."""
    return torch.logsumexp(log_weights, dim=-1) - math.log(log_weights.shape[-1])


def anchor_log_mean_exp(log_weights: Tensor) -> Tensor:
    """log (1/N_a) sum_i exp(w_i) over the anchor axis (eq. 8).  (..., N_a) -> (...,)."""
    return log_mean_exp(log_weights)


class TransportPosterior(Distribution):
    """q(z | x) of eq. 5-7: z = T_Psi(c) mu + sigma_eps * eps, with c ~ Laplace(0, b), eps ~ N(0, I).

    Args:
        mu: (B, d) encodings f_phi(x) / s, in the transport dtype.
        transport: the operator dictionary.
        coeff_scale: b, the Laplace scale of the sampled coefficients (b = 1 / post_l1; docs/method.md §1.1).
        noise_std: sigma_eps (``to_noise_std`` in the release).
        solver: MAP inference for ``log_prob`` (eq. 7), lambda_post = 1e-6 in the release.
        latent_scale: s, the units in which ``log_prob``'s Gaussian term measures the residual: it scores
            s (z - T(c_hat) mu), the residual in the encoder's own units, as the release's likelihood does
            (docs/method.md §3). 1 (the default): z's own units. Sampling does not depend on it.

    ``log_prob`` replaces the integral over c by its value at the inferred c_hat (eq. 7):
    log q(z|x) ~= log N(s (z - T(c_hat) mu); 0, sigma^2 I) + log Lap(c_hat; 0, b).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        mu: Tensor,
        transport: TransportOperator,
        coeff_scale: float,
        noise_std: float,
        solver: CoefficientSolver | None = None,
        validate_args: bool | None = None,
        latent_scale: float = 1.0,
    ) -> None:
        self.mu, self.transport, self.coeff_scale, self.noise_std = mu, transport, coeff_scale, noise_std
        self.latent_scale = latent_scale
        self.solver = solver or CoefficientSolver(l1_weight=1e-6, restarts=((0.0, 1.0),))
        super().__init__(batch_shape=mu.shape[:-1], event_shape=mu.shape[-1:], validate_args=validate_args)
        if self._validate_args:
            check_finite("mu", mu)
            if mu.shape[-1] != transport.latent_dim:
                raise ValueError(f"mu must have shape (..., d={transport.latent_dim}), got {tuple(mu.shape)}")

    def rsample_with_coefficients(
        self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw (z, c): c (S..., B, M) from l(u; b), z (S..., B, d) = T(c) mu + sigma eps."""
        psi = self.transport.psi
        shape = torch.Size(sample_shape) + self.batch_shape
        c = sample_laplace((*shape, self.transport.num_operators), self.coeff_scale, generator=generator,
                           dtype=psi.dtype, device=psi.device)
        z = self.transport.transport(self.mu, c)
        if self.noise_std > 0:
            z = z + self.noise_std * torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z, c

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.rsample_with_coefficients(sample_shape)[0]

    def infer(self, z: Tensor) -> InferenceResult:
        """c_hat(mu -> z), detached (see ``vaells.inference``).  z (..., B, d) -> c (..., B, M)."""
        return self.solver(self.transport.psi, self.mu, z)

    def residual(self, z: Tensor, c_hat: Tensor) -> Tensor:
        """z - T(c_hat) mu, differentiable in z, mu and Psi.  -> (..., B, d)."""
        return z - self.transport.transport(self.mu, c_hat)

    def log_prob(self, value: Tensor, c_hat: Tensor | None = None) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        check_noise_std(self.noise_std)
        if c_hat is None:
            c_hat = self.infer(value).c
        residual = self.latent_scale * self.residual(value, c_hat)
        return gaussian_log_prob(residual, self.noise_std) + laplace_log_prob(c_hat, self.coeff_scale)


class AnchorPrior(Distribution):
    """p(z) of eq. 8: (1/N_a) sum_i q(z | a_i), a mixture of transport posteriors around encoded anchors.

    The prior is class-conditional (docs/method.md §1.4): each sample gets the N_a anchors of its own class,
    or its own per-sample anchors (rotated MNIST), so it is built per batch from ``anchors`` (B, N_a, d).
    Each component is approximated at its inferred coefficients c_hat_i(a_i -> z), as in eq. 7.

    Args:
        anchors: (B, N_a, d) encoded anchors f_phi(a_i) / s, in the transport dtype.
        coeff_scale, noise_std: b and sigma_eps of the components.
        solver: MAP inference anchor -> z (lambda_prior and R restarts).
        closest_anchor: keep only the anchor whose inference energy is lowest (``closest_anchor_flag``),
            so the mixture has one component (docs/method.md §1.4).
        latent_scale: s, the units of the Gaussian term in ``log_prob``, as in ``TransportPosterior``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        anchors: Tensor,
        transport: TransportOperator,
        coeff_scale: float,
        noise_std: float,
        solver: CoefficientSolver | None = None,
        closest_anchor: bool = False,
        validate_args: bool | None = None,
        latent_scale: float = 1.0,
    ) -> None:
        self.anchors, self.transport = anchors, transport
        self.coeff_scale, self.noise_std, self.closest_anchor = coeff_scale, noise_std, closest_anchor
        self.latent_scale = latent_scale
        self.solver = solver or CoefficientSolver()
        super().__init__(batch_shape=anchors.shape[:-2], event_shape=anchors.shape[-1:], validate_args=validate_args)
        if self._validate_args:
            check_finite("anchors", anchors)
            if anchors.dim() < 2 or anchors.shape[-1] != transport.latent_dim:
                raise ValueError(
                    f"anchors must have shape (B, N_a, d={transport.latent_dim}), got {tuple(anchors.shape)}"
                )

    def infer(self, z: Tensor) -> InferenceResult:
        """c_hat_i(a_i -> z) for every anchor.  z (B, d) -> c (B, N_a, M), energy (B, N_a)."""
        return self.solver(self.transport.psi, self.anchors, z.unsqueeze(-2))

    def components(self, z: Tensor, result: InferenceResult | None = None) -> tuple[Tensor, Tensor]:
        """Residuals z - T(c_hat_i) a_i (B, N_a', d) and coefficients c_hat_i (B, N_a', M), where N_a' = N_a,
        or 1 with ``closest_anchor``. The residuals are differentiable in z, the anchors and Psi."""
        result = result or self.infer(z)
        anchors, c_hat = self.anchors, result.c
        if self.closest_anchor:
            best = result.energy.argmin(-1, keepdim=True)  # (B, 1)
            anchors = anchors.gather(-2, best.unsqueeze(-1).expand(*best.shape, anchors.shape[-1]))
            c_hat = c_hat.gather(-2, best.unsqueeze(-1).expand(*best.shape, c_hat.shape[-1]))
        return z.unsqueeze(-2) - self.transport.transport(anchors, c_hat), c_hat

    def rsample_with_coefficients(
        self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw an anchor uniformly, then z from q(z | a_i).  Returns z (S..., B, d), c (S..., B, M), anchor idx."""
        shape = torch.Size(sample_shape) + self.batch_shape
        num_anchors = self.anchors.shape[-2]
        idx = torch.randint(num_anchors, shape, generator=generator, device=self.anchors.device)
        a = self.anchors.expand(*shape, *self.anchors.shape[-2:]).gather(
            -2, idx[..., None, None].expand(*shape, 1, self.anchors.shape[-1])
        ).squeeze(-2)
        z, c = TransportPosterior(a, self.transport, self.coeff_scale, self.noise_std).rsample_with_coefficients(
            generator=generator
        )
        return z, c, idx

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.rsample_with_coefficients(sample_shape)[0]

    def log_prob(self, value: Tensor, result: InferenceResult | None = None) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        check_noise_std(self.noise_std)
        residual, c_hat = self.components(value, result)
        log_components = (gaussian_log_prob(self.latent_scale * residual, self.noise_std)
                          + laplace_log_prob(c_hat, self.coeff_scale))
        return anchor_log_mean_exp(log_components)
