"""Question: do a synthetic run's paths miss for its learned operator or its latent layout? Answer: printed table.

    python analysis/best_operator.py RUN [RUN ...] [--pairs 100] [--evals 300]

When a synthetic VAELLS run's transport paths miss (swiss roll, seed 2; the manifold suite), is it the operator that
training found, or the latent layout that the encoder gave it? For each run, with the trained encoder and decoder
frozen, this fits the operators Psi (M matrices of d x d) by Nelder-Mead to the run's own validation pairs,
minimising ``path_manifold_error`` (the journey's score, ``vaells.evaluation.paths.path_scores``), and then scores
it once on the test pairs that ``evaluate.py`` draws:

- ``learned``: Psi as trained (the run's own ``path_*`` numbers, recomputed);
- ``best Psi``: the best linear flow for this layout. If it meets the targets where the learned one does not, the
  operator's training fell short; if it does not, no linear flow fits this layout;
- ``best Psi + centre`` (skipped with ``--no-centre``): the same with the flow turning about a fitted centre b,
  z -> b + expm(A(c)) (z - b). A linear flow turns about the origin only, so this shows what an off-centre layout
  costs;
- ``linear``: straight latent paths.

It fits on validation pairs and scores on test pairs. Nelder-Mead searches the M d^2 numbers of Psi from the learned
one: enough for d = 2, a local search only for the suite's 32 (M = 2, d = 4), so there a miss of ``best Psi`` bounds
what a nearby operator does, not every operator. Results from it are recorded in docs/notes/, never here.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch
from scipy.optimize import minimize

import vaells
from vaells.evaluation.common import encode_chunked, evaluating
from vaells.evaluation.paths import linear_interpolation, path_scores, same_label_pairs, transport_interpolation


def split(dm, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = dm.val_dataloader() if stage == "validate" else dm.test_dataloader()
    batches = list(loader)
    return torch.cat([b["x"] for b in batches]), torch.cat([b["label"] for b in batches])


class Pairs:
    """Same-class pairs of one split, encoded once by the frozen encoder."""

    def __init__(self, model, x: torch.Tensor, labels: torch.Tensor, num_pairs: int, seed: int) -> None:
        i0, i1 = same_label_pairs(labels, num_pairs, torch.Generator().manual_seed(seed))
        with evaluating(model, seed):
            self.z0, self.z1 = encode_chunked(model, x[i0]), encode_chunked(model, x[i1])
        self.x1 = x[i1]


def scores(model, pairs: Pairs, manifold: torch.Tensor, psi: torch.Tensor | None, centre: torch.Tensor,
           steps: int = 10) -> dict[str, float]:
    """The path scores of the flow with operators ``psi`` (M, d, d) about ``centre`` (d,); None: straight lines."""
    with torch.no_grad():
        if psi is None:
            path = linear_interpolation(pairs.z0, pairs.z1, steps)
        else:
            model.transport.psi.copy_(psi)
            b = centre.to(pairs.z0.dtype)
            path = transport_interpolation(model, pairs.z0 - b, pairs.z1 - b, steps)[0] + b.to(torch.float64)
        return path_scores(model, path, pairs.z1, manifold, pairs.x1)


def fit(model, pairs: Pairs, manifold: torch.Tensor, start: torch.Tensor, with_centre: bool,
        evals: int) -> np.ndarray:
    """Nelder-Mead from the learned ``start`` (M, d, d): the flattened Psi, then (``with_centre``) the centre."""
    shape, d = start.shape, start.shape[-1]
    n = start.numel()

    def loss(params: np.ndarray) -> float:
        psi = torch.as_tensor(params[:n], dtype=torch.float64).view(shape)
        centre = torch.as_tensor(params[n:] if with_centre else np.zeros(d))
        if not torch.isfinite(psi).all() or float(psi.norm()) < 1e-6:
            return 1e9
        return scores(model, pairs, manifold, psi.to(model.transport.psi.dtype), centre)["manifold_error"]

    flat = start.flatten().double().numpy()
    x0 = np.concatenate([flat, np.zeros(d)]) if with_centre else flat
    step = np.full(n, 0.3 * np.abs(flat).max())
    if with_centre:
        step = np.concatenate([step, np.full(d, 0.1)])
    simplex = np.vstack([x0, x0 + np.diag(step)])
    return minimize(loss, x0, method="Nelder-Mead", options={"maxfev": evals, "initial_simplex": simplex}).x


def analyse(path: str, num_pairs: int, evals: int, centre: bool) -> list[dict]:
    run = vaells.load(path)
    model = copy.deepcopy(run.model).eval()
    if getattr(model.transport, "affine", False):
        raise SystemExit(f"{path}: affine operators already fit a centre; this analysis takes linear ones")
    d = model.transport.psi.shape[-1]
    dm = run.datamodule
    dm.setup("fit")
    dm.setup("test")
    manifold = dm.manifold_points()
    val = Pairs(model, *split(dm, "validate"), num_pairs, seed=1)
    test = Pairs(model, *split(dm, "test"), num_pairs, seed=0)  # evaluate.py's pairs (path_manifold_errors, seed 0)
    learned = model.transport.psi.detach().clone()
    zero = torch.zeros(d)
    rows = [{"run": path, "variant": "learned", **scores(model, test, manifold, learned, zero),
             "eigenvalue": leading_eigenvalue(learned)},
            {"run": path, "variant": "linear", **scores(model, test, manifold, None, zero)}]
    for with_centre in (False, True) if centre else (False,):
        params = fit(model, val, manifold, learned, with_centre, evals)
        n = learned.numel()
        psi = torch.as_tensor(params[:n]).view(learned.shape).to(learned.dtype)
        fitted = torch.as_tensor(params[n:]) if with_centre else zero
        rows.append({"run": path, "variant": "best Psi + centre" if with_centre else "best Psi",
                     **scores(model, test, manifold, psi, fitted), "eigenvalue": leading_eigenvalue(psi),
                     "centre": [float(v) for v in fitted]})
    return rows


def leading_eigenvalue(psi: torch.Tensor) -> list[float]:
    """a and |w| of the first operator's eigenvalue with the largest |imaginary part| (its turn, if any)."""
    eig = torch.linalg.eigvals(psi[0].double())
    top = eig[eig.imag.abs().argmax()]
    return [float(top.real), abs(float(top.imag))]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints of synthetic VAELLS runs")
    parser.add_argument("--pairs", type=int, default=100, help="same-class pairs per split (evaluate.py: 100)")
    parser.add_argument("--evals", type=int, default=300, help="Nelder-Mead evaluations per fit")
    parser.add_argument("--no-centre", dest="centre", action="store_false", help="skip the fit with a centre")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row for path in args.runs for row in analyse(path, args.pairs, args.evals, args.centre)]
    print(f"{'run':<60} {'variant':<18} {'path_manifold_error':>20} {'endpoint_error':>15} {'eigenvalue a, |w|':>20}")
    for r in rows:
        eig = ", ".join(f"{v:.4f}" for v in r.get("eigenvalue", [])) or "-"
        print(f"{r['run'][-60:]:<60} {r['variant']:<18} {r['manifold_error']:>20.3f} {r['endpoint_error']:>15.3f} "
              f"{eig:>20}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
