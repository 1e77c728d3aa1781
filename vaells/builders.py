"""Building a run from its config: the one place shared by train.py and evaluate.py."""

from __future__ import annotations

import math

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaells.data.base import AnchoredDataModule
from vaells.module import VAELLSModule


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


def build_model(cfg: DictConfig, dm: AnchoredDataModule) -> VAELLSModule:
    fill_data_dims(cfg.model, dm.input_shape)
    model = hydra.utils.instantiate(cfg.model, anchors=dm.anchors, anchor_labels=dm.anchor_labels)
    # Stored in the checkpoint so evaluate.py rebuilds exactly this run (resolved: run paths become literal).
    model.run_config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for k, v in cfg.items() if k != "hydra"}
    return model


def load_run(ckpt_path: str) -> tuple[DictConfig, dict]:
    """The checkpoint and the config of the run that wrote it (stored in the checkpoint by ``build_model``)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "run_config" not in checkpoint:
        raise ValueError(f"{ckpt_path} holds no run config; was it written by this project's train.py?")
    return OmegaConf.create(checkpoint["run_config"]), checkpoint
