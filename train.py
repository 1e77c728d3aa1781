"""Train VAELLS or a baseline: ``python train.py [experiment=swiss_roll|...] [model=vaells|vae|...] [key=value ...]``,
then score the final model on the test split into the run's ``metrics.json`` (``evaluate=false``: skip)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from vaells.builders import build_datamodule, build_model
from vaells.evaluation.likelihood import likelihood_settings
from vaells.evaluation.summary import CLASSIFIER_CACHE, evaluate_model, format_metrics, write_metrics
from vaells.figures.images import save_matched_ring

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True)
    ll_settings = likelihood_settings(cfg)  # checked before training
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.ckpt_path)
    elapsed = time.perf_counter() - start
    out = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    # Logged, so the run's own train.log keeps the time next to its config.
    log.info("fit took %.0f s (%.1f min), %d batches", elapsed, elapsed / 60, model.batch_counter)
    print(f"\nTraining took {elapsed:.0f} s ({elapsed / 60:.1f} min).\nRun directory: {out}\n"
          f"Evaluate with: python evaluate.py ckpt_path={out}/checkpoints/last.ckpt")
    # The final model (last.ckpt) on the test split, as evaluate.py scores it (figures: LatentFigures at fit end);
    # a fast_dev_run is a smoke test and is not scored.
    if cfg.evaluate and not cfg.trainer.get("fast_dev_run"):
        metrics = evaluate_model(model, dm, classifier_cache=CLASSIFIER_CACHE, matched_variation=cfg.matched_variation,
                                 **ll_settings)
        save_matched_ring(model, dm, metrics, Path(out) / "figures")
        path = write_metrics(metrics, out)
        log.info("test metrics:\n%s", format_metrics(metrics))
        print(f"Test metrics of the final model: {path}")


if __name__ == "__main__":
    main()
