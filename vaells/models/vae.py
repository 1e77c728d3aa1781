"""The Gaussian VAE (Kingma and Welling 2013; the paper's Fig. 2b, 4b): q(z|x) = N(mu(x), diag sigma(x)^2), p(z) =
N(0, I), trained as ``vaells.models.base.VariationalModel``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from vaells.models.base import VariationalModel


class GaussianVAE(VariationalModel):
    """The encoder outputs (mu, log sigma^2), (B, 2d): its output layer gains d outputs for the log-variance.

    ``spread`` multiplies sigma. The KL to N(0, I) is in closed form. Args: see ``VariationalModel``.
    """

    def head_outputs(self, latent_dim: int) -> int:
        return latent_dim  # log sigma^2

    def _moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x).split(self.latent_dim, dim=-1)  # (B, d) each
        return mu, log_var

    def encode(self, x: Tensor) -> Tensor:
        return self._moments(x)[0]

    def posterior(self, x: Tensor, spread: float = 1.0) -> Distribution:
        mu, log_var = self._moments(x)
        return Independent(Normal(mu, spread * torch.exp(0.5 * log_var)), 1)

    def prior(self) -> Distribution:
        zeros = torch.zeros(self.latent_dim, device=self.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
