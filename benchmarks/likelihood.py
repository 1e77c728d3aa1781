"""Benchmark: VAELLS's importance-sampled log-likelihood (docs/method.md §3), the project's batched estimator against
a per-point loop written the authors' way, on identical samples in the same run.

The project's path is the release's recipe as ``log_likelihood_release_recipe`` takes it
(``VAELLSModule.release_terms``: ``importance_samples`` then ``importance_terms``), a chunk of points at a time,
every (point, sample, anchor, start) in one batched inference.
The reference takes one test point at a time, decodes its K samples, solves each posterior and prior coefficient
problem on its own with scipy CG (``vaells.reference.reference_log_weights``: the release's solver, at most 50
iterations), from the same samples and the same starts. Both run on one CPU thread. The reference runs on the
first ``--reference-points`` points only (it takes minutes per point at K = 100); speeds compare per point.

The model: a trained natural-MNIST checkpoint (``--ckpt``), or a natural-MNIST VAELLS as
``experiment=natural_mnist`` builds it, randomly initialised (d = 6, M = 8, N_a = 8, the release's networks and
solvers), on MNIST test digits (``--root``) or, without data, on random images with random labels.

    python benchmarks/likelihood.py                                  # random-init model, 1000 points, K = 100
    python benchmarks/likelihood.py --ckpt RUN/checkpoints/last.ckpt --root /path/to/mnist
    python benchmarks/likelihood.py --points 4 --reference-points 1 --samples 10     # a quick check
    python benchmarks/likelihood.py --points 2 --reference-points 1 --samples 2 --overrides data.anchors_per_class=1

Prints a table, then one JSON line with ``speedup`` (reference ms per point / project ms per point) and
``ms_per_point`` (the project's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from vaells.app.builders import build_datamodule, build_model, load_run
from vaells.distributions import log_mean_exp
from vaells.evaluation.likelihood import SAMPLES_PER_CHUNK, draw_test_points
from vaells.reference import reference_log_weights

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def natural_mnist_model(root: str | None, num_points: int, seed: int, extra: list[str] | tuple[str, ...] = ()):
    """A randomly initialised natural-MNIST VAELLS and ``num_points`` test points: MNIST's (``root``) or random
    images in [0, 1] with random labels, and random anchor images, when there is no data. ``extra``: Hydra
    overrides applied after the experiment's (e.g. ``data.anchors_per_class=1``)."""
    overrides = ["experiment=natural_mnist", f"seed={seed}", "~callbacks.latent_figures"]
    if root is not None:
        overrides += [f"data.root={root}", "data.download=false"]
    overrides += list(extra)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(seed)
    if root is not None:
        dm = build_datamodule(cfg)
        return build_model(cfg, dm), draw_test_points(dm, num_points, seed), "random init, MNIST test digits"
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    n_a, size = cfg.data.anchors_per_class, cfg.backbone.encoder.image_size
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.rand(10 * n_a, 1, size, size, generator=gen)
    anchor_labels = torch.arange(10).repeat_interleave(n_a)
    model = instantiate(model_cfg, anchors=anchors, anchor_labels=anchor_labels)
    points = {"x": torch.rand(num_points, 1, size, size, generator=gen),
              "label": torch.randint(10, (num_points,), generator=gen)}
    return model, points, "random init, random images"


def trained_model(ckpt: str, root: str | None, num_points: int, seed: int):
    run_cfg, checkpoint = load_run(ckpt)
    if root is not None:
        with open_dict(run_cfg):
            run_cfg.data.root, run_cfg.data.download = root, False
    dm = build_datamodule(run_cfg)
    model = build_model(run_cfg, dm)
    model.load_state_dict(checkpoint["state_dict"])
    return model, draw_test_points(dm, num_points, seed), f"checkpoint {ckpt}"


def run_project(model, points: dict, k: int, chunk: int) -> tuple[float, torch.Tensor, list]:
    """The project's estimator, chunk by chunk: seconds, LL per point, and the draws of each chunk."""
    lls, draws, elapsed = [], [], 0.0
    x, labels = points["x"], points.get("label")
    anchors = points.get("anchors")
    for i in range(0, x.shape[0], chunk):
        part = {"labels": None if labels is None else labels[i:i + chunk],
                "anchors": None if anchors is None else anchors[i:i + chunk]}
        start = time.perf_counter()
        samples, terms = model.release_terms(x[i:i + chunk], k, **part)
        log_w = terms["log_lik"] + terms["log_prior"] - terms["log_posterior"]  # (chunk, K)
        lls.append(log_mean_exp(log_w))
        elapsed += time.perf_counter() - start
        draws.append(samples)
    return elapsed, torch.cat(lls), draws


