"""Coefficient inference and the log-likelihood's terms written the authors' way: scipy CG, one pair and one restart at
a time.

This is the test oracle and the benchmark baseline for ``vaells.inference`` and for VAELLS's log-weights
(``vaells.models.importance``, docs/method.md §3); training never uses it.
It mirrors the release (docs/method.md §1.3): ``scipy.optimize.minimize(method="CG")`` with at most 50
iterations, the energy 1/2 ||z1 - expm(A) z0||^2 + lambda ||c||_1, and an exact gradient of the smooth
part from ``scipy.linalg.expm_frechet`` plus lambda * sign(c) for the L1 term. The release passes
``tol=10^-7`` (Python's XOR, i.e. -13), so CG never stops on the gradient norm: we set ``gtol=0`` for the
same effect, and it runs to ``maxiter`` or until its line search loses precision.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import expm, expm_frechet
from scipy.optimize import minimize
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits


def _energy_and_grad(c: np.ndarray, psi: np.ndarray, z0: np.ndarray, z1: np.ndarray, l1_weight: float):
    a = np.tensordot(c, psi, axes=1)  # (d, d)
    grads = np.empty_like(c)
    t = None
    for m in range(psi.shape[0]):
        if t is None:
            t, frechet = expm_frechet(a, psi[m], compute_expm=True)
        else:
            frechet = expm_frechet(a, psi[m], compute_expm=False)
        grads[m] = (t @ z0 - z1) @ (frechet @ z0)
    r = t @ z0 - z1
    e = 0.5 * float(r @ r) + l1_weight * float(np.abs(c).sum())
    return e, grads + l1_weight * np.sign(c)


def reference_energy(psi: np.ndarray, z0: np.ndarray, z1: np.ndarray, c: np.ndarray, l1_weight: float) -> float:
    """E(c) for one pair, with scipy's expm."""
    r = expm(np.tensordot(c, psi, axes=1)) @ z0 - z1
    return 0.5 * float(r @ r) + l1_weight * float(np.abs(c).sum())


def reference_infer(
    psi: np.ndarray,
    z0: np.ndarray,
    z1: np.ndarray,
    c_init: np.ndarray,
    l1_weight: float,
    maxiter: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve each pair from each of its starts and keep the lowest energy.

    Args:
        psi: (M, d, d); z0, z1: (P, d); c_init: (P, R, M) starts (the same ones the batched solver gets).

    Returns:
        c (P, M), energy (P,), iterations of the winning start (P,).
    """
    psi, z0, z1, c_init = (np.asarray(v, dtype=np.float64) for v in (psi, z0, z1, c_init))
    num_pairs, num_restarts, m = c_init.shape
    best_c = np.zeros((num_pairs, m))
    best_e = np.full(num_pairs, np.inf)
    best_it = np.zeros(num_pairs, dtype=np.int64)
    # One BLAS thread: the matrices are tiny, and a threaded OpenBLAS spends ~100x longer synchronising
    # than computing when the cores are shared (measured: scipy expm of a 2 x 2 matrix, 16 ms vs 0.15 ms).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # "precision loss" is the release's normal way to stop
        for p in range(num_pairs):
            for r in range(num_restarts):
                res = minimize(
                    _energy_and_grad, c_init[p, r], args=(psi, z0[p], z1[p], l1_weight), jac=True,
                    method="CG", options={"maxiter": maxiter, "gtol": 0.0},
                )
                if res.fun < best_e[p]:
                    best_c[p], best_e[p], best_it[p] = res.x, res.fun, res.nit
    return best_c, best_e, best_it


def _gaussian_laplace(residual: np.ndarray, c: np.ndarray, noise_std: float, coeff_scale: float) -> np.ndarray:
    """log N(residual; 0, sigma^2 I) + log Lap(c; 0, b), written out.  residual (..., d), c (..., M) -> (...,)."""
    d, m = residual.shape[-1], c.shape[-1]
    return (-0.5 * (residual**2).sum(-1) / noise_std**2 - np.abs(c).sum(-1) / coeff_scale
            - 0.5 * d * np.log(2 * np.pi) - d * np.log(noise_std) - m * np.log(2 * coeff_scale))


def reference_log_weights(
    psi: np.ndarray,
    x: np.ndarray,
    x_hat: np.ndarray,
    mu: np.ndarray,
    anchors: np.ndarray,
    z: np.ndarray,
    post_init: np.ndarray,
    prior_init: np.ndarray,
    *,
    recon: float,
    latent_scale: float,
    noise_std: float,
    coeff_scale: float,
    post_l1: float,
    prior_l1: float,
    closest_anchor: bool,
    infer_posterior=reference_infer,
    infer_prior=reference_infer,
) -> dict[str, np.ndarray]:
    """The K log-weight terms of one test point as the release computes them (docs/method.md §3): each sample's
    posterior and prior coefficients solved pair by pair (``infer_posterior``, ``infer_prior``: the scipy CG of
    ``reference_infer``, or any solver with its signature), then the densities written out with numpy.

    Args:
        psi (M, d, d); x (D,) the point and x_hat (K, D) its decoded samples g(s z_k); mu (d,); anchors (N_a, d);
        z (K, d); post_init (K, R, M) and prior_init (K, N_a, R', M): the starts.

    Returns:
        ``log_lik``, ``log_posterior``, ``log_prior``, each (K,).
    """
    psi, x, x_hat, mu, anchors, z, post_init, prior_init = (
        np.asarray(v, dtype=np.float64) for v in (psi, x, x_hat, mu, anchors, z, post_init, prior_init))
    k, num_anchors = z.shape[0], anchors.shape[0]
    size = x.size
    log_lik = (-0.5 * recon * ((x_hat.reshape(k, -1) - x.reshape(1, -1)) ** 2).sum(-1)
               - 0.5 * size * np.log(2 * np.pi) + 0.5 * size * np.log(recon))
    mu_k = np.repeat(mu[None], k, 0)
    c_post, _, _ = infer_posterior(psi, mu_k, z, post_init, post_l1)
    t_post = np.stack([expm(np.tensordot(c, psi, axes=1)) @ mu for c in c_post])
    log_posterior = _gaussian_laplace(latent_scale * (z - t_post), c_post, noise_std, coeff_scale)
    a_rep = np.tile(anchors, (k, 1))  # (K * N_a, d): sample k's pairs are rows k N_a .. (k + 1) N_a - 1
    z_rep = np.repeat(z, num_anchors, 0)
    c_prior, e_prior, _ = infer_prior(psi, a_rep, z_rep, prior_init.reshape(k * num_anchors, *prior_init.shape[2:]),
                                prior_l1)
    t_prior = np.stack([expm(np.tensordot(c, psi, axes=1)) @ a for c, a in zip(c_prior, a_rep, strict=True)])
    comp = _gaussian_laplace(latent_scale * (z_rep - t_prior), c_prior, noise_std, coeff_scale).reshape(k, -1)
    if closest_anchor:
        comp = comp[np.arange(k), e_prior.reshape(k, -1).argmin(-1)][:, None]
    log_prior = logsumexp(comp, axis=-1) - np.log(comp.shape[-1])
    return {"log_lik": log_lik, "log_posterior": log_posterior, "log_prior": log_prior}
