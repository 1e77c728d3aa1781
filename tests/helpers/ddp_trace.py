"""A callback for the DDP tests, run in train.py's processes (PYTHONPATH=tests/helpers): every rank records its Psi,
anchors and phase after every training batch, and saves them as <path>/rank<r>.pt at the end of training."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class ParameterTrace(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({"batch": pl_module.batch_counter, "psi": pl_module.transport.psi.detach().clone(),
                          "anchors": pl_module.anchor_inputs.detach().clone(),
                          "encoder": torch.cat([p.detach().flatten() for p in pl_module.encoder.parameters()]),
                          "psi_lr": pl_module.psi_rule.lr, "accepted": pl_module.psi_rule.accepted,
                          "world_size": trainer.world_size})

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        torch.save(self.rows, self.path / f"rank{trainer.global_rank}.pt")
