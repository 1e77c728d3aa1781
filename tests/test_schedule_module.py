"""Schedule and AcceptRejectRule as data; VAELLSModule's choreography in a short real training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train

from vaells.app.builders import build_datamodule, build_model
from vaells.models.schedule import JOINT, NET, PSI, WARMUP, AcceptRejectRule, Schedule
from vaells.objectives import LossWeights

BASE = LossWeights(recon=2.0, post_transport=3.0, post_l1=5.0, prior_transport=7.0, prior_l1=11.0, dictionary=13.0)


# -- Schedule ---------------------------------------------------------------------------------------------
def test_alternating_phases() -> None:
    s = Schedule(warmup_steps=3, alternate=True, net_steps=2, psi_steps=3)
    got = [s.phase(i) for i in range(13)]
    assert got == [WARMUP] * 3 + [NET, NET, PSI, PSI, PSI] * 2


def test_joint_phases() -> None:
    s = Schedule(warmup_steps=2, alternate=False, net_steps=2, psi_steps=3)
    assert [s.phase(i) for i in range(6)] == [WARMUP, WARMUP, JOINT, JOINT, JOINT, JOINT]
    assert Schedule().phase(0) == JOINT  # no warm-up


def test_phase_weights() -> None:
    s = Schedule(alternate=True, net_prior_scale=0.01, psi_recon_scale=0.5, joint_prior_scale=0.1)
    assert s.weights(BASE, WARMUP) == BASE
    net = s.weights(BASE, NET)
    assert (net.recon, net.prior_transport, net.prior_l1) == pytest.approx((2.0, 0.07, 0.11))
    psi = s.weights(BASE, PSI)
    assert (psi.recon, psi.prior_transport, psi.prior_l1) == pytest.approx((1.0, 7.0, 11.0))
    joint = s.weights(BASE, JOINT)
    assert (joint.recon, joint.prior_transport, joint.prior_l1) == pytest.approx((2.0, 0.7, 1.1))
    for w in (net, psi, joint):
        assert (w.post_transport, w.post_l1, w.dictionary) == (3.0, 5.0, 13.0)


@pytest.mark.parametrize("alternate", [False, True])
def test_the_networks_prior_weight_ramps_geometrically_after_the_warm_up(alternate: bool) -> None:
    s = Schedule(warmup_steps=10, alternate=alternate, net_prior_scale=0.01, joint_prior_scale=0.01,
                 prior_ramp_steps=20, prior_ramp_to=1.0)
    phase = NET if alternate else JOINT
    scales = [s.weights(BASE, phase, step).prior_transport / BASE.prior_transport for step in (10, 20, 30, 100)]
    assert scales == pytest.approx([0.01, 0.1, 1.0, 1.0])  # geometric: halfway is 0.1
    assert s.weights(BASE, PSI, 30) == s.weights(BASE, PSI, 10)  # operator batches keep their weights
    assert "rising to 1x over 20 batches" in s.describe()
    flat = Schedule(warmup_steps=10, alternate=alternate, net_prior_scale=0.01, joint_prior_scale=0.01)
    assert flat.weights(BASE, phase, 100).prior_transport == pytest.approx(0.01 * BASE.prior_transport)


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1}, {"alternate": True, "net_steps": 0},
                                    {"alternate": True, "psi_steps": 0}, {"prior_ramp_steps": -1},
                                    {"prior_ramp_to": 1.0, "joint_prior_scale": 0.0}])
def test_schedule_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(k for k in kwargs if k != "alternate")):
        Schedule(**kwargs)


# -- AcceptRejectRule -------------------------------------------------------------------------------------
def test_accept_reject_rule_grows_shrinks_and_decays() -> None:
    rule = AcceptRejectRule(lr=1.0, max_lr=3.0, shrink=0.5, decay=0.9, decay_after=10)
    rule.update(True, 0)
    assert rule.lr == pytest.approx(2.0)  # accepted: lr / shrink
    rule.update(True, 1)
    assert rule.lr == pytest.approx(4.0)  # still below max_lr before the step
    rule.update(True, 2)
    assert rule.lr == pytest.approx(4.0)  # at or above max_lr: no more growth
    rule.update(False, 3)
    assert rule.lr == pytest.approx(2.0)  # rejected: lr * shrink
    rule.update(True, 11)
    assert rule.lr == pytest.approx(2.0 * 0.9)  # after decay_after: no growth, decay
    rule.update(False, 12)
    assert rule.lr == pytest.approx(2.0 * 0.9 * 0.5 * 0.9)
    assert (rule.accepted, rule.proposed) == (4, 6)
    assert rule.accept_rate == pytest.approx(4 / 6)


def test_accept_reject_rule_state_dict_round_trip() -> None:
    rule = AcceptRejectRule(lr=1e-3)
    for i, ok in enumerate([True, False, True]):
        rule.update(ok, i)
    fresh = AcceptRejectRule(lr=5.0)
    fresh.load_state_dict(rule.state_dict())
    assert (fresh.lr, fresh.accepted, fresh.proposed) == (rule.lr, rule.accepted, rule.proposed)
    assert fresh.accept_rate == rule.accept_rate


# -- VAELLSModule in a short real run --------------------------------------------------------------------
# warm-up 1, then 2 network and 2 operator batches: phases of batches 0..6 and where batch 7 resumes.
NUM_BATCHES = 7
EXPECTED_PHASES = [WARMUP, NET, NET, PSI, PSI, NET, NET]
OVERRIDES = [
    "experiment=swiss_roll",
    "model.schedule.warmup_steps=1", "model.schedule.net_steps=2", "model.schedule.psi_steps=2",
    "backbone.encoder.hidden_dim=32", "backbone.decoder.hidden_dim=32",
    "data.num_train=80", "data.num_val=10", "data.num_test=10", "data.batch_size=10",
]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {
        "encoder": torch.cat([p.detach().flatten().double() for p in model.encoder.parameters()]).clone(),
        "decoder": torch.cat([p.detach().flatten().double() for p in model.decoder.parameters()]).clone(),
        "psi": model.transport.psi.detach().clone(),
        "anchors": model.anchor_inputs.detach().clone(),
    }


class Recorder(pl.Callback):
    """Per batch: the counter, which parameter groups changed, and the Psi rule's verdict."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.at_start: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = {
            "batch_counter": pl_module.batch_counter,
            "psi_lr": pl_module.psi_rule.lr,
            "psi_proposed": pl_module.psi_rule.proposed,
            "psi": pl_module.transport.psi.detach().clone(),
            "net_lr": trainer.optimizers[0].param_groups[0]["lr"],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = _snapshot(pl_module)
        self._counter = pl_module.batch_counter
        self._rule = (pl_module.psi_rule.proposed, pl_module.psi_rule.accepted)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = _snapshot(pl_module)
        rule = pl_module.psi_rule
        self.rows.append({
            "counter": self._counter,
            "phase": pl_module.schedule.phase(self._counter),
            "changed": {k: not torch.equal(self._before[k], after[k]) for k in after},
            "proposed": rule.proposed - self._rule[0],
            "accepted": rule.accepted - self._rule[1],
        })


