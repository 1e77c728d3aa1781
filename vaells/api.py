"""A trained run as a Python object: ``run = vaells.load("RUN/checkpoints/last.ckpt")``.

The model is rebuilt from the run's own config, stored in its checkpoint, and needs no data on disk: the anchors
and the input shape are in the checkpoint too (``vaells.app.builders.restore_model``). The data are read only when
asked for (``run.datamodule``, ``run.test_data``), e.g. to draw a latent plot over the test split.

Every method takes and returns float32 tensors on the CPU, inputs of shape ``run.input_shape`` (one) or
(B, *input_shape) (a batch), latents of shape (d,) or (N, d). The transport math runs in the operators' float64
inside. Paths and prior samples follow docs/method.md §1 and the paper's eq. 1-8; ``vaells.evaluation.paths``
holds the path math and the path-quality metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from vaells.app.builders import build_datamodule, load_run, restore_model
from vaells.data.base import AnchoredDataModule
from vaells.evaluation.common import evaluating
from vaells.evaluation.paths import linear_interpolation, transport_interpolation
from vaells.evaluation.rotation import coefficient_span
from vaells.models.base import has_operators
from vaells.models.module import ModelBase


def load(ckpt_path: str | Path, *, data_overrides: dict[str, Any] | None = None) -> Run:
    """The run that wrote ``ckpt_path`` (a checkpoint of this project's ``train.py``), on the CPU, in eval mode.

    ``data_overrides`` change the stored data settings for when the data are read, e.g.
    ``{"root": "/path/to/folder/with/MNIST/raw", "download": False}`` on another machine.
    """
    cfg, checkpoint = load_run(ckpt_path)
    if data_overrides:
        with open_dict(cfg):
            cfg.data = OmegaConf.merge(cfg.data, data_overrides)
    return Run(restore_model(cfg, checkpoint), cfg, Path(ckpt_path))


@dataclass
class LatentPath:
    """A path in latent space: points z (T, d) and, for a transport path, its coefficients c_hat (M,)."""

    z: Tensor
    c: Tensor | None = None


class Run:
    """A trained model with its run config; see the module docstring for shapes and dtypes.

    Attributes: ``model`` (the LightningModule, eval mode), ``config`` (the run's composed config), ``ckpt_path``,
    ``run_dir`` (the run's folder: the checkpoint's folder's parent), ``input_shape``, ``latent_dim``.
    """

    def __init__(self, model: ModelBase, config: DictConfig, ckpt_path: Path) -> None:
        self.model, self.config, self.ckpt_path = model, config, ckpt_path
        folder = ckpt_path.resolve().parent
        self.run_dir = folder.parent if folder.name == "checkpoints" else folder
        self.input_shape: tuple[int, ...] = tuple(model.input_shape)
        self.latent_dim: int = int(model.latent_dim)

    def __repr__(self) -> str:
        return (f"Run({self.ckpt_path}, model={type(self.model).__name__}, input_shape={self.input_shape}, "
                f"latent_dim={self.latent_dim})")

    @property
    def has_operators(self) -> bool:
        """Whether the model has transport operators (VAELLS): what ``interpolate`` and ``extrapolate`` need."""
        return has_operators(self.model)

    # -- data, read on demand ------------------------------------------------------------------------
    @cached_property
    def datamodule(self) -> AnchoredDataModule:
        """The run's DataModule, built from its config on first use (this reads or generates the data)."""
        return build_datamodule(self.config)

    def test_data(self) -> tuple[Tensor, Tensor]:
        """The test split's inputs (N, *input_shape) and labels (N,)."""
        dm = self.datamodule
        dm.setup("test")
        batches = list(dm.test_dataloader())
        return torch.cat([b["x"] for b in batches]).float(), torch.cat([b["label"] for b in batches])

    # -- the model -----------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """The posterior's location mu = f(x) / s.  (*input_shape) -> (d,), (B, *input_shape) -> (B, d)."""
        x, single = self._inputs("x", x)
        with torch.no_grad():
            mu = self.model.encode(x).float()
        return mu[0] if single else mu

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean g(s z).  (d,) -> (*input_shape), (N, d) -> (N, *input_shape)."""
        z, single = self._latents("z", z)
        with torch.no_grad():
            x = self.model.decode(z).float()
        return x[0] if single else x

    # -- paths ---------------------------------------------------------------------------------------
    def latent_path(self, x0: Tensor, x1: Tensor, num_steps: int = 10, *, linear: bool = False) -> LatentPath:
        """The latent path from the encoding z0 of x0 to z1 of x1 (single inputs): z_t = expm(t A(c_hat)) z0 for t
        in linspace(0, 1, num_steps), c_hat inferred z0 -> z1 (eq. 7; ``evaluation.paths.path_solver``), which
        ends at T(c_hat) z0, or with ``linear=True`` the straight line (1 - t) z0 + t z1 (any model)."""
        z0, z1 = self._pair(x0, x1)
        with torch.no_grad():
            mu0, mu1 = self.model.encode(z0), self.model.encode(z1)
            if linear:
                return LatentPath(linear_interpolation(mu0, mu1, num_steps)[:, 0].float())
            self._need_operators("interpolate")
            path, c_hat = transport_interpolation(self.model, mu0, mu1, num_steps)
        return LatentPath(path[:, 0].float(), c_hat[0].float())

    def interpolate(self, x0: Tensor, x1: Tensor, num_steps: int = 10, *, linear: bool = False) -> Tensor:
        """The decoded ``latent_path`` from x0 to x1 (single inputs).  -> (num_steps, *input_shape)."""
        return self.decode(self.latent_path(x0, x1, num_steps, linear=linear).z)

    def extrapolate(self, x: Tensor, operator: int | None = None, coefficients: Tensor | None = None,
                    num_steps: int = 11, t_range: tuple[float, float] | None = None) -> Tensor:
        """The decoded path from the encoding mu of x (a single input) along one operator or along a given c.

        ``operator=m``: expm(t Psi_m) mu for t in linspace(*t_range, num_steps), t_range defaulting to [-S, S]
        with S the operator's half-turn span at mu (``evaluation.rotation.coefficient_span``, as in Fig. 6).
        ``coefficients=c`` (M,): expm(t A(c)) mu, t_range defaulting to [0, 1] (t > 1 goes on past T(c) mu).
        -> (num_steps, *input_shape).
        """
        self._need_operators("extrapolate")
        if (operator is None) == (coefficients is None):
            raise ValueError("give exactly one of operator=m (an operator index) and coefficients=c (M,)")
        x, _ = self._inputs("x", x, single_only=True)
        transport = self.model.transport
        with torch.no_grad():
            mu = self.model.encode(x)[0]  # (d,)
            if operator is not None:
                if not 0 <= int(operator) < transport.num_operators:
                    raise ValueError(f"operator={operator} must index one of the {transport.num_operators} operators "
                                     f"(0..{transport.num_operators - 1})")
                if t_range is None:
                    span = coefficient_span(transport.psi[int(operator)], mu[None])
                    t_range = (-span, span)
                path = transport.orbit(mu, int(operator), torch.linspace(*t_range, num_steps, dtype=torch.float64))
            else:
                c = torch.as_tensor(coefficients, dtype=transport.psi.dtype)
                if c.shape != (transport.num_operators,):
                    raise ValueError(f"coefficients must have shape (M,) = ({transport.num_operators},), got "
                                     f"{tuple(c.shape)}")
                lo, hi = t_range if t_range is not None else (0.0, 1.0)
                path = transport.path(mu, c, num_steps=num_steps, t_min=lo, t_max=hi)
        return self.decode(path.float())

    # -- the prior -----------------------------------------------------------------------------------
    def sample_prior(self, label: int | None = None, n: int = 16, *, seed: int | None = None,
                     decoded: bool = True) -> Tensor:
        """n decoded samples of the prior: VAELLS's class-matched prior p(z | label) of eq. 8 (label None: any
        class's anchors), a baseline's own prior (which has no classes: ``label`` is ignored). ``seed`` makes the
        draw repeatable without touching the global random stream.  -> (n, *input_shape), or the latents (n, d)
        with ``decoded=False``."""
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        labels = None
        if label is not None and has_operators(self.model):
            if getattr(self.model, "anchor_labels", None) is None:
                raise ValueError("this run's prior is built from each input's own anchors (rotated MNIST: its rotated "
                                 "copies), not per class; use model.sample_around(encoded anchors, n)")
            num_classes = int(self.model.anchor_labels.max()) + 1
            if not 0 <= int(label) < num_classes:
                raise ValueError(f"label={label} must be a class of this run, 0..{num_classes - 1}")
            labels = torch.full((int(n),), int(label), dtype=torch.long)
        if seed is None:
            with torch.no_grad():
                z = self.model.sample_prior(int(n), labels).float()
        else:
            with evaluating(self.model, seed):
                z = self.model.sample_prior(int(n), labels).float()
        return self.decode(z) if decoded else z

    # -- figures -------------------------------------------------------------------------------------
    def save_images(self, images: Tensor, path: str | Path, *, nrow: int = 10, title: str | None = None) -> Path:
        """Save images (B, C, H, W), e.g. an interpolation or prior samples, as one grid PNG; returns the path."""
        from vaells.figures.plotting import image_grid

        images = torch.as_tensor(images)
        if images.dim() != 4:
            raise ValueError(f"save_images takes images (B, C, H, W), got shape {tuple(images.shape)}; for vector "
                             "data use save_latent_plot")
        return _save(image_grid(images, nrow=nrow, title=title), path)

    def save_latent_plot(self, path: str | Path, paths: Tensor | None = None, *, points: Tensor | None = None,
                         titles: Sequence[str] | None = None) -> Path:
        """Save the encoded test split (the data are read) as a scatter, with latent ``paths`` (P, T, d) or (T, d),
        e.g. ``latent_path(...).z``, drawn over it, one panel a path titled ``titles`` (start: cyan circle, end: red
        x), or with ``points`` (N, d) (e.g. ``sample_prior(..., decoded=False)``) in red on one panel; returns the
        PNG's path. Latents of d > 2 are drawn on the test split's first two principal components."""
        from vaells.figures import plotting

        x, labels = self.test_data()
        z = torch.cat([self.encode(part) for part in x.split(512)])
        if paths is None:
            color = labels if labels.unique().numel() > 1 else None
            projection = plotting.project_2d(z)
            fig = plotting.latent_scatter(z, color, title=titles[0] if titles else "encoded test split",
                                          projection=projection)
            if points is not None:
                p2 = projection(self._latents("points", points)[0])
                fig.axes[0].scatter(p2[:, 0], p2[:, 1], s=8, color="tab:red", zorder=4)
        else:
            paths = torch.as_tensor(paths)
            paths = paths[None] if paths.dim() == 2 else paths
            if paths.dim() != 3 or paths.shape[-1] != self.latent_dim:
                raise ValueError(f"paths must have shape (P, T, d={self.latent_dim}) or (T, d), got "
                                 f"{tuple(paths.shape)}")
            titles = list(titles) if titles is not None else [f"path {i + 1}" for i in range(paths.shape[0])]
            if len(titles) != paths.shape[0]:
                raise ValueError(f"titles: {len(titles)} given for {paths.shape[0]} paths")
            fig = plotting.transport_paths(z, paths, titles=titles)
        return _save(fig, path)

    # -- checks --------------------------------------------------------------------------------------
    def _need_operators(self, what: str) -> None:
        if not has_operators(self.model):
            raise TypeError(f"{what} follows transport operators, which this run's model "
                            f"({type(self.model).__name__}) does not have; interpolate(..., linear=True), encode, "
                            "decode and sample_prior work for every model")

    def _inputs(self, name: str, x: Tensor, single_only: bool = False) -> tuple[Tensor, bool]:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}")
        shape = tuple(x.shape)
        if shape == self.input_shape:
            return x.float()[None], True
        if not single_only and shape[1:] == self.input_shape and shape[0] >= 1:
            return x.float(), False
        expected = f"{self.input_shape}" + ("" if single_only else f" or (B, {', '.join(map(str, self.input_shape))})")
        raise ValueError(f"{name} must have shape {expected} (this run's inputs), got {shape}")

    def _latents(self, name: str, z: Tensor) -> tuple[Tensor, bool]:
        z = torch.as_tensor(z)
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {z.dtype}")
        if z.dim() == 1 and z.shape[0] == self.latent_dim:
            return z.float()[None], True
        if z.dim() == 2 and z.shape[1] == self.latent_dim and z.shape[0] >= 1:
            return z.float(), False
        raise ValueError(f"{name} must have shape (d,) or (N, d) with d={self.latent_dim}, got {tuple(z.shape)}")

    def _pair(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        return self._inputs("x0", x0, single_only=True)[0], self._inputs("x1", x1, single_only=True)[0]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
