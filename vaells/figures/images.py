"""Figures of image models (rotated and natural MNIST): posterior rings (paper Fig. 5 and 7), extrapolated
operator paths (Fig. 6) and the path of every operator (natural MNIST).

Pure functions of a model with the ``VAELLSModule`` API (``encode``, ``decode``, ``transport``,
``coeff_scale``, ``noise_std``) and image tensors; each returns a matplotlib ``Figure`` (not registered with
pyplot). ``build_image_figures`` picks a fixed, seeded set of test digits and returns them all by name, for
``LatentFigures`` (TensorBoard) and ``evaluate.py`` (PNG).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from vaells.evaluation.common import decode_chunked, encode_chunked, evaluating
from vaells.evaluation.preservation import decoded_posterior_samples
from vaells.evaluation.rotation import coefficient_span, operator_path_frames

#: The PNG names of ``build_image_figures`` (``operator_paths`` only when M > 1).
IMAGE_FIGURE_NAMES = ("posterior_ring", "extrapolated_paths", "operator_paths")


def _pixels(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) for one channel, (H, W, 3) for three; clipped."""
    img = image.detach().float().cpu().clamp(0.0, 1.0)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _check_images(x: Tensor) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"x must be images (N, C, H, W) or one image (C, H, W), got {tuple(x.shape)}")
    return x


def _spans(model: nn.Module, mu: Tensor, operators: Sequence[int],
           coeff_range: tuple[float, float] | None) -> list[tuple[float, float]]:
    """The coefficient range of each operator: ``coeff_range`` or +-``coefficient_span``."""
    if coeff_range is not None:
        return [(float(coeff_range[0]), float(coeff_range[1]))] * len(operators)
    out = []
    for m in operators:
        s = coefficient_span(model.transport.psi[m], mu)
        out.append((-s, s))
    return out


def posterior_ring(
    model: nn.Module,
    x: Tensor,
    num_samples: int = 8,
    spread: float | None = None,
    *,
    seed: int = 0,
    ncols: int = 4,
) -> Figure:
    """Fig. 5 / 7: for each digit, its decoded encoding in the centre (red frame) and ``num_samples`` decoded
    posterior samples on a ring around it.

    x (N, C, H, W). The samples are z = T(c) mu + eps with c ~ Laplace(0, b_ring): b_ring = ``spread`` if
    given, else a quarter of the median ``coefficient_span`` over operators, so that a typical sample moves
    the digit a visible fraction of a half turn (the model's own b is often too small to see).
    """
    x = _check_images(x)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    with evaluating(model, seed):
        mu = encode_chunked(model, x)  # (N, d)
        if spread is None:
            spans = [hi for _, hi in _spans(model, mu, range(model.transport.num_operators), None)]
            spread = 0.25 * float(np.median(spans))
        centre = decode_chunked(model, mu)  # (N, C, H, W)
        samples = decoded_posterior_samples(model, x, num_samples, spread / model.coeff_scale)  # (N, S, C, H, W)
    return _ring_figure(centre, samples, f"decoded input (centre) and posterior samples, Laplace scale b = "
                                         f"{spread:.3g}", ncols)


def matched_posterior_ring(
    model: nn.Module, x: Tensor, spread: float, num_samples: int = 8, *, title: str | None = None, seed: int = 0,
    ncols: int = 4,
) -> Figure:
    """``posterior_ring`` for any model of the ``LatentModel`` interface: the samples come from
    ``posterior_samples`` at the spread multiplier ``spread`` (``matched_spread`` of the metrics, so that the
    rings of different models show equal visible change: Fig. 5 and 7 side by side)."""
    x = _check_images(x)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    with evaluating(model, seed):
        centre = decode_chunked(model, encode_chunked(model, x))  # (N, C, H, W)
        samples = decoded_posterior_samples(model, x, num_samples, spread)  # (N, S, C, H, W)
    return _ring_figure(centre, samples, title or f"posterior samples at spread x{spread:.3g}", ncols)


