"""The LightningModule base of every model (``ModelBase``): the batch counter that drives warm-ups and schedules
(``trainer.global_step`` counts optimizer steps, of which a VAELLS joint batch takes two), the run's composed
config, stored in every checkpoint so that ``evaluate.py`` rebuilds exactly that run, and what makes training
survive faults: skipped non-finite steps, checkpoints without a NaN, and the random streams that a resumed run
needs to continue exactly (``random_states``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from torch import Tensor

from vaells.objectives import LOWER_LR_HINT, format_terms, nonfinite_terms

log = logging.getLogger(__name__)


class ModelBase(pl.LightningModule):
    """The batch counter, the stored run config and the fault handling of every model.

    Faults: a step whose loss or gradients are not finite, or whose latent points are (``NonFiniteLatent``: a NaN
    in the batch), is skipped (no optimizer step, no parameter change; ``skip_step``), counted as
    ``train/skipped_steps``; after ``max_consecutive_skips`` skips in a row training stops (``TrainingStopped``).
    Under DDP the decision is taken for all ranks at once (``any_rank``). A checkpoint with a non-finite parameter
    or optimizer state is refused.

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

    def skip_nonfinite_latent(self, error: NonFiniteLatent) -> None:
        """Skip (``skip_step``) a step whose latent points are not finite, found before its loss exists. The other
        ranks take the same decision in ``skip_if_nonfinite``, whose one ``any_rank`` this call matches."""
        self.any_rank(True)
        self.skip_step(str(error))

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
        ``self.log`` costs milliseconds per key and step, so a per-operator dictionary would cost more than a
        small model's whole training step. Call on logging steps only (``_logging_step``)."""
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


class TrainingStopped(FloatingPointError):
    """Training stopped: too many consecutive steps were skipped for non-finite losses or gradients."""


class NonFiniteLatent(FloatingPointError):
    """A latent point of a step (an encoding, an encoded anchor, a posterior sample) holds a NaN or an inf: a NaN
    in the batch's inputs, or an overflow. Coefficient inference needs finite points (``vaells.inference``), so a
    training step skips the batch before it (``ModelBase.skip_nonfinite_latent``); elsewhere it is an error."""


def check_latents(**points: Tensor) -> None:
    """Raise ``NonFiniteLatent`` naming the given latent points that hold a NaN or an inf (one device sync)."""
    finite = torch.stack([torch.isfinite(v).all() for v in points.values()])
    if not bool(finite.all()):
        bad = [name for name, ok in zip(points, finite.tolist(), strict=True) if not ok]
        raise NonFiniteLatent(f"non-finite latent point(s) {bad} (NaN or inf): a NaN or inf in the batch's inputs, "
                              "or an encoder or transport overflow")


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
