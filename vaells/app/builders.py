"""Building a run from its config: the one place shared by train.py and evaluate.py."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaells.data.base import AnchoredDataModule
from vaells.models.module import ModelBase

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
    return instantiate_model(cfg, dm.input_shape, lambda model_cfg: data_arguments(model_cfg, dm))


def restore_model(cfg: DictConfig, checkpoint: dict) -> ModelBase:
    """The trained model of a run from its checkpoint alone, without its data (``vaells.load``).

    What ``build_model`` takes from the data comes from the checkpoint: the input shape (``checkpoint_input_shape``),
    and the constructor arguments of ``data_arguments`` from the trained state, which ``load_state_dict`` would
    overwrite anyway: the learned anchors and their labels, and the VampPrior's pseudo-inputs in place of the
    training inputs they started from. The state is loaded, and the model returned in eval mode.
    """
    state = checkpoint["state_dict"]
    supply: dict[str, Callable[[], object]] = {
        "anchors": lambda: state.get("anchor_inputs"),
        "anchor_labels": lambda: state.get("anchor_labels"),
        "train_inputs": lambda: state["pseudo_inputs"],
    }

    def arguments(model_cfg: DictConfig) -> dict:
        accepted = inspect.signature(hydra.utils.get_class(model_cfg._target_)).parameters
        return {name: make() for name, make in supply.items() if name in accepted}

    model = instantiate_model(cfg, checkpoint_input_shape(cfg, checkpoint), arguments)
    model.load_state_dict(state)
    model.on_load_checkpoint(checkpoint)
    return model.eval()


def checkpoint_input_shape(cfg: DictConfig, checkpoint: dict) -> tuple[int, ...]:
    """The shape of one input of the run: stored in the checkpoint (``ModelBase.input_shape``), or, for runs saved
    before it was, read from the trained inputs in the state (anchors, pseudo-inputs), the DataModule class (MNIST)
    or the synthetic data's ``ambient_dim``."""
    if checkpoint.get("input_shape") is not None:
        return tuple(int(n) for n in checkpoint["input_shape"])
    state = checkpoint["state_dict"]
    for key in ("anchor_inputs", "pseudo_inputs"):
        if key in state:
            return tuple(state[key].shape[1:])
    shape = getattr(hydra.utils.get_class(cfg.data._target_), "input_shape", ())
    if shape:
        return tuple(shape)
    if OmegaConf.select(cfg, "data.ambient_dim") is not None:
        return (int(cfg.data.ambient_dim),)
    raise ValueError(f"cannot tell the input shape of this run (data {cfg.data._target_}) from its checkpoint; "
                     "retrain with this version of the project, which stores it")


def instantiate_model(cfg: DictConfig, input_shape: tuple[int, ...],
                      arguments: Callable[[DictConfig], dict]) -> ModelBase:
    """The model of ``cfg.model`` for inputs of ``input_shape``, with the constructor arguments that
    ``arguments(model_cfg)`` supplies (anchors, training inputs), carrying its run config (``load_run``)."""
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    fill_data_dims(model_cfg, input_shape)
    psi_optimizer = model_cfg.get("psi_optimizer")
    if isinstance(psi_optimizer, DictConfig) and "lr" in psi_optimizer and psi_optimizer.lr is None:
        # null while model.psi_rule sets the operators' step size (conf/model/vaells.yaml): the optimizer starts
        # at torch's default, which the rule replaces before any step (VAELLSModule.configure_optimizers).
        del psi_optimizer["lr"]
    model = hydra.utils.instantiate(model_cfg, **arguments(model_cfg))
    # Stored in the checkpoint so evaluate.py rebuilds exactly this run (resolved: run paths become literal), and
    # vaells.load without the data.
    model.run_config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for k, v in cfg.items() if k != "hydra"}
    model.input_shape = tuple(int(n) for n in input_shape)
    if cfg.get("max_consecutive_skips") is not None:
        model.max_consecutive_skips = int(cfg.max_consecutive_skips)
    return model


#: Where the ``_target_`` paths of runs saved by earlier layouts of the package live now (old prefix -> new
#: prefix), so that ``load_run`` reads their checkpoints: the first grouping into models/, evaluation/ and
#: figures/, then the callbacks' move to training/ and the run plumbing's to app/.
MOVED_TARGETS = {
    "vaells.module.": "vaells.models.vaells.",
    "vaells.schedule.": "vaells.models.schedule.",
    "vaells.callbacks.": "vaells.training.figures.",
    "vaells.monitors.": "vaells.training.monitors.",
    "vaells.figures.callbacks.": "vaells.training.figures.",
    "vaells.evaluation.monitors.": "vaells.training.monitors.",
    "vaells.checkpoints.": "vaells.training.checkpoints.",
    "vaells.progress.": "vaells.training.progress.",
    "vaells.runs.ValidateLastEpoch": "vaells.training.monitors.ValidateLastEpoch",
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


def load_run(ckpt_path: str | Path) -> tuple[DictConfig, dict]:
    """The checkpoint and the config of the run that wrote it (stored in the checkpoint by ``build_model``)."""
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} is not a file; pass a run's checkpoints/last.ckpt")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "run_config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{ckpt_path} holds no run config; was it written by this project's train.py? (a "
                         "checkpoint of this project stores the run's composed config under 'run_config')")
    return OmegaConf.create(_moved(checkpoint["run_config"])), checkpoint
