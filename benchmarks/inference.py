"""Benchmark: batched coefficient inference (vaells.inference) against the authors' way (vaells.reference).

Builds realistic problems at the paper's four settings (docs/method.md §6): operators that look learned
(rotation- and spiral-like generators plus noise, at the scale of the release's logs), anchors and encodings
in the latent space (on one orbit where the paper's anchors are: circles, swiss roll, rotated digits), and
targets made from planted sparse coefficients plus small noise. Each setting holds
the prior pairs (every sample against every anchor of its class, R restarts) and the posterior pairs (every
encoding against its own sample, one start in U(0, 1)), exactly what one training step infers.

Both solvers get identical problems and identical starts. A second run per setting measures throughput: the
same kind of problem at a large batch (``--throughput-pairs``, 20,000 by default), solved with the training
solvers' settings (20 iterations, ftol 1e-10, float32 Jacobian), reported as microseconds per pair
(``us_per_pair``) and the mean iterations of the winning starts (``mean_iters``). Prints a table, then one JSON line.

    python benchmarks/inference.py                 # all four settings, CPU
    python benchmarks/inference.py --device cuda   # the project's solver on a GPU (reference stays on CPU)
    python benchmarks/inference.py --settings swiss_roll --repeats 3
    python benchmarks/inference.py --settings swiss_roll --repeats 1 --throughput-pairs 50   # a quick check
    python benchmarks/inference.py --checkpoint RUN [RUN ...] [--batches 5]   # a trained run's own problems

Planted problems do not behave like a trained model's. ``--checkpoint`` takes the problems that training steps of
a trained VAELLS run solve: its training batches through its own forward pass (``forward_terms``: its posterior
sample, anchors and solvers, the posterior warm-started from the sampled c), captured where they reach
``infer_jointly``. It times them as training solves them (``us_per_pair``, ``mean_iters``, ``at_cap``: the share
of pairs that use every iteration), then solves the same problems from the same starts with 10 times the
iteration cap: ``energy_ratio_median`` (training budget / converged) says how close to its optimum the training
budget leaves a pair.

``--checkpoint RUN --warm-passes K --warm-iter N [--broyden]`` measures warm starts (``model.warm_starts``,
docs/method.md §1.3) on the same trained run: it goes K + 1 times over the batches, as K + 1 epochs would, each time
with a fresh posterior sample. The first pass fills the coefficient cache; on the later ones every step's problems
are solved three ways: warm (the posterior from the sampled c alone, the prior from the cache, ``N`` iterations),
cold (today's training starts: the release's random restarts, the solvers' own caps) and converged (cold, 10 times
the caps). It reports the warm and the cold ``us_per_pair`` and mean iterations side by side, each one's median
``E / E_conv``, and ``energy_ratio_median``, the median of E_warm / E_cold (1 or below: warm starts lose nothing). The
trained model does not move between passes, as it would between epochs of training, so the cache is as fresh as it
can be.

    python benchmarks/inference.py --checkpoint RUN --batches 5 --warm-passes 3 --warm-iter 7 --broyden [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, replace
from unittest import mock

import numpy as np
import torch

from vaells.inference import CoefficientSolver, energy, infer_jointly, restart_inits
from vaells.reference import reference_infer
from vaells.transport import expm, generator_matrix


@dataclass(frozen=True)
class Setting:
    name: str
    latent_dim: int
    num_operators: int
    batch: int
    anchors: int
    restarts: tuple[tuple[float, float], ...]
    l1_prior: float
    operator_scale: float  # magnitude of the learned generators (docs/method.md §6, "sanity checks")
    prior_coeff_scale: float  # Laplace scale of the planted anchor -> sample coefficients
    anchors_on_orbit: bool  # class anchors are transports of one another (same circle / spiral / digit)


POSTERIOR_L1 = 1e-6  # lambda_post in every configuration
POSTERIOR_RESTARTS = ((0.0, 1.0),)  # the release starts posterior inference from U(0, 1)
# conf/model/vaells.yaml's posterior and prior solvers (their float32 Jacobian unless --jacobian-dtype says otherwise)
TRAINING_SOLVER = {"max_iter": 20, "ftol": 1e-10}
TRAINING_JACOBIAN_DTYPE = "float32"

SETTINGS = (
    Setting("circles", 2, 4, 30, 3, ((-2.5, 0.0), (0.0, 2.5)), 5e-6, 0.0335, 3.0, True),
    Setting("swiss_roll", 2, 1, 30, 4, ((-2.5, 0.0), (0.0, 2.5)), 5e-5, 0.027, 3.0, True),
    Setting("rotated_mnist", 10, 1, 32, 10, ((-2.5, 2.5),), 1e-6, 0.048, 3.0, True),
    Setting("natural_mnist", 6, 8, 32, 8, ((-2.5, 2.5),), 1e-6, 0.03, 1.5, False),
)


def learned_like_operators(d: int, m: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Psi (M, d, d): rotation or spiral generators in random planes, plus noise at 10% of their scale."""
    psi = torch.zeros(m, d, d, dtype=torch.float64)
    for k in range(m):
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        block = torch.zeros(d, d, dtype=torch.float64)
        for i in range(0, d - 1, 2):  # a rotation in every plane, with its own frequency
            w = scale * (0.5 + torch.rand((), generator=gen, dtype=torch.float64))
            block[i, i + 1], block[i + 1, i] = -w, w
        if k % 2 == 1:  # every other operator spirals: a contraction on top of the rotation
            block -= 0.2 * scale * torch.eye(d, dtype=torch.float64)
        psi[k] = basis @ block @ basis.T + 0.1 * scale * torch.randn(d, d, generator=gen, dtype=torch.float64)
    return psi


