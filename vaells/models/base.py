"""The interface through which evaluation sees every model, and what the models share.

``LatentModel`` is all that metrics, the report and the figures may ask of a model: encode, decode, sample the
posterior at a spread, sample the prior, and the importance log-weights of eq. 4. VAELLS
(``vaells.models.vaells``) and the baselines implement it; what only VAELLS has (transport operators) is asked
for with ``has_operators``, never by class.

``ModelBase`` is the LightningModule base of every model: the batch counter that drives warm-ups and
schedules (``trainer.global_step`` counts optimizer steps, of which a VAELLS joint batch takes two), the
run's composed config, stored in every checkpoint so that ``evaluate.py`` rebuilds exactly that run, and what
makes training survive faults: skipped non-finite steps, checkpoints without a NaN, and the random streams that
a resumed run needs to continue exactly (README, "Resume, interruption and multi-process training").

``VariationalModel`` is the training shared by the baselines: a VAE with an explicit posterior q(z|x) and
prior p(z), on the ELBO of eq. 4 with the decoder likelihood every model of the project uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from vaells.objectives import (
    LOWER_LR_HINT,
    format_terms,
    nonfinite_terms,
    reconstruction_error,
    reconstruction_log_likelihood,
)

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
        """Batch means of ``mse`` (per data dimension, reconstructions of a posterior sample) and ``elbo`` (the
        negative training objective, without regularisers of parameters)."""


def has_operators(model: object) -> bool:
    """Whether ``model`` carries transport operators (VAELLS): the metrics and figures only they allow."""
    return getattr(model, "transport", None) is not None


class TrainingStopped(FloatingPointError):
    """Training stopped: too many consecutive steps were skipped for non-finite losses or gradients."""


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """The names (dotted paths) of the floating-point tensors in a nested dict / list that hold a NaN or an inf."""
    if isinstance(tree, Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, list | tuple):
        return [n for i, v in enumerate(tree) for n in nonfinite_tensors(v, f"{prefix}[{i}]")]
    return []


def random_states() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random states (Lightning's ``_collect_rng_states``), with numpy's
    key as a tensor: Lightning loads checkpoints with ``torch.load(weights_only=True)``, which refuses numpy arrays."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    kind, key, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = [kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    states["python"] = list(states["python"])
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Set what ``random_states`` returned."""
    states = dict(states)
    kind, key, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = (kind, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)
    _set_rng_states(states)


