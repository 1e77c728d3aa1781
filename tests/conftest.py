"""Shared helpers: compose the project's Hydra configs without a Hydra run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
if str(ROOT) not in sys.path:  # train.py and evaluate.py live at the top level
    sys.path.insert(0, str(ROOT))

# The solver's tiny batched ops run ~10x faster on one thread than on two contended ones (conf: threads: 1).
torch.set_num_threads(1)


def compose_train(overrides: list[str], out_dir: Path, latent_figures: bool = False) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides``; every ``${hydra:runtime.output_dir}`` path is pointed at
    ``out_dir`` so the config resolves outside a Hydra run. ``latent_figures=False`` drops that callback."""
    paths = [
        f"trainer.default_root_dir={out_dir}",
        f"logger.save_dir={out_dir}/tensorboard",
        f"callbacks.model_checkpoint.dirpath={out_dir}/checkpoints",
        f"callbacks.latent_figures.output_dir={out_dir}/figures" if latent_figures else "~callbacks.latent_figures",
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[*overrides, *paths])
    finally:
        GlobalHydra.instance().clear()
