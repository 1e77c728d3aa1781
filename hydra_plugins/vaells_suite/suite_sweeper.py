"""Hydra's basic sweeper over a results suite's pending jobs instead of a grid of overrides (``hydra/sweeper=suite``).

Hydra finds sweepers only below the ``hydra_plugins`` package, so this one lives here; the suites themselves and the
results are ``vaells.results``'s. The jobs go to whichever launcher the run names (basic, joblib, submitit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

log = logging.getLogger(__name__)


class SuiteSweeper(BasicSweeper):
    """Launches the jobs of ``suite`` (``conf/suite/``) that have no result in ``results_dir``. Each job gets its
    own overrides, then the ``shared`` ones that apply to it, then the command line's own (which every job's config,
    and the primary one, must accept)."""

    def __init__(self, suite: str, results_dir: str = "results", shared: list[str] | None = None,
                 max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        # params: an experiment's own sweep (experiment=table2's rows); a suite names its jobs itself.
        super().__init__(max_batch_size=max_batch_size, params=None)
        self.suite = suite
        self.results_dir = Path(results_dir)
        self.shared = list(shared or [])

    def shared_for(self, job_overrides: list[str]) -> list[str]:
        """The shared overrides that apply to one job: those whose key its config has (``data.root`` reaches the
        MNIST jobs only), and every ``+key`` addition."""
        from omegaconf import OmegaConf

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        config = self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                    sweep_overrides=job_overrides)
        keep, absent = [], object()  # a sentinel: a key whose value is null is still a key of the config
        for override in parser.parse_overrides(self.shared):
            key = override.key_or_group
            if override.is_add() or OmegaConf.select(config, key, default=absent) is not absent or \
                    key in config.hydra.runtime.choices:
                keep.append(override.input_line)
        return keep

    def sweep(self, arguments: list[str]) -> Any:
        from vaells.results.suites import load_suite, pending_jobs

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        swept = [o.input_line for o in parser.parse_overrides(list(arguments) + self.shared)
                 if o.is_sweep_override()]
        if swept:
            raise HydraException(f"a suite names its own jobs; these overrides sweep: {swept}. Give one value each, "
                                 "or add a group to the suite file (conf/suite/)")
        jobs = load_suite(self.suite)
        pending = pending_jobs(jobs, self.results_dir)
        log.info("suite %s: %d of %d jobs to run (%d have results in %s)", self.suite, len(pending), len(jobs),
                 len(jobs) - len(pending), self.results_dir)
        batch = []
        for job in pending:
            shared = self.shared_for(list(job.overrides)) if self.shared else []
            skipped = sorted(set(self.shared) - set(shared))
            if skipped:
                log.info("%s: %s not applied (not keys of its config)", job.name, " ".join(skipped))
            batch.append(list(job.overrides) + shared + list(arguments))
        size = self.max_batch_size or max(len(batch), 1)
        self.overrides = [batch[i : i + size] for i in range(0, len(batch), size)]
        return self._launch_all()

    def _launch_all(self) -> list:
        from omegaconf import OmegaConf

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first, failed = [], 0, []
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)  # every job composes before any trains
            results = self.launcher.launch(batch, initial_job_idx=first)
            first += len(batch)
            returns.append(results)
            failed += [" ".join(overrides) for overrides, r in zip(batch, results, strict=True)
                       if r.status.name != "COMPLETED"]
        if failed:  # after every job ran: one failure does not stop the others
            raise HydraException(f"{len(failed)} job(s) failed (their logs are in {sweep_dir}):\n  " +
                                 "\n  ".join(failed))
        return returns
