"""Figures (vaells.figures.plotting) and the LatentFigures callback, with a fake module that has VAELLSModule's API."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vaells.distributions import sample_laplace
from vaells.figures import plotting
from vaells.training.figures import FIGURE_NAMES, LatentFigures, orbit_time_span, save_figures
from vaells.transport import TransportOperator

matplotlib.use("Agg")  # TensorBoard's add_figure goes through pyplot; never open a window

# -- fakes ----------------------------------------------------------------------------------------------


class DictData(Dataset):
    def __init__(self, **tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["x"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: t[i] for key, t in self.tensors.items()}


class TinyData(pl.LightningDataModule):
    """Vector data (two classes, 2-D coords) or images with per-sample anchors (like rotated MNIST)."""

    def __init__(self, n: int = 48, input_shape: tuple[int, ...] = (5,), per_sample_anchors: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        tensors = {"x": torch.randn(n, *input_shape, generator=gen), "label": torch.arange(n) % 2,
                   "coords": torch.randn(n, 2, generator=gen)}
        if per_sample_anchors:
            tensors["anchors"] = torch.rand(n, 3, *input_shape, generator=gen)
        self.dataset = DictData(**tensors)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=16)


class FakeVAELLS(pl.LightningModule):
    """The slice of VAELLSModule's API that LatentFigures uses; an autoencoder is enough to train."""

    def __init__(self, input_shape: tuple[int, ...] = (5,), latent_dim: int = 2, num_operators: int = 2,
                 class_anchors: bool = True) -> None:
        super().__init__()
        self.input_shape = input_shape
        size = math.prod(input_shape)
        self.encoder, self.decoder = nn.Linear(size, latent_dim), nn.Linear(latent_dim, size)
        torch.manual_seed(0)
        self.transport = TransportOperator(latent_dim, num_operators, init_std=0.3)
        self.coeff_scale, self.noise_std = 0.5, 0.01
        self.anchor_x = torch.randn(4, size) if class_anchors else None
        self.anchor_labels = torch.tensor([0, 0, 1, 1]) if class_anchors else None
        self.infer_calls = 0

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1).float()).double()

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z.float())).view(-1, *self.input_shape)

    def anchor_latents(self) -> Tensor | None:
        return self.encode(self.anchor_x) if self.anchor_x is not None else None

    def infer_coefficients(self, z0: Tensor, z1: Tensor) -> Tensor:
        self.infer_calls += 1
        return torch.full((*z0.shape[:-1], self.transport.num_operators), 0.5, dtype=torch.float64)

    def sample_around(self, anchors: Tensor, num_samples: int) -> Tensor:
        c = sample_laplace((anchors.shape[0], num_samples, self.transport.num_operators), self.coeff_scale)
        z = self.transport(anchors.unsqueeze(1), c)  # (A, S, d)
        return z + self.noise_std * torch.randn_like(z)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return (self.decode(self.encode(batch["x"])) - batch["x"]).pow(2).mean()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.training_step(batch, batch_idx))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


# -- plotting ---------------------------------------------------------------------------------------------


def test_project_2d_keeps_2d_and_uses_principal_components_above() -> None:
    z = torch.randn(50, 2, dtype=torch.float64)
    proj = plotting.project_2d(z)
    assert proj.axis_labels == ("z1", "z2")
    np.testing.assert_allclose(proj(z), z.numpy())
    z6 = np.random.default_rng(0).normal(size=(80, 6)) * np.array([5.0, 1, 3, 0.1, 0.1, 0.1])
    proj6 = plotting.project_2d(z6)
    p = proj6(z6)
    assert proj6.axis_labels == ("PC1", "PC2") and p.shape == (80, 2)
    assert p[:, 0].var() > p[:, 1].var() > 0.9 * 9  # PC1 ~ the scale-5 axis, PC2 ~ the scale-3 axis
    assert proj6(np.zeros((3, 4, 6))).shape == (3, 4, 2)  # overlays of any batch shape
    with pytest.raises(ValueError, match="d=6"):
        proj6(np.zeros((3, 2)))


@pytest.mark.parametrize("d", [2, 6])
def test_latent_scatter_discrete_and_continuous(d: int) -> None:
    z, anchors = torch.randn(60, d), torch.randn(4, d)
    fig = plotting.latent_scatter(z, torch.arange(60) % 3, anchors, torch.tensor([0, 1, 2, 2]))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.collections) == 3 + 1  # one scatter per class, one for the anchors
    assert len(ax.get_legend().get_texts()) == 3
    assert ax.get_xlabel() == ("z1" if d == 2 else "PC1")
    fig = plotting.latent_scatter(z, torch.rand(60), anchors, torch.rand(4), color_label="t")
    assert len(fig.axes) == 2  # the plot and its colorbar
    assert len(fig.axes[0].collections) == 2
    assert len(plotting.latent_scatter(z).axes[0].collections) == 1


