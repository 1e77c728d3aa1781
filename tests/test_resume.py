"""Never lose work: exact resume after SIGKILL and SIGTERM, resuming from the run alone, skipped non-finite steps,
figure failures, and same-seed determinism (docs/running.md, "Resume and interruption").

The kill tests run ``train.py`` in subprocesses (a killed process cannot be the test's own); the fast versions train
the swiss roll (the experiment that alternates network and operator phases) on 240 points, 8 batches an epoch, with
3-batch phases, so that a kill lands in either phase, mid-epoch, after a validation."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaells.models.module import nonfinite_tensors

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
BATCHES_PER_EPOCH = 8
EPOCHS = 2
SHORT = [
    "data.num_train=240", "model.schedule.net_steps=3", "model.schedule.psi_steps=3", f"trainer.max_epochs={EPOCHS}",
    "trainer.check_val_every_n_epoch=1", "evaluate=false", "~callbacks.latent_figures",
    "callbacks.progress_bar.log_every_n_batches=1",
]


def train(*args: str, wait: bool = True, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if wait:
        proc.out, proc.err = proc.communicate(timeout=600)
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def max_param_diff(a: dict, b: dict) -> float:
    """max |a - b| over the parameters and buffers of two checkpoints (0.0: equal)."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    return max(float((a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max())
               for k in a["state_dict"] if a["state_dict"][k].numel())


def assert_same_training_state(a: dict, b: dict) -> None:
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), (key, max_param_diff(a, b))
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pid, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][pid][name])), (pid, name)
        assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    # batch counter, phase, Psi step size, accept counts, and the warm starts' coefficient cache where there is one
    assert _equal(a["vaells"], b["vaells"]), (a["vaells"].keys(), b["vaells"].keys())


