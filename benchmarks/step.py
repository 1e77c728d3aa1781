"""Benchmark: one VAELLS training step, phase by phase, against the same step with the reference solver and
against a plain autoencoder step on the same networks, batch and anchors.

For each experiment's default config (``conf/experiment/<name>.yaml``) the step runs inside a real Lightning
``Trainer`` (the module's own ``training_step``, its logging included), with the module's batch counter held
in one phase at a time:

* ``ae``: the warm-up step (the autoencoder alone), plus encoding the batch's anchors (forward and backward,
  as VAELLS does at every step): what a plain autoencoder with this anchor set would cost;
* each VAELLS phase of the schedule: ``net`` and ``psi`` when it alternates, else ``joint``; the operator
  phase includes its accept/reject re-evaluation (``_step_operators``).

Each VAELLS step is split into forward (encoder, decoder, loss terms), inference (``infer_jointly``), backward
and optimizer (the network step, or the Psi step with its re-evaluation); ``other`` is the rest (logging, the
loop). ``step_ms`` is the schedule's mean over its VAELLS phases (alternating: weighted by N_net : N_psi).
``reference_step_ms`` is the same mean with the coefficient inference done the authors' way
(``vaells.reference.reference_infer``: scipy CG, one pair and one start at a time), measured on fewer steps.

    python benchmarks/step.py --root /path/to/mnist          # all four experiments (MNIST from that root)
    python benchmarks/step.py --experiments swiss_roll concentric_circles --steps 10
    python benchmarks/step.py --root /path/to/mnist --experiments natural_mnist --overrides KEY=VALUE
    python benchmarks/step.py --experiments swiss_roll --steps 1 --warmup 0 --reference-steps 0   # a quick check
    python benchmarks/step.py --checkpoint RUN [RUN ...] --root /path/to/mnist   # trained runs' own state

A model with warm starts (``model.warm_starts``, natural MNIST's default) first runs its forward pass once over the
training data, untimed, so that every timed step starts from each sample's cached coefficients, as training does
from its second VAELLS epoch on (``cache_fill_s`` in the JSON).

``--checkpoint`` also times the steps of trained VAELLS runs, after the freshly initialised ``--experiments``, in the
same process: each run's experiment with the model, backbone and data settings of its command line and its trained
networks, operators and anchors. A trained model's inference problems differ from an initial one's
(``benchmarks/inference.py --checkpoint``).

MNIST experiments need ``--root`` (a folder holding MNIST/raw); without it they are skipped. Prints a table,
then one JSON line: ``{"settings": {name: {"step_ms", "reference_step_ms", "ae_step_ms", "speedup",
"overhead", "phases": {...}}}, "device", "threads"}`` with ``speedup = reference_step_ms / step_ms`` and
``overhead = step_ms / ae_step_ms``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import vaells.models.vaells as vaells_module
from vaells.app.builders import build_datamodule, build_model
from vaells.inference import InferenceResult
from vaells.models.schedule import JOINT, NET, PSI
from vaells.reference import reference_infer
from vaells.solver import flatten

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = ("swiss_roll", "concentric_circles", "rotated_mnist", "natural_mnist")
MNIST = {"rotated_mnist", "natural_mnist"}
PARTS = ("forward", "inference", "backward", "optimizer")


def reference_jointly(psi: torch.Tensor, requests) -> list[InferenceResult]:
    """``infer_jointly``'s contract, solved pair by pair and start by start with ``reference_infer``."""
    results = []
    for solver, z0, z1, c_init, *_ in requests:  # the reference has no warm budget: every start runs its course
        flat = flatten(psi.detach().to(torch.float64), z0, z1, c_init, solver.restarts, None)
        r = flat.num_restarts
        # flatten repeats each pair once per start; the reference takes (P, d) pairs and (P, R, M) starts.
        z0_p, z1_p = flat.z0.view(-1, r, z0.shape[-1])[:, 0], flat.z1.view(-1, r, z1.shape[-1])[:, 0]
        starts = flat.c.view(z0_p.shape[0], r, -1)
        c, e, it = reference_infer(psi.detach().double().numpy(), z0_p.numpy(), z1_p.numpy(), starts.numpy(),
                                   solver.l1_weight)
        shape = flat.batch_shape
        results.append(InferenceResult(c=torch.from_numpy(c).to(psi.dtype).view(*shape, -1),
                                       energy=torch.from_numpy(e).view(shape),
                                       num_iters=torch.from_numpy(it).long().view(shape)))
    return results


class Timers:
    """Wall-clock seconds per part of the current step, by wrapping the module's own methods."""

    def __init__(self, model) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.infer = vaells_module.infer_jointly

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.parts[name] += time.perf_counter() - start
            return wrapper

        self.timed = timed
        model.forward_terms = timed("forward_total", model.forward_terms)
        model._warmup_loss = timed("forward_total", model._warmup_loss)
        model.manual_backward = timed("backward", model.manual_backward)
        model._step_networks = timed("optimizer", model._step_networks)
        model._step_operators = timed("optimizer", model._step_operators)
        self.use_solver(self.infer)

    def use_solver(self, fn) -> None:
        vaells_module.infer_jointly = self.timed("inference", fn)

    def restore(self) -> None:
        vaells_module.infer_jointly = self.infer


