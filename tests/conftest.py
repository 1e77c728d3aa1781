"""Shared helpers: compose the project's Hydra configs without a Hydra run directory, run the entry points
in-process, write a tiny MNIST."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
if str(ROOT) not in sys.path:  # train.py and evaluate.py live at the top level
    sys.path.insert(0, str(ROOT))

# The solver's tiny batched ops run ~10x faster on one thread than on two contended ones (conf: threads: 1).
torch.set_num_threads(1)


def compose_train(overrides: list[str], out_dir: Path, latent_figures: bool = False) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides``; every ``${hydra:runtime.output_dir}`` path is pointed at
    ``out_dir`` so the config resolves outside a Hydra run. ``latent_figures=False`` drops that
    callback."""
    paths = [
        f"trainer.default_root_dir={out_dir}",
        f"logger.save_dir={out_dir}/tensorboard",
        f"callbacks.model_checkpoint.dirpath={out_dir}/checkpoints",
        f"callbacks.latent_figures.output_dir={out_dir}/figures" if latent_figures else "~callbacks.latent_figures",
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[*overrides, *paths])
    finally:
        GlobalHydra.instance().clear()


def write_mnist_fixture(root: Path, make_digits, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write a tiny MNIST in torchvision's layout (<root>/MNIST/raw/*-ubyte) from ``make_digits(n, gen)``,
    which returns (n, 28, 28) uint8 images and (n,) uint8 labels. Tests never need the real data."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        for kind, array in zip(("images-idx3", "labels-idx1"), make_digits(n, gen), strict=True):
            # IDX: magic 0x08 (ubyte) + ndim, big-endian sizes, then the raw bytes.
            header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.numpy().tobytes())
    return root


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run a ``@hydra.main`` function as ``prog *argv``; returns (exit code, stdout, stderr)."""

    def run(main, *argv: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["prog", *argv])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        # Imported, train.main's module is "train", and Hydra would look for conf/ as a Python package; as
        # "__main__" it finds conf/ next to the script, as on the command line.
        monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")
        GlobalHydra.instance().clear()
        extra = ""
        try:
            main()
            code = 0
        except SystemExit as ex:  # Hydra reports the error on stderr and exits 1
            code = ex.code if isinstance(ex.code, int) else 1
        except Exception as ex:  # under a tracer (coverage, debugger) Hydra re-raises instead
            code, extra = 1, "".join(traceback.format_exception(ex))
        finally:
            GlobalHydra.instance().clear()
        out, err = capsys.readouterr()
        return code, out, err + extra

    return run


@pytest.fixture
def fit_calls(monkeypatch) -> list[pl.LightningModule]:
    """Record the model of every Trainer.fit, which then goes ahead."""
    calls: list = []
    original = pl.Trainer.fit

    def spy(self, model, *args, **kwargs):
        calls.append(model)
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", spy)
    return calls


def documented_metrics() -> set[str]:
    """The metric keys that the "Every key" table of docs/metrics.md explains (first column, in backticks)."""
    import re

    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("\n## Every key\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
