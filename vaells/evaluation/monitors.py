"""Training-time monitors of what the transport operators learn (TensorBoard scalars, no figures).

``OperatorMonitor`` logs, at every validation of a model with transport operators (VAELLS; the baselines have
none, and get nothing from it):

- ``val/psi_norm_m`` and ``val/psi_drift_m``: each operator's Frobenius norm and its relative distance from
  its random start (``TransportOperator.drift``), so a run whose operators never leave their
  initialisation shows it at once;
- with rotated digits, ``val/rotation_order`` and ``val/rotation_match`` (``evaluation.images.rotation_metrics``)
  on a fixed, seeded subset of upright validation digits, so a user sees when the rotation is learned or
  lost, and a checkpoint can be chosen by it (``conf/experiment/rotated_mnist.yaml``); with ``flow_fit``
  also ``val/rotation_flow_order`` and ``val/rotation_flow_residual`` (``evaluation.images.rotation_flow_fit``):
  whether the encoder's rotation loop can be followed by any one operator (README, "What decides").

``DecayWhenLearned`` starts the operators' step decay (``AcceptRejectRule``'s titration) at the first validation
whose monitored metric reaches a threshold, instead of at a fixed batch.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from vaells.models.base import has_operators

log = logging.getLogger(__name__)


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
        val_set = getattr(dm, "val_set", None)
        if not getattr(dm, "rotates_digits", False) or val_set is None:
            return None
        if self._digits is None:
            pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(self.seed))
            self._digits = torch.stack([val_set[int(i)]["digit"] for i in pick[: self.num_digits]])
        return self._digits

    def metrics(self, pl_module: pl.LightningModule, dm) -> dict[str, float]:
        transport = pl_module.transport
        out = {}
        for m, (norm, drift) in enumerate(zip(transport.norms(), transport.drift(), strict=True)):
            out[f"val/psi_norm_{m}"] = float(norm)
            out[f"val/psi_drift_{m}"] = float(drift)
        digits = self.validation_digits(dm)
        if digits is not None:
            from vaells.evaluation.images import rotation_flow_fit, rotation_metrics

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
    current VAELLS batch (if that is earlier). A fixed decay_after fits one data set's pace and not another's
    (README, "What the operators learn": the small digits learn their rotation ~1300 batches after MNIST's).
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
