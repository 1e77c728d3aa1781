"""Train VAELLS or a baseline: ``python train.py [experiment=swiss_roll|...] [model=vaells|vae|...] [key=value ...]``,
then score the final model on the test split into the run's ``metrics.json`` (``evaluate=false``: skip).
``python train.py --help`` lists the experiments, models, data sets and common overrides.

``python train.py ckpt_path=RUN/checkpoints/last.ckpt`` (or ``ckpt_path=last`` inside RUN) resumes a run in its own
folder with the config stored in its checkpoint (``vaells.app.runs.resumed_config``); a run that already finished
is refused unless ``trainer.max_epochs`` is raised. A SIGTERM or a first Ctrl-C writes ``last.ckpt`` after the
current batch and exits with status 143 or 130 (``vaells.training.checkpoints``; a second Ctrl-C stops at once);
training that keeps producing non-finite steps stops with a message and status 1 (``vaells.models.module.ModelBase``).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaells.app.overrides import suggest_close_keys
from vaells.app.runs import (
    SETTING_ERRORS,
    UsageError,
    check_data_choice,
    checkpoint_lines,
    config_summary,
    fail_before_work,
    resume_output_subdir,
    resume_run_dir,
    resumed_config,
    run_record,
    separate_rank_log,
)
from vaells.app.validation import check_model_fits_data, check_train_config

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent / "conf"
# conf/train.yaml's hydra.run.dir and hydra.output_subdir: a resumed run continues in its own folder.
OmegaConf.register_new_resolver("resume_run_dir", resume_run_dir, replace=True)
OmegaConf.register_new_resolver("resume_output_subdir", resume_output_subdir, replace=True)
suggest_close_keys()  # trainer.max_epoch=3: "did you mean trainer.max_epochs=3?", not Hydra's +trainer.max_epoch


def refuse_resume(output_dir: str, hydra_cfg: DictConfig, err: BaseException) -> None:
    """Stop a resume whose settings were refused: the run's folder stays as it was, less this attempt's Hydra
    files (``.hydra/resumed_<date_time>``); ``fail_before_work`` would mark the run itself FAILED."""
    subdir = hydra_cfg.output_subdir
    if subdir and Path(subdir).name.startswith("resumed_"):
        shutil.rmtree(Path(output_dir) / subdir, ignore_errors=True)
    message = str(err) if isinstance(err, UsageError) else f"{type(err).__name__}: {err}"
    raise UsageError(message) from None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # Here, not at the top: --help and a misspelt key are answered before torch and Lightning load (seconds).
    import pytorch_lightning as pl
    import torch

    from vaells.app.builders import build_datamodule, build_model
    from vaells.evaluation.likelihood import likelihood_settings
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
    from vaells.models.module import TrainingStopped
    from vaells.training.checkpoints import expect_own_checkpoints, stopped_by_signal
    from vaells.training.progress import format_scalars, quiet_known_messages

    quiet_known_messages()
    separate_rank_log()
    hydra_cfg = HydraConfig.get()
    out = hydra_cfg.runtime.output_dir
    resuming = bool(cfg.ckpt_path)
    ckpt_path = None
    try:  # everything that can refuse the settings, before any training or any file beyond Hydra's own
        if resuming:
            cfg, record, ckpt_path = resumed_config(cfg, hydra_cfg)
        else:
            record = run_record(hydra_cfg)
            check_data_choice(record, CONF_DIR)
        check_train_config(cfg)  # every setting against vaells/app/validation.py's schema, before any data loads
        torch.set_num_threads(cfg.threads)
        fast_dev_run = bool(cfg.trainer.get("fast_dev_run"))
        if fast_dev_run and OmegaConf.select(cfg, "model.schedule.warmup_steps"):
            # A smoke run is one batch: without this it would be an autoencoder batch that never reaches the
            # coefficient solvers, the anchor prior or the operators.
            log.info("fast_dev_run: the warm-up of %d batches is skipped", cfg.model.schedule.warmup_steps)
            cfg.model.schedule.warmup_steps = 0
        ll_settings = likelihood_settings(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        dm = build_datamodule(cfg)
        model = build_model(cfg, dm)
        check_model_fits_data(model, dm.input_shape, cfg.data)  # a shape error here, not in the first step
        model.run_config["run"] = record  # evaluate.py reports the experiment, model and overrides with it
        callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
        logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
        trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    except SETTING_ERRORS as err:
        if "resumed_" in str(hydra_cfg.output_subdir):  # Hydra put this attempt into an existing run's folder
            refuse_resume(out, hydra_cfg, err)
        fail_before_work(out, err, root=Path.cwd())
    log.info("configuration:\n%s", config_summary(cfg, record, out, model))
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
        expect_own_checkpoints(callbacks)
    if logger and not fast_dev_run:
        # The whole run config in the logger's hparams (TensorBoard's hparams.yaml; conf/logger/); the data
        # modules keep theirs out of it (save_hyperparameters(logger=False)), which were only the data keys.
        logger.log_hyperparams(model.run_config)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    except (SystemExit, KeyboardInterrupt) as err:
        # Lightning ends a SIGTERM stop with status 0 (a scheduler would take the job as done) and a Ctrl-C with 1.
        stopped = stopped_by_signal(trainer, err, model.batch_counter)
        if stopped is None:
            raise
        message, status = stopped
        log.warning("%s; exit status %d", message, status)
        raise SystemExit(status) from None
    except TrainingStopped as err:
        log.error("%s", err)
        raise UsageError(str(err)) from None
    elapsed = time.perf_counter() - start
    if not trainer.is_global_zero:  # under DDP, rank zero alone reports and evaluates
        return
    # Logged, so the run's own train.log keeps the time and the checkpoints next to its config.
    log.info("fit took %.1f s (%.1f min), %d batches", elapsed, elapsed / 60, model.batch_counter)
    log.info("last training batch: %s", format_scalars(trainer.callback_metrics, "train/"))
    for line in [] if fast_dev_run else checkpoint_lines(trainer):
        log.info(line)
    print(f"\nTraining took {elapsed:.0f} s ({elapsed / 60:.1f} min).\nRun directory: {out}")
    if (Path(out) / "checkpoints" / "last.ckpt").is_file():
        print(f"Evaluate with: python evaluate.py ckpt_path={out}")
    else:
        print("No checkpoint was written" + (" (a fast_dev_run writes none)." if fast_dev_run else "."))
    # The final model (last.ckpt) on the test split, as evaluate.py scores it (figures: LatentFigures at fit end);
    # a fast_dev_run is a smoke test and is not scored.
    if cfg.evaluate and not fast_dev_run:
        metrics = evaluate_model(model, dm, classifier_cache=CLASSIFIER_CACHE, matched_variation=cfg.matched_variation,
                                 **ll_settings)
        save_matched_ring(model, dm, metrics, Path(out) / "figures")
        metrics |= training_record({cb.state_key: cb.state_dict() for cb in trainer.callbacks}) | vaells_record(model)
        # How far it trained, for python -m vaells.app.report: short runs' scores do not compare. (Its time stays
        # in train.log's "fit took" line: metrics.json holds what a seed reproduces.)
        metrics |= {"train_epochs": trainer.current_epoch, "train_batches": model.batch_counter}
        path = write_metrics({**record, **metrics}, out)
        log.info("test metrics:\n%s", format_metrics(metrics))
        print(f"Test metrics of the final model: {path}")
    warmup_only = warmup_only_message(model)
    if warmup_only:  # last, below the operator metrics it qualifies
        log.warning(warmup_only)


if __name__ == "__main__":
    main()
