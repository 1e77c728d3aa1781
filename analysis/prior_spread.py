"""Question: does a trained VAELLS prior cover its manifold, and stay on it, at a widened b? Answer: printed table.

    python analysis/prior_spread.py RUN/checkpoints/last.ckpt [CKPT ...] --factors 1 3 10 30 100

How a trained VAELLS prior fits its synthetic manifold (swiss roll, circles) as its Laplace scale widens: prints
one table (a row per checkpoint and factor), then one JSON line.

``prior_manifold_error`` and ``prior_coverage_error`` (``vaells.evaluation.comparison.prior_fit``) are scored
at the model's own prior, b = 1 / zeta_3. There, when the learned operators are small, a prior sample moves
only a short way along an orbit from its anchor, and the prior is a tight blob around each anchor. The paper's
Fig. 3b draws the prior "with increased b" for that reason. This script scores the same trained prior (eq. 8,
the anchors and operators as learned) at b x k, so a reader sees whether the operators' orbits carry the prior
along the manifold (coverage falls while the manifold error stays low) or off it. Results from it are recorded
in docs/notes/ (analysis-history.md and the notes it names), never here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import vaells
from vaells.evaluation.common import evaluating
from vaells.evaluation.comparison import anchor_prior_samples, prior_scores
from vaells.models.base import has_operators


def prior_fit_at(model: torch.nn.Module, manifold: torch.Tensor, test_x: torch.Tensor, factor: float, *,
                 num_samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """The two prior-fit numbers of ``num_samples`` decoded samples of the anchor prior at b x ``factor``."""
    with evaluating(model, seed):
        samples = anchor_prior_samples(model, model.coeff_scale * factor, num_samples)
    scores = prior_scores(samples, manifold, test_x)
    return {key: scores[key] for key in ("prior_manifold_error", "prior_coverage_error")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="checkpoints of VAELLS runs on synthetic data")
    parser.add_argument("--factors", nargs="+", type=float, default=[1, 3, 10, 30, 100])
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    print(f"{'run':<48} {'b x':>6} {'manifold':>10} {'coverage':>10}")
    for ckpt in args.ckpts:
        run = vaells.load(ckpt)
        model, dm = run.model, run.datamodule
        if not has_operators(model) or not hasattr(dm, "manifold_points"):
            sys.exit(f"{ckpt}: needs a VAELLS run on data with a known manifold (swiss roll, circles)")
        dm.setup("test")
        test_x = torch.cat([batch["x"] for batch in dm.test_dataloader()])
        manifold = dm.manifold_points()
        rows = {}
        for factor in args.factors:
            fit = prior_fit_at(model, manifold, test_x, factor, num_samples=args.samples)
            rows[str(factor)] = fit
            print(f"{str(ckpt)[-48:]:<48} {factor:>6g} {fit['prior_manifold_error']:>10.4g} "
                  f"{fit['prior_coverage_error']:>10.4g}")
        results[str(ckpt)] = rows
    print(json.dumps({"prior_fit": results, "threads": 1}))


if __name__ == "__main__":
    main()
