"""The hyperspherical VAE (Davidson et al. 2018; the paper's Fig. 2c, 4c): z lives on the sphere S^(d-1), with a
uniform prior and a concentrated posterior around the encoder's direction.

The posterior is the Power Spherical distribution (De Cao and Aziz 2020, the ``power-spherical`` package) in
place of the von Mises-Fisher: the same role (a mean direction and a concentration kappa, uniform at kappa = 0),
but its normaliser is a ratio of Gamma functions, computed with ``lgamma`` in log space, where the vMF needs a
Bessel function I_{d/2-1}(kappa) that under- and overflows at the concentrations training reaches; and it
samples through a Beta variate, with reparameterised gradients, where the vMF needs Wood's rejection sampler.
Its KL to the uniform prior is in closed form (registered by the package).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from power_spherical import HypersphericalUniform, PowerSpherical
from torch import Tensor
from torch.distributions import Distribution

from vaells.models.variational import VariationalModel


class SphericalPowerSpherical(PowerSpherical):
    """``PowerSpherical`` whose samples lie on the sphere to rounding. The package divides by norms plus 1e-7
    (its S^(d-2) sample and its Householder axis), which leaves samples off the sphere by up to 1e-3 for d = 2;
    the samples are normalised once more here. The
    density, the sampler's law and the registered KL to ``HypersphericalUniform`` are the package's."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        z = super().rsample(sample_shape)
        return z / z.norm(dim=-1, keepdim=True)


class HypersphericalVAE(VariationalModel):
    """The encoder outputs (direction, concentration), (B, d + 1): its output layer gains one output. The mean
    direction is the first d outputs normalised; kappa = softplus(last) + 1 (Davidson et al.'s shift, which keeps
    the posterior from collapsing to the uniform prior early in training).

    ``spread`` s divides kappa by s^2: the angular spread of a concentrated posterior is ~ 1 / sqrt(kappa), so s
    scales it as it scales a Gaussian's sigma. The distribution is built in float64: at kappa ~ 1e4 the float32
    log-density loses its leading digits to cancellation. Args: see ``VariationalModel`` (d >= 2).
    """

    def head_outputs(self, latent_dim: int) -> int:
        if latent_dim < 2:
            raise ValueError(f"the hyperspherical VAE needs latent_dim >= 2 (S^(d-1)), got {latent_dim}")
        return 1  # kappa

    def _direction_concentration(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x).double()  # (B, d + 1)
        return F.normalize(h[:, : self.latent_dim], dim=-1), F.softplus(h[:, self.latent_dim]) + 1.0

    def encode(self, x: Tensor) -> Tensor:
        return self._direction_concentration(x)[0]  # (B, d), unit norm

    def concentration(self, x: Tensor) -> Tensor:
        """kappa of q(z | x).  (B, *input_shape) -> (B,)."""
        return self._direction_concentration(x)[1]

    def posterior(self, x: Tensor, spread: float = 1.0) -> Distribution:
        loc, kappa = self._direction_concentration(x)
        return SphericalPowerSpherical(loc, kappa / spread**2)

    def prior(self) -> Distribution:
        return HypersphericalUniform(self.latent_dim, device=self.device, dtype=torch.float64)
