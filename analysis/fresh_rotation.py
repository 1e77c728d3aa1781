"""Question: do learned operators rotate test digits no choice has seen, beyond Psi's controls? Answer: printed.

    python analysis/fresh_rotation.py RUN [RUN ...] --root /path/to/mnist_root [--digits 1000] [--skip 200]

``evaluate.py`` scores the rotation on 100 test digits (the first of a seeded permutation of the test split), and
its other image metrics on the first 200 of the same permutation; earlier settings were compared on those numbers.
This script scores ``rotation_order`` and ``rotation_match`` on the next ``--digits`` digits of that permutation,
which no metric has drawn, for each run's model and for its controls Psi = 0 and Psi at its initialisation
(``vaells.evaluation.operators.operator_controls``). It prints one table (a row per run and model), then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import vaells
from vaells.evaluation.common import seeded_pick
from vaells.evaluation.operators import operator_controls
from vaells.evaluation.rotation import rotation_metrics


def fresh_digits(dm, num_digits: int, skip: int) -> torch.Tensor:
    """Upright test digits at positions skip .. skip + num_digits of the evaluation's seeded permutation (seed 0).
    -> (N, 1, H, W)."""
    dm.setup("test")
    pick = seeded_pick(len(dm.test_set), skip + num_digits, 0)[skip:]
    return torch.stack([dm.test_set[int(i)]["digit"] for i in pick])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints of rotated-MNIST VAELLS runs")
    parser.add_argument("--root", default=None, help="MNIST's data.root (offline copy); default: the run's own")
    parser.add_argument("--digits", type=int, default=1000, help="test digits to score")
    parser.add_argument("--skip", type=int, default=200, help="positions of the permutation that metrics draw")
    args = parser.parse_args(argv)
    if args.digits < 1 or args.skip < 0:
        parser.error("need --digits >= 1 and --skip >= 0")
    torch.set_num_threads(1)
    overrides = {"root": args.root, "download": False} if args.root else None
    results = {}
    print(f"{'run':60s} {'model':10s} {'order':>7s} {'match':>7s} {'ceiling':>8s}")
    for run_path in args.runs:
        run = vaells.load(run_path, data_overrides=overrides)
        if not getattr(run.datamodule, "rotates_digits", False) or not run.has_operators:
            sys.exit(f"{run_path}: not a rotated-digits run with transport operators")
        digits = fresh_digits(run.datamodule, args.digits, args.skip)
        rows = {}
        for name, model in (("learned", run.model), *operator_controls(run.model)):
            scores = rotation_metrics(model, digits)
            rows[name] = {k: scores[f"rotation_{k}"] for k in ("order", "match", "ceiling")}
            print(f"{str(run.ckpt_path):60s} {name:10s} {rows[name]['order']:7.3f} {rows[name]['match']:7.3f} "
                  f"{rows[name]['ceiling']:8.3f}")
        results[str(run.ckpt_path)] = rows
    summary = {"fresh_rotation": results, "digits": args.digits, "skip": args.skip, "threads": 1}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
