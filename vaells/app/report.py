"""Aggregate the runs of a folder: ``python -m vaells.app.report MULTIRUN_DIR``.

Every run below the folder that wrote a ``metrics.json`` (``train.py`` does, for each job of a multirun; so does
``evaluate.py``, into ``RUN/evaluations/<date_time>/``) becomes a row: first the values that differ between the
runs' experiment, model and command-line overrides (what the sweep varied, e.g. ``model``; recorded in
``metrics.json``), then every scalar metric, led by the log-likelihood with its standard error and mse (and, in a
sweep over M or N_a such as the paper's Table 2, by M and N_a first), then how long each run trained (wall time,
epochs, batches) and the run's folder. ``report.md`` states the overrides that all runs share (e.g.
``trainer.max_epochs=3``) and warns at its top when runs trained less than their experiment's schedule (fewer
epochs than the experiment's ``trainer.max_epochs``, fewer batches per epoch, or a run that never left its
warm-up): their scores say how far training got, not how the models compare. Written into the folder:
``report.csv``, ``report.md`` and, when the runs drew their figures, ``comparison.png``: each run's latent panel
side by side (the paper's Fig. 2 and 4) and, for image data, its posterior ring at the matched variation (Fig. 5
and 7).

    python train.py -m experiment=concentric_circles model=vaells,vae,vampprior,svae
    python -m vaells.app.report multirun/train/<date_time>

    python train.py -m experiment=table2      # the paper's Table 2: five (M, N_a) rows on natural MNIST
    python -m vaells.app.report multirun/train/<date_time>
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: Metric entries that are not a score of the model (the run's record is read by ``overrides``).
SKIPPED = ("ckpt_path", "experiment", "model")
#: Metrics that lead the table where the runs have them, in the layout of the paper's Table 2, with their
#: headers in ``report.md``; there the log-likelihood and its standard error share one cell. M and N_a lead only
#: where they vary (``TABLE2_SETTINGS``): elsewhere they are one model's constants, not what the runs compare.
LEADING = {"num_operators": "M", "anchors_per_class": "N_a", "log_likelihood": "LL ± stderr",
           "log_likelihood_stderr": None, "mse": "mse"}
TABLE2_SETTINGS = ("num_operators", "anchors_per_class")
#: How long each run trained (``train.py`` records them in ``metrics.json``), after the metrics, with their
#: headers in ``report.md``.
TRAINING = {"train_seconds": "train time", "train_epochs": "epochs", "train_batches": "batches"}
#: Overrides that set how long a run trains: named as the fix when runs trained less than their schedule.
SCHEDULE_OVERRIDES = ("trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches",
                      "trainer.fast_dev_run", "model.schedule.warmup_steps", "model.ae_warmup_steps",
                      "backbone.warmup_steps")
#: The configs the runs were composed from: the experiments' schedules are read from here.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: train.py's line in ``train.log`` at the end of each fit (a resumed run has one per part).
FIT_LINE = re.compile(r"fit took (\d+(?:\.\d+)?) s \([^)]*\), (\d+) batches")


def find_runs(root: Path) -> list[Path]:
    """The folders below ``root`` (or ``root`` itself) that hold a ``metrics.json``, in job order."""
    runs = [p.parent for p in root.rglob("metrics.json")]

    def order(run: Path) -> tuple:
        parts = run.relative_to(root).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(runs, key=order)


def _read_metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def overrides(run: Path) -> dict[str, str]:
    """The run's experiment, model and command-line overrides as {key: value}, as its ``metrics.json`` records
    them; for runs scored before it did, the overrides of ``.hydra/overrides.yaml``; {} without either."""
    metrics = _read_metrics(run)
    if isinstance(metrics.get("overrides"), dict):
        record = {k: metrics[k] for k in ("experiment", "model") if metrics.get(k) is not None}
        return {**record, **{k: str(v) for k, v in metrics["overrides"].items()}}
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = OmegaConf.to_container(OmegaConf.load(path)) or []
    return dict(str(item).lstrip("+~").split("=", 1) for item in items if "=" in str(item))


def scalar_metrics(run: Path) -> dict[str, float | int | str]:
    """The run's numbers, strings and booleans (lists such as per-operator readings are left out)."""
    metrics = _read_metrics(run)
    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float | str) and k not in SKIPPED and k not in TRAINING}


def training_run(folder: Path) -> Path:
    """The training run of a scored folder: itself, or for ``evaluate.py``'s ``RUN/evaluations/<date_time>/``
    the RUN it evaluated."""
    return folder.parent.parent if folder.parent.name == "evaluations" else folder