def _equal(a, b) -> bool:
    """==, with tensors compared exactly, inside dicts and lists."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference")
    proc = train(*SHORT, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.err[-3000:]
    return load(run / "checkpoints" / "last.ckpt")


@pytest.mark.e2e
def test_sigkill_mid_epoch_then_resume_is_exact(reference, tmp_path) -> None:
    # A batch in either epoch and either phase, never an epoch's first: a checkpoint written within the epoch.
    batch = random.choice([b for b in range(1, EPOCHS * BATCHES_PER_EPOCH) if b % BATCHES_PER_EPOCH])
    run = tmp_path / "run"
    proc = train(*SHORT, "callbacks.interval_checkpoint.minutes=0", f"hydra.run.dir={run}",
                 "+callbacks.kill._target_=faults.KillAt", env={"KILL_AT_BATCH": str(batch)})
    assert proc.returncode == -signal.SIGKILL, proc.err[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    killed = load(ckpt)
    assert killed["vaells"]["batch_counter"] == batch  # written after batch - 1, the kill was in batch
    assert killed["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": batch // BATCHES_PER_EPOCH, "batches": batch % BATCHES_PER_EPOCH}]
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written file left beside it
    proc = train(f"ckpt_path={ckpt}")  # the run alone: no experiment, no overrides
    assert proc.returncode == 0, proc.err[-3000:]
    resumed = load(ckpt)
    assert max_param_diff(reference, resumed) == 0.0, f"killed at batch {batch}"
    assert_same_training_state(reference, resumed)


@pytest.mark.e2e
def test_warm_starts_resume_exactly_from_a_kill_in_the_second_epoch(tmp_path) -> None:
    """The coefficient cache is training state: the resumed run starts each sample from the c_hat it had."""
    warm = [*SHORT, "model.warm_starts=true", "model.prior_solver.warm_iter=3"]
    proc = train(*warm, f"hydra.run.dir={tmp_path / 'reference'}")
    assert proc.returncode == 0, proc.err[-3000:]
    reference = load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert (reference["vaells"]["coefficient_cache"][0]["step"] >= 0).all()
    batch = BATCHES_PER_EPOCH + random.randint(1, BATCHES_PER_EPOCH - 1)  # the cache is in use by then
    run = tmp_path / "run"
    proc = train(*warm, "callbacks.interval_checkpoint.minutes=0", f"hydra.run.dir={run}",
                 "+callbacks.kill._target_=faults.KillAt", env={"KILL_AT_BATCH": str(batch)})
    assert proc.returncode == -signal.SIGKILL, proc.err[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = train(f"ckpt_path={ckpt}")
    assert proc.returncode == 0, proc.err[-3000:]
    assert_same_training_state(reference, load(ckpt))


@pytest.mark.e2e
def test_sigterm_checkpoints_logs_exits_nonzero_and_resumes_exactly(reference, tmp_path) -> None:
    run = tmp_path / "run"
    log_file = run / "train.log"
    proc = train(*SHORT, f"hydra.run.dir={run}", wait=False)  # the default interval: no checkpoint before
    at = random.randint(2, BATCHES_PER_EPOCH - 2)
    deadline = time.monotonic() + 300
    while f"batch {at}/{BATCHES_PER_EPOCH}" not in (log_file.read_text() if log_file.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == 143, err[-3000:]
    # Written at the stop; when the stop falls at the epoch's end, the epoch's own save may land in the same instant.
    assert ckpt.is_file() and -1 <= ckpt.stat().st_mtime - sent < 30
    text = log_file.read_text()
    assert "interrupted by SIGTERM at batch" in text and f"python train.py ckpt_path={ckpt}" in text
    # Before the run's end; on a loaded machine a batch or two may pass between the log line and the signal, so
    # the stop can fall at the epoch's end.
    assert 0 < load(ckpt)["vaells"]["batch_counter"] < EPOCHS * BATCHES_PER_EPOCH
    proc = train(f"ckpt_path={ckpt}")
    assert proc.returncode == 0, proc.err[-3000:]
    assert_same_training_state(reference, load(ckpt))
    assert "resuming from" in log_file.read_text()  # the same run's log, continued


@pytest.mark.e2e
def test_resume_needs_only_the_run_and_refuses_changes(cli, tmp_path, monkeypatch) -> None:
    """Circles with M = 4 against the swiss-roll defaults (M = 1): the config comes from the checkpoint."""
    import train

    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=concentric_circles", "model.num_operators=4",
                       "model.prior_solver.max_coeff=10.0", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "evaluate=false",
                       "~callbacks.latent_figures", f"hydra.run.dir={run}")
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = cli(train.main, f"ckpt_path={ckpt}", "model.num_operators=2")
    assert code != 0 and "model.num_operators=2 would change the run" in err and "trainer.max_epochs" in err
    assert not (run / "FAILED").exists() and not list((run / ".hydra").glob("resumed_*"))
    monkeypatch.chdir(run)  # inside the run folder, ckpt_path=last
    code, _, err = cli(train.main, "ckpt_path=last", "trainer.max_epochs=2")
    assert code == 0, err
    state = load(ckpt)
    assert state["epoch"] == 1 and state["vaells"]["batch_counter"] == 4
    assert state["state_dict"]["transport.psi"].shape[0] == 4
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the same TensorBoard folder
    assert len(list((run / ".hydra").glob("resumed_*"))) == 1 and (run / ".hydra" / "config.yaml").is_file()


def _nan_at(monkeypatch, batches) -> None:
    """Make the VAELLS loss (and its recon term) NaN at the given batches (or every batch: None)."""
    from vaells.models.vaells import VAELLSModule

    original = VAELLSModule.forward_terms

    def forward_terms(self, batch, weights):
        out = original(self, batch, weights)
        if self.training and (batches is None or self.batch_counter in batches):
            out.terms = {**out.terms, "recon": out.terms["recon"] * float("nan")}
            out.terms["loss"] = out.terms["loss"] + out.terms["recon"]
        return out

    monkeypatch.setattr(VAELLSModule, "forward_terms", forward_terms)


FAULT_RUN = ["data.num_train=150", "trainer.max_epochs=2", "evaluate=false", "~callbacks.latent_figures",
             "callbacks.interval_checkpoint.minutes=0"]


def test_one_nan_loss_is_skipped_and_counted(cli, tmp_path, monkeypatch) -> None:
    import train

    _nan_at(monkeypatch, {3})
    run = tmp_path / "run"
    code, _, err = cli(train.main, *FAULT_RUN, f"hydra.run.dir={run}")
    assert code == 0, err
    state = load(run / "checkpoints" / "last.ckpt")
    assert state["faults"] == {"skipped_steps": 1, "consecutive_skips": 0}
    assert state["vaells"]["batch_counter"] == 10
    text = (run / "train.log").read_text()
    assert "batch 3: step skipped" in text and "['recon', 'loss']" in text and "train/skipped_steps=1" in text
    for path in (run / "checkpoints").glob("*.ckpt"):
        assert nonfinite_tensors({"s": load(path)["state_dict"], "o": load(path)["optimizer_states"]}) == []


def test_nan_on_every_batch_stops_with_the_terms_and_the_resume_command(cli, tmp_path, monkeypatch) -> None:
    import train

    _nan_at(monkeypatch, None)
    run = tmp_path / "run"
    code, _, err = cli(train.main, *FAULT_RUN, "max_consecutive_skips=3", f"hydra.run.dir={run}")
    assert code == 1
    assert "3 steps in a row were skipped" in err and "['recon', 'loss']" in err
    assert f"python train.py ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in err
    assert "model.psi_rule.lr" in err and "psi_lr," not in err
    assert "training stopped at batch 2" in (run / "train.log").read_text()
    for path in (run / "checkpoints").glob("*.ckpt"):  # written after the skipped batches: the start, unchanged
        assert nonfinite_tensors({"s": load(path)["state_dict"], "o": load(path)["optimizer_states"]}) == []


def test_a_nan_gradient_skips_the_step_and_leaves_psi_alone(cli, tmp_path, monkeypatch) -> None:
    """A finite loss whose Psi gradient is NaN (batch 25: an operator phase of the swiss roll's 20/20)."""
    import train
    from vaells.models.vaells import VAELLSModule

    seen = {}
    original = VAELLSModule._skip_nonfinite

    def skip_nonfinite(self, terms, loss):
        if self.batch_counter == 25:
            psi = self.transport.psi
            loss = loss + torch.sqrt(psi - psi.detach()).sum()  # adds 0; d sqrt(x) / dx at 0 is inf
            seen["psi"] = psi.detach().clone()
        return original(self, terms, loss)

    monkeypatch.setattr(VAELLSModule, "_skip_nonfinite", skip_nonfinite)
    monkeypatch.syspath_prepend(str(HELPERS))
    run = tmp_path / "run"
    code, _, err = cli(train.main, "data.num_train=900", "trainer.max_epochs=1", "evaluate=false",
                       "~callbacks.latent_figures", f"hydra.run.dir={run}",
                       "+callbacks.trace._target_=ddp_trace.ParameterTrace", f"+callbacks.trace.path={run}/trace")
    assert code == 0, err
    assert "batch 25: step skipped" in (run / "train.log").read_text()
    assert "non-finite gradient(s) of ['transport.psi']" in (run / "train.log").read_text()
    rows = {r["batch"]: r for r in torch.load(run / "trace" / "rank0.pt", weights_only=False)}
    assert torch.equal(rows[26]["psi"], seen["psi"]) and torch.equal(rows[25]["psi"], seen["psi"])  # unchanged
    assert rows[26]["accepted"] == rows[25]["accepted"] and rows[26]["psi_lr"] == rows[25]["psi_lr"]
    assert not torch.equal(rows[27]["psi"], seen["psi"])  # the next operator batch steps again


def test_a_failing_figure_is_a_warning(cli, tmp_path, monkeypatch) -> None:
    import train
    from vaells.training.figures import LatentFigures

    def broken(self, trainer, pl_module, dataloader=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LatentFigures, "build_figures", broken)
    run = tmp_path / "run"
    code, _, err = cli(train.main, "data.num_train=60", "trainer.max_epochs=1", "evaluate=false",
                       f"hydra.run.dir={run}")
    assert code == 0, err
    text = (run / "train.log").read_text()
    assert "LatentFigures: the figures after epoch 1 failed (OSError" in text
    assert "LatentFigures: saving the figures" in text and (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.e2e
def test_same_seed_same_metrics(cli, tmp_path) -> None:
    """metrics.json holds no timing fields (the fit's time is only in train.log): compared whole."""
    import train

    metrics = []
    for name in ("a", "b"):
        code, _, err = cli(train.main, "experiment=concentric_circles", "trainer.max_epochs=2",
                           "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "ll_points=10",
                           "ll_samples=3", "~callbacks.latent_figures", f"hydra.run.dir={tmp_path / name}")
        assert code == 0, err
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert not [k for k in metrics[0] if "time" in k or k.endswith("_s")]
    assert metrics[0] == metrics[1] and "knn_accuracy" in metrics[0]


def test_a_checkpoint_with_a_nan_is_refused() -> None:
    from vaells.models.module import ModelBase

    model = ModelBase()
    with pytest.raises(FloatingPointError, match="non-finite values in"):
        model.on_save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "optimizer_states": []})


