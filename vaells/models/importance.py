"""VAELLS's importance log-weights, log p(x | z_k) + log p(z_k) - log q(z_k | x) (docs/method.md §3).

VAELLS's q(z|x) (eq. 5-7) and p(z) (eq. 8) integrate over coefficients c that have no closed form; as in the
authors' release, each density is taken at its MAP coefficients c_hat with every normalising constant, through
``TransportPosterior.log_prob`` and ``AnchorPrior.log_prob``. Split in two steps, the draws
(``importance_samples``) and the terms at given draws (``importance_terms``), so that a benchmark or a test can
hand identical samples and solver starts to another solver (``vaells.reference``). Both take what they need as
``LatentDensities``, the pieces that define q and p, not the LightningModule that holds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaells.distributions import (
    AnchorPrior,
    TransportPosterior,
    gaussian_log_prob,
    laplace_log_prob,
    log_mean_exp,
    sample_laplace,
)
from vaells.inference import CoefficientSolver, infer_jointly, restart_inits
from vaells.transport import TransportOperator, transport_apply


@dataclass(frozen=True)
class LatentDensities:
    """What VAELLS's q(z | x) (eq. 5-7) and p(z) (eq. 8) are built from: the operators, the two MAP solvers, the
    Laplace scale b, the noise sigma_eps, the latent scale s and whether the prior keeps only the closest anchor."""

    transport: TransportOperator
    posterior_solver: CoefficientSolver
    prior_solver: CoefficientSolver
    coeff_scale: float
    noise_std: float
    latent_scale: float
    closest_anchor: bool


@dataclass
class ImportanceSamples:
    """The draws behind VAELLS's log-weights: encodings mu (B, d), encoded anchors of each point's class (or its
    own) (B, N_a, d), posterior samples z (B, K, d), the posterior solver's starts (B, K, R, M) (the sampled c
    first) and the prior solver's (B, K, N_a, R', M)."""

    mu: Tensor
    anchors: Tensor
    z: Tensor
    post_init: Tensor
    prior_init: Tensor


@torch.no_grad()
def importance_samples(densities: LatentDensities, mu: Tensor, anchors: Tensor, num_samples: int) -> ImportanceSamples:
    """K = ``num_samples`` posterior samples z_k = T(c_k) mu + eps_k of each encoding mu (B, d)
    (c_k ~ Laplace(0, b), eps_k ~ N(0, sigma_eps^2 I); eq. 5-6), and the starts of both inferences; ``anchors``
    (B, N_a, d) are each point's encoded anchors."""
    b, k, m = mu.shape[0], num_samples, densities.transport.num_operators
    q = TransportPosterior(mu.unsqueeze(1).expand(b, k, -1), densities.transport, densities.coeff_scale,
                           densities.noise_std)
    z, c = q.rsample_with_coefficients()  # (B, K, d), (B, K, M)
    like = {"dtype": c.dtype, "device": c.device}
    # The sampled c is the best start for c_hat(mu -> z) (z - T(c) mu is just the noise), beside the posterior
    # solver's own random start (the release's only one); the prior solver starts from its restarts, per anchor.
    post_init = torch.cat([c.unsqueeze(-2), restart_inits((b, k), m, densities.posterior_solver.restarts, **like)],
                          -2)
    prior_init = restart_inits((b, k, anchors.shape[1]), m, densities.prior_solver.restarts, **like)
    return ImportanceSamples(mu=mu, anchors=anchors, z=z, post_init=post_init, prior_init=prior_init)


