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
    """

    warmup_steps: int = 0
    alternate: bool = False
    net_steps: int = 20
    psi_steps: int = 20
    net_prior_scale: float = 1.0
    psi_recon_scale: float = 1.0
    joint_prior_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
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
        if self.alternate:
            return f"alternating {self.net_steps} network / {self.psi_steps} operator batches"
        return "network and operators updated together at every batch"

    def describe(self) -> str:
        """The whole schedule in words, for the run's log."""
        if self.warmup_steps:
            return f"{self.warmup_steps} warm-up batches (the autoencoder alone), then {self.describe_vaells()}"
        return self.describe_vaells()

    def weights(self, base: LossWeights, phase: str) -> LossWeights:
        if phase == NET:
            return base.scaled(prior=self.net_prior_scale)
        if phase == PSI:
            return base.scaled(recon=self.psi_recon_scale)
        if phase == JOINT:
            return base.scaled(prior=self.joint_prior_scale)
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
