"""A learning regression test: the default circles experiment, trained in full (under a minute), must learn its
operator, and the same run with the operators frozen at their initialisation must fail the same check.

What "learned" means here, with the controls of docs/method.md §7: the operator reads as a rotation or a spiral;
the transport paths arrive (median relative endpoint error <= 0.1); and their journey stays on the manifold better
than the linear paths' and than the same model's with Psi at its initialisation, each by a factor of 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from vaells.models.vaells import VAELLSModule

RUN = ["experiment=concentric_circles", "seed=0", "ll_points=0", "~callbacks.latent_figures"]


def learning_failures(metrics: dict) -> list[str]:
    """The criteria of the module's docstring that ``metrics`` (a run's metrics.json) misses."""
    failures = []
    if not set(metrics["operator_reading"]) <= {"rotation", "spiral"}:
        failures.append(f"operator_reading {metrics['operator_reading']}")
    if not metrics["path_endpoint_error"] <= 0.1:
        failures.append(f"path_endpoint_error {metrics['path_endpoint_error']:.3f} > 0.1")
    for control in ("linear_path_manifold_error", "path_manifold_error_init_psi"):
        if not metrics["path_manifold_error"] <= 0.5 * metrics[control]:
            failures.append(f"path_manifold_error {metrics['path_manifold_error']:.3f} > 0.5 x {control} "
                            f"{metrics[control]:.3f}")
    return failures


def _train(cli, run_dir: Path) -> dict:
    code, _, err = cli(train.main, *RUN, f"hydra.run.dir={run_dir}")
    assert code == 0, err
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.e2e
def test_the_circles_learn_their_rotation(cli, tmp_path: Path) -> None:
    metrics = _train(cli, tmp_path / "run")
    assert learning_failures(metrics) == []


@pytest.mark.e2e
def test_the_check_fails_when_the_operators_are_frozen(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(VAELLSModule, "_step_operators", lambda self, *args, **kwargs: None)
    metrics = _train(cli, tmp_path / "run")
    assert metrics["operator_drift"] == [0.0]
    assert learning_failures(metrics) != []
