"""The paper's comparative claims as numbers, for every model through the model interface.

Synthetic data (Fig. 2, 4: "the prior follows the data manifold"), from decoded prior samples g(z), z ~ p(z):

- ``prior_manifold_error``: the mean distance of each decoded prior sample to the true manifold, i.e. to the
  nearest point of a dense sample of the noiseless manifold in data space (``dm.manifold_points``). Near the
  data's noise level when the prior generates the manifold; large when it generates points off it.
- ``prior_coverage_error``: the mean distance of each test point to its nearest decoded prior sample, with
  the same number of samples for every model. A prior that collapses onto its anchors scores well on the
  first number and badly on this one.
- ``prior_fit``: both sides at once against the noiseless manifold, the mean of ``prior_manifold_error`` and of
  the mean distance from each manifold point to its nearest decoded prior sample (a symmetric Chamfer
  distance): a prior scores well only if its samples lie on the manifold *and* cover it, so a point mass on the
  anchors cannot win. Its control ``prior_fit_anchor_points`` (models with class-matched anchors: VAELLS) is
  the same score of the decoded encoded anchors alone. VAELLS's synthetic anchors are noiseless points of the
  manifold, which the baselines never receive; the control shows what they alone are worth.

Rotated MNIST (Fig. 5: "sampling results in rotations"), at matched variation (posterior samples whose
decoded images differ from the decoded centre c by the same mean per-pixel squared difference for every
model, ``images.match_spread``):

- ``rotation_share_matched``: for each decoded sample s, the share of its change that the best rotation of the
  decoded centre explains, 1 - ||s - rot_theta*(c)||^2 / ||s - c||^2 with theta* the best angle on a grid
  (``SHARE_ANGLES``); the mean over samples. 1 for samples that are rotations of c, ~0 for any change that is
  not a rotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaells.data.mnist import rotate
from vaells.distributions import AnchorPrior
from vaells.evaluation.common import decode_chunked, encode_chunked, evaluating, seeded_pick
from vaells.evaluation.preservation import decoded_posterior_samples, match_spread, sample_variation

#: The rotation grid of ``rotation_share``, degrees: every 0.5 degrees within +-20, every 2 degrees beyond, over a
#: whole turn. Fine where samples at matched variation mostly turn: for a rotating oracle on 32x32 digits, turned
#: by a few degrees, a 5-degree grid explained only 64% of the change (the half-step error is a visible part of
#: a small turn), a 1-degree grid 93%, this one 99.4%.
SHARE_ANGLES = tuple(sorted({a / 2 for a in range(-40, 41)} | set(range(-180, 180, 2))))


def nearest_distance(a: Tensor, b: Tensor, chunk: int = 512) -> Tensor:
    """The Euclidean distance from each row of a (N, ...) to its nearest row of b (M, ...).  -> (N,) float64."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.cat([torch.cdist(part, b).amin(-1) for part in a.split(chunk)])


def prior_scores(samples: Tensor, manifold: Tensor, test_x: Tensor) -> dict[str, float]:
    """The prior's numbers for decoded prior samples (S, D) against the noiseless ``manifold`` (M, D) and the test
    inputs ``test_x`` (N, D): ``prior_manifold_error``, ``prior_coverage_error`` and ``prior_fit``."""
    on = nearest_distance(samples, manifold).mean()
    covered = nearest_distance(manifold, samples).mean()
    return {
        "prior_manifold_error": float(on),
        "prior_coverage_error": float(nearest_distance(test_x, samples).mean()),
        "prior_fit": float(0.5 * (on + covered)),
    }


def anchor_prior_samples(model: nn.Module, coeff_scale: float, num_samples: int) -> Tensor:
    """``num_samples`` decoded samples of VAELLS's anchor prior (eq. 8) over every class's anchors, as
    ``sample_prior`` draws without labels, at the Laplace scale ``coeff_scale``.  -> (S, D)."""
    pool = model.anchor_latents().unsqueeze(0).expand(num_samples, -1, -1)  # (S, K * N_a, d)
    return decode_chunked(model, AnchorPrior(pool, model.transport, coeff_scale, model.noise_std).rsample())


