"""The comparative metrics (vaells.evaluation.comparison) pass and fail where they should: the prior's fit to the
true manifold, its coverage of the test data, the rotation share, and the matched-variation search through the
model interface."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from vaells.data.datamodules import ConcentricCirclesDataModule, SwissRollDataModule
from vaells.data.mnist import rotate
from vaells.evaluation.comparison import SHARE_ANGLES, comparative_metrics, nearest_distance, prior_fit, rotation_share
from vaells.evaluation.preservation import match_spread, sample_variation


class PointPrior(nn.Module):
    """A model in data space: decode is the identity and the prior draws from a fixed set of points."""

    def __init__(self, points: Tensor) -> None:
        super().__init__()
        self.points = points

    def sample_prior(self, num_samples: int, labels: Tensor | None = None) -> Tensor:
        return self.points[torch.randint(self.points.shape[0], (num_samples,))]

    def decode(self, z: Tensor) -> Tensor:
        return z


@pytest.mark.parametrize("dm_class", [SwissRollDataModule, ConcentricCirclesDataModule])
def test_prior_manifold_error_is_the_noise_on_the_manifold_and_large_off_it(dm_class) -> None:
    dm = dm_class()
    manifold, train_x, test_x = dm.manifold_points(), dm.train_set.tensors["x"], dm.test_set.tensors["x"]
    noise = float(nearest_distance(test_x, manifold).mean())  # how far the noisy data lie from the manifold
    on = prior_fit(PointPrior(train_x), manifold, test_x)
    assert on["prior_manifold_error"] == pytest.approx(noise, rel=0.2)
    shift = torch.nn.functional.normalize(torch.randn(1, train_x.shape[1], generator=torch.Generator().manual_seed(0)))
    off = prior_fit(PointPrior(train_x + 0.5 * shift), manifold, test_x)
    assert off["prior_manifold_error"] > 10 * max(on["prior_manifold_error"], 0.01)
    # A prior collapsed onto its (noise-free) anchors fits the manifold perfectly and covers it badly.
    collapsed = prior_fit(PointPrior(dm.anchors), manifold, test_x)
    assert collapsed["prior_manifold_error"] < 1e-3
    assert collapsed["prior_coverage_error"] > 5 * on["prior_coverage_error"]
    # ... so the two-sided prior_fit, which a point mass on the anchors cannot win, ranks it below the data
    assert collapsed["prior_fit"] > 3 * on["prior_fit"]
    assert off["prior_fit"] > 3 * on["prior_fit"]


class AnchoredPointPrior(PointPrior):
    """A PointPrior that also has class-matched anchors, as VAELLS does."""

    def __init__(self, points: Tensor, anchors: Tensor) -> None:
        super().__init__(points)
        self.anchors = anchors

    def anchor_latents(self) -> Tensor:
        return self.anchors


def test_the_anchor_point_mass_control_scores_the_anchors_alone() -> None:
    dm = SwissRollDataModule()
    manifold, train_x, test_x = dm.manifold_points(), dm.train_set.tensors["x"], dm.test_set.tensors["x"]
    scores = prior_fit(AnchoredPointPrior(train_x, dm.anchors), manifold, test_x)
    assert scores["prior_fit_anchor_points"] == pytest.approx(prior_fit(PointPrior(dm.anchors), manifold,
                                                                        test_x)["prior_fit"])
    assert scores["prior_fit"] < scores["prior_fit_anchor_points"]
    assert "prior_fit_anchor_points" not in prior_fit(PointPrior(train_x), manifold, test_x)


def test_comparative_metrics_pick_what_the_data_allows() -> None:
    dm = SwissRollDataModule(num_train=100, num_val=10, num_test=50)
    metrics = comparative_metrics(PointPrior(dm.train_set.tensors["x"]), dm)
    assert set(metrics) == {"prior_manifold_error", "prior_coverage_error", "prior_fit"}
    assert comparative_metrics(PointPrior(dm.train_set.tensors["x"]), object()) == {}


def _images() -> Tensor:
    """Four 32x32 images, each an off-centre bar and a dot, so that no rotation maps one onto itself."""
    x = torch.zeros(4, 1, 32, 32)
    for i in range(4):
        x[i, 0, 8 + i : 11 + i, 6:20] = 1.0
        x[i, 0, 20:23, 18 + i : 21 + i] = 1.0
    return x


def test_rotation_share_is_one_for_rotations_and_zero_for_noise() -> None:
    centre = _images()
    gen = torch.Generator().manual_seed(0)
    on_grid = torch.tensor(SHARE_ANGLES, dtype=torch.float32)[torch.randint(len(SHARE_ANGLES), (4 * 3,), generator=gen)]
    on_grid[on_grid == 0] = 45.0  # a sample equal to its centre has no change to explain
    turned = rotate(centre.repeat_interleave(3, 0), on_grid).view(4, 3, 1, 32, 32)
    assert float(rotation_share(centre, turned).min()) > 1 - 1e-6
    off_grid = rotate(centre.repeat_interleave(3, 0), torch.tensor([37.0, -62.5, 101.0] * 4)).view(4, 3, 1, 32, 32)
    assert float(rotation_share(centre, off_grid).mean()) > 0.8
    noisy = centre.unsqueeze(1) + 0.1 * torch.randn(4, 3, 1, 32, 32, generator=gen)
    share = rotation_share(centre, noisy)
    assert float(share.min()) >= 0.0 and float(share.mean()) < 0.05  # theta = 0 is on the grid


class LinearGaussian(nn.Module):
    """A toy LatentModel: z = mu + spread * eps around a fixed code, decoded linearly into 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 0.1)

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :3]

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.weight.T).view(-1, 1, 8, 8)

    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        mu = self.encode(x)
        return mu.unsqueeze(1) + spread * torch.randn(mu.shape[0], num_samples, mu.shape[1])


def test_matched_variation_search_reaches_its_target_through_the_interface() -> None:
    model, x = LinearGaussian(), torch.rand(20, 1, 8, 8)
    for target in (1e-3, 1e-2):
        spread, reached = match_spread(lambda s: sample_variation(model, x, s), target)
        assert reached == pytest.approx(target, rel=0.02)
        # E ||W eps||^2 / 64 = spread^2 ||W||_F^2 / 64: the spread found is the analytic one, to sampling error
        assert spread == pytest.approx(math.sqrt(target * 64 / float(model.weight.pow(2).sum())), rel=0.2)
