"""Figures of the latent space, logged to TensorBoard during training and saved as PNGs at the end.

``LatentFigures`` asks the LightningModule only for this small API (``VAELLSModule`` provides it):

- ``encode(x) -> (B, d)`` latent means, ``decode(z) -> (B, *input_shape)`` (every model: ``LatentModel``);
- ``transport`` (a ``TransportOperator``) and ``infer_coefficients(z0, z1) -> (..., M)``;
- ``anchor_latents() -> (K * N_a, d) | None``, ``anchor_labels`` and ``sample_around(anchors, S) -> (A, S, d)``.

A model without ``transport`` (a baseline VAE) gets the latent scatter only; one without ``sample_around``
gets no prior figure. ``save_run_figures`` draws the same figures outside of training (``evaluate.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from vaells.evaluation.paths import same_label_pairs
from vaells.figures import plotting

log = logging.getLogger(__name__)

#: The PNG names of ``LatentFigures.build_figures`` (``prior_decoded`` only for image data).
FIGURE_NAMES = ("latent", "orbits", "prior_samples", "paths")


def orbit_time_span(psi: Tensor, max_growth: float = 3.0) -> Tensor:
    """t_max (M,) such that the orbit expm(t Psi_m) z0, t in [-t_max, t_max], is visible but bounded.

    Why adaptive: learned operators have small norms (~0.03), so t = O(1) barely moves a point, and the
    useful range differs per operator. An eigenvalue pair a +- i w of Psi_m makes expm(t Psi_m) turn by
    w t while scaling by e^(a t), so t_max = 1.5 pi / w_max sweeps 3 pi over the whole span: one and a half
    turns, the extent of the swiss roll (t in [1.5 pi, 4.5 pi]). Without rotation (w_max ~ 0) t_max =
    2 / ||Psi_m||_2, i.e. ||t Psi_m|| <= 2. Either way t_max is capped at max_growth / max |a| so that an
    expanding or contracting operator scales the start by at most e^max_growth and stays on the plot.
    """
    p = psi.detach().to("cpu", torch.float64)  # (M, d, d)
    eig = torch.linalg.eigvals(p)  # (M, d)
    omega = eig.imag.abs().amax(-1)
    rate = eig.real.abs().amax(-1)
    norm = torch.linalg.matrix_norm(p, ord=2)
    rotates = omega > 1e-6 * norm
    t_max = torch.where(rotates, 1.5 * math.pi / omega.clamp_min(1e-300), 2.0 / norm.clamp_min(1e-300))
    t_max = torch.minimum(t_max, max_growth / rate.clamp_min(1e-300))
    return torch.where(norm > 0, t_max, torch.ones_like(t_max))  # Psi_m = 0: every orbit is a point


def save_figures(figs: Mapping[str, Figure], directory: str | Path, dpi: int = 120) -> list[Path]:
    """Write each figure as ``<directory>/<name>.png`` (creating the directory); returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _module_device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(iter(module.parameters()), torch.empty(0)).device