class PhaseDriver(pl.Callback):
    """Holds the module's batch counter in the planned phase for each batch, and times each batch."""

    def __init__(self, model, plan: list[tuple[str, int, bool]], timers: Timers) -> None:
        self.model, self.plan, self.timers = model, plan, timers
        self.warmup_steps = model.schedule.warmup_steps
        self.samples: dict[tuple[str, bool], list[dict[str, float]]] = defaultdict(list)
        self.index = 0  # position in the plan, across epochs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        name, counter, reference = self.plan[self.index]
        schedule = self.model.schedule
        schedule.warmup_steps = counter + 1 if name == "ae" else self.warmup_steps  # "ae": the warm-up step
        self.model.batch_counter = counter
        self.timers.use_solver(reference_jointly if reference else self.timers.infer)
        self.timers.parts.clear()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = time.perf_counter() - self.start
        name, _, reference = self.plan[self.index]
        parts = dict(self.timers.parts)
        parts["total"] = total
        self.samples[(name, reference)].append(parts)
        self.index += 1
        trainer.should_stop = self.index == len(self.plan)


def ae_loss_with_anchors(model):
    """The warm-up loss plus the anchors' encodings in the graph (weight 0): a plain autoencoder step that also
    encodes, and back-propagates through, the batch's anchors as a VAELLS step does."""
    warmup_loss = model._warmup_loss

    def loss(batch):
        return warmup_loss(batch) + 0.0 * model.batch_anchors(batch).sum()
    return loss


def vaells_phases(model) -> list[tuple[str, int, float]]:
    """(name, batch counter in that phase, weight in the schedule) for each VAELLS phase."""
    s = model.schedule
    first = s.warmup_steps + 1  # +1: the counter at warmup_steps also cuts the learning rate once
    if s.alternate:
        total = s.net_steps + s.psi_steps
        return [(NET, first, s.net_steps / total), (PSI, s.warmup_steps + s.net_steps, s.psi_steps / total)]
    return [(JOINT, first, 1.0)]


