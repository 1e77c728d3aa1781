"""Evaluate a trained run on its test split: ``python evaluate.py ckpt_path=RUN/checkpoints/last.ckpt``.

Rebuilds data and model from the run's own saved config, computes the metrics, writes ``metrics.json``
and the figures into this evaluation's own run directory, and prints a table.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaells.builders import build_datamodule, build_model, load_run
from vaells.evaluation.likelihood import likelihood_settings
from vaells.evaluation.summary import CLASSIFIER_CACHE, evaluate_model, format_metrics, write_metrics
from vaells.figures.callbacks import save_run_figures
from vaells.figures.images import save_matched_ring


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True)
    ll_settings = likelihood_settings(cfg)
    run_cfg, checkpoint = load_run(cfg.ckpt_path)
    with open_dict(run_cfg):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    dm = build_datamodule(run_cfg)
    model = build_model(run_cfg, dm)
    model.load_state_dict(checkpoint["state_dict"])
    out = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    figure_cfg = OmegaConf.select(run_cfg, "callbacks.latent_figures", default=None)
    figure_cfg = OmegaConf.to_container(figure_cfg, resolve=False) if figure_cfg is not None else {}
    figure_options = {k: v for k, v in figure_cfg.items() if k not in ("_target_", "output_dir", "every_n_epochs")}
    figure_options |= OmegaConf.to_container(cfg.figure_overrides)
    metrics = evaluate_model(model, dm, classifier_cache=CLASSIFIER_CACHE, matched_variation=cfg.matched_variation,
                             **ll_settings)
    save_run_figures(model, dm, out / "figures", figure_options)
    save_matched_ring(model, dm, metrics, out / "figures")
    metrics["ckpt_path"] = str(cfg.ckpt_path)
    path = write_metrics(metrics, out)
    print(format_metrics(metrics))
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main()
