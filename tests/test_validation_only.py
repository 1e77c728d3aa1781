"""Every choice made during training reads validation data only: the monitored checkpoint metrics, the step decay's
trigger and the warm-up check's digits. The test split is scored once, at the end (``evaluate_model``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from vaells.training.monitors import DecayWhenLearned, OperatorMonitor, WarmupFlowCheck, fixed_validation_digits

CONF = Path(__file__).resolve().parents[1] / "conf"


def _monitors(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["monitor"]] if isinstance(node.get("monitor"), str) else []
        return own + [m for v in node.values() for m in _monitors(v)]
    if isinstance(node, list):
        return [m for v in node for m in _monitors(v)]
    return []


def test_every_monitored_metric_in_conf_is_a_validation_metric() -> None:
    monitors = [m for path in CONF.rglob("*.yaml") for m in _monitors(yaml.safe_load(path.read_text()))]
    assert monitors, "no monitor found: the test would pass vacuously"
    assert all(m.startswith("val/") for m in monitors), monitors
    assert DecayWhenLearned().monitor.startswith("val/")


def test_the_monitors_and_the_warmup_check_draw_validation_digits() -> None:
    digit = {"val": torch.ones(1, 32, 32), "test": torch.zeros(1, 32, 32)}
    dm = SimpleNamespace(rotates_digits=True, val_set=[{"digit": digit["val"]}] * 7,
                         test_set=[{"digit": digit["test"]}] * 7)
    drawn = fixed_validation_digits(dm, 5, seed=0)
    assert drawn.shape == (5, 1, 32, 32) and bool((drawn == 1).all())
    # both callbacks take their digits from this one function, with their own count and seed
    for callback in (OperatorMonitor(num_digits=5), WarmupFlowCheck(num_digits=5)):
        assert (callback.num_digits, callback.seed) == (5, 0)