def mean_parts(samples: list[dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds per part: a mean, not a median, so that the steps the logger writes (one in
    ``log_every_n_steps``, as configured) weigh in as they do in training."""
    keys = {k for s in samples for k in s}
    return {k: 1e3 * statistics.fmean(s.get(k, 0.0) for s in samples) for k in keys}


def experiment_config(name: str, args, root_dir: str) -> DictConfig:
    """The experiment's training config as the benchmark runs it: no callbacks, no logger, no evaluation."""
    overrides = [f"experiment={name}", f"seed={args.seed}", "~callbacks", "~logger", "evaluate=false",
                 f"trainer.default_root_dir={root_dir}"]
    if name in MNIST:
        overrides += [f"data.root={args.root}", "data.download=false"]
    overrides += args.overrides
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    # ~callbacks drops the group's defaults, but an experiment may still add a callback of its own (rotated MNIST's
    # warm-up check, whose settings interpolate the dropped monitor's): no callback runs here, so none is kept.
    with open_dict(cfg):
        cfg.pop("callbacks", None)
    return cfg


def bench_experiment(name: str, args, state: dict | None = None, run_overrides: tuple[str, ...] = ()) -> dict:
    """``state``: a trained run's state dict to time instead of the initialisation, and ``run_overrides`` the
    model, backbone and data settings it trained with."""
    root_dir = tempfile.mkdtemp()
    cfg = experiment_config(name, argparse.Namespace(**{**vars(args), "overrides": [*run_overrides, *args.overrides]}),
                            root_dir)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    if state is not None:
        model.load_state_dict(state)  # strict: a run trained with other shapes stops here
    phases = vaells_phases(model)
    fill_s = fill_cache(model, dm, phases[0][1]) if getattr(model, "warm_starts", False) else None
    warm, steps, ref_steps = args.warmup, args.steps, args.reference_steps
    plan: list[tuple[str, int, bool]] = []
    for phase, counter in [("ae", 0), *[(p, c) for p, c, _ in phases]]:
        plan += [(phase, counter, False)] * (warm + steps)
    if ref_steps:
        for phase, counter, _ in phases:
            plan += [(phase, counter, True)] * ref_steps
    model._warmup_loss = ae_loss_with_anchors(model)
    timers = Timers(model)
    driver = PhaseDriver(model, plan, timers)
    trainer = pl.Trainer(
        max_steps=-1, max_epochs=10**6, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[driver], num_sanity_val_steps=0,
        limit_val_batches=0, accelerator=args.accelerator, devices=1, default_root_dir=root_dir,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
    )
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        timers.restore()
    out: dict = {"phases": {}}
    for phase, _, _ in [("ae", 0, 0.0), *phases]:
        timed = mean_parts(driver.samples[(phase, False)][warm:])
        if phase != "ae":
            timed["forward"] = timed.pop("forward_total", 0.0) - timed.get("inference", 0.0)
            timed["other"] = timed["total"] - sum(timed.get(k, 0.0) for k in PARTS)
        if ref_steps and phase != "ae":
            timed["reference_total"] = mean_parts(driver.samples[(phase, True)])["total"]
        out["phases"][phase] = {k: round(v, 3) for k, v in timed.items()}
    out["ae_step_ms"] = out["phases"]["ae"]["total"]
    out["step_ms"] = sum(w * out["phases"][p]["total"] for p, _, w in phases)
    out["overhead"] = out["step_ms"] / out["ae_step_ms"]
    if ref_steps:
        out["reference_step_ms"] = sum(w * out["phases"][p]["reference_total"] for p, _, w in phases)
        out["speedup"] = out["reference_step_ms"] / out["step_ms"]
    out["batch"] = int(cfg.data.batch_size)
    if fill_s is not None:
        out["warm_starts"], out["cache_fill_s"] = True, round(fill_s, 1)
    out["latent_dim"], out["num_operators"] = model.transport.latent_dim, model.transport.num_operators
    return out


def fill_cache(model, dm, counter: int) -> float:
    """One pass of the model's forward over the training data, so that the timed steps start warm, as every step
    from the second VAELLS epoch on does (``model.warm_starts``); returns its seconds."""
    start = time.perf_counter()
    dm.setup("fit")
    model.train()
    model.batch_counter = counter
    weights = model.schedule.weights(model.weights, model.schedule.phase(counter), counter)
    with torch.no_grad():
        for batch in dm.train_dataloader():
            model.forward_terms(batch, weights)
    return time.perf_counter() - start


def trained_settings(overrides: dict) -> tuple[str, ...]:
    """The overrides of a run's command line that shape its model: model, backbone and data keys (not where its
    data lives), and the Table 2 row."""
    keep = ("model.", "backbone.", "data.", "+table2_row")
    return tuple(f"{k}={v}" for k, v in overrides.items()
                 if k.startswith(keep) and k not in ("data.root", "data.download"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--root", default=None, help="MNIST root (a folder holding MNIST/raw); MNIST is skipped "
                        "without it")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase (their mean is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each phase's timed ones")
    parser.add_argument("--reference-steps", type=int, default=1,
                        help="steps per phase with the reference solver (0: skip; natural MNIST: ~1 min each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every experiment, e.g. "
                        "model.prior_solver.screen_after=null to time a setting against the default")
    parser.add_argument("--checkpoint", nargs="+", default=None,
                        help="trained VAELLS runs (folders or .ckpt): also time them, with their trained state")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.reference_steps < 0:
        parser.error("need --steps >= 1, --warmup >= 0 and --reference-steps >= 0")
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*You are trying to `self.log\\(\\)`.*")

    rows = {}
    header = (f"{'experiment':<20}{'phase':<8}{'total ms':>10}{'forward':>10}{'infer':>10}{'backward':>10}"
              f"{'optim':>10}{'other':>10}{'ref ms':>11}")
    print(header)
    print("-" * len(header))
    jobs = [(name, name, None, ()) for name in args.experiments]
    if args.checkpoint:
        import vaells

        for path in args.checkpoint:
            run = vaells.load(path)
            name = str(run.config.run.experiment)
            if name not in EXPERIMENTS or not run.has_operators:
                parser.error(f"--checkpoint {path}: a {run.config.run.model} run of {name}; this benchmark times "
                             f"VAELLS on {', '.join(EXPERIMENTS)}")
            jobs.append((f"{name} (trained)", name, run.model.state_dict(), trained_settings(run.config.run.overrides)))
    for label, name, state, run_overrides in jobs:
        if name in MNIST and args.root is None:
            print(f"{label:<20}skipped: pass --root (a folder holding MNIST/raw)")
            continue
        row = bench_experiment(name, args, state, run_overrides)
        rows[label] = row
        for phase, t in row["phases"].items():
            cells = [t.get(k) for k in ("total", "forward", "inference", "backward", "optimizer", "other")]
            print(f"{label[:19]:<20}{phase:<8}" + "".join(f"{'-' if v is None else f'{v:.1f}':>10}" for v in cells)
                  + f"{t.get('reference_total', float('nan')):>11.0f}", flush=True)
        print(f"{'':<20}step {row['step_ms']:.1f} ms, ae {row['ae_step_ms']:.1f} ms, overhead "
              f"{row['overhead']:.2f}" + (f", speedup {row['speedup']:.0f}" if "speedup" in row else ""), flush=True)
    device = torch.cuda.get_device_name() if args.accelerator in ("gpu", "cuda") else "cpu"
    summary = {"settings": rows, "device": device, "threads": torch.get_num_threads()}
    assert all(np.isfinite(r["step_ms"]) for r in rows.values())
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
