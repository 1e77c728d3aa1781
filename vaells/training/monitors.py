"""Training-time monitors of what the transport operators learn (TensorBoard scalars, no figures).

``OperatorMonitor`` logs, at every validation of a model with transport operators (VAELLS; the baselines have
none, and get nothing from it):

- ``val/psi_norm_m`` and ``val/psi_drift_m``: each operator's Frobenius norm and its relative distance from
  its random start (``TransportOperator.drift``), so a run whose operators never leave their
  initialisation shows it at once;
- with rotated digits, ``val/rotation_order`` and ``val/rotation_match`` (``evaluation.rotation.rotation_metrics``)
  on a fixed, seeded subset of upright validation digits, so a user sees when the rotation is learned or
  lost, and a checkpoint can be chosen by it (``conf/experiment/rotated_mnist.yaml``); with ``flow_fit``
  also ``val/rotation_flow_order`` and ``val/rotation_flow_residual`` (``evaluation.rotation.rotation_flow_fit``):
  whether the encoder's rotation loop can be followed by any one operator.

``DecayWhenLearned`` starts the operators' step decay (``AcceptRejectRule``'s titration) at the first validation
whose monitored metric reaches a threshold, instead of at a fixed batch.

``WarmupFlowCheck`` scores the warm-up encoder's rotation loop when the warm-up ends, and trains a fresh warm-up
if no linear flow could follow it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from vaells.models.base import has_operators
from vaells.networks import reinitialise

log = logging.getLogger(__name__)


def fixed_validation_digits(dm, num_digits: int, seed: int) -> torch.Tensor | None:
    """``num_digits`` upright validation digits (N, 1, H, W) drawn with ``seed``, the same at every call; None for
    data without rotations (or before the data module is set up)."""
    val_set = getattr(dm, "val_set", None)
    if not getattr(dm, "rotates_digits", False) or val_set is None:
        return None
    pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(seed))
    return torch.stack([val_set[int(i)]["digit"] for i in pick[:num_digits]])


class OperatorMonitor(pl.Callback):
    """Args:
    num_digits: upright validation digits for the rotation metrics (the same ones at every validation).
    seed: the seed of that subset, and of the metric's own sampling.
    flow_fit: also log the encoder's ``rotation_flow_fit`` on the same digits (a full turn of each is encoded:
        about 10 s per validation on one CPU thread for 50 digits).
    """

    def __init__(self, num_digits: int = 50, seed: int = 0, flow_fit: bool = False) -> None:
        if num_digits < 1:
            raise ValueError(f"callbacks.operator_monitor.num_digits must be >= 1, got {num_digits}")
        self.num_digits, self.seed, self.flow_fit = num_digits, seed, flow_fit
        self._digits: torch.Tensor | None = None

    def validation_digits(self, dm) -> torch.Tensor | None:
        """The fixed subset of upright validation digits (N, 1, H, W), or None for data without rotations."""
        if self._digits is None:
            self._digits = fixed_validation_digits(dm, self.num_digits, self.seed)
        return self._digits

    def metrics(self, pl_module: pl.LightningModule, dm) -> dict[str, float]:
        transport = pl_module.transport
        out = {}
        for m, (norm, drift) in enumerate(zip(transport.norms(), transport.drift(), strict=True)):
            out[f"val/psi_norm_{m}"] = float(norm)
            out[f"val/psi_drift_{m}"] = float(drift)
        digits = self.validation_digits(dm)
        if digits is not None:
            from vaells.evaluation.rotation import rotation_flow_fit, rotation_metrics

            rot = rotation_metrics(pl_module, digits, seed=self.seed)
            out |= {"val/rotation_order": rot["rotation_order"], "val/rotation_match": rot["rotation_match"]}
            if self.flow_fit:
                flow = rotation_flow_fit(pl_module, digits, seed=self.seed)
                out |= {"val/rotation_flow_order": flow["rotation_flow_order"],
                        "val/rotation_flow_residual": flow["rotation_flow_residual"]}
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not has_operators(pl_module):
            return
        # Every rank computes the same values (the subset is fixed, and trainer=ddp keeps Psi and the networks
        # identical); averaging them changes nothing and keeps Lightning from warning at every validation.
        pl_module.log_dict(self.metrics(pl_module, trainer.datamodule), sync_dist=True)


class DecayWhenLearned(pl.Callback):
    """Start the decay of the operators' step (``psi_rule.decay_after``) once the operators have learned what
    ``monitor`` measures: at the first validation where it reaches ``threshold``, decay_after becomes the
    current VAELLS batch (if that is earlier). A fixed decay_after fits one data set's pace and not another's.
    Models without a ``psi_rule``, and runs that do not log ``monitor``, are left alone.

    Args:
        monitor: a logged validation metric, higher is better (``val/rotation_order``, ``OperatorMonitor``).
        threshold: the value at which the decay starts.
    """

    def __init__(self, monitor: str = "val/rotation_order", threshold: float = 0.8) -> None:
        self.monitor, self.threshold = monitor, float(threshold)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rule, value = getattr(pl_module, "psi_rule", None), trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or rule is None or value is None or float(value) < self.threshold:
            return
        since_warmup = pl_module.batch_counter - pl_module.schedule.warmup_steps
        if 0 <= since_warmup < rule.decay_after:
            rule.decay_after = since_warmup
            log.info("%s = %.3f reached %.3f at VAELLS batch %d: the operators' step decays from here",
                     self.monitor, float(value), self.threshold, since_warmup)


class WarmupFlowCheck(pl.Callback):
    """When the warm-up ends, check that one linear flow could rotate the digits through the warm-up encoder; if
    not, draw the networks afresh and train the warm-up again.

    The operator can only follow the loop that the encoder draws as a digit turns, and at the prior's default
    weight in network phases VAELLS leaves that loop as the warm-up drew it. So at the
    batch where VAELLS proper would begin, ``rotation_flow_fit`` scores the encoder on a fixed subset of upright
    validation digits. Below ``threshold``, the encoder and decoder are redrawn (``vaells.networks.reinitialise``),
    their optimizer's moments are cleared, and a new warm-up of whole epochs (at least the configured one) runs;
    the run gets as many more epochs, so the VAELLS phase keeps its length and the operators' step decay
    (counted from the warm-up's end) its place. The operators themselves are left as they are: the warm-up never
    steps them, and their initialisation stays the reference of ``operator_drift``. After ``max_restarts`` fresh
    warm-ups the run goes on with the last, with a warning. The restarts are kept in checkpoints, so a resumed run
    continues the same schedule. Runs without operators or without rotated digits are left alone.

    Args:
        threshold: the lowest ``rotation_flow_order`` accepted.
        max_restarts: fresh warm-ups at most.
        num_digits, seed: the validation digits (``OperatorMonitor``'s defaults: the same 50 digits).
    """

    def __init__(self, threshold: float = 0.93, max_restarts: int = 3, num_digits: int = 50, seed: int = 0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"callbacks.warmup_flow_check.threshold must be in (0, 1], got {threshold}")
        if max_restarts < 0 or num_digits < 1:
            raise ValueError("callbacks.warmup_flow_check needs max_restarts >= 0 and num_digits >= 1, got "
                             f"{max_restarts} and {num_digits}")
        self.threshold, self.max_restarts, self.num_digits, self.seed = float(threshold), max_restarts, num_digits, seed
        self.scores: list[float] = []  # the flow order at each warm-up end checked
        self.added_batches = self.added_epochs = 0
        self._digits: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "added_batches": self.added_batches, "added_epochs": self.added_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = list(state_dict["scores"])
        self.added_batches, self.added_epochs = state_dict["added_batches"], state_dict["added_epochs"]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run: its schedule and epoch count come from the config, the restarts from the checkpoint.
        if self.added_batches and hasattr(pl_module, "schedule"):
            pl_module.schedule.warmup_steps += self.added_batches
            _extend(trainer, self.added_epochs)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        schedule = getattr(pl_module, "schedule", None)
        if (schedule is None or not has_operators(pl_module) or schedule.warmup_steps == 0
                or pl_module.batch_counter != schedule.warmup_steps):
            return
        if self._digits is None:
            self._digits = fixed_validation_digits(trainer.datamodule, self.num_digits, self.seed)
        if self._digits is None:
            return
        from vaells.evaluation.rotation import rotation_flow_fit

        score = rotation_flow_fit(pl_module, self._digits, seed=self.seed)["rotation_flow_order"]
        self.scores.append(score)
        pl_module.log("train/warmup_flow_order", score)
        tries = len(self.scores)
        if score >= self.threshold:
            log.info("warm-up %d ends at batch %d: the encoder's rotation_flow_order %.3f >= %.3f, VAELLS begins",
                     tries, pl_module.batch_counter, score, self.threshold)
            return
        if tries > self.max_restarts:
            log.warning("warm-up %d ends at batch %d with rotation_flow_order %.3f < %.3f, after %d fresh warm-ups "
                        "(scores %s): VAELLS begins anyway, and the operator may not learn the rotation. Raise "
                        "callbacks.warmup_flow_check.max_restarts to try more.", tries, pl_module.batch_counter,
                        score, self.threshold, self.max_restarts, ", ".join(f"{s:.3f}" for s in self.scores))
            return
        self._restart(trainer, pl_module)
        log.info("warm-up %d ends at batch %d: the encoder's rotation_flow_order %.3f < %.3f; networks redrawn, "
                 "warm-up %d until batch %d, the run extended to %d epochs", tries, pl_module.batch_counter,
                 score, self.threshold, tries + 1, schedule.warmup_steps, trainer.fit_loop.max_epochs)

    def _restart(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        networks = [pl_module.encoder, pl_module.decoder]
        for net in networks:
            reinitialise(net)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for param in net.parameters():  # every rank continues from rank 0's draw
                    torch.distributed.broadcast(param.data, src=0)
        opt_net = pl_module.optimizers()[0]
        # Adam's moments belong to the old weights (Lightning wraps the torch optimizer; a bare one has .state).
        getattr(opt_net, "optimizer", opt_net).state.clear()
        # A warm-up of whole epochs, at least the configured one (its first end is at batch warmup_steps), so that
        # the epochs added to the run hold exactly the batches added to the warm-up.
        per_epoch = max(1, int(trainer.num_training_batches))
        epochs = math.ceil((pl_module.schedule.warmup_steps - self.added_batches) / per_epoch)
        pl_module.schedule.warmup_steps += epochs * per_epoch
        self.added_batches += epochs * per_epoch
        self.added_epochs += epochs
        _extend(trainer, epochs)


def _extend(trainer: pl.Trainer, epochs: int) -> None:
    """``epochs`` more for the run (a run without an epoch limit, max_epochs -1, is left as it is)."""
    if trainer.fit_loop.max_epochs is not None and trainer.fit_loop.max_epochs >= 0:
        trainer.fit_loop.max_epochs += epochs


class ValidateLastEpoch(Callback):
    """Validate at the last epoch too, whatever ``trainer.check_val_every_n_epoch`` says, so that every run ends
    with a validation: its best checkpoint (``best-epochNNN.ckpt``) exists and has seen the final model.

    Lightning decides per epoch whether ``(epoch + 1) % check_val_every_n_epoch == 0``; at the start of the last
    epoch the interval is set to 1 for that epoch.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1
