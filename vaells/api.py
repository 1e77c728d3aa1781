"""A trained run as a Python object: ``run = vaells.load("RUN/checkpoints/last.ckpt")``.

The model is rebuilt from the run's own config, stored in its checkpoint, and needs no data on disk: the anchors
and the input shape are in the checkpoint too (``vaells.app.builders.restore_model``). The data are read only when
asked for (``run.datamodule``, ``run.test_data``), e.g. to draw a latent plot over the test split.

Every method takes and returns float32 tensors on the CPU, inputs of shape ``run.input_shape`` (one) or
(B, *input_shape) (a batch), latents of shape (d,) or (N, d). A batch of pairs or of starts gives a batch of paths,
(B, num_steps, ...), found together (one coefficient solve for all pairs). The transport math runs in the operators'
float64 inside. Paths and prior samples follow docs/method.md §1 and the paper's eq. 1-8; ``vaells.evaluation.paths``
holds the path math and the path-quality metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from vaells.app.builders import build_datamodule, load_run, restore_model
from vaells.app.runs import CHECKPOINT_NAMES, UsageError, resolve_checkpoint
from vaells.data.base import AnchoredDataModule
from vaells.data.mnist import rotate
from vaells.evaluation.common import evaluating
from vaells.evaluation.paths import linear_interpolation, transport_interpolation
from vaells.evaluation.rotation import coefficient_span
from vaells.models.base import has_operators
from vaells.models.module import ModelBase


def load(ckpt_path: str | Path, *, checkpoint: str = "last", data_overrides: dict[str, Any] | None = None) -> Run:
    """The trained run that ``ckpt_path`` names, on the CPU, in eval mode.

    ``ckpt_path`` is what ``evaluate.py ckpt_path=`` takes (``vaells.app.runs.resolve_checkpoint``): a checkpoint
    of this project's ``train.py``, a run folder (its ``checkpoints/last.ckpt``, or with ``checkpoint="best"`` its
    best one), or a folder of runs such as ``outputs/train/<experiment>/<model>`` (its newest run).
    ``data_overrides`` change the stored data settings for when the data are read, e.g.
    ``{"root": "/path/to/folder/with/MNIST/raw", "download": False}`` on another machine.
    """
    try:
        path = resolve_checkpoint(ckpt_path, checkpoint)
    except UsageError as err:
        # UsageError is the command line's (Hydra prints it without a traceback); Python callers catch the builtins.
        raise (FileNotFoundError if checkpoint in CHECKPOINT_NAMES else ValueError)(str(err)) from None
    cfg, stored = load_run(path)
    if data_overrides:
        with open_dict(cfg):
            cfg.data = OmegaConf.merge(cfg.data, data_overrides)
    return Run(restore_model(cfg, stored), cfg, path)


@dataclass
class LatentPath:
    """A path in latent space: points z (T, d) and, for a transport path, its coefficients c_hat (M,); for a batch
    of pairs, z (B, T, d) and c_hat (B, M)."""

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
        """The latent path from the encoding z0 of x0 to z1 of x1: z_t = expm(t A(c_hat)) z0 for t in
        linspace(0, 1, num_steps), c_hat inferred z0 -> z1 (eq. 7; ``evaluation.paths.path_solver``), which ends at
        T(c_hat) z0, or with ``linear=True`` the straight line (1 - t) z0 + t z1 (any model).

        x0, x1 single inputs -> z (num_steps, d), c_hat (M,); batches (B, *input_shape), pair i from x0[i] to x1[i]
        -> z (B, num_steps, d), c_hat (B, M). A batch's pairs are solved together, in one call of the solver, whose
        restarts then tile the widest half-turn of the operators among the batch's starts (``path_solver``).
        """
        x0, x1, single = self._pair(x0, x1)
        if not linear:
            self._need_operators("interpolate")
        with torch.no_grad():
            mu0, mu1 = self.model.encode(x0), self.model.encode(x1)
            if linear:
                z, c_hat = linear_interpolation(mu0, mu1, num_steps), None
            else:
                z, c_hat = transport_interpolation(self.model, mu0, mu1, num_steps)
        z = z.transpose(0, 1).float()  # (T, B, d) -> (B, T, d)
        c_hat = None if c_hat is None else c_hat.float()
        if single:
            return LatentPath(z[0], None if c_hat is None else c_hat[0])
        return LatentPath(z, c_hat)

    def interpolate(self, x0: Tensor, x1: Tensor, num_steps: int = 10, *, linear: bool = False) -> Tensor:
        """The decoded ``latent_path`` from x0 to x1.  Single inputs -> (num_steps, *input_shape); batches
        (B, *input_shape) -> (B, num_steps, *input_shape)."""
        return self._decode_paths(self.latent_path(x0, x1, num_steps, linear=linear).z)

    def extrapolate(self, x: Tensor, operator: int | None = None, coefficients: Tensor | None = None,
                    num_steps: int = 11, t_range: tuple[float, float] | None = None) -> Tensor:
        """The decoded path from the encoding mu of x along one operator or along a given c.

        ``operator=m``: expm(t Psi_m) mu for t in linspace(*t_range, num_steps), t_range defaulting to [-S, S]
        with S the operator's half-turn span at mu, each input's own (``evaluation.rotation.coefficient_span``, as
        in Fig. 6). ``coefficients=c``, (M,) or for a batch also (B, M) (one c per input): expm(t A(c)) mu, t_range
        defaulting to [0, 1] (t > 1 goes on past T(c) mu).
        A single input -> (num_steps, *input_shape); a batch (B, *input_shape) -> (B, num_steps, *input_shape).
        """
        self._need_operators("extrapolate")
        if (operator is None) == (coefficients is None):
            raise ValueError("give exactly one of operator=m (an operator index) and coefficients=c (M,)")
        x, single = self._inputs("x", x)
        transport = self.model.transport
        num_ops, batch = transport.num_operators, x.shape[0]
        with torch.no_grad():
            mu = self.model.encode(x)  # (B, d)
            if operator is not None:
                if not 0 <= int(operator) < num_ops:
                    raise ValueError(f"operator={operator} must index one of the {num_ops} operators "
                                     f"(0..{num_ops - 1})")
                c = torch.zeros(num_ops, dtype=transport.psi.dtype)
                c[int(operator)] = 1.0
                if t_range is None:
                    # Each input's own half-turn S_i as the coefficient S_i e_m, so that one linspace(-1, 1)
                    # serves the whole batch: expm(t S_i Psi_m) mu_i.
                    spans = [coefficient_span(transport.psi[int(operator)], m[None]) for m in mu]
                    c = torch.tensor(spans, dtype=c.dtype)[:, None] * c
                    t_range = (-1.0, 1.0)
            else:
                c = torch.as_tensor(coefficients, dtype=transport.psi.dtype)
                if c.shape != (num_ops,) and (single or c.shape != (batch, num_ops)):
                    per_input = "" if single else f" or (B, M) = ({batch}, {num_ops}) for this batch"
                    raise ValueError(f"coefficients must have shape (M,) = ({num_ops},){per_input}, got "
                                     f"{tuple(c.shape)}")
                t_range = t_range if t_range is not None else (0.0, 1.0)
            lo, hi = t_range
            path = transport.path(mu, c, num_steps=num_steps, t_min=lo, t_max=hi)  # (T, B, d), one expm call
        frames = self._decode_paths(path.transpose(0, 1).float())
        return frames[0] if single else frames

    # -- the prior -----------------------------------------------------------------------------------
    def sample_prior(self, label: int | None = None, n: int = 16, *, seed: int | None = None,
                     decoded: bool = True) -> Tensor:
        """n decoded samples of the prior: VAELLS's class-matched prior p(z | label) of eq. 8 (label None: any
        class's anchors), a baseline's own prior (which has no classes: ``label`` is ignored). ``seed`` makes the
        draw repeatable without touching the global random stream.  -> (n, *input_shape), or the latents (n, d)
        with ``decoded=False``. A run whose anchors are each input's own (rotated MNIST) has no prior without an
        input: ``sample_around`` samples it around a digit."""
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        labels = None
        if has_operators(self.model):
            if getattr(self.model, "anchor_labels", None) is None:
                raise ValueError(
                    "this run's prior (eq. 8) is built from each input's own anchors (rotated MNIST: the digit's "
                    "rotated copies), not from class anchors, so it has no samples without an input; sample it "
                    "around a digit with run.sample_around(x, n), e.g. x, _ = run.test_data(); "
                    "run.sample_around(x[0], 16)")
            if label is not None:
                num_classes = int(self.model.anchor_labels.max()) + 1
                if not 0 <= int(label) < num_classes:
                    raise ValueError(f"label={label} must be a class of this run, 0..{num_classes - 1}")
                labels = torch.full((int(n),), int(label), dtype=torch.long)
        with self._drawing(seed):
            z = self.model.sample_prior(int(n), labels).float()
        return self.decode(z) if decoded else z

    def sample_around(self, x: Tensor, n: int = 16, *, seed: int | None = None, decoded: bool = True) -> Tensor:
        """n decoded samples of the prior around x: the mixture (1/N_a) sum_i q(z | a_i) of eq. 8 over x's own
        anchors a_i, i.e. an anchor drawn uniformly, then z = T(c) a + eps with c ~ Laplace(0, b) (eq. 5-6).

        On rotated MNIST x's anchors are x rotated by the run's N_a anchor angles (``data.anchors_per_class``
        evenly spaced, as training made them), so x should be an upright digit, as in the test split; on other
        data x itself is the one anchor (what the operators do around that input; ``sample_prior(label)`` is a
        class's prior). ``seed`` makes the draw repeatable without touching the global random stream.
        A single input -> (n, *input_shape); a batch (B, *input_shape) -> (B, n, *input_shape); with
        ``decoded=False`` the latents (n, d) or (B, n, d).
        """
        self._need_operators("sample_around")
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        x, single = self._inputs("x", x)
        anchors = self._own_anchors(x)  # (B, N_a, *input_shape)
        batch, num_anchors = anchors.shape[:2]
        with self._drawing(seed):
            a = self.model.batch_anchors({"anchors": anchors})  # (B, N_a, d)
            pick = torch.randint(num_anchors, (batch, int(n)))
            a = a.gather(1, pick[..., None].expand(-1, -1, a.shape[-1]))  # (B, n, d)
            z = self.model.sample_around(a.flatten(0, 1), 1).view(batch, int(n), -1).float()
        if decoded:
            z = self._decode_paths(z)
        return z[0] if single else z

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

    def _inputs(self, name: str, x: Tensor) -> tuple[Tensor, bool]:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}")
        shape = tuple(x.shape)
        if shape == self.input_shape:
            return x.float()[None], True
        if shape[1:] == self.input_shape and shape[0] >= 1:
            return x.float(), False
        raise ValueError(f"{name} must have shape {self.input_shape} or (B, {', '.join(map(str, self.input_shape))}) "
                         f"(this run's inputs), got {shape}")

    def _latents(self, name: str, z: Tensor) -> tuple[Tensor, bool]:
        z = torch.as_tensor(z)
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {z.dtype}")
        if z.dim() == 1 and z.shape[0] == self.latent_dim:
            return z.float()[None], True
        if z.dim() == 2 and z.shape[1] == self.latent_dim and z.shape[0] >= 1:
            return z.float(), False
        raise ValueError(f"{name} must have shape (d,) or (N, d) with d={self.latent_dim}, got {tuple(z.shape)}")

    def _pair(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor, bool]:
        (x0, single), (x1, single1) = self._inputs("x0", x0), self._inputs("x1", x1)
        if single != single1 or x0.shape != x1.shape:
            shape0, shape1 = (tuple(x.shape[1:]) if one else tuple(x.shape) for x, one in ((x0, single), (x1, single1)))
            raise ValueError(f"x0 must have shape {shape1} like x1 (a pair is two single inputs, a batch of pairs two "
                             f"batches (B, {', '.join(map(str, self.input_shape))}) of the same B), got {shape0}")
        return x0, x1, single

    def _decode_paths(self, z: Tensor) -> Tensor:
        """Decode latents (..., d) -> (..., *input_shape), e.g. paths (B, T, d) -> (B, T, *input_shape)."""
        return self.decode(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], *self.input_shape)

    def _drawing(self, seed: int | None) -> AbstractContextManager:
        """No gradients, and with a seed a repeatable draw in a fork of the global random stream."""
        return torch.no_grad() if seed is None else evaluating(self.model, int(seed))

    def _own_anchors(self, x: Tensor) -> Tensor:
        """Each input's own anchors (B, N_a, *input_shape): on data whose batches carry them (rotated MNIST) made
        as the data make them, else the input itself (N_a = 1). Reads no data: the DataModule is only built."""
        data_class = hydra.utils.get_class(self.config.data._target_)
        if not getattr(data_class, "per_sample_anchors", False):
            return x[:, None]
        angles = getattr(hydra.utils.instantiate(self.config.data), "anchor_angles", None)
        if angles is None:
            raise TypeError(f"{data_class.__name__} gives each input its own anchors, but no anchor_angles to make "
                            "them from an input")
        batch, num_anchors = x.shape[0], angles.shape[0]
        copies = rotate(x.repeat_interleave(num_anchors, 0), angles.repeat(batch))
        return copies.view(batch, num_anchors, *self.input_shape)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
