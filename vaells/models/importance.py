"""VAELLS's importance log-weights, log p(x | z_k) + log p(z_k) - log q(z_k | x) (docs/method.md §3).

VAELLS's q(z|x) (eq. 5-7) and p(z) (eq. 8) integrate over coefficients c that have no closed form; as in the
authors' release, each density is taken at its MAP coefficients c_hat with every normalising constant, through
``TransportPosterior.log_prob`` and ``AnchorPrior.log_prob``. Split in two steps, the draws
(``importance_samples``) and the terms at given draws (``importance_terms``), so that a benchmark or a test can
hand identical samples and solver starts to another solver (``vaells.reference``). Both take what they need as
``LatentDensities``, the pieces that define q and p, not the LightningModule that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vaells.distributions import AnchorPrior, TransportPosterior
from vaells.inference import CoefficientSolver, infer_jointly, restart_inits
from vaells.transport import TransportOperator


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
