"""The interface through which evaluation sees every model.

``LatentModel`` is all that metrics, the report and the figures may ask of a model: encode, decode, sample the
posterior at a spread, sample the prior, and the importance log-weights of eq. 4. VAELLS
(``vaells.models.vaells``) and the baselines implement it; what only VAELLS has (transport operators) is asked
for with ``has_operators``, never by class. What the models share in training is elsewhere: the LightningModule
base in ``vaells.models.module`` and the baselines' ELBO training in ``vaells.models.variational``.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from torch import Tensor

log = logging.getLogger(__name__)


@runtime_checkable
class LatentModel(Protocol):
    """What evaluation asks of a model. Shapes: x (B, *input_shape), z (N, d)."""

    latent_dim: int

    def encode(self, x: Tensor) -> Tensor:
        """The posterior's location for each input.  (B, *input_shape) -> (B, d)."""

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean g(z).  (N, d) -> (N, *input_shape)."""

    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        """z ~ q(z | x), with the posterior's spread multiplied by ``spread`` (1: the model's own posterior; each
        model documents what it scales). The samples at different spreads come from the same random numbers
        when the caller seeds them, so the visible change grows with ``spread``.  -> (B, S, d)."""

    def sample_prior(self, num_samples: int, labels: Tensor | None = None) -> Tensor:
        """z ~ p(z), or z_n ~ p(z | labels_n) for a class-conditional prior (labels (num_samples,)).  -> (N, d)."""

    def log_weights(
        self, x: Tensor, num_samples: int, *, labels: Tensor | None = None, anchors: Tensor | None = None
    ) -> Tensor:
        """log p(x | z_s) + log p(z_s) - log q(z_s | x) for z_s ~ q(z | x): the integrand of eq. 4, whose
        log-mean-exp over s is an importance-sampled bound on log p(x) (``vaells.evaluation.likelihood``).
        ``labels`` (B,) and ``anchors`` (B, N_a, *input_shape) are the batch's classes and per-sample anchors,
        for a class-conditional prior (VAELLS, eq. 8); models whose prior needs neither ignore them.
        -> (B, S), float64."""

    def batch_scores(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch means of ``mse`` (per data dimension, the reconstruction decode(encode(x)) from the posterior's
        centre), ``sample_mse`` (the same for one posterior sample) and the model's objective: ``elbo`` where it is
        one, else under the objective's own name (VAELLS: ``vaells_objective``)."""


def has_operators(model: object) -> bool:
    """Whether ``model`` carries transport operators (VAELLS): the metrics and figures only they allow."""
    return getattr(model, "transport", None) is not None