class ModelBase(pl.LightningModule):
    """The batch counter, the stored run config and the fault handling of every model.

    Faults: a step whose loss or gradients are not finite is skipped (no optimizer step, no parameter change;
    ``skip_step``), counted as ``train/skipped_steps``; after ``max_consecutive_skips`` skips in a row training
    stops (``TrainingStopped``). Under DDP the decision is taken for all ranks at once (``any_rank``). A checkpoint
    with a non-finite parameter or optimizer state is refused.

    Exact resume: every checkpoint holds the torch, numpy and Python random states that ``training_step`` draws
    from (posterior samples, solver restarts); a resumed run sets them just before its first batch, after
    everything Lightning does on a restart. Validation draws from the same global streams, so it runs on a copy
    and hands training's streams back untouched: training is then the same whether or not, and how often, it is
    interrupted around a validation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batch_counter = 0  # batches seen: drives warm-up and alternation (not trainer.global_step)
        self.run_config: dict | None = None  # the composed Hydra config, stored in checkpoints by the builder
        self.input_shape: tuple[int, ...] | None = None  # one input's shape, set by the builder: loads without data
        self.max_consecutive_skips = 10  # the builder sets the run's (conf/train.yaml)
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._rng_to_restore: dict | None = None  # from a checkpoint, set before the first batch
        self._rng_outside_validation: dict | None = None  # training's streams while validation runs

    # -- faults --------------------------------------------------------------------------------------
    def any_rank(self, flag: bool) -> bool:
        """``flag`` or'ed over the DDP ranks (itself on one process): a skip must happen on every rank or none."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))

    def nonfinite_gradients(self, params: Iterable[tuple[str, Tensor]] | None = None) -> list[str]:
        """The names of the parameters whose gradient holds a NaN or an inf."""
        named = self.named_parameters() if params is None else params
        return [n for n, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())]

    def skip_step(self, reason: str) -> None:
        """Count and log a skipped step; stop training after ``max_consecutive_skips`` in a row."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        log.warning("batch %d: step skipped (no optimizer step, parameters unchanged): %s; %d skipped so far",
                    self.batch_counter, reason, self.skipped_steps)
        if self.consecutive_skips >= self.max_consecutive_skips:
            root = Path(self._trainer.default_root_dir) if self._trainer is not None else Path("RUN")
            raise TrainingStopped(
                f"training stopped at batch {self.batch_counter}: {self.consecutive_skips} steps in a row were "
                f"skipped (limit max_consecutive_skips={self.max_consecutive_skips}), the last for {reason}. No "
                f"non-finite value reached the parameters or a checkpoint. Resume with the same settings: python "
                f"train.py ckpt_path={root / 'checkpoints' / 'last.ckpt'} ; or start a new run that {LOWER_LR_HINT}."
            )

    def skip_if_nonfinite(self, terms: dict[str, Tensor]) -> bool:
        """Skip (``skip_step``) when a loss term is not finite on any rank; returns whether it did."""
        bad = nonfinite_terms(terms)
        if not self.any_rank(bool(bad)):
            return False
        self.skip_step(f"non-finite loss term(s) {bad or '(on another rank)'}: {format_terms(terms)}")
        return True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Automatic optimization (the baselines): a non-finite gradient skips the step. Gradients set to None
        leave a torch optimizer's parameters and state alone (the closure has run by now)."""
        if not self.automatic_optimization:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        names = {id(p): n for n, p in self.named_parameters()}
        bad = self.nonfinite_gradients((names.get(id(p), "?"), p) for p in params)
        if self.any_rank(bool(bad)):
            for p in params:
                p.grad = None
            self.skip_step(f"non-finite gradient(s) of {bad or '(on another rank)'}")
        else:
            self.consecutive_skips = 0

    def log_skips(self) -> None:
        if self._logging_step():  # a running count: the logger's steps see every change
            self.log("train/skipped_steps", float(self.skipped_steps))

    def _logging_step(self) -> bool:
        """Whether the logger writes this training step (every ``trainer.log_every_n_steps``), or it is an epoch's
        last batch (train.log's summary and the progress lines report it), or a smoke run; True outside a fit.

        Training steps log only their loss on other steps: each ``self.log`` call costs Lightning about a
        millisecond (it moves its whole result record to the value's device), more than a small model's step
        takes to compute, and the logger writes on-step values only at its own steps anyway."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
        if connector is None:
            return True
        return bool(connector.should_update_logs or trainer.is_last_batch or trainer.fast_dev_run)

    def log_to_loggers(self, metrics: dict[str, Tensor | float]) -> None:
        """Write training diagnostics straight to the run's loggers (TensorBoard), at the step Lightning's own
        logging of this batch uses. For values that no callback, checkpoint monitor or progress line reads:
        ``self.log`` would cost ~1-2 ms per key and step, a per-operator dictionary more than a small model's
        whole training step. Call on logging steps only (``_logging_step``)."""
        trainer = self._trainer
        if trainer is None or not trainer.loggers or trainer.fast_dev_run:
            return
        # Lightning's logger connector writes a training batch's metrics at this counter (before it is advanced).
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        values = {k: float(v) for k, v in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    # -- exact resume --------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            set_random_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_validation_start(self) -> None:
        self._rng_outside_validation = random_states()

    def on_validation_end(self) -> None:
        if self._rng_outside_validation is not None:
            set_random_states(self._rng_outside_validation)
            self._rng_outside_validation = None

    # -- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_tensors({"state_dict": checkpoint.get("state_dict", {}),
                                 "optimizer_states": checkpoint.get("optimizer_states", [])})
        if bad:
            raise FloatingPointError(f"refusing to write a checkpoint with non-finite values in {bad[:5]}")
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        if self.input_shape is not None:
            checkpoint["input_shape"] = list(self.input_shape)
        # Mid-validation (a SIGTERM there): training's streams are the ones set aside at its start.
        checkpoint["rng_states"] = self._rng_outside_validation or random_states()
        checkpoint["faults"] = {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        faults = checkpoint.get("faults", {})
        self.skipped_steps = faults.get("skipped_steps", 0)
        self.consecutive_skips = faults.get("consecutive_skips", 0)


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
        terms, x_hat = self.loss_terms(batch["x"])
        return {"mse": (x_hat - batch["x"]).pow(2).mean(), "elbo": -terms["loss"]}

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