def run_reference(model, points: dict, draws: list, num_points: int) -> tuple[float, np.ndarray]:
    """The authors' way, point by point, on the project's draws: seconds and LL per point."""
    psi = model.transport.psi.detach().numpy()
    settings = {"recon": model.weights.recon, "latent_scale": model.latent_scale, "noise_std": model.noise_std,
                "coeff_scale": model.coeff_scale, "post_l1": model.posterior_solver.l1_weight,
                "prior_l1": model.prior_solver.l1_weight, "closest_anchor": model.closest_anchor}
    flat = [(s, j) for s in draws for j in range(s.z.shape[0])][:num_points]
    lls, start = [], time.perf_counter()
    for n, (s, j) in enumerate(flat):
        with torch.no_grad():
            x_hat = model.decode(s.z[j]).flatten(1).numpy()  # the point's K decoded samples
        terms = reference_log_weights(psi, points["x"][n].numpy(), x_hat, s.mu[j].numpy(), s.anchors[j].numpy(),
                                      s.z[j].numpy(), s.post_init[j].numpy(), s.prior_init[j].numpy(), **settings)
        log_w = terms["log_lik"] + terms["log_prior"] - terms["log_posterior"]
        lls.append(float(log_mean_exp(torch.from_numpy(log_w))))
    return time.perf_counter() - start, np.array(lls)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a trained natural-MNIST run's checkpoint (default: random init)")
    parser.add_argument("--root", default=None, help="MNIST's data.root (offline); without it, random images")
    parser.add_argument("--points", type=int, default=1000, help="test points for the project's estimator")
    parser.add_argument("--reference-points", type=int, default=2, help="of those, how many the reference solves")
    parser.add_argument("--samples", type=int, default=100, help="K, importance samples per point")
    parser.add_argument("--chunk", type=int, default=None, help="points per batched call (default: the estimator's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the random-init model, e.g. "
                        "data.anchors_per_class=1 for a quick check (not with --ckpt)")
    args = parser.parse_args(argv)
    if not 1 <= args.reference_points <= args.points or args.samples < 1:
        parser.error("need 1 <= --reference-points <= --points and --samples >= 1")
    if args.ckpt and args.overrides:
        parser.error("--overrides change the random-init model; a checkpoint keeps its own config")
    torch.set_num_threads(args.threads)
    if args.ckpt:
        model, points, source = trained_model(args.ckpt, args.root, args.points, args.seed)
    else:
        model, points, source = natural_mnist_model(args.root, args.points, args.seed, args.overrides)
    model.eval()
    n = points["x"].shape[0]
    chunk = args.chunk or max(1, SAMPLES_PER_CHUNK // args.samples)
    torch.manual_seed(args.seed)
    t_project, ll_project, draws = run_project(model, points, args.samples, chunk)
    t_reference, ll_reference = run_reference(model, points, draws, args.reference_points)
    ms_project, ms_reference = 1e3 * t_project / n, 1e3 * t_reference / args.reference_points
    shared = ll_project[:args.reference_points].numpy()
    diff = np.abs(shared - ll_reference)

    header = f"{'estimator':<12}{'points':>8}{'K':>6}{'total s':>11}{'ms/point':>12}{'LL mean':>14}"
    print(f"natural-MNIST VAELLS ({source}); d={model.latent_dim}, M={model.transport.num_operators}, "
          f"N_a={draws[0].anchors.shape[1]}, {args.threads} thread(s)")
    print(header)
    print("-" * len(header))
    print(f"{'reference':<12}{args.reference_points:>8}{args.samples:>6}{t_reference:>11.2f}{ms_reference:>12.1f}"
          f"{ll_reference.mean():>14.2f}")
    print(f"{'project':<12}{n:>8}{args.samples:>6}{t_project:>11.2f}{ms_project:>12.1f}"
          f"{float(ll_project.mean()):>14.2f}")
    print(f"speedup {ms_reference / ms_project:.0f}x; on the {args.reference_points} shared point(s) the LL differs by "
          f"at most {diff.max():.3g} (median {np.median(diff):.3g}); 1000 points at K={args.samples} would take "
          f"{ms_project:.0f} s / {ms_project / 60:.1f} min with the project's estimator")
    summary = {
        "speedup": ms_reference / ms_project,
        "ms_per_point": ms_project,
        "reference_ms_per_point": ms_reference,
        "points": n,
        "reference_points": args.reference_points,
        "samples": args.samples,
        "chunk_points": chunk,
        "ll_mean": float(ll_project.mean()),
        "ll_shared_project": shared.tolist(),
        "ll_shared_reference": ll_reference.tolist(),
        "ll_abs_diff_max": float(diff.max()),
        "model": source,
        "threads": torch.get_num_threads(),
    }
    assert all(math.isfinite(v) for v in (summary["speedup"], summary["ms_per_point"]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
