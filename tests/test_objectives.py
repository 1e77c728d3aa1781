"""vaells_loss against a hand computation, LossWeights.scaled, and check_finite_loss."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from vaells.objectives import LossWeights, check_finite_loss, reconstruction_error, vaells_loss

# B = 2 samples, d = 2, M = 1, N_a = 2 anchors, data of 3 dimensions.
X = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
X_HAT = [[0.0, -0.5, 1.0], [1.0, 1.0, 0.5]]
POST_RESIDUAL = [[0.3, -0.4], [1.0, 2.0]]
POST_C = [[0.7], [-1.2]]
PRIOR_RESIDUAL = [[[0.1, 0.2], [2.0, -1.0]], [[-0.5, 0.5], [0.0, 3.0]]]
PRIOR_C = [[[0.5], [-2.0]], [[1.5], [0.25]]]
PSI = [[[0.1, -0.2], [0.3, 0.05]]]
WEIGHTS = LossWeights(recon=0.3, post_transport=0.7, post_l1=1.9, prior_transport=2.5, prior_l1=0.4, dictionary=0.6)


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _hand_terms(w: LossWeights, with_recon: bool = True) -> dict[str, float]:
    """Every term of the objective from its formula, with plain python."""

    def sq(v):
        return sum(x * x for x in v)

    def l1(v):
        return sum(abs(x) for x in v)

    terms = {}
    if with_recon:
        terms["recon"] = w.recon * sum(0.5 * sq([a - b for a, b in zip(x, xh, strict=True)])
                                       for x, xh in zip(X, X_HAT, strict=True)) / 2
    terms["post_transport"] = -w.post_transport * sum(0.5 * sq(r) for r in POST_RESIDUAL) / 2
    terms["post_l1"] = -w.post_l1 * sum(l1(c) for c in POST_C) / 2
    prior = 0.0
    for b in range(2):
        comps = [math.exp(-w.prior_transport * 0.5 * sq(PRIOR_RESIDUAL[b][i]) - w.prior_l1 * l1(PRIOR_C[b][i]))
                 for i in range(2)]
        prior += -math.log(sum(comps) / 2)
    terms["prior"] = prior / 2
    terms["dictionary"] = 0.5 * w.dictionary * sum(x * x for m in PSI for row in m for x in row)
    terms["loss"] = sum(terms.values())
    return terms


def _loss(w: LossWeights, with_recon: bool = True) -> dict[str, torch.Tensor]:
    extra = {"x": _t(X).float(), "x_hat": _t(X_HAT).float()} if with_recon else {}
    return vaells_loss(_t(POST_RESIDUAL), _t(POST_C), _t(PRIOR_RESIDUAL), _t(PRIOR_C), _t(PSI), w, **extra)


@pytest.mark.parametrize("with_recon", [True, False])
def test_vaells_loss_matches_hand_computation(with_recon: bool) -> None:
    got = _loss(WEIGHTS, with_recon)
    hand = _hand_terms(WEIGHTS, with_recon)
    assert set(got) == set(hand)
    for name, value in hand.items():
        assert got[name].dtype == torch.float64 and got[name].shape == ()
        assert got[name].item() == pytest.approx(value, rel=1e-6), name  # x, x_hat are float32


def test_vaells_loss_gradient_reaches_residuals_and_psi() -> None:
    post_r, prior_r, psi = _t(POST_RESIDUAL).requires_grad_(), _t(PRIOR_RESIDUAL).requires_grad_(), _t(PSI)
    psi.requires_grad_()
    terms = vaells_loss(post_r, _t(POST_C), prior_r, _t(PRIOR_C), psi, WEIGHTS)
    terms["loss"].backward()
    # d/dr of -w_pt * mean 1/2 ||r||^2 is -w_pt r / B; d/dPsi of w_dict/2 ||Psi||^2 is w_dict Psi
    torch.testing.assert_close(post_r.grad, -WEIGHTS.post_transport * post_r.detach() / 2)
    torch.testing.assert_close(psi.grad, WEIGHTS.dictionary * psi.detach())
    assert prior_r.grad.abs().sum() > 0


def test_reconstruction_error_sums_over_all_data_dimensions() -> None:
    x = torch.arange(12, dtype=torch.float32).view(2, 2, 3)
    got = reconstruction_error(x, torch.zeros_like(x))
    torch.testing.assert_close(got, 0.5 * x.pow(2).flatten(1).sum(-1))
    assert got.shape == (2,)


def test_scaled_scales_only_recon_and_prior_weights() -> None:
    w = WEIGHTS.scaled(recon=0.1, prior=0.01)
    assert w.recon == pytest.approx(0.03)
    assert w.prior_transport == pytest.approx(0.025)
    assert w.prior_l1 == pytest.approx(0.004)
    for name in ("post_transport", "post_l1", "dictionary"):
        assert getattr(w, name) == getattr(WEIGHTS, name), name
    assert asdict(WEIGHTS) == asdict(
        LossWeights(recon=0.3, post_transport=0.7, post_l1=1.9, prior_transport=2.5, prior_l1=0.4, dictionary=0.6)
    )  # the original is untouched
    assert WEIGHTS.scaled() == WEIGHTS


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_loss_names_the_bad_term(bad: float) -> None:
    terms = {"recon": torch.tensor(1.0), "prior": torch.tensor(bad), "loss": torch.tensor(bad)}
    with pytest.raises(FloatingPointError, match=r"\['prior', 'loss'\].*batch 17"):
        check_finite_loss(terms, step=17)
    check_finite_loss({"recon": torch.tensor(1.0), "loss": torch.tensor(2.0)}, step=0)  # finite: no error
