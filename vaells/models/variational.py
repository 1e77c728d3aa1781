"""The baselines' shared training: a VAE with an explicit Gaussian-family posterior and prior, on the ELBO
(eq. 4) with the decoder likelihood every model of the project uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from vaells.models.module import ModelBase
from vaells.objectives import (
    reconstruction_error,
    reconstruction_log_likelihood,
)


class VariationalModel(ModelBase):
    """A VAE with an explicit posterior and prior, trained on the negative ELBO of eq. 4:

        L = recon * mean_b 1/2 ||x_b - g(z_b)||^2 + beta * mean_b KL(q(z | x_b) || p(z)),   z_b ~ q(z | x_b),

    the decoder likelihood N(x; g(z), I / recon) of VAELLS (``vaells.objectives``), so that the models' numbers
    compare. At beta = 1 this is -ELBO up to the likelihood's constant. In training, beta ramps linearly from 0 to
    ``beta`` over the first ``kl_warmup_steps`` batches (a KL warm-up); it is 1 in validation and evaluation. The KL
    is in closed form where ``torch.distributions`` registers one, else the one-sample estimate
    log q(z_b | x_b) - log p(z_b).

    Subclasses give ``posterior(x, spread)`` and ``prior()`` (torch Distributions with event shape (d,)),
    ``encode``, and ``head_outputs(d)``: the outputs the encoder's output layer gains for the posterior's spread.

    Args:
        encoder, decoder: the experiment's networks (``vaells.networks``), the encoder with d outputs.
        latent_dim: d.
        recon_weight: zeta_1 = 1 / sigma_x^2, the decoder likelihood (VAELLS's ``weights.recon``).
        optimizer: partial torch optimizer, given all parameters.
        kl_warmup_steps: training batches over which the KL weight ramps from 0 to ``beta``; 0: ``beta``
            throughout.
        beta: the KL weight in training after the warm-up (conf/backbone's ``prior_weight``: the weight every
            model of an experiment gives its latent prior against the reconstruction in network updates).
            Validation, ``elbo`` and the log-weights always use beta = 1, the ELBO itself.
        ae_warmup_steps: training batches before the KL warm-up starts, with the KL weight 0: the autoencoder
            warm-up that VAELLS's schedule gives its networks (``warmup_steps``), so that every model starts from
            the same kind of training.
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
        ae_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or not recon_weight > 0 or min(kl_warmup_steps, ae_warmup_steps) < 0 or not beta > 0:
            raise ValueError(f"need latent_dim >= 1, recon_weight > 0, kl_warmup_steps >= 0, ae_warmup_steps >= 0 "
                             f"and beta > 0, got {latent_dim}, {recon_weight}, {kl_warmup_steps}, {ae_warmup_steps}, "
                             f"{beta}")
        if getattr(encoder, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(f"the encoder has latent_dim={encoder.latent_dim} but the model {latent_dim}")
        if not hasattr(encoder, "widen_output"):
            raise TypeError(f"{type(encoder).__name__} needs a widen_output(extra) method for the posterior's head")
        encoder.widen_output(self.head_outputs(latent_dim))
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.recon_weight, self.kl_warmup_steps = latent_dim, recon_weight, kl_warmup_steps
        self.beta, self.ae_warmup_steps = beta, ae_warmup_steps
        self.optimizer_factory = optimizer

    # -- the model: subclasses ------------------------------------------------------------------------
    def head_outputs(self, latent_dim: int) -> int:
        """How many outputs the encoder's output layer gains for the posterior's spread."""
        raise NotImplementedError

    def posterior(self, x: Tensor, spread: float = 1.0) -> Distribution:
        """q(z | x), batch shape (B,), event shape (d,), with its spread multiplied by ``spread``."""
        raise NotImplementedError

    def prior(self) -> Distribution:
        """p(z), event shape (d,)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        """g(z) in the decoder's dtype.  (N, d) -> (N, *input_shape)."""
        param = next(self.decoder.parameters())
        return self.decoder(z.to(param.dtype))

    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        return self.posterior(x, spread).rsample(torch.Size([num_samples])).transpose(0, 1)  # (B, S, d)

    def sample_prior(self, num_samples: int, labels: Tensor | None = None) -> Tensor:
        """z ~ p(z); ``labels`` are ignored (the baselines' priors are not class-conditional).  -> (N, d)."""
        return self.prior().sample(torch.Size([num_samples]))

    def log_weights(
        self, x: Tensor, num_samples: int, *, labels: Tensor | None = None, anchors: Tensor | None = None
    ) -> Tensor:
        """The exact log-weights of eq. 4 with q and p in closed form; ``labels`` and ``anchors`` are ignored
        (the baselines' priors are not class-conditional).  -> (B, S)."""
        q = self.posterior(x)
        z = q.sample(torch.Size([num_samples]))  # (S, B, d)
        x_hat = self.decode(z.flatten(0, 1))  # (S * B, *input_shape)
        x_rep = x.unsqueeze(0).expand(num_samples, *x.shape).flatten(0, 1)
        log_lik = reconstruction_log_likelihood(x_rep, x_hat, self.recon_weight).view(num_samples, x.shape[0])
        log_w = log_lik.double() + self.prior().log_prob(z).double() - q.log_prob(z).double()  # (S, B)
        return log_w.transpose(0, 1)

    @torch.no_grad()
    def batch_scores(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``mse`` from the posterior's centre, ``sample_mse`` from one posterior sample, and ``elbo``, the
        one-sample ELBO of eq. 4 (beta = 1) with every constant of the decoder likelihood."""
        x = batch["x"]
        q = self.posterior(x)
        z = q.rsample()  # (B, d)
        x_hat = self.decode(z)
        elbo = reconstruction_log_likelihood(x, x_hat, self.recon_weight).double() - self.kl(q, z).double()
        return {"mse": (self.decode(self.encode(x)) - x).pow(2).mean(), "sample_mse": (x_hat - x).pow(2).mean(),
                "elbo": elbo.mean()}

    # -- the objective --------------------------------------------------------------------------------
    @property
    def kl_weight(self) -> float:
        """The KL weight in training at the current batch: 0 in the autoencoder warm-up, then the KL warm-up's
        ramp to ``beta``."""
        step = self.batch_counter - self.ae_warmup_steps
        if step < 0:
            return 0.0
        ramp = min(1.0, step / self.kl_warmup_steps) if self.kl_warmup_steps else 1.0
        return ramp * self.beta

    def kl(self, q: Distribution, z: Tensor) -> Tensor:
        """KL(q(z | x) || p(z)) per sample: closed form, or log q(z) - log p(z) at the sample z (B, d).  -> (B,)."""
        p = self.prior()
        try:
            return kl_divergence(q, p)
        except NotImplementedError:  # no closed form (a mixture prior)
            return q.log_prob(z) - p.log_prob(z)

    def loss_terms(self, x: Tensor, kl_weight: float = 1.0) -> tuple[dict[str, Tensor], Tensor]:
        """The weighted terms of L by name, their sum ``loss``, and the reconstruction x_hat of the sample."""
        q = self.posterior(x)
        z = q.rsample()  # (B, d)
        x_hat = self.decode(z)
        terms = {"recon": self.recon_weight * reconstruction_error(x, x_hat).double().mean(),
                 "kl": self.kl(q, z).double().mean()}
        terms["loss"] = terms["recon"] + kl_weight * terms["kl"]
        return terms, x_hat

    # -- optimization ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        terms, x_hat = self.loss_terms(batch["x"], self.kl_weight)
        skip = self.skip_if_nonfinite(terms)
        if not skip:
            self._log("train", terms, x_hat, batch["x"])
        if self._logging_step():
            self.log_dict({"train/kl_weight": self.kl_weight, "train/batch": float(self.batch_counter)})
        self.log_skips()
        self.batch_counter += 1
        return None if skip else terms["loss"]  # None: Lightning takes no backward and no optimizer step

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        terms, x_hat = self.loss_terms(batch["x"])
        self._log("val", terms, x_hat, batch["x"])

    def _log(self, stage: str, terms: dict[str, Tensor], x_hat: Tensor, x: Tensor) -> None:
        metrics = {f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        metrics[f"{stage}/mse"] = (x_hat - x).pow(2).mean().detach()  # per dimension
        sync = stage == "val"  # as VAELLSModule._log_terms: every DDP rank validates the whole split
        self.log(f"{stage}/loss", terms["loss"], prog_bar=True, batch_size=x.shape[0], sync_dist=sync)
        if stage == "train" and not self._logging_step():
            return
        self.log_dict(metrics, batch_size=x.shape[0], sync_dist=sync)

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["batch_counter"] = self.batch_counter

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.batch_counter = checkpoint.get("batch_counter", 0)