def prior_fit(model: nn.Module, manifold: Tensor, test_x: Tensor, *, num_samples: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """``prior_scores`` of ``num_samples`` decoded prior samples, and for a model with class-matched anchors the
    control ``prior_fit_anchor_points``: the same two-sided score of a point mass on its encoded anchors. For
    VAELLS also ``prior_fit_loss_scale``: its prior sampled at the Laplace scale its loss trained the prior's
    coefficients with, b = 1 / ``weights.prior_l1``, where the sampled prior (``sample_prior``, ``prior_fit``)
    uses the posterior's b = 1 / ``weights.post_l1``."""
    with evaluating(model, seed):
        samples = decode_chunked(model, model.sample_prior(num_samples))  # (S, D)
        anchors = model.anchor_latents() if hasattr(model, "anchor_latents") else None
        points = None if anchors is None else decode_chunked(model, anchors)  # (K * N_a, D)
        trained = None
        if anchors is not None and hasattr(model, "weights"):
            trained = anchor_prior_samples(model, 1.0 / model.weights.prior_l1, num_samples)
    out = prior_scores(samples, manifold, test_x)
    if points is not None:
        out["prior_fit_anchor_points"] = prior_scores(points, manifold, test_x)["prior_fit"]
    if trained is not None:
        out["prior_fit_loss_scale"] = prior_scores(trained, manifold, test_x)["prior_fit"]
    return out


def rotation_share(centre: Tensor, samples: Tensor, angles: Sequence[float] = SHARE_ANGLES) -> Tensor:
    """1 - min_theta ||s - rot_theta(c)||^2 / ||s - c||^2 for each sample.  centre (N, C, H, W), samples
    (N, S, C, H, W) -> (N, S). 0 (the grid holds theta = 0) up to 1; NaN where a sample equals its centre."""
    n, num_angles = centre.shape[0], len(angles)
    theta = torch.tensor([float(a) for a in angles], dtype=torch.float32)
    turned = rotate(centre.float().repeat_interleave(num_angles, 0), theta.repeat(n))  # (N * A, C, H, W)
    turned = turned.view(n, num_angles, -1).double()  # (N, A, P)
    s = samples.flatten(2).double()  # (N, S, P)
    residual = torch.cdist(s, turned).pow(2).amin(-1)  # (N, S): the best angle per sample
    change = (s - centre.flatten(1).double().unsqueeze(1)).pow(2).sum(-1)  # (N, S)
    # theta = 0 leaves c as it is, so its residual is the change itself: exactly, not to cdist's rounding
    return 1.0 - torch.minimum(residual, change) / change


def rotation_share_matched(model: nn.Module, digits: Tensor, *, target: float, num_samples: int = 10,
                           search_digits: int = 100, seed: int = 0) -> dict[str, float]:
    """The mean ``rotation_share`` of decoded posterior samples of ``digits`` (N, C, H, W) at the spread whose
    samples vary the decoded digit by ``target`` (searched on the first ``search_digits``), with the spread
    found and the variation reached."""
    probe = digits[:search_digits]
    spread, reached = match_spread(lambda s: sample_variation(model, probe, s, seed=seed), target)
    with evaluating(model, seed):
        centre = decode_chunked(model, encode_chunked(model, digits))  # (N, C, H, W)
        samples = decoded_posterior_samples(model, digits, num_samples, spread)  # (N, S, C, H, W)
    share = rotation_share(centre, samples)
    return {"rotation_share_matched": float(share.nanmean()), "matched_spread": spread, "matched_variation": reached}


def comparative_metrics(model: nn.Module, dm: object, *, matched_variation: float = 0.01, num_digits: int = 200,
                        seed: int = 0) -> dict[str, float]:
    """The numbers above that ``dm``'s data allows: the prior's fit where the data knows its manifold
    (``manifold_points``), the rotation share for rotated digits; {} otherwise."""
    if hasattr(dm, "manifold_points"):
        dm.setup("test")
        test_x = torch.cat([batch["x"] for batch in dm.test_dataloader()])
        return prior_fit(model, dm.manifold_points(), test_x, seed=seed)
    if getattr(dm, "rotates_digits", False):
        dm.setup("test")
        pick = seeded_pick(len(dm.test_set), num_digits, seed)
        digits = torch.stack([dm.test_set[int(i)]["digit"] for i in pick])  # upright, padded: (N, 1, 32, 32)
        return rotation_share_matched(model, digits, target=matched_variation, seed=seed)
    return {}
