"""Question: when does a run learn (or lose) a metric over training? Answer: a figure at --out, and a printed table.

    python analysis/training_traces.py RUN_DIR [RUN_DIR ...] --tag val/rotation_order --out trace.png
    python analysis/training_traces.py outputs/train/rotated_mnist/* --labels "seed 0" "seed 1"
    python analysis/training_traces.py RUN_A RUN_B --rescore RUN_A --data root=/path/to/mnist download=false

A TensorBoard scalar over training for several runs: one figure (``--out``), one table, one JSON line. It
shows when a run learns what it is meant to, or loses it: for rotated MNIST, ``val/rotation_order``
(``vaells.training.monitors.OperatorMonitor``, on fixed validation digits at every validation), for any run the
operators' ``val/psi_norm_m`` or ``val/psi_drift_m``. The figure docs/figures/rotation_order_traces.png (docs/notes/
rotated-mnist.md) comes from it (its command is in docs/notes/analysis-history.md).

The x axis is the module's batch counter (warm-up included), so runs of one experiment line up; with
``--from-vaells`` it counts from each run's first VAELLS batch instead, so that a run whose warm-up was trained
again (``vaells.training.monitors.WarmupFlowCheck``) lines up with the others. ``--rescore``
(for the runs it names, or all) recomputes the monitor's metrics (``val/rotation_order``, ``val/rotation_match``,
``val/psi_norm_m``, ...) from a run's per-validation checkpoints with the current code instead of reading
TensorBoard, e.g. after a metric changed: train with ``callbacks.model_checkpoint.save_top_k=-1`` to keep one
checkpoint per validation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalar(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of ``tag`` from every TensorBoard event file under ``run_dir``."""
    points: dict[int, float] = {}
    files = sorted(run_dir.glob("**/events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}; pass a run directory of train.py")
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points |= {e.step: e.value for e in acc.Scalars(tag)}
    return sorted(points.items())


def rescore_scalar(run_dir: Path, tag: str, data_overrides: dict[str, str]) -> list[tuple[int, float]]:
    """(step, value) pairs of the OperatorMonitor metric ``tag``, recomputed from every per-validation checkpoint
    (``checkpoints/best-*.ckpt``) of ``run_dir`` with the current code."""
    from omegaconf import OmegaConf

    from vaells.app.builders import build_datamodule, load_run, restore_model
    from vaells.training.monitors import OperatorMonitor

    files = sorted(run_dir.glob("checkpoints/best-*.ckpt"))
    if not files:
        raise FileNotFoundError(f"no checkpoints/best-*.ckpt under {run_dir}; pass a run directory of train.py")
    points = []
    for path in files:
        cfg, checkpoint = load_run(path)
        cfg.data = OmegaConf.merge(cfg.data, data_overrides)
        monitor = OmegaConf.select(cfg, "callbacks.operator_monitor", default={}) or {}
        dm = build_datamodule(cfg)
        dm.setup("fit")
        metrics = OperatorMonitor(monitor.get("num_digits", 50), monitor.get("seed", 0)).metrics(
            restore_model(cfg, checkpoint), dm)
        if tag not in metrics:
            raise KeyError(f"{path} gives no {tag!r} (it gives {sorted(metrics)})")
        # global_step counts the batches trained; TensorBoard logs a validation at the last one's index.
        points.append((int(checkpoint["global_step"]) - 1, metrics[tag]))
    return points


def vaells_start(run_dir: Path) -> int:
    """The batch at which ``run_dir``'s VAELLS phase began: the configured warm-up, plus the batches that
    ``WarmupFlowCheck`` added (its state in ``checkpoints/last.ckpt``)."""
    from omegaconf import OmegaConf

    from vaells.app.builders import load_run

    cfg, checkpoint = load_run(run_dir / "checkpoints" / "last.ckpt")
    added = sum(state.get("added_batches", 0) for key, state in checkpoint.get("callbacks", {}).items()
                if "WarmupFlowCheck" in key)
    return int(OmegaConf.select(cfg, "model.schedule.warmup_steps", default=0) or 0) + int(added)


def _overrides(pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE strings -> {KEY: VALUE}, the values parsed as YAML (false, 1e-3, ...)."""
    import yaml

    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"--data takes KEY=VALUE pairs, got {bad}; e.g. --data root=/path download=false")
    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of train.py")
    parser.add_argument("--tag", default="val/rotation_order", help="the scalar to draw")
    parser.add_argument("--labels", nargs="*", help="one legend label per run (default: the folder names)")
    parser.add_argument("--threshold", type=float, default=None, help="a horizontal line, e.g. a target")
    parser.add_argument("--out", type=Path, default=Path("training_trace.png"), help="where to write the figure")
    parser.add_argument("--rescore", nargs="*", type=Path, default=None, metavar="RUN_DIR",
                        help="recompute the tag from per-validation checkpoints with the current code: of the runs "
                             "named here, or of every run when none is named")
    parser.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                        help="data settings for --rescore, e.g. root=/path/to/folder download=false")
    parser.add_argument("--from-vaells", action="store_true",
                        help="count batches from each run's first VAELLS batch (its warm-up's end)")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}")
    data = _overrides(args.data)
    rescore = set() if args.rescore is None else {r.resolve() for r in args.rescore or args.runs}
    unknown = rescore - {r.resolve() for r in args.runs}
    if unknown:
        parser.error(f"--rescore names runs that are not plotted: {sorted(map(str, unknown))}")
    traces = {label: rescore_scalar(run, args.tag, data) if run.resolve() in rescore else read_scalar(run, args.tag)
              for label, run in zip(labels, args.runs, strict=True)}
    if args.from_vaells:
        starts = {label: vaells_start(run) for label, run in zip(labels, args.runs, strict=True)}
        traces = {label: [(step - starts[label], v) for step, v in points] for label, points in traces.items()}
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for label, points in traces.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if args.threshold is not None:
        ax.axhline(args.threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("VAELLS batch (after the warm-up)" if args.from_vaells else "batch")
    ax.set_ylabel(args.tag)
    # Beside the axes: traces cross the whole plot, so no corner inside it stays free.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    width = max(len(label) for label in traces)
    print(f"{'run':<{width}}  {args.tag} at (batch: value)")
    for label, points in traces.items():
        print(f"{label:<{width}}  " + "  ".join(f"{s}: {v:.3f}" for s, v in points))
    result = {"tag": args.tag, "figure": str(args.out), "runs": {k: [list(p) for p in v] for k, v in traces.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
