"""The importance-sampled log-likelihood (docs/method.md §3): exact on a linear-Gaussian model, a one-sample ELBO at
K = 1, reproducible across seeds; VAELLS's log-weights batched, finite, and equal to the release's per-point
formula at the same samples; the settings checked before any work."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf
from torch.distributions import Independent, MultivariateNormal, Normal

from vaells.app.builders import build_datamodule, build_model
from vaells.evaluation.likelihood import (
    draw_test_points,
    likelihood_settings,
    log_likelihood,
    log_likelihood_per_point,
    split_log_likelihood,
)
from vaells.inference import infer_coefficients
from vaells.models.base import LatentModel
from vaells.reference import reference_log_weights


class LinearGaussian(torch.nn.Module):
    """z ~ N(0, I_d), x = W z + b + N(0, sigma^2 I_D): log p(x) = log N(x; b, W W^T + sigma^2 I) in closed form.

    q(z | x) is the exact posterior N(m(x), S) with its scale times ``q_std_factor`` and its mean moved by
    ``q_shift``: an approximate q, so the log-weights vary and the estimator has to average them."""

    def __init__(self, d: int = 2, dim: int = 5, sigma: float = 0.5, q_std_factor: float = 1.0,
                 q_shift: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.latent_dim, self.sigma = d, sigma
        self.register_buffer("w", torch.randn(dim, d, generator=gen, dtype=torch.float64))
        self.register_buffer("b", torch.randn(dim, generator=gen, dtype=torch.float64))
        precision = torch.eye(d, dtype=torch.float64) + self.w.T @ self.w / sigma**2
        self.register_buffer("post_cov", torch.linalg.inv(precision))
        self.q_std_factor, self.q_shift = q_std_factor, q_shift

    # the exact answer
    def marginal(self) -> MultivariateNormal:
        cov = self.w @ self.w.T + self.sigma**2 * torch.eye(self.w.shape[0], dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov)

    # the model interface
    def posterior(self, x: torch.Tensor, spread: float = 1.0) -> MultivariateNormal:
        mean = (x.double() - self.b) @ self.w @ self.post_cov.T / self.sigma**2 + self.q_shift
        scale = self.q_std_factor * spread * torch.linalg.cholesky(self.post_cov)
        return MultivariateNormal(mean, scale_tril=scale)

    def prior(self) -> Independent:
        zero = torch.zeros(self.latent_dim, dtype=torch.float64)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def likelihood(self, z: torch.Tensor) -> Independent:
        mean = self.decode(z)
        return Independent(Normal(mean, torch.full_like(mean, self.sigma)), 1)

    def encode(self, x):
        return self.posterior(x).mean

    def decode(self, z):
        return z @ self.w.T + self.b

    def posterior_samples(self, x, num_samples, spread=1.0):
        return self.posterior(x, spread).sample((num_samples,)).transpose(0, 1)

    def sample_prior(self, num_samples, labels=None):
        return self.prior().sample((num_samples,))

    def log_weights(self, x, num_samples, *, labels=None, anchors=None):
        q = self.posterior(x)
        z = q.sample((num_samples,))  # (S, B, d)
        return (self.likelihood(z).log_prob(x.double()) + self.prior().log_prob(z) - q.log_prob(z)).T

    def batch_scores(self, batch):
        return {}


def _data(model: LinearGaussian, n: int, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    return model.marginal().sample((n,))


@pytest.mark.parametrize(("q_std_factor", "q_shift"), [(1.0, 0.0), (1.3, 0.2)])
def test_agrees_with_the_closed_form_of_a_linear_gaussian_model(q_std_factor: float, q_shift: float) -> None:
    model = LinearGaussian(q_std_factor=q_std_factor, q_shift=q_shift)
    assert isinstance(model, LatentModel)
    x = _data(model, 40)
    exact = model.marginal().log_prob(x)  # (N,)
    result = log_likelihood(model, x, num_samples=50, seed=0, points_per_chunk=7, progress=False)
    assert result["log_likelihood_k"] == 50 and result["log_likelihood_points"] == 40
    assert abs(result["log_likelihood"] - float(exact.mean())) < 3 * result["log_likelihood_stderr"]
    # Paired, point by point: the estimate's error is within 3 standard errors of its own spread (and tiny at an
    # exact q, whose weights are all equal to p(x)).
    torch.manual_seed(0)
    error = log_likelihood_per_point(model, x, 50) - exact
    if q_std_factor == 1.0:
        assert float(error.abs().max()) < 1e-9
    else:
        assert float(error.std()) > 1e-4  # the approximate q makes the weights vary
        assert abs(float(error.mean())) < 3 * float(error.std()) / math.sqrt(40) + 1e-3
    # A poor q at K = 1 is the ELBO, below log p(x) on average by the KL; more samples close the gap.
    torch.manual_seed(1)
    gap_1 = float((exact - log_likelihood_per_point(model, x, 1)).mean())
    torch.manual_seed(1)
    gap_50 = float((exact - log_likelihood_per_point(model, x, 50)).mean())
    if q_std_factor != 1.0:
        assert gap_1 > gap_50 >= -1e-3


def test_one_sample_is_the_elbo_of_that_sample() -> None:
    model = LinearGaussian(q_std_factor=1.5, q_shift=0.3)
    x = _data(model, 12)
    torch.manual_seed(3)
    estimate = log_likelihood_per_point(model, x, 1)
    torch.manual_seed(3)  # the same sample z ~ q(z | x): the one-sample ELBO, log p(x, z) - log q(z | x)
    q = model.posterior(x)
    z = q.sample((1,))[0]
    elbo = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(estimate, elbo, rtol=0, atol=1e-12)


def test_two_seeds_agree_within_their_standard_errors_and_leave_the_random_state_alone() -> None:
    model = LinearGaussian(q_std_factor=1.5, q_shift=0.3)
    x = _data(model, 60)
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    a = log_likelihood(model, x, 20, seed=0, progress=False)
    b = log_likelihood(model, x, 20, seed=1, progress=False)
    assert torch.equal(torch.rand(3), before)  # the estimator forks the random state
    assert a["log_likelihood"] != b["log_likelihood"]
    spread = math.hypot(a["log_likelihood_stderr"], b["log_likelihood_stderr"])
    assert abs(a["log_likelihood"] - b["log_likelihood"]) < 3 * spread
    assert log_likelihood(model, x, 20, seed=0, progress=False) == a  # a seed reproduces its number


def test_progress_logs_plain_lines_off_a_terminal(caplog) -> None:
    model = LinearGaussian()
    with caplog.at_level(logging.INFO, logger="vaells.evaluation.progress"):
        log_likelihood(model, _data(model, 30), 4, points_per_chunk=3, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("log-likelihood")]
    assert lines[0] == "log-likelihood, 30 points x K=4 ..."
    assert lines[-1].startswith("log-likelihood, 30 points x K=4: 10/10 done in")


def test_settings_are_checked_with_the_key_named() -> None:
    good = OmegaConf.create({"ll_points": 0, "ll_samples": 5, "ll_seed": 2})
    assert likelihood_settings(good) == {"ll_points": 0, "ll_samples": 5, "ll_seed": 2}
    for key, value in (("ll_points", -1), ("ll_samples", 0), ("ll_samples", 2.5), ("ll_seed", "a")):
        with pytest.raises(ValueError, match=key):
            likelihood_settings(OmegaConf.merge(good, {key: value}))


# -- VAELLS ----------------------------------------------------------------------------------------------------
def _vaells(tmp_path: Path, *overrides: str):
    # The paper's four circle operators (the experiment's default is one): M > d, where the prior's c_hat is bounded.
    cfg = compose_train(["experiment=concentric_circles", "model.num_operators=4", "model.prior_solver.max_coeff=10.0",
                         "model.transport.init_std=0.3", *overrides], tmp_path)
    dm = build_datamodule(cfg)
    return build_model(cfg, dm).eval(), dm


def test_vaells_log_weights_are_batched_and_finite(tmp_path: Path) -> None:
    model, dm = _vaells(tmp_path)
    batch = draw_test_points(dm, 6, seed=0)
    log_w = model.log_weights(batch["x"], 5)  # the bound: no labels
    assert log_w.shape == (6, 5) and log_w.dtype == torch.float64 and bool(torch.isfinite(log_w).all())
    release = model.release_log_weights(batch["x"], 5, labels=batch["label"])
    assert release.shape == (6, 5) and bool(torch.isfinite(release).all())
    with pytest.raises(ValueError, match="labels"):
        model.release_log_weights(batch["x"], 5)
    result = split_log_likelihood(model, dm, num_points=9, num_samples=4, seed=0, progress=False)
    assert result["log_likelihood_points"] == 9 and math.isfinite(result["log_likelihood_stderr"])
    assert math.isfinite(result["log_likelihood_release_recipe"])


def _project_solver(solver):
    """The project's solver in the reference's signature (psi, z0, z1, c_init (P, R, M), lambda), one pair per call:
    the per-point formula at the c_hat the batched program finds."""
    def infer(psi, z0, z1, c_init, l1_weight):
        out = [infer_coefficients(torch.from_numpy(psi), torch.from_numpy(z0[p]), torch.from_numpy(z1[p]),
                                  c_init=torch.from_numpy(c_init[p]), l1_weight=l1_weight, max_iter=solver.max_iter,
                                  ftol=solver.ftol, max_coeff=solver.max_coeff) for p in range(z0.shape[0])]
        return (np.stack([r.c.numpy() for r in out]), np.stack([r.energy.numpy() for r in out]),
                np.stack([r.num_iters.numpy() for r in out]))
    return infer


@pytest.mark.parametrize("closest_anchor", [False, True])
def test_vaells_terms_are_the_per_point_formula_at_the_same_samples(closest_anchor: bool, tmp_path: Path) -> None:
    # s = 4 and sigma_eps = 0.05: the s inside the Gaussian terms shows, and the prior's terms stay moderate.
    model, dm = _vaells(tmp_path, "model.latent_scale=4.0", "model.noise_std=0.05",
                        f"model.closest_anchor={closest_anchor}")
    batch = draw_test_points(dm, 3, seed=1)
    torch.manual_seed(0)
    samples, terms = model.release_terms(batch["x"], 4, labels=batch["label"])
    assert samples.anchors.shape == (3, 3, 2) and samples.prior_init.shape == (3, 4, 3, 2, 4)
    with torch.no_grad():
        x_hat = model.decode(samples.z.flatten(0, 1)).view(3, 4, -1)
    for n in range(3):
        ref = reference_log_weights(
            model.transport.psi.detach().numpy(), batch["x"][n].numpy(), x_hat[n].numpy(), samples.mu[n].numpy(),
            samples.anchors[n].numpy(), samples.z[n].numpy(), samples.post_init[n].numpy(),
            samples.prior_init[n].numpy(), recon=model.weights.recon, latent_scale=4.0, noise_std=0.05,
            coeff_scale=model.coeff_scale, post_l1=model.posterior_solver.l1_weight,
            prior_l1=model.prior_solver.l1_weight, closest_anchor=closest_anchor,
            infer_posterior=_project_solver(model.posterior_solver), infer_prior=_project_solver(model.prior_solver))
        # The same solver pair by pair: its path can part from the batched one's in the last bits, so c_hat
        # (20 iterations) and the terms agree to ~1e-5 relative, not to rounding.
        for key in ("log_lik", "log_posterior", "log_prior"):
            np.testing.assert_allclose(terms[key][n].numpy(), ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
    log_w = terms["log_lik"] + terms["log_prior"] - terms["log_posterior"]
    assert bool(torch.isfinite(log_w).all())
