"""Table 2 as one sweep, and the launchers that run sweeps in parallel or on a cluster: the sweep composes into
exactly the paper's five (M, N_a) jobs, the SLURM and joblib launchers compose, and submitit's local launcher
runs a job for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

# End-to-end: Hydra multiruns and the launchers.
pytestmark = pytest.mark.e2e

TABLE2 = [(2, 8), (4, 8), (8, 8), (4, 12), (4, 16)]  # (M, N_a), the paper's rows


def _compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


def _sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``python train.py -m *overrides``: the command line and the composed
    config's ``hydra.sweeper.params``, as the sweeper itself parses and multiplies them."""
    params = _compose(overrides, hydra_config=True).hydra.sweeper.params or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + overrides
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return batch


def test_table2_sweeps_exactly_the_five_rows_of_the_paper(tmp_path: Path) -> None:
    jobs = _sweep_jobs(["experiment=table2"])
    assert len(jobs) == 5
    pairs = []
    for job in jobs:
        cfg = _compose(job)
        pairs.append((cfg.model.num_operators, cfg.data.anchors_per_class))
        assert cfg.model.transport.num_operators == cfg.model.num_operators
        # everything else is natural MNIST's, VAELLS's own settings included
        natural = _compose(["experiment=natural_mnist", f"model.num_operators={pairs[-1][0]}",
                            f"data.anchors_per_class={pairs[-1][1]}"])
        assert cfg.model == natural.model and cfg.data == natural.data and cfg.trainer == natural.trainer
        assert (cfg.ll_points, cfg.ll_samples) == (1000, 100) and cfg.evaluate
    assert pairs == TABLE2
    # a reduced sweep is the same five jobs
    assert len(_sweep_jobs(["experiment=table2", "trainer.max_epochs=2"])) == 5


def test_the_slurm_and_joblib_launchers_compose() -> None:
    slurm = _compose(["experiment=table2", "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                      "hydra.launcher.gpus_per_task=1"], hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (slurm.partition, slurm.gpus_per_task, slurm.cpus_per_task, slurm.timeout_min) == ("cpu", 1, 2, 240)
    joblib = _compose(["experiment=table2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=5"],
                      hydra_config=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 5
    assert _compose(["hydra/launcher=joblib"]).threads == 1  # one torch thread per job


def test_submitit_local_runs_a_job(tmp_path: Path) -> None:
    """A real multirun through hydra-submitit-launcher's local executor: the job runs in its own process."""
    out = tmp_path / "multirun"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=swiss_roll", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=5", "++trainer.fast_dev_run=true", "~callbacks.latent_figures",
         f"hydra.sweep.dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "0" / ".hydra" / "config.yaml").is_file()
    logs = list((out / ".submitit").rglob("*_log.out"))
    assert logs and any("Run directory: " + str(out / "0") in p.read_text() for p in logs)