def sparse_laplace(shape: tuple[int, ...], scale: float, gen: torch.Generator) -> torch.Tensor:
    """Laplace coefficients with about half the entries zeroed (at least one kept per row) when M > 1."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5
    c = -scale * torch.sign(u) * torch.log1p(-2 * u.abs())
    if shape[-1] > 1:
        keep = torch.rand(shape, generator=gen) < 0.5
        keep[..., 0] |= ~keep.any(-1)
        c = c * keep
    return c


def transport(psi: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (expm(generator_matrix(psi, c)) @ z.unsqueeze(-1)).squeeze(-1)


def make_problem(s: Setting, seed: int) -> dict[str, torch.Tensor]:
    """z0/z1/c_init/l1 for the prior pairs and the posterior pairs of one training step."""
    gen = torch.Generator().manual_seed(seed)
    d, m, b, a = s.latent_dim, s.num_operators, s.batch, s.anchors
    psi = learned_like_operators(d, m, s.operator_scale, gen)
    if s.anchors_on_orbit:
        # The paper's anchors for these sets sit on one orbit: evenly spaced along a circle or the spiral,
        # or one digit rotated to evenly spaced angles; here, evenly spaced along the first operator's flow
        # from a random point, plus the same small noise as the encodings.
        steps = torch.zeros(a, m, dtype=torch.float64)
        steps[:, 0] = torch.linspace(-2 * s.prior_coeff_scale, 2 * s.prior_coeff_scale, a, dtype=torch.float64)
        start = torch.randn(d, generator=gen, dtype=torch.float64)
        noise = 0.01 * torch.randn(a, d, generator=gen, dtype=torch.float64)
        anchors = transport(psi, start.expand(a, d), steps) + noise
    else:  # natural MNIST: different digits of one class, not transports of one another
        anchors = torch.randn(a, d, generator=gen, dtype=torch.float64)
    home = torch.randint(a, (b,), generator=gen)  # each encoding lies on some anchor's orbit ...
    c_home = sparse_laplace((b, m), s.prior_coeff_scale, gen)
    mu = transport(psi, anchors[home], c_home) + 0.01 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    c_post = sparse_laplace((b, m), 1.0, gen)  # ... and the posterior sample moves it by c ~ Laplace(0, 1)
    z = transport(psi, mu, c_post) + 1e-3 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    prior_z0 = anchors.expand(b, a, d).reshape(-1, d)  # every anchor ...
    prior_z1 = z.unsqueeze(1).expand(b, a, d).reshape(-1, d)  # ... against every sample of its class
    return {
        "psi": psi,
        "prior_z0": prior_z0, "prior_z1": prior_z1,
        "prior_init": restart_inits((b * a,), m, s.restarts, generator=gen),
        "post_z0": mu, "post_z1": z,
        "post_init": restart_inits((b,), m, POSTERIOR_RESTARTS, generator=gen),
    }


def solvers(s: Setting, jacobian_dtype: str | None, **settings) -> tuple[CoefficientSolver, CoefficientSolver]:
    """The prior's and the posterior's solver of setting ``s`` (``settings``: max_iter, ftol; default: the
    solver's own)."""
    return (CoefficientSolver(l1_weight=s.l1_prior, restarts=s.restarts, jacobian_dtype=jacobian_dtype, **settings),
            CoefficientSolver(l1_weight=POSTERIOR_L1, restarts=POSTERIOR_RESTARTS, jacobian_dtype=jacobian_dtype,
                              **settings))


def time_project(p: dict, s: Setting, device: str, repeats: int, jacobian_dtype: str | None = None,
                 **settings) -> tuple[float, np.ndarray, float]:
    """Median seconds of one step's inference, the energies (recomputed independently) and the mean iterations."""
    prior, post = solvers(s, jacobian_dtype, **settings)
    t = {k: v.to(device) for k, v in p.items()}

    def run():  # one training step's inference: prior and posterior problems in one program
        rp, rq = infer_jointly(t["psi"], [(prior, t["prior_z0"], t["prior_z1"], t["prior_init"]),
                                          (post, t["post_z0"], t["post_z1"], t["post_init"])])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return rp, rq

    run()  # warm-up (allocators, CUDA context, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rp, rq = run()
        times.append(time.perf_counter() - start)
    # Recompute energies independently of the solver, in float64 on the CPU.
    e_prior = energy(p["psi"], p["prior_z0"], p["prior_z1"], rp.c.cpu().double(), s.l1_prior)
    e_post = energy(p["psi"], p["post_z0"], p["post_z1"], rq.c.cpu().double(), POSTERIOR_L1)
    iters = torch.cat([rp.num_iters.flatten(), rq.num_iters.flatten()]).double().mean()
    return statistics.median(times), torch.cat([e_prior, e_post]).numpy(), float(iters)


def time_reference(p: dict, s: Setting) -> tuple[float, np.ndarray]:
    n = {k: v.numpy() for k, v in p.items()}
    start = time.perf_counter()
    c_prior, _, _ = reference_infer(n["psi"], n["prior_z0"], n["prior_z1"], n["prior_init"], s.l1_prior)
    c_post, _, _ = reference_infer(n["psi"], n["post_z0"], n["post_z1"], n["post_init"], POSTERIOR_L1)
    elapsed = time.perf_counter() - start
    e_prior = energy(p["psi"], p["prior_z0"], p["prior_z1"], torch.from_numpy(c_prior), s.l1_prior)
    e_post = energy(p["psi"], p["post_z0"], p["post_z1"], torch.from_numpy(c_post), POSTERIOR_L1)
    return elapsed, torch.cat([e_prior, e_post]).numpy()


def checkpoint_requests(path: str, batches: int, seed: int, root: str | None = None) -> list[tuple[torch.Tensor, list]]:
    """(Psi, requests) of ``infer_jointly`` for ``batches`` training batches of a trained VAELLS run, as its
    training steps make them (module docstring)."""
    import vaells
    import vaells.models.vaells as vaells_model

    run = vaells.load(path, data_overrides=_data_overrides(root))
    model = run.model
    if not run.has_operators:
        raise SystemExit(f"{path}: a {type(model).__name__} run has no coefficient inference to benchmark")
    dm = run.datamodule
    dm.setup("fit")
    phase = model.schedule.phase(model.schedule.warmup_steps)  # the first batch after the warm-up
    weights = model.schedule.weights(model.weights, phase)
    captured, solve = [], vaells_model.infer_jointly

    def capture(psi, requests):
        captured.append((psi.detach(), [(sv, z0.detach(), z1.detach(), None if c0 is None else c0.detach(), *warm)
                                         for sv, z0, z1, c0, *warm in requests]))
        return solve(psi, requests)

    torch.manual_seed(seed)
    with mock.patch.object(vaells_model, "infer_jointly", capture), torch.no_grad():
        for batch, _ in zip(dm.train_dataloader(), range(batches), strict=False):
            model.forward_terms(batch, weights)
    return captured


def solve_captured(captured: list, seed: int, iteration_factor: int = 1) -> tuple[float, list]:
    """Seconds to solve every captured step's requests (the prior's restarts drawn from ``seed``), and the
    results; ``iteration_factor`` raises every solver's cap."""
    elapsed, results = 0.0, []
    for psi, requests in captured:
        if iteration_factor != 1:
            requests = [(_scaled(sv, iteration_factor), *rest) for sv, *rest in requests]
        torch.manual_seed(seed)
        start = time.perf_counter()
        results.append(infer_jointly(psi, requests))
        elapsed += time.perf_counter() - start
    return elapsed, results


def _scaled(solver: CoefficientSolver, factor: int) -> CoefficientSolver:
    import copy

    scaled = copy.copy(solver)
    scaled.max_iter = solver.max_iter * factor
    return scaled


def checkpoint_row(path: str, batches: int, seed: int, root: str | None = None) -> dict:
    captured = checkpoint_requests(path, batches, seed, root)
    solve_captured(captured[:1], seed)  # warm-up
    t_train, trained = solve_captured(captured, seed)
    _, converged = solve_captured(captured, seed, iteration_factor=10)
    caps = [sv.max_iter for _, requests in captured for sv, *_ in requests]
    energies = torch.cat([r.energy.flatten() for step in trained for r in step]).double()
    best = torch.cat([r.energy.flatten() for step in converged for r in step]).double()
    iters = torch.cat([r.num_iters.flatten() for step in trained for r in step]).double()
    cap = torch.cat([torch.full_like(r.num_iters.flatten(), sv.max_iter, dtype=torch.float64)
                     for (_, requests), step in zip(captured, trained, strict=True)
                     for (sv, *_), r in zip(requests, step, strict=True)])
    pairs = int(energies.numel())
    return {"pairs": pairs, "batches": len(captured), "us_per_pair": 1e6 * t_train / pairs,
            "mean_iters": float(iters.mean()), "at_cap": float((iters >= cap).double().mean()),
            "max_iter": max(caps), "energy_median": float(energies.median()),
            "energy_ratio_median": float(((energies + 1e-9) / (best + 1e-9)).median())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the project's solver")
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the solver's ops are tiny; the reference also runs on one)")
    parser.add_argument("--jacobian-dtype", default=None, help="the solvers' jacobian_dtype (default: theirs)")
    parser.add_argument("--throughput-pairs", type=int, default=20000,
                        help="pairs of the throughput run (at training settings); 0 skips it")
    parser.add_argument("--checkpoint", nargs="+", default=None,
                        help="trained VAELLS runs (folders or .ckpt): their own training problems instead")
    parser.add_argument("--batches", type=int, default=5, help="training batches per checkpoint")
    parser.add_argument("--root", default=None, help="with --checkpoint: read the runs' data from this folder "
                                                      "(one holding MNIST/raw) instead of their own setting")
    parser.add_argument("--warm-passes", type=int, default=0,
                        help="with --checkpoint: passes over the batches with warm starts after the one that fills "
                             "the cache (0: the cold rows above)")
    parser.add_argument("--warm-iter", type=int, default=5, help="the warm starts' iteration cap (warm_iter)")
    parser.add_argument("--broyden", action="store_true", help="warm starts update their Jacobian by Broyden's rule")
    args = parser.parse_args(argv)
    if args.checkpoint and args.warm_passes:
        return warm_main(args)
    if args.checkpoint:
        return checkpoint_main(args)
    if args.repeats < 1 or args.throughput_pairs < 0 or not args.settings:
        parser.error("need --repeats >= 1, --throughput-pairs >= 0 and at least one setting")
    torch.set_num_threads(args.threads)
    unknown = set(args.settings) - {s.name for s in SETTINGS}
    if unknown:
        parser.error(f"unknown setting(s) {sorted(unknown)}; choose from {[s.name for s in SETTINGS]}")

    rows, ratios = {}, []
    header = (f"{'setting':<14}{'pairs':>7}{'ref s':>10}{'ours s':>10}{'speedup':>10}"
              f"{'ref E med':>12}{'ours E med':>12}{'<=1.01 ref':>12}{'us/pair':>10}{'iters':>7}")
    print(header)
    print("-" * len(header))
    for s in SETTINGS:
        if s.name not in args.settings:
            continue
        p = make_problem(s, args.seed)
        t_ours, e_ours, _ = time_project(p, s, args.device, args.repeats, args.jacobian_dtype)
        t_ref, e_ref = time_reference(p, s)
        ratio = (e_ours + 1e-9) / (e_ref + 1e-9)
        ratios.append(ratio)
        row = {
            "pairs": int(e_ours.size),
            "reference_s": t_ref,
            "project_s": t_ours,
            "speedup": t_ref / t_ours,
            "reference_energy_median": float(np.median(e_ref)),
            "project_energy_median": float(np.median(e_ours)),
            "frac_within_1pct": float(np.mean(e_ours <= 1.01 * e_ref)),
            "energy_ratio_median": float(np.median(ratio)),
        }
        if args.throughput_pairs:
            # Throughput: the same kind of problem at a large batch, with the training solvers' settings
            # (20 iterations, ftol 1e-10: conf/model/vaells.yaml), as one training-size call would see them.
            big = replace(s, batch=math.ceil(args.throughput_pairs / (s.anchors + 1)))
            q = make_problem(big, args.seed)
            t_big, e_big, iters = time_project(q, big, args.device, 1, args.jacobian_dtype or TRAINING_JACOBIAN_DTYPE,
                                               **TRAINING_SOLVER)
            row |= {"throughput_pairs": int(e_big.size), "us_per_pair": 1e6 * t_big / e_big.size,
                    "mean_iters": iters, "throughput_energy_median": float(np.median(e_big))}
        rows[s.name] = row
        print(f"{s.name:<14}{row['pairs']:>7}{t_ref:>10.2f}{t_ours:>10.4f}{row['speedup']:>10.0f}"
              f"{row['reference_energy_median']:>12.3e}{row['project_energy_median']:>12.3e}"
              f"{row['frac_within_1pct']:>12.3f}{row.get('us_per_pair', math.nan):>10.1f}"
              f"{row.get('mean_iters', math.nan):>7.1f}", flush=True)
    speedups = [r["speedup"] for r in rows.values()]
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    summary = {
        "speedup_min": min(speedups),
        "speedup_median": statistics.median(speedups),
        "energy_ratio_median": float(np.median(np.concatenate(ratios))),
        "settings": rows,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    assert all(math.isfinite(v) for v in speedups)
    print(json.dumps(summary))
    return summary


def checkpoint_main(args: argparse.Namespace) -> dict:
    if args.batches < 1:
        raise SystemExit(f"--batches must be at least 1, got {args.batches}")
    torch.set_num_threads(args.threads)
    header = f"{'checkpoint':<48}{'pairs':>8}{'us/pair':>10}{'iters':>7}{'at cap':>8}{'E med':>12}{'E/E_conv':>10}"
    print(header)
    print("-" * len(header))
    rows = {}
    for path in args.checkpoint:
        row = rows[path] = checkpoint_row(path, args.batches, args.seed, args.root)
        print(f"{path[-48:]:<48}{row['pairs']:>8}{row['us_per_pair']:>10.1f}{row['mean_iters']:>7.1f}"
              f"{row['at_cap']:>8.2f}{row['energy_median']:>12.3e}{row['energy_ratio_median']:>10.3f}", flush=True)
    summary = {"checkpoints": rows, "device": "cpu", "threads": torch.get_num_threads()}
    print(json.dumps(summary))
    return summary


def _data_overrides(root: str | None) -> dict | None:
    """Read the run's data from ``root`` (MNIST runs from another machine), without downloading."""
    return None if root is None else {"root": root, "download": False}


def warm_row(path: str, batches: int, seed: int, passes: int, warm_iter: int, root: str | None = None,
             broyden: bool = False) -> dict:
    """Warm against cold starts on a trained run's own problems, pass after pass (module docstring)."""
    import copy

    import vaells
    from vaells.models.vaells import VAELLSModule

    run = vaells.load(path, data_overrides=_data_overrides(root))
    model = run.model
    if not run.has_operators:
        raise SystemExit(f"{path}: a {type(model).__name__} run has no coefficient inference to benchmark")
    cold_post, cold_prior = model.posterior_solver, model.prior_solver
    model.posterior_solver, model.prior_solver = copy.copy(cold_post), copy.copy(cold_prior)
    model.posterior_solver.warm_iter = model.prior_solver.warm_iter = warm_iter
    model.posterior_solver.broyden = model.prior_solver.broyden = broyden
    model.warm_starts, model.posterior_restarts = True, False
    model.training = True  # the cache is kept in training mode only; the networks themselves stay in eval mode
    dm = run.datamodule
    dm.setup("fit")
    weights = model.schedule.weights(model.weights, model.schedule.phase(model.schedule.warmup_steps))
    data = [b for b, _ in zip(dm.train_dataloader(), range(batches), strict=False)]
    original, rows = VAELLSModule._infer, []

    def timed(self, batch, mu, z, c, anchors):
        start = time.perf_counter()
        post, prior = original(self, batch, mu, z, c, anchors)
        t_warm = time.perf_counter() - start
        if not record:  # the pass that fills the cache
            return post, prior
        restarts = restart_inits(c.shape[:-1], c.shape[-1], cold_post.restarts, dtype=c.dtype)
        cold_requests = [(cold_post, mu, z, torch.cat([c.unsqueeze(-2), restarts], -2)),
                         (cold_prior, anchors, z.unsqueeze(-2), None)]
        start = time.perf_counter()
        cold = infer_jointly(self.transport.psi, cold_requests)
        t_cold = time.perf_counter() - start
        conv = infer_jointly(self.transport.psi, [(_scaled(sv, 10), *rest) for sv, *rest in cold_requests])
        rows.append((t_warm, t_cold, (post, prior), cold, conv))
        return post, prior

    torch.manual_seed(seed)
    with mock.patch.object(VAELLSModule, "_infer", timed), torch.no_grad():
        for p in range(passes + 1):
            record = p > 0
            for batch in data:
                model.forward_terms(batch, weights)

    def flat(results, key):
        return torch.cat([getattr(r, key).flatten() for r in results]).double()

    warm = [flat(r[2], "energy") for r in rows]
    cold = [flat(r[3], "energy") for r in rows]
    conv = [flat(r[4], "energy") for r in rows]
    e_warm, e_cold, e_conv = torch.cat(warm), torch.cat(cold), torch.cat(conv)
    pairs = int(e_warm.numel())
    return {"pairs": pairs, "batches": batches, "passes": passes, "warm_iter": warm_iter, "broyden": broyden,
            "us_per_pair": 1e6 * sum(r[0] for r in rows) / pairs,
            "cold_us_per_pair": 1e6 * sum(r[1] for r in rows) / pairs,
            "mean_iters": float(torch.cat([flat(r[2], "num_iters") for r in rows]).mean()),
            "cold_mean_iters": float(torch.cat([flat(r[3], "num_iters") for r in rows]).mean()),
            "energy_over_converged": float(((e_warm + 1e-9) / (e_conv + 1e-9)).median()),
            "cold_energy_over_converged": float(((e_cold + 1e-9) / (e_conv + 1e-9)).median()),
            "energy_ratio_median": float(((e_warm + 1e-9) / (e_cold + 1e-9)).median()),
            "energy_mean": float(e_warm.mean()), "cold_energy_mean": float(e_cold.mean())}


def warm_main(args: argparse.Namespace) -> dict:
    if args.batches < 1 or args.warm_iter < 1:
        raise SystemExit(f"--batches and --warm-iter must be at least 1, got {args.batches} and {args.warm_iter}")
    torch.set_num_threads(args.threads)
    header = (f"{'checkpoint':<40}{'pairs':>7}{'us/pair':>9}{'cold':>9}{'iters':>7}{'cold':>7}{'E/E_conv':>10}"
              f"{'cold':>8}{'E/E_cold':>10}")
    print(header)
    print("-" * len(header))
    rows = {}
    for path in args.checkpoint:
        row = rows[path] = warm_row(path, args.batches, args.seed, args.warm_passes, args.warm_iter, args.root,
                                    args.broyden)
        print(f"{path[-40:]:<40}{row['pairs']:>7}{row['us_per_pair']:>9.1f}{row['cold_us_per_pair']:>9.1f}"
              f"{row['mean_iters']:>7.1f}{row['cold_mean_iters']:>7.1f}{row['energy_over_converged']:>10.3f}"
              f"{row['cold_energy_over_converged']:>8.3f}{row['energy_ratio_median']:>10.3f}", flush=True)
    summary = {"warm_starts": rows, "device": "cpu", "threads": torch.get_num_threads()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