@torch.no_grad()
def importance_terms(densities: LatentDensities, samples: ImportanceSamples) -> dict[str, Tensor]:
    """The two latent terms of each log-weight at the given draws, each (B, K) float64:

    - ``log_posterior``: log q(z_k | x) at c_hat_k = c_hat(mu -> z_k), the posterior solver's MAP;
    - ``log_prior``: log p(z_k) of x's class, (1/N_a) sum_i of the same Gaussian + Laplace form at
      c_hat_ki = c_hat(a_i -> z_k), the prior solver's MAP, with the posterior's b (the closest anchor alone
      with ``closest_anchor``).

    Both Gaussian terms score the residual in the encoder's units, s (z - T(c_hat) .) (docs/method.md §3). Both
    inferences are one batched program over every (point, sample, anchor, start). The decoder's term,
    log p(x | z_k), is the model's (``VAELLSModule.importance_terms``).
    """
    mu, a, z = samples.mu, samples.anchors, samples.z
    b, k, d = z.shape
    mu_k = mu.unsqueeze(1).expand(b, k, d)  # (B, K, d)
    a_k = a.unsqueeze(1).expand(b, k, *a.shape[1:])  # (B, K, N_a, d)
    post, prior_result = infer_jointly(densities.transport.psi, [
        (densities.posterior_solver, mu_k, z, samples.post_init),
        (densities.prior_solver, a_k, z.unsqueeze(-2), samples.prior_init),
    ])
    scales = {"coeff_scale": densities.coeff_scale, "noise_std": densities.noise_std,
              "latent_scale": densities.latent_scale}
    q = TransportPosterior(mu_k, densities.transport, **scales)
    p = AnchorPrior(a_k, densities.transport, closest_anchor=densities.closest_anchor, **scales)
    return {"log_prior": p.log_prob(z, prior_result).double(), "log_posterior": q.log_prob(z, post.c).double()}


# -- a valid bound: exact densities, an unconditional prior (docs/method.md §3) ---------------------------------
#: Weight of the Gaussian in the defensive mixtures of ``bound_log_weights`` (the rest is the Laplace prior of c).
GAUSSIAN_SHARE = 0.9


def _mixture_log_prob(c: Tensor, mean: Tensor, chol: Tensor, scale: float) -> Tensor:
    """log of GAUSSIAN_SHARE N(c; mean, (L L^T)^-1) + (1 - GAUSSIAN_SHARE) Lap(c; 0, b), L = ``chol`` the
    precision's Cholesky factor.  c, mean (..., M), chol (..., M, M) -> (...,)."""
    m = c.shape[-1]
    white = (chol.transpose(-1, -2) @ (c - mean).unsqueeze(-1)).squeeze(-1)  # L^T (c - mean)
    log_normal = (-0.5 * white.pow(2).sum(-1) - 0.5 * m * math.log(2 * math.pi)
                  + torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1))
    return torch.logaddexp(math.log(GAUSSIAN_SHARE) + log_normal,
                           math.log1p(-GAUSSIAN_SHARE) + laplace_log_prob(c, scale))


def _mixture_sample(mean: Tensor, chol: Tensor, scale: float, num: int) -> Tensor:
    """``num`` draws of the mixture of ``_mixture_log_prob``.  mean (..., M) -> (num, ..., M)."""
    eps = torch.randn(num, *mean.shape, dtype=mean.dtype, device=mean.device)
    gauss = mean + torch.linalg.solve_triangular(chol.transpose(-1, -2).expand(num, *chol.shape),
                                                 eps.unsqueeze(-1), upper=True).squeeze(-1)
    lap = sample_laplace(gauss.shape, scale, dtype=mean.dtype, device=mean.device)
    pick = torch.rand(gauss.shape[:-1], dtype=mean.dtype, device=mean.device) < GAUSSIAN_SHARE
    return torch.where(pick.unsqueeze(-1), gauss, lap)


def _laplace_fit(densities: LatentDensities, z0: Tensor, c_hat: Tensor) -> Tensor:
    """The Cholesky factor of a Gaussian precision for c around c_hat(z0 -> z): J^T J / sigma^2 from the Jacobian
    of T(c) z0 at c_hat, plus 1 / (2 b^2), the Laplace prior's variance, so that it stays proper where the
    Jacobian vanishes.  z0 (..., d), c_hat (..., M) -> (..., M, M)."""
    psi = densities.transport.psi.detach()
    batch, m = c_hat.shape[:-1], c_hat.shape[-1]
    jac = transport_apply(psi).jacobian(z0.reshape(-1, z0.shape[-1]).to(psi.dtype), c_hat.reshape(-1, m),
                                        tangent_tol=1e-10)  # (Q, d, M)
    eye = torch.eye(m, dtype=psi.dtype, device=psi.device)
    precision = jac.transpose(-1, -2) @ jac / densities.noise_std**2 + eye / (2 * densities.coeff_scale**2)
    return torch.linalg.cholesky(precision).view(*batch, m, m)


