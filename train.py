"""Train VAELLS: ``python train.py [experiment=swiss_roll|concentric_circles|...] [key=value ...]``."""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from vaells.builders import build_datamodule, build_model


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.ckpt_path)
    out = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    print(f"\nRun directory: {out}\nEvaluate with: python evaluate.py ckpt_path={out}/checkpoints/last.ckpt")


if __name__ == "__main__":
    main()
