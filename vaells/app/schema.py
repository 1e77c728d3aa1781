"""The config schema: typed dataclasses, one per config node, that ``vaells.app.validation`` checks a run
against.

A field's annotation is the type its value must have (``int | None``: an integer or null; a nested schema:
a sub-node, checked in turn), and ``bound`` adds the range and what the field means. A field is checked
only where the node has that key, so one schema serves every class a node can build (``ModelSchema``
holds VAELLS's keys and the baselines').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The ranges a field can be given, by how the message says them.
RANGES: dict[str, Callable[[Any], bool]] = {
    ">= 0": lambda v: v >= 0,
    "> 0": lambda v: v > 0,
    ">= 1": lambda v: v >= 1,
    ">= 1, or -1 for no limit": lambda v: v >= 1 or v == -1,
    ">= -1 (-1: all)": lambda v: v >= -1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "float32 or float64": lambda v: v in ("float32", "float64", "torch.float32", "torch.float64"),
    "test or val": lambda v: v in ("test", "val"),
    "a list of [low, high] ranges with low <= high": lambda v: len(v) > 0 and all(
        len(pair) == 2 and pair[0] <= pair[1] for pair in v),
    "a pair [beta1, beta2], each in [0, 1)": lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
}


@dataclass(frozen=True)
class Bound:
    """A field's range (a key of ``RANGES``), what the field is (for the message) and a value to suggest."""

    need: str
    what: str = ""
    example: str = ""


def bound(need: str, what: str = "", example: str = "") -> Any:
    """A schema field whose value must lie in the range ``need``."""
    if need not in RANGES:
        raise KeyError(f"unknown range {need!r}; one of {list(RANGES)}")
    return field(default=None, metadata={"bound": Bound(need, what, example)})


def typed() -> Any:
    """A schema field that is checked for its type alone."""
    return field(default=None)


@dataclass
class OptimizerSchema:
    """A ``torch.optim`` partial (``model.optimizer``, ``model.psi_optimizer``)."""

    lr: float = bound("> 0", "the learning rate", "1e-4")
    betas: list[float] = bound("a pair [beta1, beta2], each in [0, 1)", "Adam's decay rates", "[0.5,0.999]")
    eps: float = bound("> 0")
    weight_decay: float = bound(">= 0")
    momentum: float = bound(">= 0")


@dataclass
class PsiOptimizerSchema(OptimizerSchema):
    """``model.psi_optimizer``: its lr is null while ``model.psi_rule`` sets the operators' step size."""

    lr: float | None = bound("> 0", "the operators' learning rate", "1e-3")


@dataclass
class TransportSchema:
    """``model.transport`` (``vaells.transport.TransportOperator``)."""

    latent_dim: int = bound(">= 1", "d, the latent size")
    num_operators: int = bound(">= 1", "M, the number of transport operators")
    init_std: float = bound(">= 0", "the spread of Psi's random start")
    dtype: str = bound("float32 or float64", "the transport operator's precision")
    affine: bool = typed()
    norm: float | None = bound("> 0", "the Frobenius norm every Psi_m is held at (null: free)", "1.0")


@dataclass
class SolverSchema:
    """``model.posterior_solver`` and ``model.prior_solver`` (``vaells.inference.CoefficientSolver``;
    docs/method.md §1.3)."""

    l1_weight: float = bound(">= 0", "the coefficients' L1 weight lambda")
    restarts: list[list[float]] = bound("a list of [low, high] ranges with low <= high",
                                        "the uniform ranges of the solver's restarts", "[[-2.5,0.0],[0.0,2.5]]")
    max_iter: int = bound(">= 1", "the solver's iteration cap", "20")
    ftol: float | None = bound(">= 0", "the solver's tolerance on the objective (null: its default)")
    max_coeff: float | None = bound("> 0", "the bound on |c_m| (null: none)")
    dtype: str | None = bound("float32 or float64", "the solver's precision (null: the operator's)")
    jacobian_dtype: str | None = bound("float32 or float64", "the precision of the solver's search direction "
                                       "(null: the solver's)")
    screen_after: int | None = bound(">= 1", "iterations after which a closest-anchor prior goes on with each "
                                     "sample's best anchors only (null: no screening)", "4")
    screen_keep: int = bound(">= 1", "the anchors per sample that go on after screen_after", "1")


