"""The VAE with a VampPrior (Tomczak and Welling 2018; the paper's Fig. 2d, 4d): the prior is the mixture of the
variational posteriors at K learned pseudo-inputs u_k,

    p(z) = (1/K) sum_k q(z | u_k),

the same construction as VAELLS's anchor prior (eq. 8) with Gaussian posteriors in place of transport ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily

from vaells.models.vae import GaussianVAE


class VampPriorVAE(GaussianVAE):
    """``GaussianVAE`` with the VampPrior. The mixture's log-density is a logsumexp over the K components
    (``MixtureSameFamily``); it has no closed-form KL, so the KL is the one-sample estimate.

    Args:
        num_pseudo_inputs: K.
        train_inputs: (N, *input_shape) training inputs in a seeded order (from the builder): the pseudo-inputs
            start at the first K of them, cycled when N < K, and are learned in input space.
        kl_warmup_steps: the KL warm-up (Tomczak and Welling warm up over their first 100 epochs).
        init_log_var: see ``GaussianVAE``.
        Others: see ``VariationalModel``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        recon_weight: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        train_inputs: Tensor,
        num_pseudo_inputs: int = 100,
        kl_warmup_steps: int = 0,
        beta: float = 1.0,
        init_log_var: float | None = None,
        ae_warmup_steps: int = 0,
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, recon_weight, optimizer, kl_warmup_steps, beta,
                         init_log_var=init_log_var, ae_warmup_steps=ae_warmup_steps)
        if num_pseudo_inputs < 1 or train_inputs.shape[0] < 1:
            raise ValueError(f"the VampPrior needs num_pseudo_inputs >= 1 and some training inputs, got "
                             f"{num_pseudo_inputs}, {train_inputs.shape[0]}")
        index = torch.arange(num_pseudo_inputs) % train_inputs.shape[0]
        self.pseudo_inputs = nn.Parameter(train_inputs[index].detach().clone().float())  # (K, *input_shape)

    def prior(self) -> Distribution:
        components = self.posterior(self.pseudo_inputs)  # batch (K,), event (d,)
        weights = Categorical(logits=torch.zeros(self.pseudo_inputs.shape[0], device=self.pseudo_inputs.device))
        return MixtureSameFamily(weights, components)
