"""The checks that a run's settings pass before any work (README, "Runs, evaluation and logs").

``train.py`` checks the composed config before any data loads (``check_train_config``), and the built model
against the data's sample shape before training (``check_model_fits_data``); the data module itself checks
what needs the data (N_a against the smallest class, the file's arrays). ``evaluate.py`` checks the run's data
settings with its ``+data_overrides`` applied (``check_data``). Every failure is one or two lines that name the
field, its value and the fix; ``vaells.runs.fail_before_work`` prints them without a traceback and removes the
run folder.

The schema is typed dataclasses, one per config node. A field's annotation is the type its value must have
(``int | None``: an integer or null; a nested schema: a sub-node, checked in turn), and ``bound`` adds the range
and what the field means. A field is checked only where the node has that key, so one schema serves every class
a node can build (``ModelSchema`` holds VAELLS's keys and the baselines'); keys that no schema names are left to
the classes they configure, and misspelt overrides to Hydra, which refuses a key the config does not have.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaells.runs import UsageError

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


# -- the schema -----------------------------------------------------------------------------------------
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
    noise_std: float = bound(">= 0", "sigma_eps, the posterior's latent noise")
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
    trainer: TrainerSchema = typed()
    data: DataSchema = typed()
    backbone: BackboneSchema = typed()
    model: ModelSchema = typed()


# -- checking a node against its schema -----------------------------------------------------------------
def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _has_type(value: Any, kind: Any) -> bool:
    """Whether ``value`` (a resolved config value) has the annotated type ``kind``; a float field takes an int."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list | tuple | ListConfig) and all(_has_type(v, item) for v in value)
    if is_dataclass(kind):
        return isinstance(value, DictConfig)
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _type_words(kind: Any) -> str:
    """The annotated type in the message's words: 'an integer', 'a number or null', ..."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_words(k) for k in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is list:
        return "a list"
    if is_dataclass(kind):
        return "a group of settings"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(kind, str(kind))


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _source(raw: dict, key: str, root: DictConfig | None) -> str | None:
    """The config key that a field copies (``${backbone.recon_weight}``), followed through copies of copies
    within ``root`` (``model.transport.latent_dim`` -> ``model.latent_dim`` -> ``backbone.latent_dim``), or None."""
    value = raw.get(key)
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    source = match.group(1) if match else None
    for _ in range(10):  # a chain of copies is short; the bound only guards against a cycle
        if source is None or root is None or "." not in source:
            break
        parent, leaf = source.rsplit(".", 1)
        node = OmegaConf.select(root, parent, default=None)
        if not isinstance(node, DictConfig) or leaf not in node:
            break
        value = OmegaConf.to_container(node, resolve=False).get(leaf)
        match = _INTERPOLATION.match(value) if isinstance(value, str) else None
        if match is None:
            break
        source = match.group(1)
    return source


@dataclass
class Failures:
    """The failed fields by the key a user fixes, in the order they were found (one message each)."""

    found: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, message: str) -> None:
        self.found.setdefault(key, message)

    def raise_any(self) -> None:
        if self.found:
            lines = list(self.found.values())
            if len(lines) == 1:
                raise UsageError(lines[0])
            raise UsageError("\n".join([f"these {len(lines)} settings cannot run:", *(f"  {line}" for line in lines)]))


def check_node(node: DictConfig, schema: type, key: str, failures: Failures, fix_key: str | None = None,
               root: DictConfig | None = None) -> None:
    """Check the keys of ``node`` that ``schema`` names, recursively; ``key`` names the node in messages and
    ``fix_key`` in the fixes they suggest (``evaluate.py``: the run's ``data``, fixed by ``+data_overrides``).
    A field that copies another key (an interpolation into ``root``, the whole config) is blamed on that key."""
    fix_key = key if fix_key is None else fix_key
    hints = typing.get_type_hints(schema)
    raw = OmegaConf.to_container(node, resolve=False)
    for spec in fields(schema):
        name = spec.name
        if name not in node or OmegaConf.is_missing(node, name):
            continue
        value = node[name]
        full, fix = f"{key}.{name}".lstrip("."), f"{fix_key}.{name}".lstrip(".")
        source = _source(raw, name, root)
        shown = f"{full}={_show(value)}" + (f" (set by {source})" if source else "")
        fix = source or fix
        kind = hints[name]
        if not _has_type(value, kind):
            failures.add(fix, f"{shown} must be {_type_words(kind)}")
            continue
        if isinstance(value, DictConfig):
            nested = [k for k in typing.get_args(kind) if is_dataclass(k)] or [kind]
            check_node(value, nested[0], full, failures, fix, root)
            continue
        rule: Bound | None = spec.metadata.get("bound")
        if rule is None or value is None:
            continue
        if not RANGES[rule.need](value):
            what = f" ({rule.what})" if rule.what else ""
            suggestion = f"e.g. {fix}={rule.example}" if rule.example else f"give {fix} a value {rule.need}"
            failures.add(fix, f"{shown} must be {rule.need}{what}; {suggestion}")


def check_targets(node: Any, key: str, failures: Failures) -> None:
    """Every ``_target_`` below ``node`` names a class or function that imports (a misspelt optimizer or
    network would otherwise stop the run only when it is built, after the data)."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if isinstance(target, str):
            try:
                hydra.utils.get_object(target)
            except (ImportError, AttributeError, ValueError) as err:
                reason = str(err).splitlines()[0]
                failures.add(f"{key}._target_", f"{key}._target_={target} names nothing that imports ({reason}); "
                                                "check its spelling")
        for child in node:
            if child != "_target_" and not OmegaConf.is_missing(node, child) and not OmegaConf.is_interpolation(
                    node, child):
                check_targets(node[child], f"{key}.{child}".lstrip("."), failures)


def check_psi_step_size(model: DictConfig, failures: Failures) -> None:
    """The operators' step size has one home: ``model.psi_rule.lr`` while the accept/reject rule runs (it sets
    the optimizer's step before every operator step), ``model.psi_optimizer.lr`` without it."""
    if "psi_optimizer" not in model or not isinstance(model.psi_optimizer, DictConfig):
        return
    lr = model.psi_optimizer.get("lr")
    if model.get("psi_rule") is not None and lr is not None:
        failures.add("model.psi_optimizer.lr",
                     f"model.psi_optimizer.lr={_show(lr)} would be ignored: model.psi_rule sets the operators' step "
                     f"size; use model.psi_rule.lr={_show(lr)}, or model.psi_rule=null to let the optimizer's lr rule")
    if model.get("psi_rule") is None and lr is None:
        failures.add("model.psi_optimizer.lr",
                     "model.psi_optimizer.lr=null, and with model.psi_rule=null nothing sets the operators' step size; "
                     "e.g. model.psi_optimizer.lr=1e-3")


def check_data_file(data: DictConfig, fix_key: str, failures: Failures, moved_hint: bool = False) -> None:
    """A data module that reads a file (``data=tensor_file``'s ``path``) finds it."""
    if "path" not in data or OmegaConf.is_missing(data, "path") or not isinstance(data.path, str):
        return
    if not Path(data.path).expanduser().is_file():
        where = "the run's data file data.path" if moved_hint else "data.path"
        fix = (f"if it moved, give its new place with {fix_key}.path=FILE" if moved_hint
               else f"set {fix_key}.path to a .pt or .npz file (README, \"Your own data\")")
        failures.add(f"{fix_key}.path", f"{where}={data.path} does not exist; {fix}")


def check_train_config(cfg: DictConfig) -> None:
    """Refuse a composed ``conf/train.yaml`` whose settings cannot run, before any data loads: every field of
    ``RunSchema`` it has, the operators' step size, every ``_target_`` and the data file. Raises
    ``UsageError`` listing each failure (field, value, fix)."""
    failures = Failures()
    check_node(cfg, RunSchema, "", failures, root=cfg)
    if "model" in cfg:
        check_psi_step_size(cfg.model, failures)
    for node in ("data", "backbone", "model", "trainer", "logger", "callbacks"):
        if node in cfg:
            check_targets(cfg[node], node, failures)
    if "data" in cfg:
        check_data_file(cfg.data, "data", failures)
    failures.raise_any()


def check_evaluate_config(cfg: DictConfig) -> None:
    """Refuse a composed ``conf/evaluate.yaml`` whose own settings cannot run (``ll_samples=0``, ...)."""
    failures = Failures()
    check_node(cfg, RunSchema, "", failures)
    failures.raise_any()


def check_data(data: DictConfig, fix_key: str = "+data_overrides") -> None:
    """Refuse a run's data settings that cannot run in ``evaluate.py`` (or ``vaells.load``), after its
    overrides: the fields are the run's ``data.*``, the fixes ``+data_overrides.*``."""
    failures = Failures()
    check_node(data, DataSchema, "data", failures, fix_key)
    check_data_file(data, fix_key, failures, moved_hint=True)
    failures.raise_any()


def check_model_fits_data(model: Any, input_shape: tuple[int, ...], data: DictConfig | None = None) -> None:
    """The model's networks take the data's samples and give back their shape, checked on two zero samples
    before training: a mismatch (say, samples of shape (4, 5) for the vector networks of ``backbone=mlp``)
    would otherwise stop the first training step with a shape error from deep inside the loss."""
    import torch

    shape = tuple(int(n) for n in input_shape)
    where = "the data's samples"
    if data is not None and "path" in data and not OmegaConf.is_missing(data, "path"):
        where = f"the samples of data.path={data.path}"
    vectors = len(shape) != 1 and f"save x flattened, as (N, {math.prod(shape)}): x.reshape(len(x), -1)"
    fix = vectors or "match the networks to the data (backbone.encoder, backbone.decoder)"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.decode(model.encode(torch.zeros(2, *shape)))
    except RuntimeError as err:
        raise UsageError(f"{where} have shape {shape}, which the networks "
                         f"({type(model.encoder).__name__}) cannot take ({str(err).splitlines()[0]}); {fix}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape[1:]) != shape:
        raise UsageError(f"{where} have shape {shape}, but the decoder ({type(model.decoder).__name__}) gives back "
                         f"{tuple(out.shape[1:])}; {fix}")
