"""Evaluate a trained run on its test split: ``python evaluate.py ckpt_path=RUN`` (a run folder, a folder of runs
such as ``outputs/train/swiss_roll/vaells`` for its newest run, or a ``.ckpt`` file; ``checkpoint=best`` for a
folder's best checkpoint; ``split=val`` for the validation split).

Rebuilds data and model from the run's own saved config, computes the metrics, writes ``metrics.json`` (with the
run's experiment, model and overrides) and the figures into ``RUN/evaluations/<date_time>/``, and prints a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vaells.app.overrides import suggest_close_keys
from vaells.app.runs import (
    SETTING_ERRORS,
    UsageError,
    evaluation_folder,
    fail_before_work,
    resolve_checkpoint,
    run_folder,
    saved_run_record,
)
from vaells.app.validation import check_data, check_evaluate_config

log = logging.getLogger(__name__)
# conf/evaluate.yaml's hydra.run.dir: the evaluation goes beside the run it evaluates.
OmegaConf.register_new_resolver("evaluation_folder", evaluation_folder, replace=True)
suggest_close_keys()  # chekpoint=best: "did you mean checkpoint=best?", not Hydra's +chekpoint=best


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    # Here, not at the top: --help and a misspelt key are answered before torch and Lightning load (seconds).
    import pytorch_lightning as pl
    import torch

    from vaells.app.builders import build_datamodule, build_model, load_run
    from vaells.evaluation.likelihood import likelihood_settings
    from vaells.evaluation.progress import stage
    from vaells.evaluation.summary import (
        CLASSIFIER_CACHE,
        evaluate_model,
        format_metrics,
        training_record,
        vaells_record,
        warmup_only_message,
        write_metrics,
    )
    from vaells.figures.images import save_matched_ring
    from vaells.training.figures import save_run_figures
    from vaells.training.progress import quiet_known_messages

    quiet_known_messages()
    torch.set_num_threads(cfg.threads)
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise UsageError("ckpt_path is required: python evaluate.py ckpt_path=outputs/train/<experiment>/<model> "
                             "(its newest run), a run folder or a .ckpt file; python evaluate.py --help")
        check_evaluate_config(cfg)
        ckpt_path = resolve_checkpoint(cfg.ckpt_path, cfg.checkpoint)
        log.info("evaluating %s", ckpt_path)
        ll_settings = likelihood_settings(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        run_cfg, checkpoint = load_run(ckpt_path)
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
        check_data(run_cfg.data)  # e.g. a moved data file: its fix is +data_overrides.path, not data.path
        dm = build_datamodule(run_cfg)
        dm.score_on(cfg.split)
        model = build_model(run_cfg, dm)
        model.load_state_dict(checkpoint["state_dict"])
        model.on_load_checkpoint(checkpoint)  # what the weights do not hold: the batch counter, as train.py's model
    except SETTING_ERRORS as err:
        given = OmegaConf.select(cfg, "ckpt_path", default=None, throw_on_missing=False)
        # Empty folders above the evaluation's are removed up to the run it evaluates (its evaluations/).
        root = run_folder(given) if given is not None and Path(given).exists() else Path.cwd()
        fail_before_work(out, err, root=root)
    # What the run was (stored in its checkpoints by train.py; older checkpoints: the run folder's .hydra files).
    saved = run_cfg.get("run")
    record = OmegaConf.to_container(saved) if saved is not None else saved_run_record(run_folder(ckpt_path))
    figure_cfg = OmegaConf.select(run_cfg, "callbacks.latent_figures", default=None)
    figure_cfg = OmegaConf.to_container(figure_cfg, resolve=False) if figure_cfg is not None else {}
    figure_options = {k: v for k, v in figure_cfg.items() if k not in ("_target_", "output_dir", "every_n_epochs")}
    figure_options |= OmegaConf.to_container(cfg.figure_overrides)
    metrics = evaluate_model(model, dm, classifier_cache=CLASSIFIER_CACHE, matched_variation=cfg.matched_variation,
                             **ll_settings)
    with stage("figures"):
        save_run_figures(model, dm, out / "figures", figure_options)
        save_matched_ring(model, dm, metrics, out / "figures")
    callback_states = checkpoint.get("callbacks", {})
    metrics = {**record, **metrics, **training_record(callback_states), **vaells_record(model, callback_states),
               "ckpt_path": str(ckpt_path), "split": cfg.split}
    path = write_metrics(metrics, out)
    print(format_metrics(metrics))
    print(f"\nWrote {path}")
    warmup_only = warmup_only_message(model, callback_states)
    if warmup_only:  # last, below the operator metrics it qualifies
        log.warning(warmup_only)


if __name__ == "__main__":
    main()
