"""Aggregate the runs of a folder: ``python -m vaells.app.report MULTIRUN_DIR``.

Every run below the folder that wrote a ``metrics.json`` (``train.py`` does, for each job of a multirun; so does
``evaluate.py``, into ``RUN/evaluations/<date_time>/``) becomes a row: first the values that differ between the
runs' experiment, model and command-line overrides (what the sweep varied, e.g. ``model``; recorded in
``metrics.json``), then every scalar metric, led by those of the paper's Table 2 where the runs have them (M, N_a,
the log-likelihood with its standard error, mse), then the run's folder. Written into the folder:
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
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

#: Metric entries that are not a score of the model (the run's record is read by ``overrides``).
SKIPPED = ("ckpt_path", "experiment", "model")
#: Metrics that lead the table where the runs have them, in the layout of the paper's Table 2, with their
#: headers in ``report.md``; there the log-likelihood and its standard error share one cell.
LEADING = {"num_operators": "M", "anchors_per_class": "N_a", "log_likelihood": "LL ± stderr",
           "log_likelihood_stderr": None, "mse": "mse"}


def find_runs(root: Path) -> list[Path]:
    """The folders below ``root`` (or ``root`` itself) that hold a ``metrics.json``, in job order."""
    runs = [p.parent for p in root.rglob("metrics.json")]

    def order(run: Path) -> tuple:
        parts = run.relative_to(root).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(runs, key=order)


def overrides(run: Path) -> dict[str, str]:
    """The run's experiment, model and command-line overrides as {key: value}, as its ``metrics.json`` records
    them; for runs scored before it did, the overrides of ``.hydra/overrides.yaml``; {} without either."""
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
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
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k not in SKIPPED}


def build_table(root: Path) -> tuple[list[str], list[str], list[dict]]:
    """The swept columns, the metric columns and the rows (one per run, with its folder as ``run``) for the
    runs below ``root``."""
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {root}: train with evaluate=true, or run evaluate.py")
    swept_values = [overrides(run) for run in runs]
    keys = list(dict.fromkeys(k for values in swept_values for k in values))
    swept = [k for k in keys if len({values.get(k) for values in swept_values}) > 1] if len(runs) > 1 else keys
    metrics = [scalar_metrics(run) for run in runs]
    found = list(dict.fromkeys(k for m in metrics for k in m))
    metric_keys = [k for k in LEADING if k in found] + [k for k in found if k not in LEADING]
    rows = []
    for run, values, m in zip(runs, swept_values, metrics, strict=True):
        rows.append({**{k: values.get(k, "") for k in swept}, **{k: m.get(k, "") for k in metric_keys},
                     "run": str(run.relative_to(root)) or "."})
    return swept, metric_keys, rows


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown_cell(row: dict, column: str) -> str:
    """A cell of ``report.md``: the log-likelihood as "LL ± stderr" where both are there."""
    if column == "log_likelihood" and row.get("log_likelihood_stderr", "") != "" and row[column] != "":
        return f"{_cell(row[column])} ± {_cell(row['log_likelihood_stderr'])}"
    return _cell(row[column])


def write_report(root: Path) -> list[Path]:
    """Write ``report.csv``, ``report.md`` and (where the runs have ``figures/latent.png``) ``comparison.png``
    into ``root``; returns the paths written."""
    swept, metric_keys, rows = build_table(root)
    columns = [*swept, *metric_keys, "run"]
    with open(root / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if not (c == "log_likelihood_stderr" and "log_likelihood" in columns)]
    headers = [LEADING.get(c) or c if c in metric_keys else c for c in shown]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(_markdown_cell(row, c) for c in shown) + " |" for row in rows]
    (root / "report.md").write_text(f"# Runs below {root}\n\n" + "\n".join(lines) + "\n")
    written = [root / "report.csv", root / "report.md"]
    figure = _comparison_figure(root, swept, rows)
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
    for path in write_report(args.folder):
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
