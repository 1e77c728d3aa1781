"""Smoke tests of the scripts outside the package: the three benchmarks (``benchmarks/``) run in-process on tiny
synthetic inputs and return (and print, as their last line) a summary with the promised keys and sane values; the
investigations (``analysis/``) import, state their question and build their ``--help``. No network, no MNIST."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("step", "inference", "likelihood")
ANALYSES = ("matched_directions", "prior_spread", "mnist_class_ceiling", "training_traces", "fresh_rotation",
            "best_operator")


def load_script(path: Path) -> ModuleType:
    """Import a script by its file path (registered in sys.modules, where dataclasses look their module up)."""
    name = f"_script_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run_main(module: ModuleType, argv: list[str], capsys) -> dict:
    """``module.main(argv)``: its returned summary, checked to be the JSON line it prints last."""
    summary = module.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "the benchmark printed nothing"
    assert json.loads(out[-1]) == json.loads(json.dumps(summary)), "the last line is not the returned summary"
    return summary


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_benchmarks_folder_holds_only_the_benchmarks():
    assert sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")) == sorted(BENCHMARKS)
    assert sorted(p.stem for p in (ROOT / "analysis").glob("*.py")) == sorted(ANALYSES)


def test_step_benchmark_tiny(capsys):
    """One timed step per phase of the swiss roll's schedule, in a real Trainer, without the reference solver."""
    step = load_script(ROOT / "benchmarks" / "step.py")
    summary = run_main(step, ["--experiments", "swiss_roll", "--steps", "1", "--warmup", "0",
                              "--reference-steps", "0"], capsys)
    assert set(summary) == {"settings", "device", "threads"}
    assert summary["device"] == "cpu" and summary["threads"] == 1
    row = summary["settings"]["swiss_roll"]
    assert {"step_ms", "ae_step_ms", "overhead", "phases", "batch", "latent_dim", "num_operators"} <= set(row)
    assert "speedup" not in row and "reference_step_ms" not in row  # --reference-steps 0 skips the reference
    phases = row["phases"]
    vaells_phases = set(phases) - {"ae"}
    assert "ae" in phases and vaells_phases and vaells_phases <= {"net", "psi", "joint"}
    for name, parts in phases.items():
        assert finite_positive(parts["total"]), (name, parts)
        if name != "ae":
            assert {"forward", "inference", "backward", "optimizer", "other"} <= set(parts), (name, parts)
            assert finite_positive(parts["inference"]) and finite_positive(parts["backward"]), (name, parts)
            assert all(math.isfinite(v) for v in parts.values()), (name, parts)
    assert finite_positive(row["step_ms"]) and finite_positive(row["ae_step_ms"]) and finite_positive(row["overhead"])
    assert row["overhead"] == pytest.approx(row["step_ms"] / row["ae_step_ms"])
    assert row["latent_dim"] == 2 and row["num_operators"] >= 1 and row["batch"] >= 1


def test_step_benchmark_times_a_trained_run(capsys):
    """--checkpoint: the run's experiment, with its trained state loaded into the benchmark's model."""
    step = load_script(ROOT / "benchmarks" / "step.py")
    ckpt = str(ROOT / "tests" / "fixtures" / "swiss_roll_5b90a44" / "last.ckpt")
    loaded = []
    original = step.bench_experiment

    def spy(name, args, state=None, run_overrides=()):
        loaded.append((name, state, run_overrides))
        return original(name, args, state, run_overrides)

    step.bench_experiment = spy
    summary = run_main(step, ["--experiments", "swiss_roll", "--checkpoint", ckpt, "--steps", "1", "--warmup", "0",
                              "--reference-steps", "0"], capsys)
    [(_, fresh, ()), (name, state, run_overrides)] = loaded
    assert fresh is None and name == "swiss_roll"
    assert list(summary["settings"]) == ["swiss_roll", "swiss_roll (trained)"]  # side by side, in one process
    assert "backbone.encoder.hidden_dim=16" in run_overrides and not any(o.startswith("ll_") for o in run_overrides)
    assert torch.equal(state["transport.psi"], torch.load(ckpt, weights_only=False)["state_dict"]["transport.psi"])
    assert finite_positive(summary["settings"]["swiss_roll (trained)"]["overhead"])


def test_step_benchmark_composes_every_experiment_without_callbacks(tmp_path):
    """Rotated MNIST adds a callback whose settings interpolate a callback the benchmark drops: nothing of the
    callbacks may remain for the config to resolve."""
    step = load_script(ROOT / "benchmarks" / "step.py")
    args = SimpleNamespace(seed=0, root=str(tmp_path), overrides=[])
    for name in ("swiss_roll", "concentric_circles", "rotated_mnist", "natural_mnist"):
        cfg = step.experiment_config(name, args, str(tmp_path))
        assert "callbacks" not in cfg
        OmegaConf.to_container(cfg, resolve=True)  # raised InterpolationKeyError for rotated_mnist


