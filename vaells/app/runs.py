"""Run folders: what ``train.py`` leaves in one, and how ``evaluate.py`` finds its way back.

A training run writes ``outputs/train/<experiment>/<model>/<date_time>/`` (``conf/train.yaml``) with
``checkpoints/last.ckpt`` (after every epoch) and ``checkpoints/best-epochNNN.ckpt`` (runs written before it had
that name: ``best-epoch=NNN.ckpt``, numbered from 0; both are found). ``evaluate.py`` takes a
checkpoint, a run folder, or the folder of an experiment's runs of one model (its newest run), and writes into
``<run>/evaluations/<date_time>/``. A run that stops on a bad setting before training leaves no folder behind
(``discard_failed_run``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:  # Lightning (and torch) load with a run, not with --help
    from pytorch_lightning import Trainer

log = logging.getLogger(__name__)

#: The checkpoints a run folder offers by name (``checkpoint=`` of ``conf/evaluate.yaml``).
CHECKPOINT_NAMES = ("last", "best")
#: A run's best checkpoint: ``best-epochNNN.ckpt`` (``conf/callbacks/default.yaml``), or ``best-epoch=NNN.ckpt`` of
#: runs written before; NNN is the epoch.
BEST_CHECKPOINT = re.compile(r"best-epoch=?(\d+)")
#: What Hydra itself writes into a run folder before the job starts: a folder that holds only these is
#: nothing but the bookkeeping of a run that never trained.
HYDRA_BOOKKEEPING = {".hydra", "train.log", "evaluate.log", "paths.log"}
#: The marker left in a folder that held more than Hydra's bookkeeping when its run failed.
FAILED_MARKER = "FAILED"


class UsageError(CompactHydraException):
    """A setting or a file that stops a run before any work: Hydra prints the message alone, without a
    traceback (``HYDRA_FULL_ERROR=1`` shows it)."""


#: The errors that mean "these settings or files cannot run" when raised while a run is set up (data, model,
#: trainer, checkpoint): reported as one message, with the run folder cleaned up (``fail_before_work``).
SETTING_ERRORS = (UsageError, ValueError, FileNotFoundError, InstantiationException, OmegaConfBaseException)


def fail_before_work(output_dir: str | Path, err: BaseException, root: Path | None = None) -> NoReturn:
    """Stop a run whose settings were refused before any work: clean its folder (``discard_failed_run``, empty
    folders above it removed up to ``root``) and raise ``UsageError`` with the reason and what was cleaned."""
    if isinstance(err, UsageError | InstantiationException | OmegaConfBaseException):
        message = str(err)
    else:
        message = f"{type(err).__name__}: {err}"
    # Hydra also prints an OmegaConf cause on its own: chained, such a message would appear twice.
    cause = None if isinstance(err, OmegaConfBaseException) else err
    raise UsageError(f"{message}\n{discard_failed_run(output_dir, message, root)}") from cause


def experiment_data(conf_dir: Path, experiment: str) -> str | None:
    """The data set an experiment chooses (its ``override /data: NAME``), from ``conf/experiment/``."""
    path = conf_dir / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return None
    for item in OmegaConf.load(path).get("defaults", []):
        if isinstance(item, DictConfig) and "override /data" in item:
            return str(item["override /data"])
    return None


def check_data_choice(record: dict, conf_dir: Path) -> None:
    """Refuse ``data=X`` without an ``experiment=``: the run would keep the default experiment's model (the
    swiss roll's d = 2, M = 1, ...) and be filed under its name. Naming the experiment, even with other data
    (``experiment=rotated_mnist data=rotated_small_digits``), is a choice and passes."""
    data = record["overrides"].get("data")
    experiment = record["experiment"]
    if data is None or "experiment" in record["overrides"] or data == experiment_data(conf_dir, experiment):
        return
    own = sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml") if experiment_data(conf_dir, p.stem) == data)
    suggestion = f"experiment={own[0]}" if own else f"experiment=NAME data={data} (an experiment whose model fits)"
    raise UsageError(
        f"data={data} without experiment= would train with the default experiment's model ({experiment}) and file "
        f"the run under outputs/train/{experiment}/; use {suggestion}"
    )


# -- finding a checkpoint -------------------------------------------------------------------------------
def run_folder(path: str | Path) -> Path:
    """The run folder of a checkpoint path or run folder (symlinks resolved): a run's ``<run>/checkpoints/x.ckpt``
    -> ``<run>``; another file -> its folder; a folder -> itself."""
    path = Path(path).resolve()
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _checkpoint_in(folder: Path, which: str) -> Path | None:
    """``folder``'s ``last.ckpt`` or (``which="best"``) its best checkpoint (``BEST_CHECKPOINT``; of several, the one
    of the latest epoch), or None."""
    if which == "last":
        return folder / "last.ckpt" if (folder / "last.ckpt").is_file() else None
    found = [(int(m.group(1)), p.name, p) for p in folder.glob("best-epoch*.ckpt")
             if (m := BEST_CHECKPOINT.match(p.name))]
    return max(found)[2] if found else None


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """The checkpoint file that ``path`` names: a file as it is; a run folder (or its ``checkpoints/``) ->
    ``checkpoints/last.ckpt``, or with ``which="best"`` its ``best-epochNNN.ckpt`` (or ``best-epoch=NNN.ckpt``, the
    name of older runs); a folder of runs, such as
    ``outputs/train/<experiment>/<model>`` -> that checkpoint of its newest run (the one written last); ``last`` or
    ``best`` (where no such file exists) -> that checkpoint of the run folder that is the working directory. Raises
    ``UsageError`` naming the path and what the folder holds."""
    if which not in CHECKPOINT_NAMES:
        raise UsageError(f"checkpoint={which} is not one of {', '.join(CHECKPOINT_NAMES)}")
    given = Path(path)
    if str(path) in CHECKPOINT_NAMES and not given.exists():  # ckpt_path=last inside a run folder
        given, which = Path.cwd(), str(path)
    if given.is_file():
        return given
    if not given.exists():
        raise UsageError(f"ckpt_path={path} does not exist; give a run folder, a folder of runs such as "
                         "outputs/train/<experiment>/<model> (its newest run), or a .ckpt file")
    folder = given if given.name == "checkpoints" else given / "checkpoints"
    runs = [] if folder.is_dir() else [run for run in sorted(given.iterdir()) if (run / "checkpoints").is_dir()]
    if runs:  # a folder of runs
        found = [c for c in (_checkpoint_in(run / "checkpoints", which) for run in runs) if c is not None]
        if not found:
            raise UsageError(f"ckpt_path={path}: none of its {len(runs)} runs has a {which} checkpoint")
        return max(found, key=lambda c: c.stat().st_mtime)
    found = _checkpoint_in(folder, which)
    if found is not None:
        return found
    held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    why = f"it holds {', '.join(held)}" if held else "it holds no checkpoint (a fast_dev_run writes none)"
    raise UsageError(f"ckpt_path={path}: no {which} checkpoint in {folder}; {why}")


def evaluation_folder(ckpt_path: str | None, which: str = "last") -> str:
    """Where ``evaluate.py`` writes by default (``conf/evaluate.yaml``'s ``hydra.run.dir`` resolves it):
    ``<run>/evaluations`` of the checkpoint's run, or ``outputs/evaluate`` while the path names no checkpoint
    (the job then stops with a message and removes that folder again)."""
    try:
        return str(run_folder(resolve_checkpoint(ckpt_path, which)) / "evaluations")
    except (UsageError, TypeError, OSError):  # TypeError: ckpt_path missing (None)
        return "outputs/evaluate"


# -- resuming a run -------------------------------------------------------------------------------------
def _resumed_checkpoint(ckpt_path: str | None) -> Path | None:
    """The checkpoint a run resumes from, or None: no ``ckpt_path``, or one that names no checkpoint (the run then
    stops with ``resolve_checkpoint``'s message)."""
    if not ckpt_path:
        return None
    try:
        return resolve_checkpoint(ckpt_path)
    except (UsageError, OSError):
        return None


def resume_run_dir(ckpt_path: str | None, default: str) -> str:
    """``hydra.run.dir`` of ``train.py`` (registered there): a resumed run continues in the run folder of its
    checkpoint (its train.log, tensorboard/ and checkpoints/); any other run in ``default``."""
    ckpt = _resumed_checkpoint(ckpt_path)
    return str(run_folder(ckpt)) if ckpt is not None else default


def resume_output_subdir(ckpt_path: str | None, stamp: str) -> str:
    """``hydra.output_subdir`` of ``train.py``: ``.hydra``, or for a resumed run ``.hydra/resumed_<stamp>``, so that
    the run's own ``.hydra/config.yaml`` and ``overrides.yaml`` (what evaluations and reports read) stay as
    they were."""
    return ".hydra" if _resumed_checkpoint(ckpt_path) is None else f".hydra/resumed_{stamp}"


def _replace_prefix(node: object, old: str, new: str) -> object:
    """``node`` (a config as containers) with every string path under ``old`` moved under ``new``."""
    if isinstance(node, dict):
        return {k: _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")):]
    return node


def resumed_config(cfg: DictConfig, hydra_cfg: DictConfig) -> tuple[DictConfig, dict, Path]:
    """The config, run record and checkpoint of a resumed run (``train.py ckpt_path=...``).

    The config is the run's own, stored in the checkpoint (``model.run_config``), not this composition's defaults:
    resuming needs only the run. Its paths are moved to where the run folder is now. The command-line overrides
    other than ``ckpt_path`` must be among ``cfg.resume_overrides`` (what may change without changing the run,
    e.g. ``trainer.max_epochs`` to extend it), and take their value from this composition; others are refused
    (``UsageError``). They join the run record's overrides, so that an extended run says so (its summary in
    ``train.log``, its ``metrics.json``). A run whose training is done (``training_done``) is refused too, unless
    its final scoring is what is left: ``evaluate`` on and no ``metrics.json`` yet (a stop during that scoring)."""
    from vaells.app.builders import load_run  # the builders import the models; runs.py stays light for evaluate.py

    ckpt = resolve_checkpoint(cfg.ckpt_path)
    allowed = list(cfg.get("resume_overrides") or [])
    given = {k: v for k, v in run_record(hydra_cfg)["overrides"].items() if k != "ckpt_path"}
    refused = [f"{k}={v}" for k, v in given.items() if k not in allowed]
    if refused:
        raise UsageError(
            f"ckpt_path={cfg.ckpt_path} resumes a run with the settings stored in its checkpoint; {' '.join(refused)} "
            f"would change the run. A resumed run may change only: {', '.join(allowed)}. For other settings, start "
            "a new run."
        )
    try:
        stored, checkpoint = load_run(ckpt)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"ckpt_path={cfg.ckpt_path}: cannot resume from {ckpt}: {err}") from None
    stored = OmegaConf.to_container(stored)
    record = stored.pop("run", None) or saved_run_record(run_folder(ckpt)) or {"experiment": None, "model": None,
                                                                               "overrides": {}}
    record = {**record, "overrides": {**record.get("overrides", {}), **given}}
    old_root = OmegaConf.select(OmegaConf.create(stored), "trainer.default_root_dir")
    if old_root:
        stored = _replace_prefix(stored, str(old_root), str(run_folder(ckpt)))
    resumed = OmegaConf.create(stored)
    for key in given:
        OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    resumed.ckpt_path = str(ckpt)
    _refuse_finished_run(resumed, checkpoint, cfg.ckpt_path, ckpt)
    return resumed, record, ckpt


def training_done(trainer_cfg: DictConfig, checkpoint: dict[str, Any]) -> tuple[str, int, int, int] | None:
    """The limit that the training in ``checkpoint`` has reached under ``trainer_cfg``, as (key, its value, the
    epochs or steps trained, the epochs that callbacks added), or None while training is left; as Lightning's
    ``FitLoop.done`` decides after restoring it: the epochs whose training ended (``epoch_progress.current.processed``;
    ``last.ckpt`` is written before ``completed`` counts the epoch) against ``max_epochs`` plus the epochs that
    callbacks added to the run (``added_epochs`` in their state: ``vaells.training.monitors.WarmupFlowCheck``), and
    the optimizer steps against ``max_steps``."""
    loops = checkpoint.get("loops") or {}
    if "fit_loop" not in loops:
        return None  # not written by a Trainer's fit: nothing to compare
    steps = int(checkpoint.get("global_step", 0))
    max_steps = trainer_cfg.get("max_steps")
    max_steps = -1 if max_steps is None else int(max_steps)
    if max_steps >= 0 and steps >= max_steps:
        return "trainer.max_steps", max_steps, steps, 0
    max_epochs = trainer_cfg.get("max_epochs")
    if max_epochs is None:  # Lightning's default: 1000 epochs, or no limit where max_steps is one
        max_epochs = 1000 if max_steps == -1 else -1
    epochs = int(loops["fit_loop"].get("epoch_progress", {}).get("current", {}).get("processed", 0))
    added = sum(int(state.get("added_epochs", 0)) for state in (checkpoint.get("callbacks") or {}).values()
                if isinstance(state, dict))
    if int(max_epochs) >= 0 and epochs >= int(max_epochs) + added:
        return "trainer.max_epochs", int(max_epochs), epochs, added
    return None


def _refuse_finished_run(cfg: DictConfig, checkpoint: dict[str, Any], given: str, ckpt: Path) -> None:
    """``UsageError`` for a resume that would train nothing and only score the final model again over its
    ``metrics.json``: it names the limit that was reached and the commands that do go on."""
    done = training_done(cfg.trainer, checkpoint)
    if done is None:
        return
    key, value, trained, added = done
    run = run_folder(ckpt)
    metrics = run / "metrics.json"
    if cfg.get("evaluate") and not metrics.is_file():
        log.info("the run's training is done (%s=%d): scoring its final model into %s", key, value, metrics)
        return
    unit = ("step" if key == "trainer.max_steps" else "epoch") + ("s" if trained != 1 else "")
    limit = f"{key}={value}" + (f", and {added} more that its warm-up check added" if added else "")
    scored = f"; {metrics} holds the scores of its final model" if metrics.is_file() else ""
    raise UsageError(
        f"ckpt_path={given}: this run already finished: it trained {trained} {unit} ({limit}){scored}. Nothing was "
        f"changed. To train on, raise {key}: python train.py ckpt_path={ckpt} {key}={max(2 * value, trained + 1)}. "
        f"To score it again (into {run / 'evaluations'}/): python evaluate.py ckpt_path={run}"
    )


def separate_rank_log() -> int:
    """Under ``srun`` (``trainer=ddp`` on SLURM) every task is a ``train.py`` of its own with Hydra's job name
    ``train``, so every rank would append to rank zero's ``train.log``: move the log of rank r > 0 to
    ``train_rank<r>.log`` beside it (Lightning's own launcher names its processes' logs
    ``train_ddp_process_<r>.log``). Returns the rank (0 outside a multi-task SLURM step)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return 0
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    root = logging.getLogger()
    for handler in list(root.handlers) if rank else []:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).name == "train.log":
            own = logging.FileHandler(Path(handler.baseFilename).with_name(f"train_rank{rank}.log"))
            own.setFormatter(handler.formatter)
            own.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(own)
    return rank


# -- what a run was -------------------------------------------------------------------------------------
def run_record(hydra_cfg: DictConfig) -> dict:
    """The run's experiment and model (Hydra's choices) and its command-line overrides as {key: value}: what a
    multirun sweeps. Stored with the run (checkpoint, metrics.json) so that an evaluation reports them."""
    choices = hydra_cfg.runtime.choices
    overrides = {}
    for item in hydra_cfg.overrides.task:
        if "=" in item:
            key, value = item.split("=", 1)
            overrides[key.lstrip("+~")] = value
    return {"experiment": choices.get("experiment"), "model": choices.get("model"), "overrides": overrides}


def saved_run_record(run: Path) -> dict:
    """``run_record`` of a run folder from Hydra's files in ``<run>/.hydra`` ({} without them): for checkpoints
    written before the record was stored in them."""
    hydra_file, overrides_file = run / ".hydra" / "hydra.yaml", run / ".hydra" / "overrides.yaml"
    if not (hydra_file.is_file() and overrides_file.is_file()):
        return {}
    hydra_cfg = OmegaConf.load(hydra_file).hydra
    with_overrides = OmegaConf.create({"runtime": {"choices": OmegaConf.to_container(hydra_cfg.runtime.choices)},
                                       "overrides": {"task": OmegaConf.load(overrides_file)}})
    return run_record(with_overrides)


def config_summary(cfg: DictConfig, record: dict, output_dir: str, model: object) -> str:
    """A few lines that say what this run trains, for ``train.log``: the choices and overrides, the data, the
    model's size, its schedule (``describe()``, where it has one) and the epochs (the full config is in
    ``.hydra/config.yaml``)."""
    data = {k: cfg.data[k] for k in cfg.data if k != "_target_"}
    sizes = [f"d = {cfg.model.latent_dim}"]
    if "num_operators" in cfg.model:
        sizes.append(f"M = {cfg.model.num_operators}")
    overrides = " ".join(f"{k}={v}" for k, v in record["overrides"].items()) or "none"
    trainer = cfg.trainer
    lines = [
        f"run folder: {output_dir}",
        f"experiment={record['experiment']} model={record['model']} (overrides: {overrides})",
        f"data: {cfg.data._target_.rsplit('.', 1)[-1]}("
        + ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, DictConfig | ListConfig)) + ")",
        f"model: {type(model).__name__}, " + ", ".join(sizes) + f", seed {cfg.seed}",
    ]
    if hasattr(model, "schedule"):
        lines.append(f"schedule: {model.schedule.describe()}")
    lines.append(f"trainer: {trainer.max_epochs} epochs, validation every {trainer.check_val_every_n_epoch} epochs"
                 + (" and at the last" if OmegaConf.select(cfg, "callbacks.validate_last_epoch") else "")
                 + (" (fast_dev_run: one batch of each loop, no checkpoints)" if trainer.get("fast_dev_run") else ""))
    return "\n".join(lines)


# -- after a run ----------------------------------------------------------------------------------------
def checkpoint_lines(trainer: Trainer) -> list[str]:
    """Where this run's checkpoints went, one line per checkpoint callback (for ``train.log``)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    lines = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.monitor is None:
            lines.append(f"checkpoint of the final state: {cb.best_model_path or 'none written'}")
        elif cb.best_model_path:
            lines.append(f"checkpoint with the best {cb.monitor} ({float(cb.best_model_score):.4g}): "
                         f"{cb.best_model_path}")
        else:
            lines.append(f"checkpoint with the best {cb.monitor}: none written (no validation logged it)")
    return lines


def discard_failed_run(output_dir: str | Path, message: str, root: Path | None = None) -> str:
    """Clean up after a run that stopped before any work. A folder that holds only Hydra's bookkeeping is removed,
    and so are the folders above it that are left empty, strictly below ``root`` (e.g. ``outputs``: the
    ``outputs/train/<experiment>/<model>`` that a first run made); a folder that held more gets a ``FAILED`` file
    with ``message`` instead. Returns what was done, for the message."""
    folder = Path(output_dir).resolve()
    if not folder.is_dir():
        return ""
    if {p.name for p in folder.iterdir()} <= HYDRA_BOOKKEEPING:
        shutil.rmtree(folder, ignore_errors=True)
        parent, root = folder.parent, root.resolve() if root is not None else None
        while root is not None and root in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        return f"(stopped before any work; removed its folder {folder})"
    (folder / FAILED_MARKER).write_text(message + "\n")
    return f"(stopped before any work; the reason is in {folder / FAILED_MARKER})"


# -- misspelt keys --------------------------------------------------------------------------------------
