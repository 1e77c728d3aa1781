"""The baselines (model=vae, vampprior, svae) and the one model interface: their distributions against direct
computations, every model behind ``LatentModel``, every (model, experiment) config composes with the
experiment's shared networks, and every baseline trains through train.py (fast_dev_run) on synthetic data and
a user's tensor file, and is scored by evaluate.py. The MNIST runs are in test_mnist_experiments.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_train
from omegaconf import OmegaConf
from power_spherical import HypersphericalUniform, PowerSpherical

import train
from vaells.app.builders import build_datamodule, build_model
from vaells.models.base import LatentModel, has_operators
from vaells.models.svae import HypersphericalVAE, SphericalPowerSpherical
from vaells.models.vae import GaussianVAE
from vaells.models.vampprior import VampPriorVAE
from vaells.networks import MLPDecoder, MLPEncoder
from vaells.objectives import reconstruction_log_likelihood

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
BASELINES = {"vae": GaussianVAE, "vampprior": VampPriorVAE, "svae": HypersphericalVAE}
NO_FIGURES = "~callbacks.latent_figures"


def _adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def _small(cls, d: int = 2, input_dim: int = 5, **kwargs):
    torch.manual_seed(0)
    if cls is VampPriorVAE:
        kwargs.setdefault("train_inputs", torch.randn(7, input_dim))
        kwargs.setdefault("num_pseudo_inputs", 4)
    return cls(MLPEncoder(input_dim, 16, d), MLPDecoder(d, 16, input_dim), latent_dim=d, recon_weight=0.5,
               optimizer=_adam, **kwargs)


# -- the Power Spherical posterior and the uniform prior of the svae ------------------------------------
def _circle(n: int = 20000) -> tuple[torch.Tensor, float]:
    theta = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([theta.cos(), theta.sin()], -1), 2 * math.pi / n  # (n, 2), d theta


@pytest.mark.parametrize("kappa", [0.3, 5.0, 80.0, 5000.0])
def test_power_spherical_density_integrates_to_one_on_the_circle(kappa: float) -> None:
    z, dtheta = _circle()
    loc = torch.nn.functional.normalize(torch.tensor([[0.3, -1.0]], dtype=torch.float64), dim=-1)
    q = PowerSpherical(loc, torch.tensor([kappa], dtype=torch.float64))
    # The periodic trapezoid rule: spectrally accurate for a smooth density on S^1.
    total = float(q.log_prob(z.unsqueeze(1)).exp().sum() * dtheta)
    assert total == pytest.approx(1.0, abs=1e-6)
    uniform = HypersphericalUniform(2, dtype=torch.float64)
    # (the package computes the uniform's constant in float32: 3e-8 off)
    assert float(uniform.log_prob(z).exp().sum() * dtheta) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("d", [2, 5])
def test_power_spherical_samples_centre_on_the_mean_direction_and_tighten_with_kappa(d: int) -> None:
    torch.manual_seed(0)
    loc = torch.nn.functional.normalize(torch.randn(1, d, dtype=torch.float64), dim=-1)
    angles = []
    for kappa in (1.0, 10.0, 100.0, 1000.0):
        q = SphericalPowerSpherical(loc, torch.tensor([kappa], dtype=torch.float64))
        z = q.rsample(torch.Size([20000]))[:, 0]
        assert float((z.norm(dim=-1) - 1).abs().max()) < 1e-12
        mean = torch.nn.functional.normalize(z.mean(0), dim=-1)
        assert float(mean @ loc[0]) > 0.995  # the mean direction
        angles.append(float(torch.arccos((z @ loc[0]).clamp(-1, 1)).mean()))
    assert all(a > b for a, b in zip(angles, angles[1:], strict=False)), angles  # the spread shrinks
    assert angles[-1] < 0.1 * angles[0]


def test_power_spherical_is_finite_at_large_concentration() -> None:
    loc = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    kappa = torch.full((3,), 1e6, dtype=torch.float64, requires_grad=True)
    q = SphericalPowerSpherical(loc, kappa)
    z = q.rsample(torch.Size([5]))
    kl = torch.distributions.kl_divergence(q, HypersphericalUniform(4, dtype=torch.float64))
    assert bool(torch.isfinite(q.log_prob(z)).all()) and bool(torch.isfinite(kl).all())
    (kl.sum() + z.sum()).backward()
    assert bool(torch.isfinite(kappa.grad).all())


def test_svae_spread_divides_the_concentration_and_encodes_on_the_sphere() -> None:
    model = _small(HypersphericalVAE, d=3)
    x = torch.randn(6, 5)
    kappa = model.concentration(x)
    assert bool((kappa >= 1).all())
    torch.testing.assert_close(model.posterior(x, spread=2.0).scale, kappa / 4)
    torch.testing.assert_close(model.encode(x).norm(dim=-1), torch.ones(6, dtype=torch.float64))
    assert model.posterior_samples(x, 4).norm(dim=-1).sub(1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        _small(HypersphericalVAE, d=1)


# -- the VampPrior and the Gaussian VAE -------------------------------------------------------------------
def _diagonal_gaussian(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_vampprior_log_density_is_the_mixture_of_the_pseudo_input_posteriors() -> None:
    model = _small(VampPriorVAE)
    z = torch.randn(9, 2)
    with torch.no_grad():
        direct = []
        for u in model.pseudo_inputs:  # one component at a time, the plain mean of densities
            mu, log_var = model.encoder(u[None]).split(2, dim=-1)
            direct.append(_diagonal_gaussian(z.double(), mu.double(), (0.5 * log_var).exp().double()).exp())
        expected = torch.stack(direct).mean(0).log()
        torch.testing.assert_close(model.prior().log_prob(z).double(), expected, rtol=1e-5, atol=1e-5)
    # The pseudo-inputs start at training inputs, cycled when there are fewer than K, and are learned.
    big = _small(VampPriorVAE, train_inputs=torch.arange(10.0).view(2, 5), num_pseudo_inputs=3)
    assert big.pseudo_inputs.requires_grad and torch.equal(big.pseudo_inputs[2], big.pseudo_inputs[0])


def test_vampprior_kl_warm_up_ramps_from_zero() -> None:
    model = _small(VampPriorVAE, kl_warmup_steps=4)
    weights = []
    for step in range(6):
        model.batch_counter = step
        weights.append(model.kl_weight)
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert _small(GaussianVAE).kl_weight == 1.0
    # beta scales the training KL (the ramp ends at it); validation and the reported elbo keep the ELBO.
    model = _small(VampPriorVAE, kl_warmup_steps=4, beta=0.01)
    model.batch_counter = 2
    assert model.kl_weight == 0.005
    x = torch.randn(7, 5)
    torch.manual_seed(0)
    terms, _ = model.loss_terms(x)
    assert torch.isclose(terms["loss"], terms["recon"] + terms["kl"])
    with pytest.raises(ValueError, match="beta > 0"):
        _small(GaussianVAE, beta=0.0)


def test_vae_log_weights_are_eq_4_integrand_exactly() -> None:
    model = _small(GaussianVAE)
    x = torch.randn(3, 5)
    torch.manual_seed(1)
    log_w = model.log_weights(x, 4)
    torch.manual_seed(1)
    with torch.no_grad():
        mu, log_var = model.encoder(x).split(2, dim=-1)
        sigma = (0.5 * log_var).exp()
        z = torch.distributions.Normal(mu, sigma).sample((4,))  # (S, B, d), the same draws
        log_lik = reconstruction_log_likelihood(x.expand(4, 3, 5).flatten(0, 1), model.decoder(z.flatten(0, 1)), 0.5)
        expected = (log_lik.view(4, 3) + _diagonal_gaussian(z, torch.zeros(2), torch.ones(2))
                    - _diagonal_gaussian(z, mu, sigma)).T
    assert log_w.shape == (3, 4) and log_w.dtype == torch.float64
    torch.testing.assert_close(log_w, expected.double(), rtol=1e-5, atol=1e-5)


def test_closed_form_and_sampled_kl_agree() -> None:
    model = _small(GaussianVAE)
    x = torch.randn(2, 5)
    with torch.no_grad():
        q = model.posterior(x)
        z = q.sample((40000,))
        sampled = (q.log_prob(z) - model.prior().log_prob(z)).mean(0)
        torch.testing.assert_close(model.kl(q, z[0]), sampled, rtol=0.02, atol=0.02)


def test_encoders_are_widened_for_the_head() -> None:
    x = torch.randn(4, 5)
    assert _small(GaussianVAE, d=3).encoder(x).shape == (4, 6)
    assert _small(HypersphericalVAE, d=3).encoder(x).shape == (4, 4)
    with pytest.raises(TypeError, match="widen_output"):
        GaussianVAE(torch.nn.Linear(5, 2), MLPDecoder(2, 8, 5), 2, 1.0, _adam)


# -- every model behind one interface ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vaells", *BASELINES])
def test_every_model_offers_the_interface(name: str, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=concentric_circles", f"model={name}"], tmp_path)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm).eval()
    assert isinstance(model, LatentModel) and has_operators(model) == (name == "vaells")
    batch = next(iter(dm.val_dataloader()))
    x = batch["x"][:6]
    with torch.no_grad():
        mu = model.encode(x)
        assert mu.shape == (6, 2) and model.decode(mu).shape == x.shape
        assert model.sample_prior(5).shape == (5, 2)
        assert model.sample_prior(4, labels=torch.tensor([0, 1, 1, 0])).shape == (4, 2)
        distance = []
        for spread in (0.5, 2.0):  # the same random numbers: the samples move further at a larger spread
            torch.manual_seed(0)
            z = model.posterior_samples(x, 8, spread)
            assert z.shape == (6, 8, 2)
            distance.append(float((z - mu.unsqueeze(1)).norm(dim=-1).mean()))
        assert distance[0] < distance[1]
        scores = model.batch_scores(batch)
        objective = "vaells_objective" if name == "vaells" else "elbo"
        assert set(scores) == {"mse", "sample_mse", objective} and all(math.isfinite(float(v)) for v in scores.values())
        log_w = model.log_weights(x, 3, labels=batch["label"][:6])  # VAELLS's class prior needs the labels
        assert log_w.shape == (6, 3) and log_w.dtype == torch.float64 and bool(torch.isfinite(log_w).all())


def test_vaells_class_conditional_prior_samples_around_its_class_anchors(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=concentric_circles", "model.noise_std=1e-6"], tmp_path)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    with torch.no_grad():
        model.transport.psi.zero_()  # T(c) = I: each sample sits on one of its anchors
        anchors = model.anchor_latents()  # (K * N_a, d), class-major
        labels = torch.tensor([0, 1] * 10)
        z = model.sample_prior(20, labels)
    nearest = torch.cdist(z, anchors).argmin(-1)  # (20,)
    assert torch.equal(model.anchor_labels[nearest], labels)
    assert float(torch.cdist(z, anchors).min(-1).values.max()) < 1e-4
    with pytest.raises(ValueError, match="labels must have shape"):
        model.sample_prior(3, labels)


# -- configs: one experiment, any model -------------------------------------------------------------------
@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_composes_with_every_experiment(name: str, experiment: str, tmp_path: Path) -> None:
    cfg = compose_train([f"experiment={experiment}", f"model={name}"], tmp_path, latent_figures=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model = resolved["model"]
    assert model["_target_"].endswith(BASELINES[name].__name__)
    # the experiment's networks, latent size and likelihood, and nothing of VAELLS's
    assert model["encoder"] == resolved["backbone"]["encoder"] and model["decoder"] == resolved["backbone"]["decoder"]
    assert (model["latent_dim"], model["recon_weight"]) == (resolved["backbone"]["latent_dim"],
                                                            resolved["backbone"]["recon_weight"])
    assert not {"num_operators", "schedule", "prior_solver", "psi_rule"} & set(model)
    assert resolved["callbacks"]["model_checkpoint"]["monitor"] == "val/loss"  # VAELLS's rotation monitor is its own
    vaells = OmegaConf.to_container(compose_train([f"experiment={experiment}"], tmp_path), resolve=True)
    assert vaells["model"]["encoder"] == model["encoder"] and vaells["trainer"] == resolved["trainer"]
    assert vaells["data"] == resolved["data"] and vaells["seed"] == resolved["seed"]
    if experiment in ("swiss_roll", "concentric_circles"):  # cheap to build
        built = build_model(cfg, build_datamodule(cfg))
        assert isinstance(built, BASELINES[name])


def test_the_command_line_model_wins_in_any_order(tmp_path: Path) -> None:
    for overrides in (["model=svae", "experiment=rotated_mnist"], ["experiment=rotated_mnist", "model=svae"]):
        cfg = compose_train(overrides, tmp_path)
        assert cfg.model._target_.endswith("HypersphericalVAE") and cfg.model.latent_dim == 10
        assert cfg.model.encoder.image_size == 32
    cfg = compose_train(["experiment=rotated_mnist", "model=vaells"], tmp_path)
    assert cfg.model.num_operators == 1 and cfg.callbacks.model_checkpoint.monitor == "val/rotation_order"


# -- training and evaluation through the entry points ------------------------------------------------------
def test_one_multirun_trains_all_four_models(tmp_path: Path, cli, fit_calls) -> None:
    code, _, err = cli(train.main, "-m", "experiment=concentric_circles", "model=vaells,vae,vampprior,svae",
                       "++trainer.fast_dev_run=true", NO_FIGURES, f"hydra.sweep.dir={tmp_path}")
    assert code == 0, err
    assert [type(m).__name__ for m in fit_calls] == ["VAELLSModule", "GaussianVAE", "VampPriorVAE",
                                                     "HypersphericalVAE"]
    assert all(m.batch_counter >= 1 for m in fit_calls)
    for job, name in enumerate(["vaells", "vae", "vampprior", "svae"]):
        saved = OmegaConf.load(tmp_path / str(job) / ".hydra" / "config.yaml")
        assert saved.model._target_.endswith(type(fit_calls[job]).__name__), name


def test_baselines_train_on_a_tensor_file(tmp_path: Path, cli, fit_calls) -> None:
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(200, 5)).astype(np.float32), labels=np.repeat([0, 1], 100))
    code, _, err = cli(train.main, "-m", "experiment=tensor_file", f"data.path={path}", "model=vae,vampprior,svae",
                       "++trainer.fast_dev_run=true", NO_FIGURES, f"hydra.sweep.dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert [type(m) for m in fit_calls] == list(BASELINES.values())
    assert all(m.encoder.input_dim == 5 and m.decoder.output_dim == 5 for m in fit_calls)


@pytest.mark.parametrize("name", list(BASELINES))
def test_evaluate_a_short_baseline_run(name: str, tmp_path: Path, cli) -> None:
    import evaluate

    run = tmp_path / "run"
    code, _, err = cli(train.main, "experiment=concentric_circles", f"model={name}", "data.num_test_per_class=40",
                       "++trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
                       NO_FIGURES, "ll_points=30", "ll_samples=5", f"hydra.run.dir={run}")
    assert code == 0, err
    trained = json.loads((run / "metrics.json").read_text())  # train.py's own evaluation, with its LL
    assert trained["log_likelihood_points"] == 30 and math.isfinite(trained["log_likelihood"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["batch_counter"] == 3 and checkpoint["run_config"]["model"]["_target_"].endswith(
        BASELINES[name].__name__)
    out = tmp_path / "eval"
    code, _, err = cli(evaluate.main, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "ll_points=30",
                       "ll_samples=5", f"hydra.run.dir={out}")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["log_likelihood"] == trained["log_likelihood"]  # the same points, samples and seed
    assert metrics["num_test"] == 80 and not any(k.startswith("operator_") for k in metrics)
    keys = ("sample_mse", "elbo", "knn_accuracy", "trustworthiness", "prior_manifold_error", "prior_coverage_error")
    assert all(math.isfinite(metrics[k]) for k in keys)
    assert (out / "figures" / "latent.png").is_file()
    # train.py scored the same final model on the test split itself: the seeded metrics agree exactly, the
    # posterior-sampled ones too (seeded alike)
    trained = json.loads((run / "metrics.json").read_text())
    assert {k: trained[k] for k in keys[2:]} == pytest.approx({k: metrics[k] for k in keys[2:]})
    assert trained["mse"] == pytest.approx(metrics["mse"], rel=1e-9)


def test_gaussian_posteriors_start_at_the_configured_log_variance() -> None:
    x = torch.randn(6, 5)
    for cls in (GaussianVAE, VampPriorVAE):
        model = _small(cls, init_log_var=-8.0)
        sigma = model.posterior(x).base_dist.scale  # (6, d)
        # The head's weights add a small input-dependent part to the bias: sigma stays within a factor of ~2.
        assert torch.all((sigma > 0.25 * math.exp(-4)) & (sigma < 4 * math.exp(-4))), sigma
        assert _small(cls).posterior(x).base_dist.scale.min() > 0.1  # PyTorch's default bias: sigma near 1


def test_autoencoder_warm_up_holds_the_kl_weight_at_zero_before_its_ramp() -> None:
    model = _small(VampPriorVAE, ae_warmup_steps=3, kl_warmup_steps=2, beta=0.5)
    weights = []
    for step in range(7):
        model.batch_counter = step
        weights.append(model.kl_weight)
    assert weights == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.5]