def test_step_reference_solver_keeps_infer_jointlys_contract():
    """``reference_jointly`` (what ``--reference-steps`` times) returns, for a batch of pairs with restarts, the
    shapes ``infer_jointly`` returns, and each pair's coefficients give that pair's reported energy."""
    from vaells.inference import CoefficientSolver, energy, infer_jointly, restart_inits

    step = load_script(ROOT / "benchmarks" / "step.py")
    gen = torch.Generator().manual_seed(0)
    psi = torch.tensor([[[0.0, -0.3], [0.3, 0.0]]])  # (M=1, d=2), float32 as a model's
    z0 = torch.randn(2, 3, 2, generator=gen)
    angle = torch.rand(2, 3, 1, generator=gen)
    z1 = torch.cat([z0[..., :1] * angle.cos() - z0[..., 1:] * angle.sin(),
                    z0[..., :1] * angle.sin() + z0[..., 1:] * angle.cos()], -1)
    solver = CoefficientSolver(l1_weight=5e-5, restarts=((-2.5, 0.0), (0.0, 2.5)))
    c_init = restart_inits((2, 3), 1, solver.restarts, generator=gen)
    (ours,) = infer_jointly(psi, [(solver, z0, z1, c_init)])
    (ref,) = step.reference_jointly(psi, [(solver, z0, z1, c_init)])
    assert ref.c.shape == ours.c.shape == (2, 3, 1) and ref.c.dtype == psi.dtype
    assert ref.energy.shape == ours.energy.shape == (2, 3) and ref.num_iters.shape == (2, 3)
    recomputed = energy(psi.double(), z0.double(), z1.double(), ref.c.double(), solver.l1_weight)
    assert torch.allclose(recomputed, ref.energy.double(), rtol=1e-3, atol=1e-6)
    assert torch.all(ref.energy < 0.05)  # the targets are exact rotations of z0: both solvers nearly reach them


def test_inference_benchmark_tiny(capsys):
    """The swiss-roll setting, one repeat, both solvers, and a 50-pair throughput run."""
    inference = load_script(ROOT / "benchmarks" / "inference.py")
    summary = run_main(inference, ["--settings", "swiss_roll", "--repeats", "1", "--throughput-pairs", "50"],
                       capsys)
    assert {"speedup_min", "speedup_median", "energy_ratio_median", "settings", "device", "threads"} <= set(summary)
    assert list(summary["settings"]) == ["swiss_roll"] and summary["device"] == "cpu"
    row = summary["settings"]["swiss_roll"]
    setting = next(s for s in inference.SETTINGS if s.name == "swiss_roll")
    assert row["pairs"] == setting.batch * (setting.anchors + 1)  # prior pairs plus posterior pairs
    for key in ("reference_s", "project_s", "speedup", "energy_ratio_median", "us_per_pair"):
        assert finite_positive(row[key]), (key, row[key])
    for key in ("reference_energy_median", "project_energy_median", "throughput_energy_median"):
        assert math.isfinite(row[key]) and row[key] >= 0, (key, row[key])
    assert 0.0 <= row["frac_within_1pct"] <= 1.0
    assert row["throughput_pairs"] >= 50
    assert 0 < row["mean_iters"] <= inference.TRAINING_SOLVER["max_iter"]
    assert summary["speedup_min"] == pytest.approx(row["speedup"])
    with pytest.raises(SystemExit):  # the quick-check options are checked, not silently broken
        inference.main(["--settings", "swiss_roll", "--repeats", "0"])


def test_inference_benchmark_on_a_trained_checkpoint(capsys):
    """--checkpoint: the problems of a trained run's own training batches, at its budget and converged."""
    inference = load_script(ROOT / "benchmarks" / "inference.py")
    ckpt = str(ROOT / "tests" / "fixtures" / "swiss_roll_5b90a44" / "last.ckpt")
    summary = run_main(inference, ["--checkpoint", ckpt, "--batches", "2"], capsys)
    row = summary["checkpoints"][ckpt]
    assert row["batches"] == 2 and row["pairs"] == 2 * 30 * (4 + 1)  # per batch: 30 posterior, 30 x 4 prior pairs
    assert finite_positive(row["us_per_pair"]) and 0 < row["mean_iters"] <= row["max_iter"] == 20
    assert 0.0 <= row["at_cap"] <= 1.0
    assert 0.5 < row["energy_ratio_median"] < 1.5  # the training budget's energies against the converged ones
    with pytest.raises(SystemExit, match="batches"):
        inference.main(["--checkpoint", ckpt, "--batches", "0"])


