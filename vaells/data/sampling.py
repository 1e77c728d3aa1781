"""A training order that a checkpoint can resume in the middle of an epoch.

``EpochSampler`` shuffles each epoch with a generator seeded by (seed, epoch), so the order of any epoch can be
drawn again from the checkpoint's epoch number alone, and it can start an epoch after the samples already seen.
``ResumableLoader`` is a DataLoader that counts the batches it yielded in the current epoch and offers that count
through ``state_dict`` / ``load_state_dict``: Lightning (2.3 and later) stores the state of such a "stateful"
training loader in every checkpoint and restores it on resume (``FitLoop.on_save_checkpoint``), and the loader
then skips what the interrupted run had trained on. Lightning fetches a sized loader's batches one at a time (no
prefetch), so the count at a checkpoint is exactly the batches trained on.

Under DDP (``conf/trainer/ddp.yaml``, ``use_distributed_sampler: false``) the sampler itself takes rank r's share
of each epoch's permutation, r, r + R, r + 2R, ..., padded as ``DistributedSampler`` pads, so every rank sees the
same number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """One generator seed per (seed, epoch), through numpy's SeedSequence: no two pairs share a stream."""
    return int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])


def _replicas() -> tuple[int, int]:
    """(number of ranks, this rank) of the default process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def rank_share(items: list, replicas: int | None = None, rank: int | None = None) -> list:
    """Rank ``rank``'s share of ``items``: every ``replicas``-th from ``rank``, the list padded with its own start
    to a multiple of ``replicas`` first, as ``DistributedSampler`` pads (all of it on one process)."""
    if replicas is None or rank is None:
        replicas, rank = _replicas()
    if replicas == 1:
        return items
    total = math.ceil(len(items) / replicas) * replicas
    padded = (items * math.ceil(total / max(len(items), 1)))[:total]
    return padded[rank:total:replicas]


def share_length(num_items: int) -> int:
    """The length of ``rank_share`` of ``num_items`` items."""
    return math.ceil(num_items / _replicas()[0])


class EpochSampler(Sampler[int]):
    """Indices 0..n-1 in an order drawn from (``seed``, epoch); this rank's share of it under DDP.

    Lightning calls ``set_epoch`` before every epoch (as for ``DistributedSampler``). ``start`` samples of the
    next epoch are skipped once (``ResumableLoader.load_state_dict``), and then it is 0 again.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError(f"EpochSampler needs at least one sample, got {num_samples}")
        self.num_samples, self.seed = num_samples, int(seed)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return share_length(self.num_samples)

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, all of them."""
        perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        return rank_share(perm.tolist())

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])


class ResumableLoader(DataLoader):
    """A training DataLoader over an ``EpochSampler`` whose position within the epoch is part of a checkpoint
    (see the module docstring). ``state_dict()`` is {"epoch", "batches"}: the epoch and the batches of it
    yielded so far. A restored position applies to that epoch only: a checkpoint written at an epoch's end
    resumes with the next epoch, from its start."""

    def __init__(self, dataset: Any, *, sampler: EpochSampler, batch_size: int, **kwargs: Any) -> None:
        if kwargs.get("drop_last"):
            raise ValueError("ResumableLoader skips whole batches of its sampler and does not drop the last one")
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self.batches_yielded = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        resume, self._resume_at = self._resume_at, None
        self.batches_yielded = resume[1] if resume is not None and resume[0] == sampler.epoch else 0
        sampler.start = self.batches_yielded * self.batch_size
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches"]))
