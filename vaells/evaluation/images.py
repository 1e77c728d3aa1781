"""Rotated and natural MNIST metrics: what ``evaluate.py`` adds for image models.

Rotated MNIST asks whether the learned operator *is* a rotation: upright test digits are rotated by
theta in -90..90 degrees (step 15) with ``vaells.data.mnist.rotate``, the one rotation of the project, and
compared with the decoded frames of the operator's extrapolated path from each upright digit, c in [-S, S]
with S the coefficient that turns the digits by 90 degrees if the operator rotates them (``rotation_span``).

- ``rotation_match``: mean over digits and angles of the best Pearson correlation (over pixels) between the
  truly rotated digit and any frame of the path.
- ``rotation_ceiling``: mean correlation between the truly rotated digit and its own reconstruction
  decode(encode(rotated)); the path cannot do better than the autoencoder, so compare the two.
- ``rotation_order``: mean over digits of |Spearman(theta, index of the best frame)|. The absolute value is
  taken per digit because the direction of an operator is arbitrary (c -> -c runs the same path
  backwards), and the decoder may map one latent turning direction to either image direction for
  different digits; either way the frames must appear in the order of the angles.

Natural MNIST asks whether posterior samples keep the digit: ``class_preservation`` is the fraction of
decoded posterior samples that a small CNN, trained on the training split (``classifier_accuracy`` is its
own test accuracy), assigns to the input's class. ``class_preservation_ceiling`` is the same fraction for the
decoded posterior *mean* decode(encode(x)): samples cannot keep a class that the autoencoder already lost
(with d = 6 it loses some), so, as for rotations, compare the two. ``mse`` and ``elbo`` come from
``vaells.evaluation.summary``.

The class metrics use only the model interface (``vaells.models.base.LatentModel``: ``encode``, ``decode``,
``posterior_samples``), so every model of the project, and the fakes of the tests, can be scored; the rotation
metrics follow the paths of transport operators and exist for models that have them (``has_operators``).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vaells.data.mnist import MNISTDataModule, RotatedMNISTDataModule, rotate
from vaells.models.base import has_operators
from vaells.progress import stage

#: The issue's angle grid, degrees.
ROTATION_ANGLES = tuple(range(-90, 91, 15))
#: Images per decoder call (bounds the activations of 64-channel conv layers to ~100 MB).
CHUNK = 512


# -- helpers --------------------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@contextmanager
def evaluating(model: nn.Module, seed: int) -> Iterator[None]:
    """Eval mode, no gradients and seeded global RNGs in a fork (training's stream is left alone)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def decode_chunked(model: nn.Module, z: Tensor) -> Tensor:
    """model.decode over (N, d) in chunks, returned float32 on the CPU.  -> (N, *image_shape)."""
    return torch.cat([model.decode(part).float().cpu() for part in z.split(CHUNK)])


def encode_chunked(model: nn.Module, x: Tensor) -> Tensor:
    """model.encode over (N, *image_shape) in chunks, on the model's device.  -> (N, d)."""
    device = _device(model)
    return torch.cat([model.encode(part.to(device)) for part in x.split(CHUNK)])


def _standardise(a: Tensor) -> Tensor:
    """Flatten the last 3 axes (C, H, W) and scale each image to zero mean and unit norm (float64)."""
    a = a.flatten(-3).double()
    a = a - a.mean(-1, keepdim=True)
    return a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation over pixels of matching images.  a, b (..., C, H, W) -> (...,).

    A constant image has correlation 0 with everything.
    """
    return (_standardise(a) * _standardise(b)).sum(-1)


def pearson_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Correlation of every image of a with every image of b.  a (..., A, C, H, W), b (..., F, C, H, W)
    -> (..., A, F), as one batched matmul."""
    return _standardise(a) @ _standardise(b).transpose(-1, -2)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks); 0 when either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def _rotating_planes(psi_m: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Psi_m's eigenvalues lambda (d,), the mean speed |lambda_k| |w_nk| of the encodings mu (N, d) along each
    (w = V^-1 mu, V the unit eigenvectors), which of them rotate, and ||Psi_m||_2."""
    p = psi_m.detach().to("cpu", torch.float64)  # (d, d)
    norm = float(torch.linalg.matrix_norm(p, ord=2))
    lam, vecs = torch.linalg.eig(p)  # (d,), (d, d) unit columns
    w = torch.linalg.solve(vecs, mu.detach().to("cpu", torch.complex128).T)  # (d, N)
    speed = lam.abs() * w.abs().mean(-1)  # (d,)
    return lam, speed, lam.imag.abs() > 1e-6 * norm, norm


def _capped(span: float, lam: Tensor, max_growth: float) -> float:
    """span, capped at max_growth / max |Re lambda| so that an expanding operator scales the start by at most
    e^max_growth."""
    growth = float(lam.real.abs().max())
    return min(span, max_growth / growth) if growth > 0 else span


def coefficient_span(psi_m: Tensor, mu: Tensor, max_growth: float = 3.0) -> float:
    """Half-width S of a coefficient range [-S, S] along Psi_m: half a turn of its dominant rotating plane.

    An eigenvalue pair a +- i w of Psi_m turns its latent plane by w c. Of the rotating planes, the dominant one
    is the one with the largest mean speed |lambda_k| |w_nk| of the encodings mu (N, d); a plane of init noise
    that the digits hardly occupy is ignored. S = pi / w_k. If that plane is the image rotation's fundamental, the
    path covers -180..180 degrees; if it is a harmonic (its k-th: k times the fundamental's frequency), 180 / k.
    Without rotation S = 2 / ||Psi_m||_2. S is capped as ``_capped`` says. For paths and figures;
    ``rotation_span`` is the rotation metric's.
    """
    lam, speed, rotating, norm = _rotating_planes(psi_m, mu)
    if norm == 0.0:
        return 1.0
    if bool(rotating.any()):
        k = int(torch.where(rotating, speed, torch.full_like(speed, -1.0)).argmax())
        span = math.pi / float(lam.imag[k].abs())
    else:
        span = 2.0 / norm
    return _capped(span, lam, max_growth)


def rotation_span(psi_m: Tensor, mu: Tensor, max_angle: float, occupied: float = 0.1,
                  max_growth: float = 3.0) -> float:
    """The coefficient S that turns the digits by ``max_angle`` degrees along Psi_m, if its slowest candidate
    plane is the image rotation's fundamental: S = radians(max_angle) / w_1.

    An image rotation by theta turns the fundamental plane by theta and its k-th harmonic by k theta; the learned
    operators carry harmonics (README, "What the operators learn"), and a harmonic can move the encodings faster
    than the fundamental, so the fastest plane (``coefficient_span``) may be a harmonic, and the path would
    then cover only max_angle / k. The candidates are the rotating planes that

    - the digits occupy: mean speed (``_rotating_planes``) at least ``occupied`` times the fastest plane's; and
    - turn at least 1 / (floor(d / 2) + 1) times as fast as the fastest of those: d dimensions hold at most
      floor(d / 2) rotating planes, so harmonics 1..floor(d / 2) of one rotation put the fundamental no lower.

    The planes these exclude are init noise: either the digits barely turn in them, or they hold the digits'
    identity with a large amplitude and barely turn (trained runs have one at a twentieth of the fastest
    frequency whose speed equals the fundamental's; taking it turned the digits by +-650 degrees, README).
    Without rotation, ``coefficient_span``. S is capped as ``_capped`` says.
    """
    lam, speed, rotating, norm = _rotating_planes(psi_m, mu)
    if norm == 0.0 or not bool(rotating.any()):
        return coefficient_span(psi_m, mu, max_growth)
    freq = lam.imag.abs()
    keep = rotating & (speed >= occupied * float(speed[rotating].max()))
    keep &= freq * (psi_m.shape[-1] // 2 + 1) >= float(freq[keep].max())
    return _capped(math.radians(max_angle) / float(freq[keep].min()), lam, max_growth)


def operator_path_frames(model: nn.Module, mu: Tensor, m: int, span: float, num_frames: int) -> Tensor:
    """Decoded frames of expm(c Psi_m) mu for c in linspace(-span, span, num_frames).

    mu (N, d) -> (N, num_frames, *image_shape), float32 on the CPU.
    """
    t = torch.linspace(-span, span, num_frames, dtype=torch.float64)
    path = model.transport.orbit(mu, m, t)  # (F, N, d)
    frames = decode_chunked(model, path.reshape(-1, path.shape[-1]))  # (F * N, *img)
    return frames.view(num_frames, mu.shape[0], *frames.shape[1:]).transpose(0, 1)


# -- rotated MNIST --------------------------------------------------------------------------------------
def rotation_metrics(
    model: nn.Module,
    digits: Tensor,
    *,
    angles: Sequence[float] = ROTATION_ANGLES,
    num_frames: int = 61,
    operator: int | None = None,
    coeff_span: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """rotation_match, rotation_ceiling and rotation_order for upright digits (N, C, H, W) in [0, 1].

    The path runs over c in [-S, S] along operator ``operator`` (default: each operator in turn, keeping the
    one with the best match), S = ``coeff_span`` or ``rotation_span`` of the encodings at the largest |angle|.
    Also returns the operator and span used (``rotation_operator``, ``rotation_coeff_span``).
    """
    digits, theta, rotated = _rotated_copies(digits, angles, num_frames)
    with evaluating(model, seed):
        recon = decode_chunked(model, encode_chunked(model, rotated.flatten(0, 1)))
        ceiling = pearson(rotated, recon.view_as(rotated))  # (N, A)
        mu = encode_chunked(model, digits)  # (N, d)
        candidates = range(model.transport.num_operators) if operator is None else [operator]
        max_angle = float(theta.abs().max())
        best: tuple[float, int, float, Tensor] | None = None
        for m in candidates:
            span = coeff_span if coeff_span is not None else rotation_span(model.transport.psi[m], mu, max_angle)
            frames = operator_path_frames(model, mu, m, span, num_frames)  # (N, F, C, H, W)
            corr = pearson_matrix(rotated, frames)  # (N, A, F)
            match = float(corr.amax(-1).mean())
            if best is None or match > best[0]:
                best = (match, m, span, corr)
    match, m, span, corr = best
    return {
        "rotation_match": match,
        "rotation_ceiling": float(ceiling.mean()),
        "rotation_order": _path_order(corr, theta),
        "rotation_operator": float(m),
        "rotation_coeff_span": float(span),
    }


def _rotated_copies(digits: Tensor, angles: Sequence[float], num_frames: int) -> tuple[Tensor, Tensor, Tensor]:
    """The rotation metrics' inputs, checked: upright digits (N, C, H, W) as float32 on the CPU, the angles theta
    (A,) in degrees, and each digit rotated by each angle (N, A, C, H, W)."""
    if digits.dim() != 4 or digits.shape[0] < 1:
        raise ValueError(f"digits must have shape (N, C, H, W) with N >= 1, got {tuple(digits.shape)}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    digits = digits.float().cpu()
    theta = torch.tensor([float(a) for a in angles], dtype=torch.float32)
    rotated = rotate(digits.repeat_interleave(len(angles), 0), theta.repeat(digits.shape[0]))
    return digits, theta, rotated.view(digits.shape[0], len(angles), *digits.shape[1:])


def _path_order(corr: Tensor, theta: Tensor) -> float:
    """Mean over digits of |Spearman(theta, index of the path frame that best matches each rotated digit)|.
    corr (N, A, F): correlations of A rotated copies with F path frames; theta (A,) degrees."""
    index = corr.argmax(-1).numpy()  # (N, A)
    return float(np.mean([abs(spearman(theta.numpy(), row)) for row in index]))


def rotation_flow_fit(
    model: nn.Module,
    digits: Tensor,
    *,
    angles: Sequence[float] = ROTATION_ANGLES,
    loop_angles: int = 36,
    num_frames: int = 61,
    seed: int = 0,
) -> dict[str, float]:
    """How well any one linear flow can rotate these digits through this encoder: a diagnostic of the encoder, not
    of the learned operator (README, "What the operators learn").

    Each upright digit (N, C, H, W) is rotated over a full turn (``loop_angles`` steps) and encoded: the encoder's
    loop z(theta). Its tangents dz/dtheta (central differences, per radian) are fitted by one linear field,
    dz/dtheta ~ P z, by least squares over all digits; P is the best linear flow for this encoder in that sense,
    with theta as its coefficient. Its path expm(theta P) mu over theta in +-max|angles| is then scored exactly as
    ``rotation_metrics`` scores an operator's path (no span to choose: theta is the angle). Returns
    ``rotation_flow_order``, ``rotation_flow_match`` and ``rotation_flow_residual``, the share of the tangents'
    energy that the linear field leaves unexplained (0: the loop is an orbit of a linear flow).

    The operator is fitted to pairs of encodings (the anchor prior, docs/method.md §1), so it inherits the encoder's
    loop: a low flow order says that no single operator is likely to rotate these digits well. It is an estimate,
    not a bound (the field is fitted to tangents, not to the path score): trained operators have scored up to 0.02
    above it.
    """
    if loop_angles < 8:
        raise ValueError(f"loop_angles must be at least 8 to resolve the loop, got {loop_angles}")
    digits, theta, rotated = _rotated_copies(digits, angles, num_frames)
    n = digits.shape[0]
    step = 360.0 / loop_angles
    loop = torch.arange(loop_angles, dtype=torch.float32) * step
    with evaluating(model, seed):
        z = encode_chunked(model, rotate(digits.repeat_interleave(loop_angles, 0), loop.repeat(n)))
        z = z.to(torch.float64).view(n, loop_angles, -1)  # (N, L, d)
        tangent = (z.roll(-1, 1) - z.roll(1, 1)) / (2 * math.radians(step))  # (N, L, d), per radian
        flat_z, flat_t = z.reshape(-1, z.shape[-1]), tangent.reshape(-1, z.shape[-1])
        field = torch.linalg.lstsq(flat_z, flat_t).solution.T  # (d, d): dz/dtheta ~ field @ z
        residual = float((flat_t - flat_z @ field.T).pow(2).sum() / flat_t.pow(2).sum())
        t = torch.linspace(-math.radians(float(theta.abs().max())), math.radians(float(theta.abs().max())),
                           num_frames, dtype=torch.float64)
        path = torch.linalg.matrix_exp(t.view(-1, 1, 1) * field) @ z[:, 0].T  # (F, d, N): from the upright digit
        frames = decode_chunked(model, path.transpose(1, 2).reshape(-1, z.shape[-1]).float())
        frames = frames.view(num_frames, n, *digits.shape[1:]).transpose(0, 1)  # (N, F, C, H, W)
        corr = pearson_matrix(rotated, frames)  # (N, A, F)
    return {
        "rotation_flow_order": _path_order(corr, theta),
        "rotation_flow_match": float(corr.amax(-1).mean()),
        "rotation_flow_residual": residual,
    }


# -- natural MNIST --------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN for single-channel digits of any size >= 12: two conv-ReLU-maxpool stages and a linear head.
    (B, C, H, W) -> (B, 10) logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, H/2, W/2)
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, H/4, W/4)
            nn.AdaptiveAvgPool2d(4),  # (B, 32, 4, 4)
        )
        self.head = nn.Linear(32 * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def dataset_tensors(dataset: Dataset, key: str = "x") -> tuple[Tensor, Tensor]:
    """Stack a dict dataset's images (``key``) and labels.  -> (N, C, H, W) float32, (N,) long."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it[key] for it in items]).float(), torch.stack([it["label"] for it in items]).long()


@torch.enable_grad()  # callers (evaluate_model) run under no_grad
def train_classifier(
    images: Tensor, labels: Tensor, *, steps: int = 1500, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
) -> DigitClassifier:
    """Train ``DigitClassifier`` with Adam for ``steps`` batches of (images (N, C, H, W), labels (N,)), reshuffled
    every pass; deterministic for a seed. A budget in steps, not epochs, costs the same on the 5k development
    subset (~12 passes, 96-97% test accuracy, ~30 s on one CPU thread) as on full MNIST (~1 pass, ~98%)."""
    if steps < 1 or labels.numel() == 0:
        raise ValueError(f"the classifier needs steps >= 1 and some training images, got {steps}, {labels.numel()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitClassifier(images.shape[1], max(int(labels.max()) + 1, 10))
        loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        clf.train()
        done = 0
        while done < steps:
            for x, y in loader:
                opt.zero_grad()
                F.cross_entropy(clf(x), y).backward()
                opt.step()
                done += 1
                if done == steps:
                    break
    return clf.eval()


@torch.no_grad()
def predict(clf: nn.Module, images: Tensor) -> Tensor:
    """Predicted classes (N,) of images (N, C, H, W), on the CPU."""
    clf.eval()
    return torch.cat([clf(part.float().cpu()).argmax(-1) for part in images.split(CHUNK)])


def _fingerprint(images: Tensor, labels: Tensor) -> str:
    h = hashlib.sha1()
    h.update((images * 255).round().to(torch.uint8).numpy().tobytes())
    h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:12]


def cached_classifier(
    images: Tensor, labels: Tensor, *, steps: int, seed: int, cache_dir: str | Path | None = None,
) -> DigitClassifier:
    """``train_classifier``, reusing a state_dict in ``cache_dir`` keyed by the data's content, steps and seed.
    An unwritable cache directory is skipped silently (the classifier is then just retrained next time)."""
    if cache_dir is None:
        return train_classifier(images, labels, steps=steps, seed=seed)
    path = Path(cache_dir) / f"digit_cnn_{_fingerprint(images, labels)}_n{steps}_s{seed}.pt"
    if path.is_file():
        clf = DigitClassifier(images.shape[1], max(int(labels.max()) + 1, 10))
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return clf.eval()
    clf = train_classifier(images, labels, steps=steps, seed=seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(clf.state_dict(), path)
    except OSError:
        pass
    return clf


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


# -- matched variation ----------------------------------------------------------------------------------
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


# -- entry point ----------------------------------------------------------------------------------------
def seeded_pick(n_total: int, num: int, seed: int) -> Tensor:
    """``num`` distinct indices of ``n_total``, a fixed seeded draw."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[: min(num, n_total)]


def mnist_metrics(
    model: nn.Module,
    dm: object,
    *,
    num_digits: int | None = None,
    seed: int = 0,
    classifier_steps: int = 1500,
    num_samples: int = 10,
    cache_dir: str | Path | None = None,
    matched_variation: float = 0.01,
) -> dict[str, float]:
    """The image metrics for ``dm``'s test split; {} for any other DataModule.

    RotatedMNISTDataModule: ``rotation_flow_fit`` on ``num_digits`` (default 100) upright test digits for every
    model, and ``rotation_metrics`` on the same digits for models with transport operators.
    MNISTDataModule: ``classifier_accuracy`` on the whole test split, ``class_preservation`` and
    ``class_preservation_ceiling`` on ``num_digits`` (default 1000) test digits, with a classifier trained on
    the train split for ``classifier_steps`` batches (cached in ``cache_dir`` when given); then
    ``class_preservation_matched`` at ``matched_variation`` (with ``matched_spread`` and the variation
    reached), and for models with transport operators the same three with the operators reset to their random
    start (``*_init_psi``).
    Test digits are a seeded draw.
    """
    if not isinstance(dm, MNISTDataModule | RotatedMNISTDataModule):
        return {}
    dm.setup("test")
    if isinstance(dm, RotatedMNISTDataModule):
        pick = seeded_pick(len(dm.test_set), num_digits or 100, seed)
        digits = torch.stack([dm.test_set[int(i)]["digit"] for i in pick])  # upright, padded: (N, 1, 32, 32)
        with stage(f"rotation_flow_fit: the encoder's rotation loop ({len(pick)} upright test digits)"):
            out = rotation_flow_fit(model, digits, seed=seed)
        if has_operators(model):
            with stage(f"rotation metrics ({len(pick)} upright test digits)"):
                out |= rotation_metrics(model, digits, seed=seed)
        return out
    x_train, y_train = dataset_tensors(dm.train_set)
    x_test, y_test = dataset_tensors(dm.test_set)
    with stage(f"digit classifier ({classifier_steps} batches, or from its cache) and classifier_accuracy"):
        clf = cached_classifier(x_train, y_train, steps=classifier_steps, seed=seed, cache_dir=cache_dir)
        accuracy = float((predict(clf, x_test) == y_test).float().mean())
    pick = seeded_pick(x_test.shape[0], num_digits or 1000, seed)
    x_pick, y_pick = x_test[pick], y_test[pick]
    with stage(f"class_preservation and its ceiling ({len(pick)} test digits)"):
        preservation = class_preservation(model, clf, x_pick, y_pick, num_samples=num_samples, seed=seed)
        ceiling = class_preservation_ceiling(model, clf, x_pick, y_pick)
    out = {"classifier_accuracy": accuracy, "class_preservation": preservation,
           "class_preservation_ceiling": ceiling}
    with stage("class_preservation_matched (searching the spread)"):
        out |= class_preservation_matched(model, clf, x_pick, y_pick, target=matched_variation,
                                          num_samples=num_samples, seed=seed)
    if not has_operators(model):
        return out
    # The same model with every operator reset to its random start: what the learned operators add.
    init_model = copy.deepcopy(model)
    with torch.no_grad():
        init_model.transport.psi.copy_(init_model.transport.psi_init)
    if bool(torch.isfinite(init_model.transport.psi).all()):
        with stage("class_preservation_matched with Psi at its random start (*_init_psi)"):
            init = class_preservation_matched(init_model, clf, x_pick, y_pick, target=matched_variation,
                                              num_samples=num_samples, seed=seed)
        out |= {f"{k}_init_psi": v for k, v in init.items()}
    return out