class LatentFigures(pl.Callback):
    """The paper's latent-space figures (Fig. 2-5) for TensorBoard and disk; rank zero only.

    Every ``every_n_epochs`` validation epochs it encodes up to ``num_points`` validation samples and logs
    ``latent`` (Fig. 2/4), ``orbits`` (Fig. 3a), ``prior_samples`` (Fig. 3b), ``paths`` (Fig. 3c-d) and, for
    image data, ``prior_decoded`` (Fig. 5) to every logger whose experiment has ``add_figure``
    (TensorBoard). At the end of ``fit`` it saves them as PNGs in ``output_dir`` (default
    ``<trainer.default_root_dir>/figures``). Nothing is drawn during the sanity check or a ``fast_dev_run``.

    Args:
        orbit_t_max: the orbit span [-t, t]; None picks it per operator (``orbit_time_span``).
        max_prior_anchors: at most this many anchors (evenly spaced over the class-major list) get samples.
        seed: seeds the choice of orbit starts and path pairs, and the prior samples, so successive epochs
            show the same points. The draws run in a forked RNG and leave training's random stream alone.
        ring_spread: the Laplace scale b of the posterior-sample rings of image data (``posterior_ring``);
            None picks it from the operators' rotation speed, which suits a rotation operator only.
        operator_path_range: the paths of every operator (``operator_paths``, several operators) run over
            c in [-range, range]; None picks a range per operator from its rotation speed, as above.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_points: int = 500,
        num_orbit_starts: int = 6,
        orbit_t_max: float | None = None,
        orbit_steps: int = 61,
        num_prior_samples: int = 50,
        max_prior_anchors: int = 12,
        num_paths: int = 4,
        path_steps: int = 30,
        output_dir: str | Path | None = None,
        seed: int = 0,
        ring_spread: float | None = None,
        operator_path_range: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("every_n_epochs", every_n_epochs), ("num_points", num_points),
                            ("num_orbit_starts", num_orbit_starts), ("orbit_steps", orbit_steps),
                            ("num_prior_samples", num_prior_samples), ("max_prior_anchors", max_prior_anchors),
                            ("num_paths", num_paths), ("path_steps", path_steps)]:
            if int(value) < 1:
                raise ValueError(f"LatentFigures: {name} must be at least 1, got {value}")
        self.every_n_epochs, self.num_points, self.num_orbit_starts = every_n_epochs, num_points, num_orbit_starts
        self.orbit_t_max, self.orbit_steps = orbit_t_max, orbit_steps
        self.num_prior_samples, self.max_prior_anchors = num_prior_samples, max_prior_anchors
        self.num_paths, self.path_steps = num_paths, path_steps
        for name, value in [("ring_spread", ring_spread), ("operator_path_range", operator_path_range)]:
            if value is not None and not value > 0:
                raise ValueError(f"LatentFigures: {name} must be positive (or null), got {value}")
        self.output_dir, self.seed = output_dir, seed
        self.ring_spread, self.operator_path_range = ring_spread, operator_path_range
        self.num_logged = 0  # how many times figures went to the loggers (tests, and curious users)
        self.saved_paths: list[Path] = []

    # -- Lightning hooks ---------------------------------------------------------------------------------
    def _active(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer) or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # Figures are a view of training, not part of it: a failure (matplotlib, a full disk) is a warning.
        try:
            self._log_figures(trainer, pl_module)
        except Exception as err:
            log.warning("LatentFigures: the figures after epoch %d failed (%s: %s); training goes on",
                        trainer.current_epoch + 1, type(err).__name__, err)

    def _log_figures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if hasattr(lg.experiment, "add_figure")]
        if not loggers:
            return
        figs = self.build_figures(trainer, pl_module)
        # close=False: one figure may go to several loggers. The figures are not registered with pyplot,
        # so there is nothing to close; they are freed with ``figs``.
        for logger in loggers:
            for name, fig in figs.items():
                logger.experiment.add_figure(f"figures/{name}", fig, global_step=trainer.global_step, close=False)
        self.num_logged += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        directory = Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "figures"
        try:
            self.saved_paths = save_figures(self.build_figures(trainer, pl_module), directory)
        except Exception as err:
            log.warning("LatentFigures: saving the figures to %s failed (%s: %s); the run itself is complete",
                        directory, type(err).__name__, err)

    save_figures = staticmethod(save_figures)

    # -- the figures ---------------------------------------------------------------------------------------
    def build_figures(
        self, trainer: pl.Trainer, pl_module: nn.Module, dataloader: Iterable | None = None
    ) -> dict[str, Figure]:
        """Figures for up to ``num_points`` samples of ``dataloader`` (default: the validation loader)."""
        if dataloader is None:
            if trainer.datamodule is not None:
                dataloader = trainer.datamodule.val_dataloader()
            else:
                loaders = trainer.val_dataloaders
                dataloader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if dataloader is None:
            raise ValueError("LatentFigures needs validation data: give the Trainer a datamodule or val_dataloaders")
        with self._seeded(_module_device(pl_module)):  # iterating a DataLoader draws from the global RNG too
            figs = self.figures_for(pl_module, self.collect(dataloader))
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and len(getattr(dm, "input_shape", ())) == 3 and hasattr(pl_module, "transport"):
            from vaells.figures.images import build_image_figures  # image data only (paper Fig. 5-7)

            figs |= build_image_figures(pl_module, dm, seed=self.seed, ring_spread=self.ring_spread,
                                        operator_path_range=self.operator_path_range)
        return figs

    @contextmanager
    def _seeded(self, device: torch.device) -> Iterator[None]:
        """Seed the global RNGs inside a fork: reproducible figures, and training's stream stays untouched."""
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            yield

    def collect(self, dataloader: Iterable) -> dict[str, Tensor]:
        """Concatenate dict batches until ``num_points`` samples: "x", "label", "coords" (when present) and
        the per-sample "anchors" of the first batch's first ``max_prior_anchors`` samples."""
        parts: dict[str, list[Tensor]] = {}
        count = 0
        for batch in dataloader:
            if not isinstance(batch, Mapping) or "x" not in batch:
                raise TypeError("LatentFigures expects dict batches with an 'x' entry (see vaells.data.base)")
            for key in ("x", "label", "coords"):
                if key in batch:
                    parts.setdefault(key, []).append(batch[key])
            if "anchors" in batch and "anchors" not in parts:
                parts["anchors"] = [batch["anchors"][: self.max_prior_anchors]]
            count += len(batch["x"])
            if count >= self.num_points:
                break
        if not parts:
            raise ValueError("LatentFigures: the dataloader yielded no batches")
        return {key: torch.cat(value)[: self.num_points] for key, value in parts.items()}

    @torch.no_grad()
    def figures_for(self, pl_module: nn.Module, data: Mapping[str, Tensor]) -> dict[str, Figure]:
        """The figures for one collected batch (see ``collect``), with the module in eval mode."""
        was_training = pl_module.training
        device = _module_device(pl_module)
        pl_module.eval()
        try:
            with self._seeded(device):
                return self._figures(pl_module, data, device)
        finally:
            pl_module.train(was_training)

    def _figures(self, pl_module: nn.Module, data: Mapping[str, Tensor], device: torch.device) -> dict[str, Figure]:
        z = pl_module.encode(data["x"].to(device))  # (N, d)
        z_cpu = z.detach().cpu()
        labels = data.get("label")
        proj = plotting.project_2d(z_cpu)
        anchors, anchor_labels = self._anchors(pl_module, data, device)

        # Several classes: colour by class (Fig. 4). One class with coordinates: by ||coords||, which grows
        # monotonically along the swiss roll (radius = t) and so stands in for the arc parameter (Fig. 2).
        color, color_label, anchor_colors = None, None, None
        if labels is not None and labels.unique().numel() > 1:
            color, color_label, anchor_colors = labels, "class", anchor_labels
        elif "coords" in data:
            color, color_label = data["coords"].double().norm(dim=-1), "||coords||"
        figs = {"latent": plotting.latent_scatter(
            z_cpu, color, anchors.cpu() if anchors is not None else None, anchor_colors,
            color_label=color_label, projection=proj)}

        transport = getattr(pl_module, "transport", None)
        if transport is not None:
            figs["orbits"] = self._orbit_figure(transport, z, proj)
        if anchors is not None and hasattr(pl_module, "sample_around"):
            idx = torch.linspace(0, anchors.shape[0] - 1, min(self.max_prior_anchors, anchors.shape[0])).round().long()
            chosen = anchors[idx.to(anchors.device)]
            samples = pl_module.sample_around(chosen, self.num_prior_samples)  # (A, S, d)
            figs["prior_samples"] = plotting.prior_samples(z_cpu, chosen.cpu(), samples.cpu(), projection=proj)
            if data["x"].dim() >= 3 and hasattr(pl_module, "decode"):
                figs["prior_decoded"] = self._decoded_grid(pl_module, chosen, samples)
        if transport is not None and hasattr(pl_module, "infer_coefficients") and z.shape[0] >= 2:
            i0, i1 = self._same_label_pairs(labels, z.shape[0])
            z0, z1 = z[i0.to(z.device)], z[i1.to(z.device)]
            c = pl_module.infer_coefficients(z0, z1)  # (P, M)
            paths = transport.path(z0, c, num_steps=self.path_steps).transpose(0, 1)  # (P, T, d)
            titles = [f"path {k + 1}, |c|_1 = {float(c[k].abs().sum()):.3g}" for k in range(c.shape[0])]
            title = (r"Transport paths $z_t=\mathrm{expm}(t\sum_mc_m\Psi_m)z_0$ between pairs of encoded points "
                     "(of one class where labelled), c inferred from the pair")
            figs["paths"] = plotting.transport_paths(z_cpu, paths.cpu(), targets=z1.cpu(), titles=titles,
                                                     title=title, projection=proj)
        return figs

    def _anchors(
        self, pl_module: nn.Module, data: Mapping[str, Tensor], device: torch.device
    ) -> tuple[Tensor | None, Tensor | None]:
        """Class-matched anchors (K * N_a, d) and labels, or the encoded per-sample anchors of the batch."""
        anchors = pl_module.anchor_latents() if hasattr(pl_module, "anchor_latents") else None
        if anchors is not None:
            return anchors, getattr(pl_module, "anchor_labels", None)
        if "anchors" in data:  # (b, N_a, *input_shape): rotated MNIST's per-sample anchors
            a = data["anchors"]
            flat = a.reshape(-1, *a.shape[2:])[: self.max_prior_anchors]
            return pl_module.encode(flat.to(device)), None
        return None, None

    def _orbit_figure(self, transport: nn.Module, z: Tensor, proj: plotting.Projection) -> Figure:
        psi = transport.psi
        gen = torch.Generator().manual_seed(self.seed)
        starts = z[torch.randperm(z.shape[0], generator=gen)[: self.num_orbit_starts].to(z.device)]  # (S, d)
        t_max = (torch.full((psi.shape[0],), float(self.orbit_t_max), dtype=torch.float64)
                 if self.orbit_t_max is not None else orbit_time_span(psi))
        steps = self.orbit_steps | 1  # odd, so that the middle time is exactly t = 0, the start point
        orbits = torch.stack([
            transport.orbit(starts, m, torch.linspace(-t, t, steps, dtype=torch.float64)).transpose(0, 1).cpu()
            for m, t in enumerate(t_max.tolist())
        ])  # (M, S, T, d)
        titles = [f"operator {m + 1}: t from -{t:.3g} to {t:.3g}" for m, t in enumerate(t_max.tolist())]
        # The span alone (e.g. 173) puzzles without its rule: small learned operators need a large t to move.
        span = ("the span of t is callbacks.latent_figures.orbit_t_max" if self.orbit_t_max is not None else
                "the span of t is set per operator to show one and a half turns (growth at most e^3): a small "
                "operator needs a large t")
        title = (rf"Orbits $\mathrm{{expm}}(t\Psi_m)z_0$ of each operator m from {starts.shape[0]} encoded points z0"
                 f"\n{span}")
        return plotting.operator_orbits(z.cpu(), orbits, start_index=steps // 2, titles=titles, title=title,
                                        projection=proj)

    def _same_label_pairs(self, labels: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        """``num_paths`` random (start, end) index pairs that share a label where possible (seeded)."""
        labels = labels.cpu() if labels is not None else torch.zeros(n, dtype=torch.long)
        return same_label_pairs(labels, self.num_paths, torch.Generator().manual_seed(self.seed + 1))

    def _decoded_grid(self, pl_module: nn.Module, anchors: Tensor, samples: Tensor) -> Figure:
        """Fig. 5: each row is a decoded anchor followed by decoded prior samples around it."""
        per_row = min(samples.shape[1], 7)
        rows = min(anchors.shape[0], 8)
        z = torch.cat([anchors[:rows, None], samples[:rows, :per_row]], dim=1)  # (rows, 1 + per_row, d)
        images = pl_module.decode(z.reshape(-1, z.shape[-1]))
        return plotting.image_grid(images.cpu(), nrow=per_row + 1, title="decoded anchor | prior samples")


def save_run_figures(model: nn.Module, dm: pl.LightningDataModule, directory: str | Path,
                     options: Mapping[str, Any] | None = None) -> list[Path]:
    """Draw what ``LatentFigures`` draws at the end of training, with its ``options`` (a run's own figure
    settings, e.g. the natural-MNIST ring spread), for a trained model outside of a Trainer; write the PNGs
    into ``directory`` and return their paths."""
    figures = LatentFigures(**{**(options or {}), "output_dir": str(directory)})
    return figures.save_figures(figures.build_figures(_TrainerView(dm), model), directory)


class _TrainerView:
    """What the figure builder reads from a Trainer, for use outside of one."""

    def __init__(self, dm: pl.LightningDataModule) -> None:
        self.datamodule = dm
        self.is_global_zero = True
        self.global_step = 0
        self.current_epoch = 0
        self.logger = None
