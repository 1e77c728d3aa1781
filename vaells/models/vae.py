"""The Gaussian VAE (Kingma and Welling 2013; the paper's Fig. 2b, 4b): q(z|x) = N(mu(x), diag sigma(x)^2), p(z) =
N(0, I), trained as ``vaells.models.variational.VariationalModel``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaells.models.variational import VariationalModel

#: The smallest log sigma^2 of a Gaussian posterior (``GaussianVAE._moments``).
LOG_VAR_MIN = -30.0


class GaussianVAE(VariationalModel):
    """The encoder outputs (mu, log sigma^2), (B, 2d): its output layer gains d outputs for the log-variance.

    ``spread`` multiplies sigma. The KL to N(0, I) is in closed form.

    Args:
        init_log_var: the initial bias of the log-variance outputs (the widened head: the encoder's last Linear),
            so that training starts from a nearly deterministic posterior, as VAELLS's does (sigma_eps of 1e-3 or
            less). At PyTorch's default bias, sigma starts near 1 against encodings of a few tenths, and the MNIST
            decoder first settles on the mean image. None: PyTorch's default.
        Others: see ``VariationalModel``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        recon_weight: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        kl_warmup_steps: int = 0,
        beta: float = 1.0,
        init_log_var: float | None = None,
        ae_warmup_steps: int = 0,
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, recon_weight, optimizer, kl_warmup_steps, beta, ae_warmup_steps)
        if init_log_var is not None:
            head = [m for m in self.encoder.modules() if isinstance(m, nn.Linear)][-1]  # (mu, log sigma^2) outputs
            with torch.no_grad():
                head.bias[self.latent_dim:] = float(init_log_var)

    def head_outputs(self, latent_dim: int) -> int:
        return latent_dim  # log sigma^2

    def _moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x).split(self.latent_dim, dim=-1)  # (B, d) each
        # Bounded below: in the autoencoder warm-up nothing holds sigma up, and the reconstruction alone drives it
        # to 0, where the VampPrior's mixture density overflows (measured: a natural-MNIST run stopped on a
        # non-finite loss at batch ~4700). sigma >= e^-15 = 3e-7 is far below any spread a posterior uses.
        return mu, log_var.clamp(min=LOG_VAR_MIN)

    def encode(self, x: Tensor) -> Tensor:
        return self._moments(x)[0]

    def posterior(self, x: Tensor, spread: float = 1.0) -> Distribution:
        mu, log_var = self._moments(x)
        return Independent(Normal(mu, spread * torch.exp(0.5 * log_var)), 1)

    def prior(self) -> Distribution:
        zeros = torch.zeros(self.latent_dim, device=self.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