@torch.no_grad()
def bound_log_weights(densities: LatentDensities, mu: Tensor, anchors: Tensor,
                      log_likelihood: Callable[[Tensor], Tensor], num_samples: int,
                      num_inner: int = 1) -> Tensor:
    """Log-weights whose log-mean-exp is a stochastic lower bound on log p(x) (docs/method.md §3):

        log w_k = log p(x | z_k) + log p_hat(z_k) + log r(c_k | z_k) - log q(c_k, z_k | x),

    with (c_k, z_k) drawn from the joint q(c, z | x) = Lap(c; b) N(z; T(c) mu, sigma^2 I), whose density is
    exact; r an auxiliary density of c given z (a Gaussian at c_hat(mu -> z) with the Gauss-Newton precision,
    mixed with the Laplace prior); and p_hat(z) an unbiased importance-sampling estimate of the prior
    p(z) = (1/A) sum_i integral Lap(c; b) N(z; T(c) a_i, sigma^2 I) dc over *all* A encoded ``anchors`` (A, d),
    with ``num_inner`` draws per anchor from the same kind of mixture around c_hat(a_i -> z).

    mu (B, d) encodings; ``log_likelihood`` maps z (N, d) to log p(x | z) (N,) for the points of mu repeated K
    times (point-major).  -> (B, K) float64.
    """
    b, k, m = mu.shape[0], num_samples, densities.transport.num_operators
    scale, sigma, transport = densities.coeff_scale, densities.noise_std, densities.transport
    mu_k = mu.unsqueeze(1).expand(b, k, -1)  # (B, K, d)
    c = sample_laplace((b, k, m), scale, dtype=mu.dtype, device=mu.device)
    noise = sigma * torch.randn(b, k, mu.shape[-1], dtype=mu.dtype, device=mu.device)
    z = transport.transport(mu_k, c) + noise  # (B, K, d)
    log_q = laplace_log_prob(c, scale) + gaussian_log_prob(noise, sigma)
    a = anchors.to(mu.dtype).expand(b, k, *anchors.shape)  # (B, K, A, d)
    # r(c | z) must not depend on the c it scores: its centre is solved from the solver's own random starts, not
    # from the sampled c (which would centre r on c's own branch of a periodic energy and inflate it).
    post, prior = infer_jointly(transport.psi, [
        (densities.posterior_solver, mu_k, z, None),
        (densities.prior_solver, a, z.unsqueeze(-2), None),
    ])
    # r(c | z): around a MAP of q(c | z), where a small sigma puts most of its mass
    post_chol = _laplace_fit(densities, mu_k, post.c)
    log_r = _mixture_log_prob(c, post.c, post_chol, scale)
    # p_hat(z): per anchor, importance draws around its MAP c_hat(a_i -> z)
    prior_chol = _laplace_fit(densities, a, prior.c)  # (B, K, A, M, M)
    draws = _mixture_sample(prior.c, prior_chol, scale, num_inner)  # (L, B, K, A, M)
    reached = transport.transport(a.expand(num_inner, *a.shape), draws)  # (L, B, K, A, d)
    log_f = laplace_log_prob(draws, scale) + gaussian_log_prob(z.unsqueeze(-2) - reached, sigma)
    log_h = _mixture_log_prob(draws, prior.c, prior_chol, scale)
    log_prior = log_mean_exp((log_f - log_h).permute(1, 2, 0, 3).flatten(-2))  # (B, K): mean over anchors, draws
    log_lik = log_likelihood(z.flatten(0, 1)).view(b, k).double()
    return log_lik + log_prior.double() + log_r.double() - log_q.double()