def test_inference_benchmark_warm_starts_on_a_trained_checkpoint(capsys):
    """--warm-passes: warm starts from the cache against today's cold starts, on the same problems, pass after pass."""
    inference = load_script(ROOT / "benchmarks" / "inference.py")
    ckpt = str(ROOT / "tests" / "fixtures" / "swiss_roll_5b90a44" / "last.ckpt")
    summary = run_main(inference, ["--checkpoint", ckpt, "--batches", "2", "--warm-passes", "2", "--warm-iter", "2"],
                       capsys)
    row = summary["warm_starts"][ckpt]
    assert row["pairs"] == 2 * 2 * 30 * (4 + 1) and row["passes"] == 2 and row["warm_iter"] == 2
    assert 0 < row["mean_iters"] <= 2 < row["cold_mean_iters"]  # every pair was in the cache after the first pass
    for key in ("us_per_pair", "cold_us_per_pair", "energy_over_converged", "cold_energy_over_converged",
                "energy_ratio_median"):
        assert finite_positive(row[key]), (key, row[key])


def test_step_benchmark_starts_a_warm_starting_model_warm(capsys):
    """A model with warm starts fills its cache before the timed steps, as its second epoch would have."""
    step = load_script(ROOT / "benchmarks" / "step.py")
    summary = run_main(step, ["--experiments", "swiss_roll", "--steps", "1", "--warmup", "0", "--reference-steps", "0",
                              "--overrides", "model.warm_starts=true"], capsys)
    row = summary["settings"]["swiss_roll"]
    assert row["warm_starts"] is True and row["cache_fill_s"] >= 0 and finite_positive(row["overhead"])


def test_likelihood_benchmark_tiny(capsys):
    """A random-init natural-MNIST VAELLS on random images (no data): 2 points, K = 2, one anchor per class, the
    reference on one point."""
    likelihood = load_script(ROOT / "benchmarks" / "likelihood.py")
    summary = run_main(likelihood, ["--points", "2", "--reference-points", "1", "--samples", "2",
                                    "--overrides", "data.anchors_per_class=1"], capsys)
    assert summary["points"] == 2 and summary["reference_points"] == 1 and summary["samples"] == 2
    assert summary["model"] == "random init, random images" and summary["threads"] == 1
    for key in ("speedup", "ms_per_point", "reference_ms_per_point"):
        assert finite_positive(summary[key]), (key, summary[key])
    assert summary["speedup"] == pytest.approx(summary["reference_ms_per_point"] / summary["ms_per_point"])
    assert summary["chunk_points"] >= 1
    assert len(summary["ll_shared_project"]) == len(summary["ll_shared_reference"]) == 1
    lls = [summary["ll_mean"], *summary["ll_shared_project"], *summary["ll_shared_reference"]]
    assert all(math.isfinite(v) for v in lls)
    assert math.isfinite(summary["ll_abs_diff_max"]) and summary["ll_abs_diff_max"] >= 0
    with pytest.raises(SystemExit):  # overrides change the random-init model only
        likelihood.main(["--ckpt", "x.ckpt", "--overrides", "data.anchors_per_class=1"])


@pytest.mark.parametrize("name", ANALYSES)
def test_analysis_script_states_its_question_and_builds_its_help(name, capsys):
    path = ROOT / "analysis" / f"{name}.py"
    module = load_script(path)
    doc = module.__doc__
    first, *rest = doc.splitlines()
    assert first.startswith("Question: ") and "? Answer: " in first, first
    assert len(first) + 3 <= 120  # one line, as the opening of the docstring
    assert f"python analysis/{name}.py" in "\n".join(rest[:4]), "the command follows the question"
    assert "python benchmarks/" not in doc, "the commands name the script's own folder"
    with pytest.raises(SystemExit) as ex:
        module.main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "Question: " in out, out


def test_prior_spread_scores_a_prior_at_a_widened_scale(tmp_path):
    """``prior_fit_at`` on a randomly initialised swiss-roll VAELLS: both errors finite and non-negative."""
    from conftest import compose_train

    from vaells.app.builders import build_datamodule, build_model

    prior_spread = load_script(ROOT / "analysis" / "prior_spread.py")
    cfg = compose_train(["experiment=swiss_roll"], tmp_path)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    dm.setup("test")
    test_x = torch.cat([batch["x"] for batch in dm.test_dataloader()])
    manifold = dm.manifold_points(200)
    fits = [prior_spread.prior_fit_at(model, manifold, test_x, factor, num_samples=20) for factor in (1.0, 10.0)]
    for fit in fits:
        assert set(fit) == {"prior_manifold_error", "prior_coverage_error"}
        assert all(math.isfinite(v) and v >= 0 for v in fit.values()), fit