@dataclass
class LossWeightsSchema:
    """``model.weights`` (``vaells.objectives.LossWeights``, eq. 9)."""

    recon: float = bound(">= 0", "zeta_1, the reconstruction weight")
    post_transport: float = bound(">= 0", "zeta_2, the posterior transport weight")
    post_l1: float = bound("> 0", "zeta_3; 1/post_l1 is the posterior's Laplace scale b", "1.0")
    prior_transport: float = bound(">= 0", "zeta_4, the prior transport weight")
    prior_l1: float = bound(">= 0", "zeta_5, the prior coefficient L1 weight")
    dictionary: float = bound(">= 0", "gamma, the Frobenius weight on Psi")


@dataclass
class ScheduleSchema:
    """``model.schedule`` (``vaells.models.schedule.Schedule``, docs/method.md §2)."""

    warmup_steps: int = bound(">= 0", "the autoencoder-only warm-up batches")
    alternate: bool = typed()
    net_steps: int = bound(">= 1", "N_net, network batches per alternation")
    psi_steps: int = bound(">= 1", "N_psi, operator batches per alternation")
    net_prior_scale: float = bound(">= 0", "rho_n, the prior's scale in network batches")
    psi_recon_scale: float = bound(">= 0", "rho_p, the reconstruction's scale in operator batches")
    joint_prior_scale: float = bound(">= 0", "the prior's scale in joint batches")
    prior_ramp_steps: int = bound(">= 0", "the batches after warm-up over which the networks' prior scale grows")
    prior_ramp_to: float | None = bound("> 0", "the networks' prior scale at the ramp's end (null: no ramp)", "1.0")


@dataclass
class PsiRuleSchema:
    """``model.psi_rule`` (``vaells.models.schedule.AcceptRejectRule``, docs/method.md §2)."""

    lr: float = bound("> 0", "the operators' starting step size", "4e-4")
    max_lr: float = bound("> 0", "the step size's ceiling")
    shrink: float = bound("in (0, 1]", "the step's factor after a rejected step")
    decay: float = bound("in (0, 1]", "the step's decay per operator batch after decay_after")
    decay_after: int = bound(">= 0", "batches after warm-up before the decay")


@dataclass
class ModelSchema:
    """``model``: VAELLS's keys (conf/model/vaells.yaml) and the baselines' (conf/model/vae.yaml, ...)."""

    latent_dim: int = bound(">= 1", "d, the latent size", "2")
    num_operators: int = bound(">= 1", "M, the number of transport operators", "1")
    latent_scale: float = bound("> 0", "s, the encodings' scale")
    noise_std: float = bound("> 0", "sigma_eps, the posterior's latent noise: the Gaussian terms of q(z|x) and p(z) "
                             "divide by it", "1e-4")
    closest_anchor: bool = typed()
    warmup_coeff_scale: float = bound("> 0", "the Laplace scale during warm-up")
    post_warmup_lr_factor: float = bound("> 0", "the network learning rate's factor after warm-up")
    anchor_lr: float = bound(">= 0", "the learnable anchors' step size")
    learn_anchors: bool = typed()
    gradient_clip_val: float | None = bound("> 0", "the network gradients' norm clip (null: none)")
    transport: TransportSchema = typed()
    posterior_solver: SolverSchema = typed()
    prior_solver: SolverSchema = typed()
    weights: LossWeightsSchema = typed()
    schedule: ScheduleSchema = typed()
    optimizer: OptimizerSchema = typed()
    psi_optimizer: PsiOptimizerSchema = typed()
    psi_rule: PsiRuleSchema | None = typed()
    # the baselines (vaells/models/base.py)
    recon_weight: float = bound("> 0", "the decoder likelihood's precision 1/sigma_x^2")
    beta: float = bound("> 0", "the KL weight (1: the ELBO)", "1")
    kl_warmup_steps: int = bound(">= 0", "the KL warm-up batches")
    ae_warmup_steps: int = bound(">= 0", "the autoencoder-only warm-up batches")
    init_log_var: float = typed()
    num_pseudo_inputs: int = bound(">= 1", "K, the VampPrior's pseudo-inputs", "100")


