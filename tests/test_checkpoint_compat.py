"""A checkpoint written by an earlier layout of the package still loads and scores as it did.

``fixtures/swiss_roll_5b90a44`` was written by commit 5b90a44, before the package was grouped into app/ and
training/: ``python train.py experiment=swiss_roll seed=0 trainer.max_epochs=2 ll_points=0
backbone.encoder.hidden_dim=16 backbone.decoder.hidden_dim=16 data.num_train=200 data.num_test=100``, then
``python evaluate.py ckpt_path=<run>/checkpoints/last.ckpt`` of the same commit wrote its ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import vaells

FIXTURE = Path(__file__).parent / "fixtures" / "swiss_roll_5b90a44"
#: The metrics that do not depend on the log-likelihood's draws (the test scores fewer points, for speed) and
#: whose definition has not changed since (mse is now from the posterior's centre, VAELLS's objective is no longer
#: called elbo, and path_manifold_error counts whether a path arrives).
SCORED = ["num_test", "operator_norm", "operator_reading", "trustworthiness", "continuity",
          "prior_manifold_error", "prior_coverage_error", "linear_path_manifold_error"]


def _stored_targets(node: object) -> set[str]:
    if isinstance(node, dict):
        own = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return own.union(*(_stored_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_stored_targets(v) for v in node))
    return set()


def test_the_fixture_names_the_old_module_paths() -> None:
    checkpoint = torch.load(FIXTURE / "last.ckpt", map_location="cpu", weights_only=False)
    targets = _stored_targets(checkpoint["run_config"])
    assert {"vaells.checkpoints.IntervalCheckpoint", "vaells.runs.ValidateLastEpoch",
            "vaells.figures.callbacks.LatentFigures"} <= targets


def test_vaells_load_reads_a_checkpoint_of_the_old_layout() -> None:
    run = vaells.load(FIXTURE / "last.ckpt")
    checkpoint = torch.load(FIXTURE / "last.ckpt", map_location="cpu", weights_only=False)
    for name, value in run.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint["state_dict"][name], msg=name)
    assert run.input_shape == (20,) and run.latent_dim == 2 and run.has_operators
    assert run.encode(torch.zeros(3, 20)).shape == (3, 2)


@pytest.mark.e2e
def test_evaluate_scores_a_checkpoint_of_the_old_layout_as_the_old_code_did(tmp_path: Path, cli) -> None:
    import evaluate

    shutil.copy(FIXTURE / "last.ckpt", tmp_path / "last.ckpt")
    code, _, err = cli(evaluate.main, f"ckpt_path={tmp_path / 'last.ckpt'}", "ll_points=5", "ll_samples=2",
                       f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err
    new = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    old = json.loads((FIXTURE / "metrics.json").read_text())
    for key in SCORED:
        if isinstance(old[key], float):
            assert math.isclose(new[key], old[key], rel_tol=1e-9, abs_tol=1e-12), (key, new[key], old[key])
        else:
            assert new[key] == old[key], key
