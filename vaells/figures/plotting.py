"""Latent-space figures of the paper (Fig. 2-5) as pure functions: arrays in, ``matplotlib.figure.Figure`` out.

No Lightning and no pyplot: figures are built with ``Figure(...)`` directly, so nothing is registered with
pyplot's global figure manager (no leaks across epochs, no GUI backend needed) and ``savefig`` renders PNGs
with Agg. Arrays may be numpy arrays or torch tensors (any dtype or device).

Every plot of a d > 2 latent space goes through one ``Projection`` (``project_2d``): the first two
principal components of a reference cloud, applied to the cloud and to every overlay (anchors, orbits,
samples, paths), so they land in the same frame.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

BACKGROUND = {"s": 6, "color": "0.65", "alpha": 0.6, "linewidths": 0, "zorder": 1}
ANCHOR = {"marker": "*", "s": 260, "edgecolors": "black", "linewidths": 1.2, "zorder": 5}


def to_numpy(a: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor or array-like (detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        return a.numpy() if not a.is_floating_point() else a.double().numpy()
    return np.asarray(a)


class Projection:
    """An affine map R^d -> R^2, ``(points - mean) @ basis``, with axis labels.  (..., d) -> (..., 2)."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, axis_labels: tuple[str, str]) -> None:
        self.mean, self.basis, self.axis_labels = mean, basis, axis_labels

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    def __call__(self, points: Any) -> np.ndarray:
        p = to_numpy(points).astype(np.float64)
        if p.shape[-1] != self.dim:
            raise ValueError(f"points must have shape (..., d={self.dim}) to share this projection, got {p.shape}")
        return (p - self.mean) @ self.basis


def project_2d(reference: Any) -> Projection:
    """The plane in which to draw latents like ``reference`` (N, d).

    d = 2 is drawn as is (axes z1, z2); d = 1 against a zero ordinate; d > 2 on the first two principal
    components of the centred reference (axes PC1, PC2). Each component's sign is fixed so that its
    largest entry is positive: SVD's sign is arbitrary, and without this the picture could mirror from
    one epoch's TensorBoard image to the next.
    """
    z = to_numpy(reference).astype(np.float64)
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"reference must be a non-empty (N, d) array of latents, got shape {z.shape}")
    d = z.shape[1]
    if d == 1:
        return Projection(np.zeros(1), np.array([[1.0, 0.0]]), ("z1", ""))
    if d == 2:
        return Projection(np.zeros(2), np.eye(2), ("z1", "z2"))
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    basis = vt[:2].T  # (d, 2)
    if basis.shape[1] < 2:  # a single reference point: any second direction will do
        basis = np.eye(d)[:, :2]
    signs = np.sign(basis[np.abs(basis).argmax(0), [0, 1]])
    return Projection(mean, basis * np.where(signs == 0, 1.0, signs), ("PC1", "PC2"))


def _panels(num: int, ncols: int, panel_size: float = 3.2, min_width: float = 0.0) -> tuple[Figure, list[Axes]]:
    """A figure with ``num`` axes on a grid of at most ``ncols`` columns, at least ``min_width`` inches wide (room
    for a title and legend over one column); the unused cells are removed."""
    ncols = max(1, min(ncols, num))
    nrows = math.ceil(num / ncols)
    fig = Figure(figsize=(max(panel_size * ncols, min_width), panel_size * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[num:]:
        ax.remove()
    return fig, axes[:num]


def _frame(ax: Axes, proj: Projection, background: np.ndarray, overlay: np.ndarray | None = None) -> None:
    """Axis labels and limits: the background's extent, widened to the overlay but by at most the background's
    own span on each side, so an orbit that flies off (a large coefficient on an expanding operator) cannot
    shrink the data to a dot."""
    ax.set_xlabel(proj.axis_labels[0])
    ax.set_ylabel(proj.axis_labels[1])
    pts = background.reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    span = np.maximum(hi - lo, 1e-6)
    if overlay is not None and overlay.size:
        extra = overlay.reshape(-1, 2)
        extra = extra[np.isfinite(extra).all(1)]
        if extra.size:
            lo = np.maximum(np.minimum(lo, extra.min(0)), lo - span)
            hi = np.minimum(np.maximum(hi, extra.max(0)), hi + span)
    pad = 0.05 * np.maximum(hi - lo, 1e-6)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])


