"""Natural MNIST: whether posterior samples keep the digit's class.

``class_preservation`` is the fraction of decoded posterior samples that a small CNN
(``vaells.evaluation.classifier``; ``classifier_accuracy`` is its own test accuracy) assigns to the input's
class. ``class_preservation_ceiling`` is the same fraction for the decoded posterior *mean*
decode(encode(x)): samples cannot keep a class that the autoencoder already lost, so compare the two.
``class_preservation_matched`` compares models at one matched amount of visible variation.

These use only the model interface (``vaells.models.base.LatentModel``), so every model can be scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from vaells.evaluation.classifier import predict
from vaells.evaluation.common import _device, decode_chunked, encode_chunked, evaluating


def decoded_posterior_samples(model: nn.Module, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
    """Decoded ``model.posterior_samples`` at ``spread`` (for VAELLS: the Laplace scale ``spread * b``).

    x (N, *img) -> (N, num_samples, *img) float32 on the CPU. x is encoded in one call. Call inside
    ``evaluating`` for seeding.
    """
    z = model.posterior_samples(x.to(_device(model)), num_samples, spread)  # (N, S, d)
    images = decode_chunked(model, z.reshape(-1, z.shape[-1]))
    return images.view(x.shape[0], num_samples, *images.shape[1:])


def class_preservation(
    model: nn.Module, clf: nn.Module, x: Tensor, labels: Tensor, *, num_samples: int = 10, spread: float = 1.0,
    seed: int = 0,
) -> float:
    """Fraction of decoded posterior samples (``num_samples`` per digit) that ``clf`` assigns to the digit's
    class.  x (N, C, H, W), labels (N,)."""
    with evaluating(model, seed):
        samples = decoded_posterior_samples(model, x, num_samples, spread)  # (N, S, C, H, W)
    predicted = predict(clf, samples.flatten(0, 1)).view(x.shape[0], num_samples)
    return float((predicted == labels.cpu().view(-1, 1)).float().mean())


def class_preservation_ceiling(model: nn.Module, clf: nn.Module, x: Tensor, labels: Tensor) -> float:
    """Fraction of reconstructions decode(encode(x)) (no transport, no noise) that ``clf`` assigns to the
    digit's class: what ``class_preservation`` would be if the operators moved nothing."""
    with evaluating(model, 0):
        reconstructions = decode_chunked(model, encode_chunked(model, x))
    return float((predict(clf, reconstructions) == labels.cpu()).float().mean())


def sample_variation(model: nn.Module, x: Tensor, spread: float, *, num_samples: int = 4, seed: int = 0) -> float:
    """Mean per-pixel squared difference between decoded posterior samples at ``spread`` and the decoded
    centre decode(encode(x)): how much visible change sampling makes.  x (N, C, H, W)."""
    with evaluating(model, seed):
        centre = decode_chunked(model, encode_chunked(model, x))  # (N, C, H, W)
        samples = decoded_posterior_samples(model, x, num_samples, spread)  # (N, S, C, H, W)
    value = float((samples - centre.unsqueeze(1)).pow(2).mean())
    return value if math.isfinite(value) else math.inf


def match_spread(
    variation: Callable[[float], float], target: float, *, low: float = 1e-3, high: float = 1e4, rtol: float = 0.02,
    max_iter: int = 40,
) -> tuple[float, float]:
    """The spread s in [low, high] with variation(s) = target, by bisection on log s; returns (s, variation(s)).

    ``variation`` must grow with s, which holds when it is evaluated with fixed random numbers (the samples are
    c = s b l(u) for the same u). Stops when within ``rtol`` of the target; if the target lies outside
    [variation(low), variation(high)], returns the nearer end (the caller can see the variation reached).
    """
    if not target > 0:
        raise ValueError(f"the target variation must be > 0, got {target}")
    v_low, v_high = variation(low), variation(high)
    if v_low >= target:
        return low, v_low
    if v_high <= target:
        return high, v_high
    best = (high, v_high)
    for _ in range(max_iter):
        mid = math.sqrt(low * high)
        v = variation(mid)
        if abs(v - target) < abs(best[1] - target):
            best = (mid, v)
        if abs(v - target) <= rtol * target:
            break
        low, high = (mid, high) if v < target else (low, mid)
    return best


def class_preservation_matched(
    model: nn.Module, clf: nn.Module, x: Tensor, labels: Tensor, *, target: float, num_samples: int = 10,
    search_digits: int = 200, seed: int = 0,
) -> dict[str, float]:
    """``class_preservation`` at the spread whose samples vary the decoded digit by ``target`` (mean per-pixel
    squared difference from the decoded centre, ``sample_variation``), so that models, or one model with
    different operators, are compared at equal visible change. The spread is searched on the first
    ``search_digits`` digits. Returns the preservation, the spread found and the variation reached."""
    probe = x[:search_digits]
    spread, reached = match_spread(lambda s: sample_variation(model, probe, s, seed=seed), target)
    return {
        "class_preservation_matched": class_preservation(model, clf, x, labels, num_samples=num_samples,
                                                         spread=spread, seed=seed),
        "matched_spread": spread,
        "matched_variation": reached,
    }
