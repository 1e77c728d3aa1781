"""Command-line overrides of a key the config does not have: the closest existing keys (difflib), in place of
Hydra's advice to append the misspelt key with ``+``, which then fails where the key is read.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of ``cfg``, nodes and leaves, without resolving interpolations (list items excluded)."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.append(path)
            if isinstance(value, dict):
                walk(value, f"{path}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def closest_keys(cfg: DictConfig, key: str, n: int = 3) -> list[str]:
    """The keys of ``cfg`` that ``key`` (absent from it) most likely misspells, best first (``difflib``'s ratio):
    close as dotted keys (``trainer.max_epoch`` -> ``trainer.max_epochs``), else by their last part (``max_epochs``
    -> ``trainer.max_epochs``); only those nearly as close as the best. Hydra's own settings are offered only for a
    key under ``hydra.``."""
    candidates = [k for k in config_keys(cfg) if key.startswith("hydra.") or not k.startswith("hydra")]
    for whole, cutoff in ((True, 0.8), (False, 0.85)):
        part = (lambda k: k) if whole else (lambda k: k.rsplit(".", 1)[-1])
        ratios = {k: difflib.SequenceMatcher(None, part(key), part(k)).ratio() for k in candidates}
        scores = {k: r for k, r in ratios.items() if r >= cutoff}
        if scores:
            best = max(scores.values())
            # trainer.max_epoch is trainer.max_epochs (0.97), not also trainer.max_steps (0.82)
            return sorted((k for k, v in scores.items() if v >= best - 0.05), key=lambda k: -scores[k])[:n]
    return []


def misspelt_key_message(cfg: DictConfig, key: str, value: str) -> str:
    """Why the override ``key=value`` of a key that ``cfg`` lacks was refused, and what to write instead: the
    closest existing keys, or (none close) the keys of its nearest existing parent and how to add a new key."""
    found = closest_keys(cfg, key)
    if found:
        options = " or ".join(f"{k}={value}" for k in found)
        return f"Could not override '{key}': the config has no such key. Did you mean {options}?"
    parent = key
    while parent and not isinstance(OmegaConf.select(cfg, parent, throw_on_missing=False), DictConfig):
        parent = parent.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
    held = ", ".join(str(k) for k in node if parent or k != "hydra")
    groups = "" if "." in key else " (--help lists the config groups, such as experiment=, and common overrides)"
    return (f"Could not override '{key}': the config has no such key{groups}; {parent or 'the config'} holds: "
            f"{held}. A key of your own is added with +{key}={value}, where whatever reads it accepts it.")


def suggest_close_keys() -> None:
    """Answer an override of a key the config lacks (``trainer.max_epoch=3``) with the closest existing keys
    (``misspelt_key_message``: "Did you mean trainer.max_epochs=3?") instead of Hydra's advice to append it with
    ``+``, which passes the misspelt key on (to the Trainer: a ``TypeError``). Hydra has no hook for this, so its
    config loader's override step (hydra-core 1.3) is wrapped, once; where that step is not found, Hydra's own
    message stays. Call before the ``@hydra.main`` function runs (train.py and evaluate.py do at import)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    step = ConfigLoaderImpl.__dict__.get("_apply_overrides_to_config")
    if not isinstance(step, staticmethod) or getattr(step.__func__, "suggests_keys", False):
        return
    apply = step.__func__

    def apply_with_suggestions(overrides: list, cfg: DictConfig) -> None:
        for override in overrides:  # one at a time, as Hydra does, to know which one failed
            try:
                apply([override], cfg)
            except ConfigCompositionException as err:
                plain = not (override.is_delete() or override.is_add() or override.is_force_add())
                if not plain or not isinstance(err.__cause__, ConfigAttributeError | ConfigKeyError):
                    raise
                key = override.key_or_group
                value = (override.input_line or "").partition("=")[2] or override.get_value_element_as_str()
                raise ConfigCompositionException(misspelt_key_message(cfg, key, value)) from None

    apply_with_suggestions.suggests_keys = True
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply_with_suggestions)
