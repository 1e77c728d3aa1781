"""The checks that a run's settings pass before any work.

``train.py`` checks the composed config before any data loads (``check_train_config``), and the built model
against the data's sample shape before training (``check_model_fits_data``); the data module itself checks
what needs the data (N_a against the smallest class, the file's arrays). ``evaluate.py`` checks the run's data
settings with its ``+data_overrides`` applied (``check_data``). Every failure is one or two lines that name the
field, its value and the fix; ``vaells.app.runs.fail_before_work`` prints them without a traceback and removes the
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
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaells.app.runs import UsageError
from vaells.app.schema import RANGES, Bound, DataSchema, RunSchema

# -- the schema -----------------------------------------------------------------------------------------


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
               else f"set {fix_key}.path to a .pt or .npz file (docs/tutorial.md)")
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
