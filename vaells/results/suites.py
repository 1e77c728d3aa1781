"""A results suite (``conf/suite/<name>.yaml``): groups of jobs, each group the product of its keys' values.

A job is one ``train.py`` run, named by its values in the group's key order (``swiss_roll/vaells/seed0``): its
result lives at ``results/<name>.json`` whatever suite ran it, so suites share jobs and a suite resumes by
skipping the jobs whose result exists (docs/running.md, "Results").
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SUITE_DIR = ROOT / "conf" / "suite"
# The code that computes results, as a git pathspec: a result is stale once these differ from its commit. This
# package, the suites and Hydra's help and launcher files only run and show results.
CODE_PATHS = ("vaells", "conf", ":(exclude)vaells/results", ":(exclude)conf/suite", ":(exclude)conf/hydra")


@dataclass(frozen=True)
class Job:
    """One run of a suite: its name (the result's path below ``results/``, without ``.json``) and overrides."""

    name: str
    overrides: tuple[str, ...]

    def result_path(self, results_dir: Path) -> Path:
        return Path(results_dir) / f"{self.name}.json"


def _part(key: str, value) -> str:
    # seed=0 reads seed0 in a path; experiment, model and config-group choices are names already.
    return f"{key}{value}" if key == "seed" else str(value)


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(suite: str) -> list[Job]:
    """Every job of ``suite``: a name in ``conf/suite/`` or a path to a suite file of the same form."""
    path = Path(suite)
    if not path.suffix:
        path = SUITE_DIR / f"{suite}.yaml"
    if not path.is_file():
        raise ValueError(f"suite {suite!r}: no file {path}; the suites are {', '.join(suite_names())} "
                         "(conf/suite/), or give a path to a suite file")
    groups = OmegaConf.to_container(OmegaConf.load(path)).get("groups")
    if not groups:
        raise ValueError(f"suite file {path}: 'groups' is missing or empty; each group maps keys to lists of values")
    jobs: dict[str, Job] = {}
    for index, group in enumerate(groups):
        fixed = [str(o) for o in group.pop("overrides", [])]
        variant = group.pop("variant", None)  # a name for what the fixed overrides change, after the first part
        if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant):
            raise ValueError(f"suite file {path}, group {index}: variant must be a name without '/', got {variant!r}")
        for key, values in group.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"suite file {path}, group {index}: {key} must be a non-empty list, got {values!r}")
        for combo in itertools.product(*group.values()):
            pairs = list(zip(group, combo, strict=True))
            parts = [_part(k.lstrip("+~"), v) for k, v in pairs]
            name = "/".join(parts[:1] + ([variant] if variant else []) + parts[1:])
            jobs[name] = Job(name, tuple(f"{k}={v}" for k, v in pairs) + tuple(fixed))
    return list(jobs.values())


def pending_jobs(jobs: list[Job], results_dir: Path) -> list[Job]:
    return [job for job in jobs if not job.result_path(results_dir).is_file()]


def job_for_overrides(jobs: list[Job], overrides: list[str]) -> Job:
    """The suite's job that a run's task overrides start with (a suite run may add shared overrides after them);
    of several, the one with the most (a variant's job extends its plain job's overrides)."""
    matching = [job for job in jobs if tuple(overrides[: len(job.overrides)]) == tuple(map(_expanded, job.overrides))]
    if not matching:
        raise LookupError(f"no job of the suite has the overrides {overrides}")
    return max(matching, key=lambda job: len(job.overrides))


# An environment variable in an override, as Hydra's parser reads it (and records it resolved in the run).
ENV_VARIABLE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _expanded(override: str) -> str:
    return ENV_VARIABLE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), override)


def missing_environment(jobs: list[Job]) -> list[str]:
    """The environment variables that the jobs' overrides read (``${oc.env:NAME}``) and that are not set."""
    names = {m for job in jobs for o in job.overrides for m in ENV_VARIABLE.findall(o)}
    return sorted(n for n in names if n not in os.environ)
