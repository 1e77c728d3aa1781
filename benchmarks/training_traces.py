"""A TensorBoard scalar over training for several runs: one table, one figure, one JSON line.

Shows when a run learns what it is meant to, or loses it: for rotated MNIST, ``val/rotation_order``
(``vaells.evaluation.monitors.OperatorMonitor``, 50 fixed validation digits at every validation), for any run the
operators' ``val/psi_norm_m`` or ``val/psi_drift_m``.

    python benchmarks/training_traces.py RUN_DIR [RUN_DIR ...] --tag val/rotation_order --out trace.png
    python benchmarks/training_traces.py outputs/train/rotated_mnist/* --labels "seed 0" "seed 1"

The x axis is the module's batch counter (warm-up included), so runs of one experiment line up.
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of train.py")
    parser.add_argument("--tag", default="val/rotation_order", help="the scalar to draw")
    parser.add_argument("--labels", nargs="*", help="one legend label per run (default: the folder names)")
    parser.add_argument("--threshold", type=float, default=None, help="a horizontal line, e.g. a target")
    parser.add_argument("--out", type=Path, default=Path("training_trace.png"), help="where to write the figure")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}")
    traces = {label: read_scalar(run, args.tag) for label, run in zip(labels, args.runs, strict=True)}
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for label, points in traces.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if args.threshold is not None:
        ax.axhline(args.threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("batch")
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