def run_config(folder: Path) -> DictConfig | None:
    """The composed config of the folder's training run (``.hydra/config.yaml``), or None."""
    path = training_run(folder) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def training(folder: Path) -> dict[str, float | int]:
    """How long the folder's run trained: ``train_seconds``, ``train_epochs`` and ``train_batches``, where known.

    The epochs and batches from the run's ``metrics.json`` (``train.py`` records them; an evaluation's folder:
    those of the run it evaluated); the time from the fits ``train.log`` records (a resumed run has one per part:
    their sum), and for runs scored before those keys existed also the batches, and the epochs from the config
    where the fit ran to its end."""
    run = training_run(folder)
    record = {k: v for k, v in {**_read_metrics(run), **_read_metrics(folder)}.items() if k in TRAINING}
    log = run / "train.log"
    fits = [(float(s), int(b)) for s, b in FIT_LINE.findall(log.read_text(errors="replace"))] if log.is_file() else []
    if len(fits) > 1:
        record["train_seconds"] = sum(s for s, _ in fits)
    if fits:
        record.setdefault("train_seconds", fits[-1][0])
        record.setdefault("train_batches", fits[-1][1])
        cfg = run_config(folder)
        if cfg is not None and "train_epochs" not in record and _select(cfg, "trainer.max_steps") in (None, -1):
            epochs = _select(cfg, "trainer.max_epochs")
            if isinstance(epochs, int):
                record["train_epochs"] = epochs  # the fit ended, and only max_epochs could end it
    return record


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


@functools.cache
def experiment_schedule(experiment: str | None, model: str | None) -> dict | None:
    """The training length that ``experiment`` configures for ``model`` (``conf/``: ``trainer.max_epochs`` and
    ``trainer.limit_train_batches``), or None where it cannot be composed (no ``conf/`` beside the package, an
    experiment since removed, or a Hydra application already running in this process)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not experiment or not model or not CONF_DIR.is_dir() or GlobalHydra.instance().is_initialized():
        return None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", f"model={model}"])
    except (HydraException, OmegaConfBaseException):
        return None
    return {key: _select(cfg, f"trainer.{key}") for key in ("max_epochs", "limit_train_batches")}


def shortfalls(folder: Path, values: dict[str, str], trained: dict) -> list[str]:
    """Why the folder's run trained less than its experiment's schedule ([] if it did not, or is not known):
    fewer epochs than the experiment's ``trainer.max_epochs``, fewer batches per epoch than the data has, or
    only batches of its warm-up (the autoencoder alone: for VAELLS no prior and no operators trained)."""
    reasons = []
    schedule = experiment_schedule(values.get("experiment"), values.get("model"))
    cfg = run_config(folder)
    epochs = trained.get("train_epochs")
    if schedule and isinstance(schedule["max_epochs"], int) and epochs is not None and epochs < schedule["max_epochs"]:
        reasons.append(f"{epochs} of the {schedule['max_epochs']} epochs of experiment={values['experiment']}")
    if cfg is not None:
        limit = _select(cfg, "trainer.limit_train_batches")
        whole = limit is None or (isinstance(limit, float) and limit >= 1.0)  # Lightning: an int counts batches
        if not whole and limit != (schedule or {}).get("limit_train_batches"):
            reasons.append(f"trainer.limit_train_batches={limit}")
        warmup = _select(cfg, "model.schedule.warmup_steps") or _select(cfg, "model.ae_warmup_steps")
        batches = trained.get("train_batches")
        if isinstance(warmup, int) and warmup > 0 and batches is not None and batches <= warmup:
            reasons.append(f"{batches} batches, all in its {warmup}-batch warm-up (the autoencoder alone)")
    return reasons


@dataclass
class Table:
    """The runs below a folder: the column groups, the rows (one per run, with its folder as ``run``), the overrides
    every run shares, and the runs that trained less than their schedule (run folder: reasons)."""

    swept: list[str]
    metrics: list[str]
    training: list[str]
    rows: list[dict]
    shared: dict[str, str] = field(default_factory=dict)
    short: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.swept, *self.metrics, *self.training, "run"]


def build_table(root: Path) -> Table:
    """The table of the runs below ``root``."""
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {root}: train with evaluate=true, or run evaluate.py")
    swept_values = [overrides(run) for run in runs]
    keys = list(dict.fromkeys(k for values in swept_values for k in values))
    swept = [k for k in keys if len({values.get(k) for values in swept_values}) > 1] if len(runs) > 1 else keys
    shared = {k: swept_values[0][k] for k in keys if k not in swept and all(k in v for v in swept_values)}
    metrics = [scalar_metrics(run) for run in runs]
    found = list(dict.fromkeys(k for m in metrics for k in m))
    # M and N_a lead where they vary (a Table 2 sweep); a single model's constants among the other metrics.
    varied = [k for k in TABLE2_SETTINGS if len({m[k] for m in metrics if k in m}) > 1]
    leading = [k for k in LEADING if k in found and (k not in TABLE2_SETTINGS or k in varied)]
    metric_keys = leading + [k for k in found if k not in leading]
    trained = [training(run) for run in runs]
    training_keys = [k for k in TRAINING if any(k in t for t in trained)]
    rows, short = [], {}
    for run, values, m, t in zip(runs, swept_values, metrics, trained, strict=True):
        name = str(run.relative_to(root)) or "."
        rows.append({**{k: values.get(k, "") for k in swept}, **{k: m.get(k, "") for k in metric_keys},
                     **{k: t.get(k, "") for k in training_keys}, "run": name})
        reasons = shortfalls(run, values, t)
        if reasons:
            short[name] = reasons
    return Table(swept, metric_keys, training_keys, rows, shared, short)


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _duration(seconds) -> str:
    if not isinstance(seconds, int | float):
        return str(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _markdown_cell(row: dict, column: str) -> str:
    """A cell of ``report.md``: the log-likelihood as "LL ± stderr" where both are there; times in s, min or h."""
    if column == "log_likelihood" and row.get("log_likelihood_stderr", "") != "" and row[column] != "":
        return f"{_cell(row[column])} ± {_cell(row['log_likelihood_stderr'])}"
    if column == "train_seconds":
        return _duration(row[column])
    return _cell(row[column])


def schedule_warning(table: Table) -> list[str]:
    """The lines of ``report.md``'s warning about runs that trained less than their schedule ([] if none did)."""
    if not table.short:
        return []
    rows = {row["run"]: row for row in table.rows}
    lines = [f"**Warning: {len(table.short)} of the {len(table.rows)} runs trained less than their experiment's "
             "schedule; their scores say how far training got, not how the models compare.**", ""]
    for run, reasons in table.short.items():
        label = ", ".join(f"{k}={rows[run][k]}" for k in table.swept)
        lines.append(f"- `{run}`" + (f" ({label})" if label else "") + ": " + "; ".join(reasons))
    shortening = sorted({f"{k}={v}" for run in table.short for k, v in _row_overrides(table, run).items()
                         if k in SCHEDULE_OVERRIDES})
    fix = ("drop " + ", ".join(f"`{o}`" for o in shortening)) if shortening else "train them longer"
    return [*lines, "", f"To compare them, train each run's full schedule: {fix}."]


