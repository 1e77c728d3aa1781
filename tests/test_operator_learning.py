"""What the operators learned, and the pieces that make them learn: the spectrum reading, drift from the
stored random start, the bounded prior inference, the training-time rotation monitor, the matched-variation
search and the offline rotated small-digits set."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from vaells.data.mnist import RotatedSmallDigitsDataModule, rotate
from vaells.evaluation.common import pearson
from vaells.evaluation.operators import DILATION, MIXED, ROTATION, SPIRAL, operator_metrics, operator_reading
from vaells.evaluation.preservation import match_spread
from vaells.evaluation.summary import training_record
from vaells.inference import CoefficientSolver, infer_coefficients, infer_jointly
from vaells.training.monitors import OperatorMonitor
from vaells.transport import TransportOperator


def _rotation(omega: float, real: float = 0.0) -> Tensor:
    return torch.tensor([[real, -omega], [omega, real]], dtype=torch.float64)


# -- the reading -----------------------------------------------------------------------------------------
def test_reading_labels_rotation_dilation_and_spiral() -> None:
    assert operator_reading(_rotation(0.0335))[0] == ROTATION  # the release's circle operator
    assert operator_reading(torch.diag(torch.tensor([0.05, -0.03], dtype=torch.float64)))[0] == DILATION
    swiss = torch.tensor([[-1.5e-4, 0.0266], [-0.0269, -0.0050]], dtype=torch.float64)  # the release's swiss roll
    reading, lam = operator_reading(swiss)
    assert reading == SPIRAL
    assert torch.allclose(lam.real, torch.full((2,), -0.0026, dtype=torch.float64), atol=2e-4)
    # A rotation in one plane and an equally strong dilation in another: no single reading.
    block = torch.block_diag(_rotation(0.05), torch.diag(torch.tensor([0.05, -0.05], dtype=torch.float64)))
    assert operator_reading(block)[0] == MIXED
    # A small leftover of the random start beside a strong rotation does not change the reading.
    assert operator_reading(torch.block_diag(_rotation(0.1), torch.diag(torch.tensor([0.01, -0.01]))))[0] == ROTATION


def test_drift_is_measured_from_the_stored_start() -> None:
    op = TransportOperator(3, 2, init_std=0.01)
    start = op.psi.detach().clone()
    assert torch.equal(op.psi_init, start) and torch.all(op.drift() == 0)
    with torch.no_grad():
        op.psi[0] += start[0]  # operator 0 moves by its own norm, operator 1 stays
    assert torch.allclose(op.drift(), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # The start travels in checkpoints; one written before it existed loads, with drift unknown (NaN).
    fresh = TransportOperator(3, 2)
    fresh.load_state_dict(op.state_dict())
    assert torch.equal(fresh.psi_init, start)
    old = TransportOperator(3, 2)
    old.load_state_dict({"psi": op.psi.detach()})
    assert torch.isnan(old.drift()).all()
    report = operator_metrics(op)
    assert report["operator_drift"] == pytest.approx([1.0, 0.0])
    assert len(report["operator_eigenvalues"]) == 2 and len(report["operator_eigenvalues"][0]) == 3


# -- bounded inference -----------------------------------------------------------------------------------
def test_max_coeff_bounds_the_solution_and_leaves_the_residual_to_psi() -> None:
    """A slow rotation needs c = 60 to turn a point by 120 degrees: unbounded, the solver gets there with zero
    residual; bounded, it stops at the bound with the residual that tells Psi to grow."""
    psi = _rotation(2 * math.pi / 3 / 60.0).unsqueeze(0)  # 120 degrees at c = 60
    z0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)]], dtype=torch.float64)
    free = infer_coefficients(psi, z0, z1, l1_weight=1e-6, restarts=[[0.0, 1.0]], max_iter=100)
    assert float(free.c) == pytest.approx(60.0, rel=1e-3) and float(free.energy) < 1e-3
    bounded = infer_coefficients(psi, z0, z1, l1_weight=1e-6, restarts=[[0.0, 1.0]], max_iter=100, max_coeff=10.0)
    assert float(bounded.c) == pytest.approx(10.0) and float(bounded.energy) > 0.1
    # In a joint solve each request keeps its own bound.
    post, prior = infer_jointly(psi, [(CoefficientSolver(restarts=[[0.0, 1.0]]), z0, z1, None),
                                      (CoefficientSolver(restarts=[[0.0, 1.0]], max_coeff=10.0), z0, z1, None)])
    assert float(post.c) == pytest.approx(60.0, rel=1e-3) and float(prior.c) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="max_coeff"):
        CoefficientSolver(max_coeff=0.0)


# -- matched variation -----------------------------------------------------------------------------------
def test_match_spread_reaches_the_target_on_a_toy_decoder() -> None:
    calls = []

    def variation(s: float) -> float:  # a decoder whose samples vary with the square of the spread
        calls.append(s)
        return 0.02 * s**2

    spread, reached = match_spread(variation, target=0.01)
    assert reached == pytest.approx(0.01, rel=0.02) and spread == pytest.approx(math.sqrt(0.5), rel=0.02)
    assert len(calls) < 30
    # Out of reach: the nearer end comes back, and the caller sees what was reached.
    assert match_spread(lambda s: 1e-9 * s, target=1.0, high=100.0) == (100.0, pytest.approx(1e-7))


# -- the training-time rotation monitor ------------------------------------------------------------------
class _TurnModel(nn.Module):
    """Encodes a digit's angle as (cos, sin) plus its identity, decodes by rotating a fixed digit; its one
    operator turns the plane (``rotating``) or does nothing useful."""

    def __init__(self, digit: Tensor, rotating: bool) -> None:
        super().__init__()
        self.digit = digit
        self.table = rotate(digit.expand(360, -1, -1, -1), torch.arange(360.0))
        self.transport = TransportOperator(3, 1, init_std=0.0)
        with torch.no_grad():
            if rotating:
                self.transport.psi[0, 0, 1], self.transport.psi[0, 1, 0] = -0.05, 0.05
            else:
                self.transport.psi[0, 2, 2] = 0.05
        self.coeff_scale, self.noise_std = 1.0, 0.0

    def encode(self, x: Tensor) -> Tensor:
        theta = torch.deg2rad(pearson(x[:, None], self.table[None]).argmax(-1).double())
        return torch.stack([theta.cos(), theta.sin(), torch.ones_like(theta)], -1)

    def decode(self, z: Tensor) -> Tensor:
        theta = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0])).float()
        return rotate(self.digit.expand(z.shape[0], -1, -1, -1), theta)


def test_rotation_monitor_uses_a_fixed_subset_and_can_fail() -> None:
    dm = RotatedSmallDigitsDataModule(seed=0)
    dm.setup("fit")
    monitor = OperatorMonitor(num_digits=3, seed=0)
    first = monitor.validation_digits(dm)
    assert first.shape == (3, 1, 32, 32)
    assert torch.equal(OperatorMonitor(num_digits=3, seed=0).validation_digits(dm), first)  # same digits again
    digit = first[:1]
    good = monitor.metrics(_TurnModel(digit, rotating=True), dm)
    bad = monitor.metrics(_TurnModel(digit, rotating=False), dm)
    assert good["val/rotation_order"] > 0.9
    assert bad["val/rotation_order"] < 0.5
    assert set(good) >= {"val/psi_norm_0", "val/psi_drift_0", "val/rotation_match"}
    # The flow fit scores the encoder: the non-rotating operator's encoder draws the same circle, so it scores high
    # where the operator fails.
    flow = OperatorMonitor(num_digits=1, seed=0, flow_fit=True).metrics(_TurnModel(digit, rotating=False), dm)
    assert flow["val/rotation_order"] < 0.5 and flow["val/rotation_flow_order"] > 0.9
    assert flow["val/rotation_flow_residual"] < 0.01
    assert "val/rotation_flow_order" not in bad


class _WarmupModel(_TurnModel):
    """A _TurnModel at the end of its warm-up: networks and their optimizer, a schedule and a batch counter. With
    ``figure_eight`` its encoder draws (cos t, sin 2t, 1) as the digit turns, a loop that no linear flow follows (its
    first harmonic moves along one axis only)."""

    def __init__(self, digit: Tensor, figure_eight: bool) -> None:
        super().__init__(digit, rotating=True)
        self.figure_eight = figure_eight
        self.encoder, self.decoder = nn.Linear(4, 3), nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()])
        self.encoder(torch.ones(1, 4)).sum().backward()
        self.opt.step()  # the optimizer now holds moments to clear
        self.schedule = SimpleNamespace(warmup_steps=20)
        self.batch_counter, self.logged = 20, {}

    def encode(self, x: Tensor) -> Tensor:
        z = super().encode(x)
        if self.figure_eight:
            theta = torch.atan2(z[:, 1], z[:, 0])
            z = torch.stack([theta.cos(), (2 * theta).sin(), torch.ones_like(theta)], -1)
        return z

    def optimizers(self):
        return [self.opt, None]

    def log(self, key, value) -> None:
        self.logged[key] = value


def test_warmup_flow_check_redraws_a_warmup_no_flow_follows_and_keeps_a_good_one() -> None:
    from vaells.training.monitors import WarmupFlowCheck

    dm = RotatedSmallDigitsDataModule(seed=0)
    dm.setup("fit")
    digit = OperatorMonitor(num_digits=1, seed=0).validation_digits(dm)

    def trainer():
        return SimpleNamespace(datamodule=dm, num_training_batches=7, fit_loop=SimpleNamespace(max_epochs=10))

    # A circle: accepted, nothing changes.
    good, run = _WarmupModel(digit, figure_eight=False), trainer()
    check = WarmupFlowCheck(threshold=0.9, max_restarts=1, num_digits=1)
    check.on_train_batch_start(run, good, None, 0)
    assert check.scores[0] > 0.9 and good.schedule.warmup_steps == 20 and run.fit_loop.max_epochs == 10
    assert good.logged["train/warmup_flow_order"] == check.scores[0]

    # A figure eight: networks redrawn, optimizer moments cleared, a warm-up of whole epochs more.
    bad, run = _WarmupModel(digit, figure_eight=True), trainer()
    weights = bad.encoder.weight.detach().clone()
    check = WarmupFlowCheck(threshold=0.9, max_restarts=1, num_digits=1)
    check.on_train_batch_start(run, bad, None, 0)
    assert check.scores[0] < 0.9
    assert not torch.equal(bad.encoder.weight, weights) and not bad.opt.state
    assert bad.schedule.warmup_steps == 20 + 21 and run.fit_loop.max_epochs == 13  # 3 epochs of 7 batches
    check.on_train_batch_start(run, bad, None, 0)  # not the warm-up's end any more: nothing happens
    assert len(check.scores) == 1
    # A resumed run gets the same schedule back from the checkpoint.
    resumed, fresh_run = WarmupFlowCheck(threshold=0.9, max_restarts=1, num_digits=1), trainer()
    resumed.load_state_dict(check.state_dict())
    again = _WarmupModel(digit, figure_eight=True)
    resumed.on_fit_start(fresh_run, again)
    assert again.schedule.warmup_steps == 41 and fresh_run.fit_loop.max_epochs == 13
    # The second warm-up fails too, and max_restarts is spent: VAELLS begins with it.
    bad.batch_counter = 41
    check.on_train_batch_start(run, bad, None, 0)
    assert len(check.scores) == 2 and bad.schedule.warmup_steps == 41 and run.fit_loop.max_epochs == 13
    # metrics.json records every warm-up's score (from a checkpoint's callback states).
    assert training_record({"WarmupFlowCheck": check.state_dict()}) == {"warmup_flow_orders": check.scores}
    assert training_record({"OtherCallback": {"x": 1}}) == {}
    with pytest.raises(ValueError, match="threshold"):
        WarmupFlowCheck(threshold=1.5)


# -- the small-digits set --------------------------------------------------------------------------------
def test_rotated_small_digits_load_offline_with_rotations_and_per_sample_anchors() -> None:
    dm = RotatedSmallDigitsDataModule(anchors_per_class=4, batch_size=8, seed=0, epoch_size=100)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1247, 250, 300)
    assert dm.input_shape == (1, 32, 32) and dm.per_sample_anchors
    loader = dm.train_dataloader()
    assert len(loader.sampler) == 100  # epoch_size samples per epoch
    batch = next(iter(loader))
    assert batch["x"].shape == (8, 1, 32, 32) and batch["anchors"].shape == (8, 4, 1, 32, 32)
    keys = list(loader.sampler)
    digits = torch.stack([dm.train_set[k]["digit"] for k in keys[:8]])
    # x is the upright digit rotated by the stated angle, and the anchors are it at 0, 90, 180 and 270 degrees.
    assert torch.allclose(batch["x"], rotate(digits, batch["angle"]), atol=1e-6)
    assert torch.allclose(batch["anchors"][:, 0], digits, atol=1e-6)
    assert torch.allclose(batch["anchors"][:, 1], rotate(digits, torch.full((8,), 90.0)), atol=1e-6)
    assert float(digits.amax()) == pytest.approx(1.0, abs=0.01) and float(digits[..., :6, :].abs().max()) == 0
    # Test digits are upright.
    assert float(dm.test_set[0]["angle"]) == 0.0


def test_decay_when_learned_starts_the_step_decay_once_the_metric_is_reached() -> None:
    from types import SimpleNamespace

    from vaells.models.schedule import AcceptRejectRule
    from vaells.training.monitors import DecayWhenLearned

    rule = AcceptRejectRule(lr=1e-3, decay_after=5000)
    module = SimpleNamespace(psi_rule=rule, batch_counter=2000, schedule=SimpleNamespace(warmup_steps=1500))
    callback = DecayWhenLearned("val/rotation_order", threshold=0.8)

    def validate(value, counter):
        module.batch_counter = counter
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/rotation_order": torch.tensor(value)})
        callback.on_validation_end(trainer, module)

    validate(0.5, 2000)
    assert rule.decay_after == 5000  # not learned yet
    validate(0.85, 2600)
    assert rule.decay_after == 1100  # 2600 - 1500: from this VAELLS batch on
    validate(0.95, 3000)
    assert rule.decay_after == 1100  # the first time only
    restored = AcceptRejectRule(lr=1e-3, decay_after=5000)
    restored.load_state_dict(rule.state_dict())
    assert restored.decay_after == 1100  # a resumed run keeps it
    old = {k: v for k, v in rule.state_dict().items() if k != "decay_after"}
    restored.load_state_dict(old)  # checkpoints written before decay_after was saved
    assert restored.decay_after == 1100
    callback.on_validation_end(SimpleNamespace(sanity_checking=False, callback_metrics={}), module)  # not logged
    assert rule.decay_after == 1100