def _palette(n: int) -> list[tuple[float, ...]]:
    """n distinguishable colours (tab10, then tab20, then a sampled hsv wheel)."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def latent_scatter(
    z: Any,
    color: Any = None,
    anchors: Any = None,
    anchor_colors: Any = None,
    *,
    title: str = "Encoded latents",
    cmap: str | None = None,
    color_label: str | None = None,
    projection: Projection | None = None,
) -> Figure:
    """Encoded latents, as in Fig. 2 (swiss roll) and Fig. 4 (concentric circles).

    z (N, d); color (N,): integer dtype = class labels (one colour per class, with a legend), float = a
    true manifold coordinate (continuous colour map, with a colorbar), None = one colour. anchors (A, d) are
    drawn as big black-edged stars, filled by ``anchor_colors`` (A,) on the same colour scale when given.
    """
    proj = projection or project_2d(z)
    p = proj(z)
    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    a = proj(anchors) if anchors is not None else None
    anchor_face: Any = "gold"
    if color is None:
        ax.scatter(p[:, 0], p[:, 1], s=8, color="tab:blue", linewidths=0)
    else:
        c = to_numpy(color).reshape(-1)
        if c.shape[0] != p.shape[0]:
            raise ValueError(f"color must have one value per latent ({p.shape[0]}), got {c.shape[0]}")
        if np.issubdtype(c.dtype, np.integer) or c.dtype == bool:
            classes = np.unique(c)
            colours = dict(zip(classes.tolist(), _palette(len(classes)), strict=True))
            for k in classes.tolist():
                mask = c == k
                ax.scatter(p[mask, 0], p[mask, 1], s=8, color=colours[k], linewidths=0, label=f"class {k}")
            if len(classes) <= 20:
                ax.legend(loc="best", fontsize="small", markerscale=2, title=color_label)
            if anchor_colors is not None:
                anchor_face = [colours.get(k, "0.5") for k in to_numpy(anchor_colors).reshape(-1).tolist()]
        else:
            norm = Normalize(float(np.nanmin(c)), float(np.nanmax(c)))
            cmap_ = colormaps[cmap or "viridis"]
            sc = ax.scatter(p[:, 0], p[:, 1], s=8, c=c, cmap=cmap_, norm=norm, linewidths=0)
            fig.colorbar(sc, ax=ax, label=color_label)
            if anchor_colors is not None:
                anchor_face = cmap_(norm(to_numpy(anchor_colors).reshape(-1)))
    if a is not None:
        ax.scatter(a[:, 0], a[:, 1], color=anchor_face, **ANCHOR)
    _frame(ax, proj, p, a)
    ax.set_title(title)
    return fig


def operator_orbits(
    background_z: Any,
    orbits: Any,
    *,
    start_index: int = 0,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    projection: Projection | None = None,
    ncols: int = 4,
) -> Figure:
    """Orbits of the learned operators over the encoded latents, as in Fig. 3a.

    orbits (M, S, T, d): for operator m and start s, the points expm(t_j Psi_m) z0_s along T times. One
    panel per operator (``titles``), under the figure's ``title``; each orbit is a line with a circle on the
    start point z0 (``orbits[:, :, start_index]``, the t = 0 point) and an arrowhead on its last step, showing
    the direction of increasing t, which the figure's legend says.
    """
    o = to_numpy(orbits)
    if o.ndim != 4:
        raise ValueError(f"orbits must have shape (M, S, T, d), got {o.shape}")
    proj = projection or project_2d(background_z)
    bg, o2 = proj(background_z), proj(o)  # (N, 2), (M, S, T, 2)
    num_ops, num_starts = o2.shape[:2]
    fig, axes = _panels(num_ops, ncols, min_width=LEGEND_WIDTH)
    colours = _palette(num_starts)
    for m, ax in enumerate(axes):
        ax.scatter(bg[:, 0], bg[:, 1], **BACKGROUND)
        for s in range(num_starts):
            line = o2[m, s]
            ax.plot(line[:, 0], line[:, 1], color=colours[s], lw=1.5, zorder=3)
            if line.shape[0] >= 2 and np.isfinite(line[-2:]).all():
                ax.annotate("", xy=line[-1], xytext=line[-2], zorder=4,
                            arrowprops={"arrowstyle": "-|>", "color": colours[s], "lw": 1.5})
        starts = o2[m, :, start_index]
        ax.scatter(starts[:, 0], starts[:, 1], s=40, color=colours, edgecolors="black", zorder=5)
        _frame(ax, proj, bg, o2[m])
        ax.set_title(titles[m] if titles is not None else f"operator {m + 1}")
    # Proxy artists: the marks are the same in every panel, so one legend for the figure says what they mean.
    handles = [Line2D([], [], color="0.3", lw=1.5, label="orbit; the arrow points to increasing t"),
               Line2D([], [], ls="", marker="o", ms=7, mfc="white", mec="black", label="start z0 (t = 0)")]
    _figure_legend(fig, handles)
    _suptitle(fig, title)
    return fig


def _suptitle(fig: Figure, title: str | None) -> None:
    """``title`` over the figure, its lines wrapped to the figure's width (a one-panel figure is narrow); keep
    mathtext free of spaces so that no line breaks inside it."""
    if not title:
        return
    width = max(24, int(fig.get_figwidth() * 72 / 5.5))  # characters of about 5.5 pt in a medium font
    lines = [textwrap.fill(line, width, break_long_words=False) for line in title.splitlines()]
    fig.suptitle("\n".join(lines), fontsize="medium")


#: The least width of a figure with a legend and title below and above its panels (``_panels``' ``min_width``).
LEGEND_WIDTH = 4.8


def _figure_legend(fig: Figure, handles: list[Line2D]) -> None:
    """One legend below every panel (the marks mean the same in each), its entries side by side where the figure
    is wide enough."""
    side_by_side = fig.get_figwidth() >= 6.0
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if side_by_side else 1,
               fontsize="small", frameon=False)


def prior_samples(
    background_z: Any,
    anchors: Any,
    samples: Any,
    *,
    title: str = "Prior samples around anchors",
    projection: Projection | None = None,
) -> Figure:
    """Samples of the anchor prior, as in Fig. 3b: z = T(c) a_i + eps, c ~ Laplace, one colour per anchor.

    anchors (A, d), samples (A, S, d). Anchors are stars filled with their samples' colour.
    """
    s = to_numpy(samples)
    if s.ndim != 3:
        raise ValueError(f"samples must have shape (A, S, d), got {s.shape}")
    proj = projection or project_2d(background_z)
    bg, a, s2 = proj(background_z), proj(anchors), proj(s)
    if a.shape[0] != s2.shape[0]:
        raise ValueError(f"anchors ({a.shape[0]}) and samples ({s2.shape[0]}) must have the same length A")
    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(bg[:, 0], bg[:, 1], **BACKGROUND)
    colours = _palette(a.shape[0])
    for i in range(a.shape[0]):
        ax.scatter(s2[i, :, 0], s2[i, :, 1], s=10, color=colours[i], alpha=0.8, linewidths=0, zorder=3)
    ax.scatter(a[:, 0], a[:, 1], color=colours, **ANCHOR)
    _frame(ax, proj, bg, np.concatenate([a, s2.reshape(-1, 2)]))
    ax.set_title(title)
    return fig


def transport_paths(
    background_z: Any,
    paths: Any,
    *,
    targets: Any = None,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    projection: Projection | None = None,
    ncols: int = 4,
) -> Figure:
    """Transport paths between pairs of encoded points, as in Fig. 3c-d: one panel per path (``titles``), under
    the figure's ``title``.

    paths (P, T, d) run z_t = expm(t sum_m c*_m Psi_m) z0 for t in [0, 1]. As in the paper, a cyan circle marks
    the start z0 and a red x the desired end: ``targets`` (P, d) when given (so a path that misses its target
    shows it), else the path's last point; the figure's legend says which.
    """
    pth = to_numpy(paths)
    if pth.ndim != 3:
        raise ValueError(f"paths must have shape (P, T, d), got {pth.shape}")
    proj = projection or project_2d(background_z)
    bg, p2 = proj(background_z), proj(pth)  # (N, 2), (P, T, 2)
    ends = proj(targets) if targets is not None else p2[:, -1]
    fig, axes = _panels(p2.shape[0], ncols, min_width=LEGEND_WIDTH)
    for i, ax in enumerate(axes):
        ax.scatter(bg[:, 0], bg[:, 1], **BACKGROUND)
        ax.plot(p2[i, :, 0], p2[i, :, 1], "-", color="black", lw=1.5, marker=".", ms=4, zorder=3)
        ax.scatter(p2[i, 0, 0], p2[i, 0, 1], s=90, color="cyan", edgecolors="black", zorder=5)
        ax.scatter(ends[i, 0], ends[i, 1], s=90, marker="x", color="red", linewidths=2.5, zorder=5)
        _frame(ax, proj, bg, np.concatenate([p2[i], ends[i : i + 1]]))
        ax.set_title(titles[i] if titles is not None else f"path {i + 1}")
    end = "target (where the path should end)" if targets is not None else "end (t = 1)"
    handles = [Line2D([], [], color="black", lw=1.5, marker=".", ms=4, label="path, t from 0 to 1"),
               Line2D([], [], ls="", marker="o", ms=9, mfc="cyan", mec="black", label="start (t = 0)"),
               Line2D([], [], ls="", marker="x", ms=9, mew=2.5, color="red", label=end)]
    _figure_legend(fig, handles)
    _suptitle(fig, title)
    return fig


def image_grid(images: Any, nrow: int = 8, *, title: str | None = None,
               value_range: tuple[float, float] | None = None) -> Figure:
    """A grid of images, e.g. decoded prior samples as in Fig. 5.  images (B, C, H, W) or (B, H, W).

    Pixel values are shown as is on [0, 1] (clipped); pass ``value_range`` to rescale other ranges.
    """
    from torchvision.utils import make_grid  # torchvision is slow to import; only image data needs it

    x = torch.as_tensor(to_numpy(images)).float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W) or (B, H, W), got {tuple(x.shape)}")
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0, normalize=value_range is not None,
                     value_range=value_range).clamp(0.0, 1.0)  # (3, H', W')
    h, w = grid.shape[1:]
    scale = 6.0 / max(h, w)
    fig = Figure(figsize=(max(w * scale, 1.0), max(h * scale, 1.0) + (0.4 if title else 0.0)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig
