"""Rotated MNIST: whether the learned operator *is* a rotation of the digits.

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

``rotation_flow_fit`` scores the encoder instead of the operator: how well any one linear flow could follow the
loop that a turning digit draws in its latent space, for every model. The operator metrics follow the paths of
transport operators and exist for models that have them (``has_operators``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vaells.data.mnist import rotate
from vaells.evaluation.common import decode_chunked, encode_chunked, evaluating, pearson, pearson_matrix, spearman

#: The issue's angle grid, degrees.
ROTATION_ANGLES = tuple(range(-90, 91, 15))


# -- helpers --------------------------------------------------------------------------------------------


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
    operators can carry harmonics, and a harmonic can move the encodings faster
    than the fundamental, so the fastest plane (``coefficient_span``) may be a harmonic, and the path would
    then cover only max_angle / k. The candidates are the rotating planes that

    - the digits occupy: mean speed (``_rotating_planes``) at least ``occupied`` times the fastest plane's; and
    - turn at least 1 / (floor(d / 2) + 1) times as fast as the fastest of those: d dimensions hold at most
      floor(d / 2) rotating planes, so harmonics 1..floor(d / 2) of one rotation put the fundamental no lower.

    The planes these exclude are init noise: either the digits barely turn in them, or they hold the digits'
    identity with a large amplitude and barely turn, and taking such a slow plane would turn the digits by
    several full turns.
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
    of the learned operator.

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


# -- matched variation ----------------------------------------------------------------------------------


# -- entry point ----------------------------------------------------------------------------------------