@dataclass
class NetworkSchema:
    """``backbone.encoder`` and ``backbone.decoder`` (``vaells.networks``)."""

    latent_dim: int = bound(">= 1", "d, the latent size")
    hidden_dim: int = bound(">= 1", "the hidden layer's width", "512")
    channels: int = bound(">= 1", "the convolutions' base width", "64")
    image_size: int = bound(">= 1", "the images' side in pixels")
    in_channels: int = bound(">= 1")
    out_channels: int = bound(">= 1")


@dataclass
class BackboneSchema:
    """``backbone``: what every model of an experiment shares (conf/backbone/)."""

    latent_dim: int = bound(">= 1", "d, the latent size", "2")
    recon_weight: float = bound("> 0", "the decoder likelihood's precision 1/sigma_x^2", "0.01")
    prior_weight: float = bound(">= 0", "the prior's weight against the reconstruction", "0.01")
    warmup_steps: int = bound(">= 0", "the autoencoder-only warm-up batches")
    encoder: NetworkSchema = typed()
    decoder: NetworkSchema = typed()


@dataclass
class DataSchema:
    """``data``: the keys of every data module (conf/data/)."""

    batch_size: int = bound(">= 1", "the batch size", "32")
    anchors_per_class: int = bound(">= 1", "N_a, the prior's anchors per class, eq. 8", "4")
    num_workers: int = bound(">= 0", "the data loader's worker processes")
    seed: int = typed()
    num_train: int = bound(">= 1", "the training samples")
    num_val: int = bound(">= 1", "the validation samples")
    num_test: int = bound(">= 1", "the test samples")
    num_train_per_class: int = bound(">= 1", "the training samples per class")
    num_val_per_class: int = bound(">= 1", "the validation samples per class")
    num_test_per_class: int = bound(">= 1", "the test samples per class")
    noise_std: float = bound(">= 0", "the data's noise")
    ambient_dim: int = bound(">= 1", "the data space's dimension")
    val_fraction: float = bound("in [0, 1)", "the share of samples for validation")
    test_fraction: float = bound("in [0, 1)", "the share of samples for testing")
    epoch_size: int | None = bound(">= 1", "the samples per epoch (null: one pass)")
    path: str = typed()
    root: str = typed()
    download: bool = typed()


@dataclass
class TrainerSchema:
    """``trainer`` (``pytorch_lightning.Trainer``; conf/trainer/default.yaml)."""

    max_epochs: int = bound(">= 1, or -1 for no limit", "the number of epochs", "60")
    max_steps: int = bound(">= 1, or -1 for no limit", "the optimizer steps")
    check_val_every_n_epoch: int | None = bound(">= 1", "the validation interval in epochs", "10")
    log_every_n_steps: int = bound(">= 1", "the logging interval in steps")
    num_sanity_val_steps: int = bound(">= -1 (-1: all)", "the validation batches before training")
    limit_train_batches: float | None = bound("> 0", "a count or share of the training batches")
    limit_val_batches: float | None = bound("> 0", "a count or share of the validation batches")


@dataclass
class RunSchema:
    """The top level of conf/train.yaml and conf/evaluate.yaml."""

    seed: int = typed()
    threads: int = bound(">= 1", "torch's CPU threads", "1")
    evaluate: bool = typed()
    matched_variation: float = bound("> 0", "the matched variation of the posterior-sample metrics", "0.01")
    ll_points: int = bound(">= 0", "the log-likelihood's test points (0: skip it)", "1000")
    ll_samples: int = bound(">= 1", "K importance samples per point", "100")
    ll_seed: int = typed()
    checkpoint: str = typed()
    split: str = bound("test or val", "the split that evaluate.py scores", "val")
    trainer: TrainerSchema = typed()
    data: DataSchema = typed()
    backbone: BackboneSchema = typed()
    model: ModelSchema = typed()
