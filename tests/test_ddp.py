"""trainer=ddp: two CPU processes (gloo) train the circles experiment with identical Psi, anchors and networks on both
ranks after every step; figures come from rank zero alone; and the full run scores like the single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
DDP = ["experiment=concentric_circles", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)


def traces(run: Path) -> tuple[list[dict], list[dict]]:
    return tuple(torch.load(run / "trace" / f"rank{r}.pt", weights_only=False) for r in (0, 1))


def assert_ranks_identical(run: Path) -> int:
    rank0, rank1 = traces(run)
    assert len(rank0) == len(rank1) > 0 and {r["world_size"] for r in rank0} == {2}
    for a, b in zip(rank0, rank1, strict=True):
        assert a["batch"] == b["batch"]
        for key in ("psi", "anchors", "encoder"):
            assert torch.equal(a[key], b[key]), (a["batch"], key)
        assert (a["psi_lr"], a["accepted"]) == (b["psi_lr"], b["accepted"])
    assert not torch.equal(rank0[-1]["psi"], rank0[0]["psi"])  # Psi did move
    return len(rank0)


@pytest.mark.e2e
def test_two_gloo_ranks_keep_psi_identical_after_every_step(tmp_path) -> None:
    run = tmp_path / "run"
    proc = train(*DDP, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                 "evaluate=false", "~callbacks.latent_figures", f"hydra.run.dir={run}",
                 "+callbacks.trace._target_=ddp_trace.ParameterTrace", f"+callbacks.trace.path={run}/trace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert assert_ranks_identical(run) == 6
    assert (run / "train.log").is_file() and (run / "train_ddp_process_1.log").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()


@pytest.mark.e2e
def test_warm_starts_keep_each_ranks_cache_in_the_checkpoint(tmp_path) -> None:
    """Each rank caches the samples it saw; the checkpoint holds both caches, in rank order, and a resumed run on
    two ranks takes its own back (docs/method.md §1.3)."""
    run = tmp_path / "run"
    common = [*DDP, "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "evaluate=false",
              "~callbacks.latent_figures", "model.warm_starts=true", "model.prior_solver.warm_iter=3"]
    proc = train(*common, "trainer.max_epochs=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    caches = torch.load(ckpt, weights_only=False)["vaells"]["coefficient_cache"]
    seen = [set((c["step"] >= 0).nonzero().flatten().tolist()) for c in caches]
    assert len(caches) == 2 and all(seen) and seen[0] != seen[1]
    proc = train(f"ckpt_path={ckpt}", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(torch.load(ckpt, weights_only=False)["vaells"]["coefficient_cache"]) == 2


def test_only_rank_zero_draws_figures(tmp_path) -> None:
    from vaells.training.figures import LatentFigures

    figures = LatentFigures(output_dir=tmp_path / "figures")
    trainer = SimpleNamespace(is_global_zero=False, sanity_checking=False, fast_dev_run=False, current_epoch=0)
    figures.on_validation_epoch_end(trainer, None)
    figures.on_fit_end(trainer, None)  # would fail on the missing module, were it drawing
    assert figures.num_logged == 0 and not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_ddp_circles_scores_like_one_process(tmp_path) -> None:
    """The whole circles experiment (50 epochs) on two gloo ranks and on one process: knn_accuracy within 0.02.
    Two ranks take half the steps of twice the batch."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    proc = train("experiment=concentric_circles", f"hydra.run.dir={single}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(*DDP, f"hydra.run.dir={ddp}", "+callbacks.trace._target_=ddp_trace.ParameterTrace",
                 f"+callbacks.trace.path={ddp}/trace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_ranks_identical(ddp)
    knn = [json.loads((run / "metrics.json").read_text())["knn_accuracy"] for run in (single, ddp)]
    print(f"knn_accuracy: single {knn[0]:.4f}, ddp {knn[1]:.4f}")
    assert abs(knn[0] - knn[1]) <= 0.02, knn


def test_srun_ranks_log_beside_rank_zero(tmp_path, monkeypatch) -> None:
    """Under srun every task has Hydra's job name: rank r > 0 moves its log to train_rank<r>.log."""
    import logging

    from vaells.app.runs import separate_rank_log

    handler = logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert separate_rank_log() == 1
        assert handler not in root.handlers
        logging.getLogger("vaells.test").warning("from rank 1")
        assert "from rank 1" in (tmp_path / "train_rank1.log").read_text()
        assert (tmp_path / "train.log").read_text() == ""
    finally:
        for h in list(root.handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == tmp_path:
                root.removeHandler(h)
                h.close()