def _trainer(max_epochs: int, recorder: Recorder) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=NUM_BATCHES, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Fit 7 batches of a tiny swiss-roll model, then save a checkpoint."""
    out = tmp_path_factory.mktemp("module_run")
    cfg = compose_train(OVERRIDES, out)
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    recorder = Recorder()
    trainer = _trainer(1, recorder)
    trainer.fit(model, datamodule=dm)
    ckpt = Path(out) / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"cfg": cfg, "dm": dm, "model": model, "trainer": trainer, "rows": recorder.rows, "ckpt": ckpt}


def test_training_follows_the_phases(trained) -> None:
    model, rows = trained["model"], trained["rows"]
    assert model.batch_counter == NUM_BATCHES
    assert [r["counter"] for r in rows] == list(range(NUM_BATCHES))
    assert [r["phase"] for r in rows] == EXPECTED_PHASES
    for r in rows:
        changed, phase = r["changed"], r["phase"]
        if phase in (WARMUP, NET):
            assert changed["encoder"] and changed["decoder"], r
            assert not changed["psi"] and not changed["anchors"], r
            assert r["proposed"] == 0, r
        else:
            assert not changed["encoder"] and not changed["decoder"], r
            assert r["proposed"] == 1, r
            assert changed["psi"] == bool(r["accepted"]), r  # a rejected Psi step is undone
    assert any(r["changed"]["anchors"] for r in rows if r["phase"] == PSI)  # anchors learn in Psi phases
    # the network learning rate drops once, when warm-up ends
    base_lr = trained["cfg"].model.optimizer.lr
    factor = trained["cfg"].model.post_warmup_lr_factor
    assert trained["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(base_lr * factor)


def test_checkpoint_round_trip_restores_counter_phase_and_psi_step(trained) -> None:
    saved_model = trained["model"]
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["vaells"]["batch_counter"] == NUM_BATCHES
    assert ckpt["vaells"]["phase"] == PSI == saved_model.schedule.phase(NUM_BATCHES)
    assert ckpt["vaells"]["psi_rule"] == {"lr": saved_model.psi_rule.lr, "accepted": saved_model.psi_rule.accepted,
                                          "proposed": 2, "decay_after": saved_model.psi_rule.decay_after}
    assert "run_config" in ckpt

    fresh = build_model(trained["cfg"], trained["dm"])
    assert fresh.batch_counter == 0 and not torch.equal(fresh.transport.psi, saved_model.transport.psi)
    fresh.psi_rule.lr = 123.0  # so that only a restore can bring back the saved step size
    recorder = Recorder()
    _trainer(2, recorder).fit(fresh, datamodule=trained["dm"], ckpt_path=str(trained["ckpt"]))
    start = recorder.at_start
    assert start["batch_counter"] == NUM_BATCHES
    assert start["psi_lr"] == saved_model.psi_rule.lr and start["psi_proposed"] == 2
    assert torch.equal(start["psi"], saved_model.transport.psi.detach())
    assert start["net_lr"] == pytest.approx(trained["trainer"].optimizers[0].param_groups[0]["lr"])
    # the resumed run picks up the alternation where it stopped
    assert [r["counter"] for r in recorder.rows] == list(range(NUM_BATCHES, 2 * NUM_BATCHES))
    assert recorder.rows[0]["phase"] == PSI and recorder.rows[0]["proposed"] == 1
    assert not recorder.rows[0]["changed"]["encoder"]
    assert fresh.batch_counter == 2 * NUM_BATCHES


def test_encode_decode_dtypes(trained) -> None:
    model = trained["model"]
    x = trained["dm"].train_set.tensors["x"][:4]
    with torch.no_grad():
        mu = model.encode(x)
        assert mu.shape == (4, 2) and mu.dtype == torch.float64
        x_hat = model.decode(mu)
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32


def test_a_run_with_normalised_operators_and_a_prior_ramp(tmp_path) -> None:
    """The module hands each batch its place on the ramp, and every accepted Psi step is put back to the norm."""
    cfg = compose_train([*OVERRIDES, "model.schedule.alternate=false", "model.schedule.joint_prior_scale=0.01",
                         "model.schedule.prior_ramp_steps=4", "model.schedule.prior_ramp_to=1.0",
                         "model.transport.norm=0.3", "model.psi_rule.lr=0.05"], tmp_path)
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    start = model.transport.psi.detach().clone()
    assert torch.allclose(model.transport.norms(), torch.full((1,), 0.3, dtype=torch.float64))
    prior_weights = []
    forward_terms = model.forward_terms

    def recording(batch, weights):
        prior_weights.append(weights.prior_transport / model.weights.prior_transport)
        return forward_terms(batch, weights)

    model.forward_terms = recording
    _trainer(1, Recorder()).fit(model, datamodule=dm)
    # batch 0 is the warm-up (no prior); then batches 1..6 are 0..5 batches after it, on a ramp of 4
    assert prior_weights[:6] == pytest.approx([0.01 * 100 ** (k / 4) for k in range(4)] + [1.0, 1.0])
    assert model.psi_rule.accepted > 0 and not torch.allclose(model.transport.psi, start)
    assert torch.allclose(model.transport.norms(), torch.full((1,), 0.3, dtype=torch.float64))
