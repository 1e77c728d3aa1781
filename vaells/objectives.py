"""The VAELLS training objective (paper eq. 9) as the authors' release trains it (docs/method.md §1.4).

    L = recon           * mean_b 1/2 ||x_b - g(s z_b)||^2
      - post_transport  * mean_b 1/2 ||z_b - T(c_hat_b) mu_b||^2
      - post_l1         * mean_b ||c_hat_b||_1
      - mean_b log (1/N_a) sum_i exp(-prior_transport * 1/2 ||z_b - T(c_hat_bi) a_i||^2 - prior_l1 ||c_hat_bi||_1)
      + dictionary / 2  * sum_m ||Psi_m||_F^2

This is -ELBO up to constants with free weights instead of the probabilistic ones (1/sigma_x^2, 1/sigma_eps^2,
1/b); the release trains with the free weights, and so do we.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vaells.distributions import anchor_log_mean_exp, gaussian_log_prob
from vaells.inference import InferenceResult


@dataclass(frozen=True)
class LossWeights:
    """Role-named weights of the objective, with the paper's symbols.

    Attributes:
        recon: zeta_1, the reconstruction weight (1 / sigma_x^2 in the probabilistic reading).
        post_transport: zeta_2, the posterior transport term, part of -E_q[log q] (the "entropy").
        post_l1: zeta_3, the posterior coefficient L1 term; 1 / post_l1 is also the Laplace scale b that
            the posterior samples with (docs/method.md §1.1).
        prior_transport: zeta_4, the transport residual inside the anchor prior.
        prior_l1: zeta_5, the coefficient L1 term inside the anchor prior.
        dictionary: gamma (eta in eq. 9), the Frobenius regulariser on Psi.
    """

    recon: float = 1.0
    post_transport: float = 1.0
    post_l1: float = 1.0
    prior_transport: float = 1.0
    prior_l1: float = 0.01
    dictionary: float = 0.01

    def scaled(self, *, recon: float = 1.0, prior: float = 1.0) -> LossWeights:
        """The weights of an alternation phase: recon times ``recon``, both prior terms times ``prior``."""
        return replace(
            self,
            recon=self.recon * recon,
            prior_transport=self.prior_transport * prior,
            prior_l1=self.prior_l1 * prior,
        )


def vaells_loss(
    post_residual: Tensor,
    post_c: Tensor,
    prior_residual: Tensor,
    prior_c: Tensor,
    psi: Tensor,
    weights: LossWeights,
    x: Tensor | None = None,
    x_hat: Tensor | None = None,
) -> dict[str, Tensor]:
    """The terms of eq. 9 by name, and their sum ``loss`` (to minimise).

    Args:
        post_residual: (B, d) z - T(c_hat) mu.   post_c: (B, M) posterior c_hat (a constant).
        prior_residual: (B, N_a, d) z - T(c_hat_i) a_i.   prior_c: (B, N_a, M).
        psi: (M, d, d).
        x, x_hat: (B, ...) data and reconstruction; without them the recon term is left out (the
            operator-only loss that the accept/reject rule compares).

    Every term is a batch mean of a per-sample quantity and carries its weight and sign, so
    ``loss = recon + post_transport + post_l1 + prior + dictionary``.
    """
    post_sq = 0.5 * post_residual.pow(2).sum(-1)  # (B,)
    prior_log_weights = (
        -weights.prior_transport * 0.5 * prior_residual.pow(2).sum(-1) - weights.prior_l1 * prior_c.abs().sum(-1)
    )  # (B, N_a)
    terms = {}
    if x is not None and x_hat is not None:
        terms["recon"] = weights.recon * reconstruction_error(x, x_hat).mean()
    terms |= {
        "post_transport": -weights.post_transport * post_sq.mean(),
        "post_l1": -weights.post_l1 * post_c.abs().sum(-1).mean(),
        "prior": -anchor_log_mean_exp(prior_log_weights).mean(),
        "dictionary": 0.5 * weights.dictionary * psi.pow(2).sum(),
    }
    terms = {k: v.to(torch.float64) for k, v in terms.items()}
    terms["loss"] = sum(terms.values())
    return terms


def reconstruction_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """1/2 ||x - x_hat||^2 per sample, summed over all data dimensions.  (B, ...) -> (B,)."""
    return 0.5 * (x - x_hat).pow(2).flatten(1).sum(-1)


def reconstruction_log_likelihood(x: Tensor, x_hat: Tensor, recon: float) -> Tensor:
    """log p(x | z) = log N(x; x_hat, I / recon) per sample, the decoder likelihood whose negative is
    ``recon * reconstruction_error`` up to its normalising constant (recon = zeta_1 = 1 / sigma_x^2).  x, x_hat
    (N, ...) -> (N,). Every model of the project scores its reconstructions with this one likelihood."""
    if not recon > 0:
        raise ValueError(f"the recon weight (1 / sigma_x^2) must be > 0, got {recon}")
    return gaussian_log_prob((x - x_hat).flatten(1), recon**-0.5)


#: What to change when the losses keep coming out non-finite: in a new run, since a resumed run keeps its settings.
LOWER_LR_HINT = ("lower the learning rates (model.optimizer.lr; VAELLS's operator step: model.psi_rule.lr and "
                 "model.psi_rule.max_lr) or clip VAELLS's network gradients (model.gradient_clip_val)")


def nonfinite_terms(terms: dict[str, Tensor]) -> list[str]:
    """The names of the loss terms that are NaN or infinite."""
    return [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]


def format_terms(terms: dict[str, Tensor]) -> str:
    """``name=value, ...`` of scalar loss terms, for messages."""
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())


def check_finite_loss(terms: dict[str, Tensor], step: int) -> None:
    """Stop with a message that names the offending terms, before a NaN reaches the weights."""
    bad = nonfinite_terms(terms)
    if bad:
        raise FloatingPointError(f"non-finite loss term(s) {bad} at batch {step}: {format_terms(terms)}. To fix it, "
                                 f"{LOWER_LR_HINT}, or resume from the last checkpoint.")


@dataclass
class ForwardTerms:
    """One training forward pass (``VAELLSModule.forward_terms``): the loss terms of eq. 9 and what the Psi rule
    and the logs reuse. Shapes: x, x_hat (B, *input_shape); mu, z (B, d); c (B, M), the sampled coefficients;
    anchors (B, N_a, d); post and prior, the MAP inferences mu -> z and anchors -> z."""

    terms: dict[str, Tensor]
    x: Tensor
    x_hat: Tensor
    mu: Tensor
    z: Tensor
    c: Tensor
    anchors: Tensor
    post: InferenceResult
    prior: InferenceResult
