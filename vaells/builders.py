"""Building a run from its config: the one place shared by train.py and evaluate.py."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaells.data.base import AnchoredDataModule
from vaells.models.base import ModelBase

#: Training inputs handed to a model that starts from data (the VampPrior's pseudo-inputs).
NUM_TRAIN_INPUTS = 1000


def build_datamodule(cfg: DictConfig) -> AnchoredDataModule:
    """Instantiate and set up the DataModule, so its anchors exist before the model is built (MNIST's are
    drawn in ``setup``). Bad data settings raise here, before any training."""
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fill_data_dims(model_cfg: DictConfig, input_shape: tuple[int, ...]) -> None:
    """Networks whose input size is ``null`` in the config get it from the data (so ``data=tensor_file``
    works with any vector length)."""
    with open_dict(model_cfg):
        for node, key in (("encoder", "input_dim"), ("decoder", "output_dim")):
            if key in model_cfg[node] and model_cfg[node][key] is None:
                model_cfg[node][key] = int(math.prod(input_shape))


def train_inputs(dm: AnchoredDataModule, num: int = NUM_TRAIN_INPUTS) -> torch.Tensor:
    """The first ``num`` training inputs in the order of the training loader (its seeded shuffle).
    -> (num', *input_shape), num' <= num."""
    parts, count = [], 0
    for batch in dm.train_dataloader():
        parts.append(batch["x"])
        count += len(batch["x"])
        if count >= num:
            break
    return torch.cat(parts)[:num]


def data_arguments(model_cfg: DictConfig, dm: AnchoredDataModule) -> dict:
    """The constructor arguments that come from the data, for the configured model class: those of its
    parameters named here (VAELLS takes the class-matched anchors, the VampPrior training inputs)."""
    supply: dict[str, Callable[[], object]] = {
        "anchors": lambda: dm.anchors,
        "anchor_labels": lambda: dm.anchor_labels,
        "train_inputs": lambda: train_inputs(dm),
    }
    accepted = inspect.signature(hydra.utils.get_class(model_cfg._target_)).parameters
    return {name: make() for name, make in supply.items() if name in accepted}


def build_model(cfg: DictConfig, dm: AnchoredDataModule) -> ModelBase:
    """The model of ``cfg.model`` for the data of ``dm``. The model node is resolved first (it interpolates the
    experiment's shared ``backbone``), then the data's sizes are filled in."""
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    fill_data_dims(model_cfg, dm.input_shape)
    model = hydra.utils.instantiate(model_cfg, **data_arguments(model_cfg, dm))
    # Stored in the checkpoint so evaluate.py rebuilds exactly this run (resolved: run paths become literal).
    model.run_config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for k, v in cfg.items() if k != "hydra"}
    return model


#: Where the ``_target_`` paths of runs saved before the package was grouped into models/, evaluation/ and
#: figures/ live now (old prefix -> new prefix), so ``load_run`` reads their checkpoints.
MOVED_TARGETS = {
    "vaells.module.": "vaells.models.vaells.",
    "vaells.schedule.": "vaells.models.schedule.",
    "vaells.callbacks.": "vaells.figures.callbacks.",
    "vaells.monitors.": "vaells.evaluation.monitors.",
}


def _moved(node: object) -> object:
    """``node`` (a run config as containers) with every moved ``_target_`` rewritten."""
    if isinstance(node, dict):
        out = {k: _moved(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_TARGETS.items():
                if target.startswith(old):
                    out["_target_"] = new + target.removeprefix(old)
        return out
    if isinstance(node, list):
        return [_moved(v) for v in node]
    return node


def load_run(ckpt_path: str) -> tuple[DictConfig, dict]:
    """The checkpoint and the config of the run that wrote it (stored in the checkpoint by ``build_model``)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "run_config" not in checkpoint:
        raise ValueError(f"{ckpt_path} holds no run config; was it written by this project's train.py?")
    return OmegaConf.create(_moved(checkpoint["run_config"])), checkpoint
