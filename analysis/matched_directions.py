"""Question: do a model's own posterior directions keep the class better than isotropic noise? Answer: printed table.

    python analysis/matched_directions.py RUN/checkpoints/last.ckpt [CKPT ...] --root /path/to/mnist_root

Whose directions keep the class: a model's own posterior samples against isotropic latent noise, at matched
variation, on natural MNIST. Prints one table (a row per checkpoint), then one JSON line.

``class_preservation_matched`` compares models at equal visible change, but two things differ between models: the
autoencoder (how far its latent space is from a class boundary) and the directions its posterior samples take
(VAELLS: along the learned operators; a Gaussian VAE: along its diagonal sigma). This script separates them: for
each trained run it scores its own posterior samples and, on the same encoder and decoder, z = mu + s * eps with
eps ~ N(0, I) isotropic, each at the spread whose decoded samples change the digit by ``--variation`` (the
evaluation's matched variation). If a model's own samples keep the class more often than isotropic noise does on
its own autoencoder, its posterior's directions are the better ones. This is an investigation, not a
benchmark: results from it are recorded in docs/notes/ (analysis-history.md
and the notes it names), never here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor, nn

import vaells
from vaells.evaluation.classifier import cached_classifier
from vaells.evaluation.common import dataset_tensors, seeded_pick
from vaells.evaluation.preservation import class_preservation_matched
from vaells.evaluation.summary import CLASSIFIER_CACHE


class IsotropicPosterior(nn.Module):
    """A model's encoder and decoder with the posterior z = mu + spread * eps, eps ~ N(0, I) (the interface's
    ``encode``, ``decode`` and ``posterior_samples``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.latent_dim = model.latent_dim

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.model.decode(z)

    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        mu = self.encode(x)  # (B, d)
        eps = torch.randn(mu.shape[0], num_samples, mu.shape[1], dtype=mu.dtype, device=mu.device)
        return mu.unsqueeze(1) + spread * eps  # (B, S, d)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="+", type=Path)
    parser.add_argument("--root", default=None, help="data.root of the runs' MNIST (a folder holding MNIST/raw)")
    parser.add_argument("--variation", type=float, default=0.01)
    parser.add_argument("--digits", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    print(f"{'run':<44} {'model':<24} {'own posterior':>14} {'isotropic':>10}")
    for ckpt in args.ckpts:
        run = vaells.load(ckpt, data_overrides={"root": args.root, "download": False} if args.root else None)
        model, dm = run.model, run.datamodule
        dm.setup("test")
        x_train, y_train = dataset_tensors(dm.train_set)
        x_test, y_test = dataset_tensors(dm.test_set)
        clf = cached_classifier(x_train, y_train, steps=1500, seed=0, cache_dir=CLASSIFIER_CACHE)
        pick = seeded_pick(x_test.shape[0], args.digits, 0)
        x, y = x_test[pick], y_test[pick]
        own = class_preservation_matched(model, clf, x, y, target=args.variation)
        iso = class_preservation_matched(IsotropicPosterior(model), clf, x, y, target=args.variation)
        rows[str(ckpt)] = {"model": type(model).__name__, "own": own, "isotropic": iso}
        print(f"{str(ckpt)[-44:]:<44} {type(model).__name__:<24} {own['class_preservation_matched']:>14.4f} "
              f"{iso['class_preservation_matched']:>10.4f}")
    print(json.dumps({"matched_directions": rows, "variation": args.variation, "threads": 1}))


if __name__ == "__main__":
    main()