@pytest.mark.slow
def test_sigkill_at_a_random_moment_of_a_longer_run_then_resume_is_exact(tmp_path) -> None:
    """The swiss roll's own 20/20 alternation over 4 epochs (136 batches), last.ckpt after every batch, and a
    SIGKILL from outside at a random moment: possibly during a checkpoint write, which must leave a loadable one."""
    common = ["trainer.max_epochs=4", "evaluate=false", "~callbacks.latent_figures",
              "callbacks.interval_checkpoint.minutes=0"]
    proc = train(*common, f"hydra.run.dir={tmp_path / 'reference'}")
    assert proc.returncode == 0, proc.err[-3000:]
    fit = re.search(r"fit took (\d+(?:\.\d+)?) s", (tmp_path / "reference" / "train.log").read_text())
    duration = float(fit.group(1))
    reference = load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = train(*common, f"hydra.run.dir={run}", wait=False)
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    # Within the run: a finished run is not resumed (it is refused), so a kill after its end would test nothing.
    delay = random.uniform(0.0, 0.7 * duration)
    time.sleep(delay)
    if proc.poll() is not None:  # it finished first after all: nothing to resume, but it must have trained alike
        assert proc.returncode == 0, proc.communicate()[1][-3000:]
        assert_same_training_state(reference, load(ckpt))
        return
    proc.kill()
    proc.communicate()
    killed = load(ckpt)["vaells"]
    proc = train(f"ckpt_path={ckpt}")
    assert proc.returncode == 0, proc.err[-3000:]
    resumed = load(ckpt)
    print(f"killed {delay:.2f} s after the first checkpoint, resumed at {killed}; max |param diff| "
          f"{max_param_diff(reference, resumed)}")
    assert_same_training_state(reference, resumed)


def test_a_baseline_skips_a_nan_loss(cli, tmp_path, monkeypatch) -> None:
    """Automatic optimization (the Gaussian VAE): a NaN loss skips backward and step (training_step returns None)."""
    import train
    from vaells.models.variational import VariationalModel

    original = VariationalModel.loss_terms

    def loss_terms(self, x, kl_weight=1.0):
        terms, x_hat = original(self, x, kl_weight)
        if self.training and self.batch_counter == 2:
            terms = {**terms, "kl": terms["kl"] * float("nan")}
            terms["loss"] = terms["recon"] + terms["kl"]
        return terms, x_hat

    monkeypatch.setattr(VariationalModel, "loss_terms", loss_terms)
    run = tmp_path / "run"
    code, _, err = cli(train.main, "model=vae", *FAULT_RUN, f"hydra.run.dir={run}")
    assert code == 0, err
    state = load(run / "checkpoints" / "last.ckpt")
    assert state["faults"]["skipped_steps"] == 1 and state["batch_counter"] == 10
    assert nonfinite_tensors({"s": state["state_dict"], "o": state["optimizer_states"]}) == []
