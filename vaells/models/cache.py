"""Warm starts for the prior's coefficient inference: each training sample's last c_hat (docs/method.md §1.3).

Every epoch a training sample meets the same anchors again, while the encoder, the anchors and Psi have moved only
a little, so its last answer c_hat(a -> z) is a far better start than a random draw. The target z = T(c) mu + eps is
a fresh posterior sample each time, though, so the start shifts the stored answer by the change of the sampled c:

    c_start = c_hat(a -> z_old) - c_old + c_new,

exact where the operators commute (T(c_hat) = T(c_hat - c_old) T(c_old)), a guess refined by the solver otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class CoefficientCache:
    """Per training sample: the prior's c_hat (N_a, M) at its last step, the sampled c (M,) it answered, and that
    step's number (-1: never seen). Grows to the largest sample index it is given; lives on the CPU in float64 (it is
    part of the checkpoint, so that a resumed run starts its warm starts exactly where the interrupted one stood).
    """

    def __init__(self) -> None:
        self.c_hat = torch.zeros(0, 0, 0, dtype=torch.float64)
        self.c_post = torch.zeros(0, 0, dtype=torch.float64)
        self.step = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return int((self.step >= 0).sum())

    def starts(self, index: Tensor, c_new: Tensor, num_anchors: int) -> tuple[Tensor, Tensor]:
        """Warm starts (B, N_a, M) for samples ``index`` (B,) whose new posterior sample has coefficients c_new
        (B, M), and which of them have an entry (B,) bool; rows without one are zeros."""
        idx = index.detach().long().cpu()
        b, m = c_new.shape
        hit = torch.zeros(b, dtype=torch.bool)
        inside = idx < self.step.shape[0]
        if self.c_hat.shape[1:] == (num_anchors, m):
            hit[inside] = self.step[idx[inside]] >= 0
        start = torch.zeros(b, num_anchors, m, dtype=c_new.dtype, device=c_new.device)
        if bool(hit.any()):
            rows = idx[hit]
            shifted = self.c_hat[rows] - self.c_post[rows].unsqueeze(1)
            start[hit.to(c_new.device)] = shifted.to(c_new) + c_new[hit.to(c_new.device)].unsqueeze(1)
        return start, hit.to(c_new.device)

    def store(self, index: Tensor, c_hat: Tensor, c_post: Tensor, step: int) -> None:
        """Remember c_hat (B, N_a, M) for samples ``index`` (B,), answered for posterior coefficients c_post (B, M)."""
        idx = index.detach().long().cpu()
        n_a, m = c_hat.shape[1:]
        if self.c_hat.shape[1:] != (n_a, m):  # first use, or the anchors changed in number: start over
            self.c_hat = torch.zeros(0, n_a, m, dtype=torch.float64)
            self.c_post = torch.zeros(0, m, dtype=torch.float64)
            self.step = torch.zeros(0, dtype=torch.long)
        self.grow(int(idx.max()) + 1)
        self.c_hat[idx] = c_hat.detach().cpu().double()
        self.c_post[idx] = c_post.detach().cpu().double()
        self.step[idx] = step

    def grow(self, size: int) -> None:
        extra = size - self.step.shape[0]
        if extra <= 0:
            return
        self.c_hat = torch.cat([self.c_hat, self.c_hat.new_zeros(extra, *self.c_hat.shape[1:])])
        self.c_post = torch.cat([self.c_post, self.c_post.new_zeros(extra, *self.c_post.shape[1:])])
        self.step = torch.cat([self.step, self.step.new_full((extra,), -1)])

    def merge(self, other: CoefficientCache) -> None:
        """Keep, per sample, the newer of the two entries (DDP ranks see different samples)."""
        if other.c_hat.shape[1:] != self.c_hat.shape[1:] and len(other):
            if len(self):
                raise ValueError(f"coefficient caches of different shapes: {tuple(self.c_hat.shape[1:])} and "
                                 f"{tuple(other.c_hat.shape[1:])}")
            self.load_state_dict(other.state_dict())
            return
        self.grow(other.step.shape[0])
        newer = torch.zeros_like(self.step, dtype=torch.bool)
        newer[: other.step.shape[0]] = other.step > self.step[: other.step.shape[0]]
        rows = newer.nonzero().squeeze(-1)
        self.c_hat[rows], self.c_post[rows], self.step[rows] = other.c_hat[rows], other.c_post[rows], other.step[rows]

    def state_dict(self) -> dict[str, Any]:
        return {"c_hat": self.c_hat.clone(), "c_post": self.c_post.clone(), "step": self.step.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c_hat = state["c_hat"].clone().double()
        self.c_post = state["c_post"].clone().double()
        self.step = state["step"].clone().long()