@pytest.mark.parametrize("d", [2, 6])
def test_operator_orbits_one_panel_per_operator(d: int) -> None:
    fig = plotting.operator_orbits(torch.randn(40, d), torch.randn(3, 2, 7, d), start_index=3)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.lines) == 2  # one line per orbit start
        assert len(ax.collections) == 2  # background and start markers
        assert len(ax.texts) == 2  # one arrowhead per orbit
    with pytest.raises(ValueError, match=r"\(M, S, T, d\)"):
        plotting.operator_orbits(torch.randn(40, d), torch.randn(2, 7, d))


@pytest.mark.parametrize("d", [2, 6])
def test_prior_samples_and_paths(d: int) -> None:
    fig = plotting.prior_samples(torch.randn(40, d), torch.randn(3, d), torch.randn(3, 5, d))
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 1 + 3 + 1  # background, 3 clouds, anchors
    fig = plotting.transport_paths(torch.randn(40, d), torch.randn(5, 9, d), targets=torch.randn(5, d))
    assert len(fig.axes) == 5
    assert all(len(ax.lines) == 1 and len(ax.collections) == 3 for ax in fig.axes)  # path; bg, start, end


def test_image_grid() -> None:
    fig = plotting.image_grid(torch.rand(10, 1, 8, 8), nrow=5, title="grid")
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    assert fig.axes[0].images[0].get_array().shape[-1] == 3


def test_orbit_time_span() -> None:
    w = 0.02
    rotation = torch.tensor([[0.0, -w], [w, 0.0]], dtype=torch.float64)
    expanding = torch.diag(torch.tensor([0.5, 0.1], dtype=torch.float64))
    t = orbit_time_span(torch.stack([rotation, expanding, torch.zeros(2, 2, dtype=torch.float64)]))
    assert t[0].item() == pytest.approx(1.5 * math.pi / w)  # one and a half turns over [-t, t]
    assert t[1].item() == pytest.approx(min(2.0 / 0.5, 3.0 / 0.5))
    assert t[2].item() == 1.0


# -- the callback ---------------------------------------------------------------------------------------------


def test_build_and_save_figures(tmp_path) -> None:
    module, data = FakeVAELLS(), TinyData()
    module.train()
    cb = LatentFigures(num_points=40, num_orbit_starts=3, num_prior_samples=10, num_paths=2)
    rng_state = torch.random.get_rng_state()
    figs = cb.build_figures(SimpleNamespace(datamodule=data), module)
    assert set(figs) == set(FIGURE_NAMES)
    assert all(isinstance(f, Figure) for f in figs.values())
    assert module.training  # train mode restored
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the figures leave training's RNG alone
    assert len(figs["orbits"].axes) == module.transport.num_operators
    assert len(figs["paths"].axes) == 2 and module.infer_calls == 1  # all pairs in one batched call
    paths = save_figures(figs, tmp_path / "figs", dpi=50)
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    image = matplotlib.image.imread(tmp_path / "figs" / "latent.png")
    assert image.shape[0] > 150 and image.shape[1] > 150  # 5 x 4.2 inches at 50 dpi


def test_per_sample_anchors_and_images_add_a_decoded_grid() -> None:
    module = FakeVAELLS(input_shape=(1, 6, 6), latent_dim=3, class_anchors=False)
    cb = LatentFigures(num_points=20, max_prior_anchors=4, num_prior_samples=5)
    figs = cb.build_figures(SimpleNamespace(datamodule=TinyData(input_shape=(1, 6, 6), per_sample_anchors=True)),
                            module)
    assert set(figs) == {*FIGURE_NAMES, "prior_decoded"}
    assert len(figs["prior_samples"].axes[0].collections) == 1 + 4 + 1  # 4 per-sample anchors
    assert figs["latent"].axes[0].get_xlabel() == "PC1"


def test_model_without_transport_gets_the_scatter_only() -> None:
    module = FakeVAELLS()
    module.transport = None  # a baseline: its prior has no operators
    module.sample_around = lambda anchors, n: anchors.unsqueeze(1) + 0.1 * torch.randn(len(anchors), n, 2)
    figs = LatentFigures(num_points=20).build_figures(SimpleNamespace(datamodule=TinyData()), module)
    assert set(figs) == {"latent", "prior_samples"}


def test_trainer_logs_figures_and_saves_pngs(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = LatentFigures(num_points=32, num_orbit_starts=2, num_prior_samples=5, num_paths=1)  # few panels: fast
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer.fit(FakeVAELLS(num_operators=1), datamodule=TinyData())
    assert cb.num_logged == 1  # the sanity check draws nothing
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {f"figures/{name}" for name in FIGURE_NAMES}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in FIGURE_NAMES)


def test_fast_dev_run_draws_nothing(tmp_path) -> None:
    cb = LatentFigures(output_dir=tmp_path / "figs")
    trainer = pl.Trainer(fast_dev_run=True, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer.fit(FakeVAELLS(), datamodule=TinyData())
    assert cb.num_logged == 0 and not (tmp_path / "figs").exists()