def _row_overrides(table: Table, run: str) -> dict[str, str]:
    row = next(r for r in table.rows if r["run"] == run)
    return {**table.shared, **{k: row[k] for k in table.swept if row[k] != ""}}


def write_report(root: Path, table: Table | None = None) -> list[Path]:
    """Write ``report.csv``, ``report.md`` and (where the runs have ``figures/latent.png``) ``comparison.png``
    into ``root`` (``table``: ``build_table(root)``, when built already); returns the paths written."""
    table = table or build_table(root)
    columns = table.columns
    with open(root / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table.rows)
    shown = [c for c in columns if not (c == "log_likelihood_stderr" and "log_likelihood" in columns)]
    headers = [LEADING.get(c) or c if c in table.metrics else TRAINING.get(c, c) for c in shown]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(_markdown_cell(row, c) for c in shown) + " |" for row in table.rows]
    head = [f"# Runs below {root}", ""]
    warning = schedule_warning(table)
    if warning:
        head += [*warning, ""]
    if table.shared:
        head += ["Shared by all runs: " + ", ".join(f"`{k}={v}`" for k, v in table.shared.items()), ""]
    (root / "report.md").write_text("\n".join(head + lines) + "\n")
    written = [root / "report.csv", root / "report.md"]
    figure = _comparison_figure(root, table.swept, table.rows)
    if figure is not None:
        written.append(figure)
    return written


#: The per-run figures set side by side in ``comparison.png``, one row each: the latent space (Fig. 2 and 4) and,
#: for image data, the posterior ring at the matched variation (Fig. 5 and 7).
COMPARED_FIGURES = ("latent.png", "matched_ring.png")


def _comparison_figure(root: Path, swept: list[str], rows: list[dict]) -> Path | None:
    """Each run's figures side by side (a column per run, a row per figure of ``COMPARED_FIGURES`` that some run
    drew), titled by the run's swept values."""
    names = [n for n in COMPARED_FIGURES if any((root / r["run"] / "figures" / n).is_file() for r in rows)]
    runs = [r for r in rows if any((root / r["run"] / "figures" / n).is_file() for n in names)]
    if not runs:
        return None
    import matplotlib.image as mpimg  # matplotlib only when there is something to draw
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(runs), 4.4 * len(names)), layout="constrained")
    for i, name in enumerate(names):
        for j, row in enumerate(runs):
            ax = fig.add_subplot(len(names), len(runs), i * len(runs) + j + 1)
            ax.set_axis_off()
            path = root / row["run"] / "figures" / name
            if path.is_file():
                ax.imshow(mpimg.imread(path))
            if i == 0:
                ax.set_title(", ".join(f"{c}={row[c]}" for c in swept) or row["run"], fontsize="small")
    out = root / "comparison.png"
    fig.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vaells.app.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder of runs with metrics.json)")
    args = parser.parse_args(argv)
    table = build_table(args.folder)
    for path in write_report(args.folder, table):
        print(f"Wrote {path}")
    warning = schedule_warning(table)
    if warning:  # on the terminal too: the table alone would read as a comparison
        print("\n" + "\n".join(line.replace("**", "").replace("`", "") for line in warning))


if __name__ == "__main__":
    main()