def _ring_figure(centre: Tensor, samples: Tensor, title: str, ncols: int) -> Figure:
    """Each decoded centre (N, C, H, W) in a red frame, its samples (N, S, C, H, W) on a ring around it."""
    n, num_samples = samples.shape[:2]
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.4), layout="constrained")
    # Neighbouring samples 1.1 image widths apart (chord 2 R sin(pi / S)), and clear of the centre image.
    radius = max(1.3, 0.55 / math.sin(math.pi / num_samples)) if num_samples > 1 else 1.3
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_pixels(centre[i]), cmap="gray", vmin=0, vmax=1, extent=(-0.5, 0.5, -0.5, 0.5))
        ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        for k in range(num_samples):
            phi = 2 * math.pi * k / num_samples
            cx, cy = radius * math.cos(phi), radius * math.sin(phi)
            ax.imshow(_pixels(samples[i, k]), cmap="gray", vmin=0, vmax=1,
                      extent=(cx - 0.5, cx + 0.5, cy - 0.5, cy + 0.5))
        lim = radius + 0.6
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.suptitle(title)
    return fig


def _frame_grid(frames: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                highlight_col: int | None) -> Figure:
    """frames (R, T, C, H, W) as an R x T grid, with row and column labels and one column framed in red."""
    from torchvision.utils import make_grid  # torchvision is slow to import; only image figures need it

    r, t = frames.shape[:2]
    h, w = frames.shape[-2:]
    pad = 2
    grid = make_grid(frames.flatten(0, 1).float().clamp(0, 1), nrow=t, padding=pad, pad_value=1.0)  # (3, H', W')
    scale = 0.55 / max(h, w) * 28  # about 0.55 inch per 28 pixels
    label_width = 0.09 * max((len(s) for s in row_labels), default=0)  # inches for the row labels
    fig = Figure(figsize=(max(t * scale + label_width + 0.4, 3.0), r * scale + 0.8), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([pad + j * (w + pad) + w / 2 for j in range(t)], list(col_labels), fontsize="x-small")
    ax.set_yticks([pad + i * (h + pad) + h / 2 for i in range(r)], list(row_labels), fontsize="small")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if highlight_col is not None:
        x0 = pad + highlight_col * (w + pad) - pad / 2
        ax.add_patch(Rectangle((x0, pad / 2), w + pad, r * (h + pad), fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title(title)
    return fig


def extrapolated_paths(
    model: nn.Module,
    x: Tensor,
    coeff_range: tuple[float, float] | None = None,
    steps: int = 11,
    *,
    operator: int = 0,
    seed: int = 0,
) -> Figure:
    """Fig. 6: one row per digit, the decoded path expm(c Psi_m) mu for c over ``coeff_range`` along operator
    ``operator``, negative coefficients left, positive right, c = 0 (the reconstruction) framed in red.

    x (N, C, H, W). ``coeff_range`` defaults to +-``coefficient_span`` (about half a turn each way for a
    rotation); ``steps`` is made odd so that c = 0 is a column.
    """
    x = _check_images(x)
    steps = max(int(steps), 3) | 1
    with evaluating(model, seed):
        mu = encode_chunked(model, x)
        (lo, hi), = _spans(model, mu, [operator], coeff_range)
        frames = _path(model, mu, operator, lo, hi, steps)  # (N, T, C, H, W)
    coeffs = np.linspace(lo, hi, steps)
    zero = int(np.abs(coeffs).argmin())
    return _frame_grid(frames, [f"digit {i + 1}" for i in range(x.shape[0])], [f"{c:.3g}" for c in coeffs],
                       f"extrapolated path along operator {operator + 1}: c from {lo:.3g} to {hi:.3g}", zero)


def _path(model: nn.Module, mu: Tensor, m: int, lo: float, hi: float, steps: int) -> Tensor:
    """Decoded frames for c in linspace(lo, hi, steps) along Psi_m.  mu (N, d) -> (N, steps, *img)."""
    if lo == -hi:
        return operator_path_frames(model, mu, m, hi, steps)
    t = torch.linspace(lo, hi, steps, dtype=torch.float64)
    path = model.transport.orbit(mu, m, t)  # (T, N, d)
    frames = decode_chunked(model, path.reshape(-1, path.shape[-1]))
    return frames.view(steps, mu.shape[0], *frames.shape[1:]).transpose(0, 1)


def operator_paths(
    model: nn.Module,
    x: Tensor,
    coeff_range: tuple[float, float] | None = None,
    steps: int = 11,
    *,
    seed: int = 0,
) -> Figure:
    """The path of every operator from each digit (natural MNIST): rows (digit, operator m), columns c from
    -S_m to S_m with S_m = ``coefficient_span`` of operator m (or ``coeff_range`` for all), c = 0 framed.

    x (N, C, H, W); keep N small (1-2): the figure has N * M rows.
    """
    x = _check_images(x)
    steps = max(int(steps), 3) | 1
    num_ops = model.transport.num_operators
    rows, labels = [], []
    with evaluating(model, seed):
        mu = encode_chunked(model, x)
        spans = _spans(model, mu, range(num_ops), coeff_range)
        per_op = [_path(model, mu, m, lo, hi, steps) for m, (lo, hi) in enumerate(spans)]  # M x (N, T, ...)
    for i in range(x.shape[0]):
        for m, (lo, hi) in enumerate(spans):
            rows.append(per_op[m][i])
            labels.append(f"digit {i + 1}, op {m + 1}: |c| <= {max(abs(lo), abs(hi)):.3g}")
    columns = [f"{f:+.1f}" for f in np.linspace(-1, 1, steps)]
    return _frame_grid(torch.stack(rows), labels, columns,
                       "path of each operator (columns: c as a fraction of the row's range)", steps // 2)


def pick_test_digits(dm: object, num_digits: int, seed: int = 0) -> Tensor:
    """A fixed, seeded draw of ``num_digits`` test images, one of each class first.  -> (num_digits, C, H, W).

    From ``dm.test_set`` (MNIST DataModules: the upright padded "digit" of rotated MNIST, else "x"), or from the
    first batches of ``dm.test_dataloader()`` for other image DataModules.
    """
    dm.setup("test")
    data = getattr(dm, "test_set", None)
    if data is None:
        batches, count = [], 0
        for batch in dm.test_dataloader():
            batches.append(batch)
            count += len(batch["x"])
            if count >= 10 * num_digits:
                break
        data = [{"x": x, "label": y} for b in batches for x, y in zip(b["x"], b["label"], strict=True)]
    key = "digit" if "digit" in data[0] else "x"
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, seen = [], set()
    for i in order:  # one digit of each class while there are classes left, in seeded order
        label = int(data[i]["label"])
        if label not in seen:
            seen.add(label)
            chosen.append(i)
        if len(chosen) == num_digits:
            break
    rest = iter(i for i in order if i not in chosen)
    chosen += [next(rest) for _ in range(min(num_digits, len(data)) - len(chosen))]
    return torch.stack([data[i][key] for i in chosen]).float()


def build_image_figures(
    model: nn.Module,
    dm: object,
    num_digits: int = 6,
    seed: int = 0,
    ring_spread: float | None = None,
    operator_path_range: float | None = None,
) -> dict[str, Figure]:
    """``posterior_ring`` (Laplace scale ``ring_spread``) and ``extrapolated_paths`` (operator 1) for
    ``num_digits`` seeded test digits, and ``operator_paths`` (c in +-``operator_path_range``) for the first
    two when the model has several operators. None: automatic choices (see each function)."""
    x = pick_test_digits(dm, num_digits, seed).to(model.transport.psi.device)
    figs = {
        "posterior_ring": posterior_ring(model, x, spread=ring_spread, seed=seed),
        "extrapolated_paths": extrapolated_paths(model, x, seed=seed),
    }
    if model.transport.num_operators > 1:
        r = operator_path_range
        figs["operator_paths"] = operator_paths(model, x[:2], None if r is None else (-r, r), seed=seed)
    return figs


def save_matched_ring(model: nn.Module, dm: object, metrics: dict, directory: str | Path, *, num_digits: int = 6,
                      seed: int = 0) -> Path | None:
    """``matched_posterior_ring`` of ``num_digits`` seeded test digits at the metrics' ``matched_spread``, as
    ``<directory>/matched_ring.png`` (what ``python -m vaells.app.report`` sets side by side); None when the
    metrics have no matched spread (data without images)."""
    spread = metrics.get("matched_spread")
    if spread is None or not math.isfinite(spread):
        return None
    x = pick_test_digits(dm, num_digits, seed).to(next(model.parameters()).device)
    title = (f"{type(model).__name__}: posterior samples at matched variation "
             f"{metrics.get('matched_variation', float('nan')):.3g} (spread x{spread:.3g})")
    fig = matched_posterior_ring(model, x, spread, title=title, seed=seed)
    path = Path(directory) / "matched_ring.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
