"""Algorithm 1's choreography as data: training phases and the release's accept/reject rule for Psi.

Both are driven by the module's own batch counter (``trainer.global_step`` counts optimizer steps, of which a
joint batch takes two), and both are small enough to live in a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaells.objectives import LossWeights

WARMUP, NET, PSI, JOINT = "warmup", "net", "psi", "joint"


@dataclass
class Schedule:
    """Which phase a batch belongs to, and the loss weights of that phase (docs/method.md §2).

    Attributes:
        warmup_steps: T_w autoencoder-only batches (tiny Laplace scale, no latent noise, recon loss only).
        alternate: alternate N_net network batches with N_psi operator batches; else update both jointly.
        net_steps, psi_steps: N_net and N_psi.
        net_prior_scale: rho_n; both prior weights are multiplied by it in network phases.
        psi_recon_scale: rho_p; the recon weight is multiplied by it in operator phases.
        joint_prior_scale: prior multiplier in joint mode. The release leaves rho_n applied for the whole
            run when it does not alternate (its reset only happens in the alternating branch), so the
            circle experiment sets this to rho_n = 0.01 explicitly.
        prior_ramp_steps, prior_ramp_to: a prior weight on the networks that grows after the warm-up
            (docs/method.md §2.1): over the ``prior_ramp_steps`` batches after the warm-up, the network
            phases' prior multiplier (net_prior_scale or joint_prior_scale) rises geometrically to
            ``prior_ramp_to``, and stays there. The operators learn the layout of the early, weakly pulled
            encoder first; the encoder is then drawn towards their orbits. ``prior_ramp_to=None`` (the paper):
            no ramp.
    """

    warmup_steps: int = 0
    alternate: bool = False
    net_steps: int = 20
    psi_steps: int = 20
    net_prior_scale: float = 1.0
    psi_recon_scale: float = 1.0
    joint_prior_scale: float = 1.0
    prior_ramp_steps: int = 0
    prior_ramp_to: float | None = None

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.prior_ramp_steps < 0:
            raise ValueError(f"model.schedule.prior_ramp_steps must be >= 0, got {self.prior_ramp_steps}")
        if self.prior_ramp_to is not None:
            start = self.net_prior_scale if self.alternate else self.joint_prior_scale
            if not (self.prior_ramp_to > 0 and start > 0):
                raise ValueError(f"model.schedule.prior_ramp_to={self.prior_ramp_to} ramps geometrically from the "
                                 f"network phases' prior multiplier ({start}); both must be > 0. Set "
                                 f"prior_ramp_to=null for no ramp")
        if self.alternate and (self.net_steps < 1 or self.psi_steps < 1):
            raise ValueError(f"net_steps and psi_steps must be >= 1 when alternating, got {self.net_steps}, "
                             f"{self.psi_steps}")

    def phase(self, step: int) -> str:
        """The phase of batch ``step`` (0-based): the first phase after warm-up is a network phase."""
        if step < self.warmup_steps:
            return WARMUP
        if not self.alternate:
            return JOINT
        k = (step - self.warmup_steps) % (self.net_steps + self.psi_steps)
        return NET if k < self.net_steps else PSI

    def describe_vaells(self) -> str:
        """The phases after the warm-up in words, for the run's log."""
        ramp = ""
        if self.prior_ramp_to is not None:
            ramp = (f", the networks' prior weight rising to {self.prior_ramp_to:g}x over {self.prior_ramp_steps} "
                    "batches")
        if self.alternate:
            return f"alternating {self.net_steps} network / {self.psi_steps} operator batches{ramp}"
        return f"network and operators updated together at every batch{ramp}"

    def describe(self) -> str:
        """The whole schedule in words, for the run's log."""
        if self.warmup_steps:
            return f"{self.warmup_steps} warm-up batches (the autoencoder alone), then {self.describe_vaells()}"
        return self.describe_vaells()

    def ramp(self, start: float, step: int) -> float:
        """The network phases' prior multiplier at batch ``step``: ``start``, or on its way to ``prior_ramp_to``."""
        if self.prior_ramp_to is None:
            return start
        done = 1.0 if self.prior_ramp_steps == 0 else (step - self.warmup_steps) / self.prior_ramp_steps
        return start * (self.prior_ramp_to / start) ** min(max(done, 0.0), 1.0)

    def weights(self, base: LossWeights, phase: str, step: int = 0) -> LossWeights:
        """The loss weights of a ``phase`` batch; ``step`` (the batch) places it on the prior ramp, if any."""
        if phase == NET:
            return base.scaled(prior=self.ramp(self.net_prior_scale, step))
        if phase == PSI:
            return base.scaled(recon=self.psi_recon_scale)
        if phase == JOINT:
            return base.scaled(prior=self.ramp(self.joint_prior_scale, step))
        return base


@dataclass
class AcceptRejectRule:
    """The release's adaptive step on Psi (docs/method.md §2): plain gradient descent with step ``lr``; the
    step is kept only if the operator loss (same c_hat, new Psi) does not increase.

    Accepted steps grow ``lr`` by 1/shrink while ``lr < max_lr`` during the first ``decay_after`` batches
    after warm-up; rejected steps are undone and shrink ``lr``; after ``decay_after`` batches ``lr`` decays by
    ``decay`` every operator step (the release's "titration").
    """

    lr: float = 4e-4
    max_lr: float = 0.1
    shrink: float = 0.99
    decay: float = 0.9992
    decay_after: int = 15000
    accepted: int = 0
    proposed: int = 0

    def update(self, accepted: bool, steps_since_warmup: int) -> None:
        self.proposed += 1
        if not accepted:
            self.lr *= self.shrink
        else:
            self.accepted += 1
            if steps_since_warmup < self.decay_after and self.lr < self.max_lr:
                self.lr /= self.shrink
        if steps_since_warmup > self.decay_after:
            self.lr *= self.decay

    @property
    def accept_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)

    def state_dict(self) -> dict:
        # decay_after too: a callback may move it during training (``monitors.DecayWhenLearned``).
        return {"lr": self.lr, "accepted": self.accepted, "proposed": self.proposed, "decay_after": self.decay_after}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.accepted, self.proposed = state["lr"], state["accepted"], state["proposed"]
        self.decay_after = state.get("decay_after", self.decay_after)  # checkpoints from before it was saved
