"""Question: how much class identity can the d = 6 conv autoencoder alone keep on MNIST? Answer: printed as a table.

    python analysis/mnist_class_ceiling.py --root /path/to/mnist --no-download
    python analysis/mnist_class_ceiling.py --root /path/to/mnist --no-download --variants plain class_ce

Natural MNIST's ``class_preservation`` counts decoded posterior samples that a classifier trained on the train
split assigns to the digit's class. It cannot exceed what the plain reconstructions keep
(``class_preservation_ceiling``), and that is set by the autoencoder: its latent size, its networks and how
many training images it sees. This trains the autoencoder alone (the warm-up of ``experiment=natural_mnist``:
Adam, betas (0.5, 0.999), lr 3e-4, batches of 32) in several variants and scores every reconstruction ceiling
on the same held-out test digits:

    plain     the warm-up as configured
    more_N    the train split plus N test images (a diagnostic of data size only; those N are never scored)
    class_ce  plus the cross-entropy of a linear classifier head on z: a supervised latent, i.e. not VAELLS,
              an upper-bound probe of what class structure in the latent could buy
    pull      plus 1/2 ||z - enc(a)||^2 to the nearest anchor of the digit's class (the class-matched prior with
              operators that move nothing: the strongest pull the VAELLS prior can exert)

Prints a table, then one JSON line; runs on one CPU thread.
Results from it are recorded in docs/notes/ (analysis-history.md and the
notes it names), never here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vaells.data.mnist import MNISTDataModule
from vaells.evaluation.classifier import cached_classifier, predict
from vaells.evaluation.common import dataset_tensors
from vaells.networks import ConvDecoder, ConvEncoder
from vaells.objectives import reconstruction_error


def train_autoencoder(
    x: torch.Tensor, y: torch.Tensor, anchors: torch.Tensor, anchor_labels: torch.Tensor, *, variant: str,
    steps: int, latent_dim: int, lr: float, batch_size: int, seed: int,
) -> tuple[ConvEncoder, ConvDecoder]:
    """The release's conv autoencoder on x (N, 1, 28, 28), labels y, with the variant's extra term."""
    torch.manual_seed(seed)
    enc, dec = ConvEncoder(1, x.shape[-1], latent_dim), ConvDecoder(latent_dim, 1, x.shape[-1])
    head = torch.nn.Linear(latent_dim, 10)
    params = [*enc.parameters(), *dec.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(seed)
    # Redraw often on a terminal, rarely into a log file (as vaells.training.progress does for training).
    for _ in tqdm(range(steps), desc=variant, leave=False, mininterval=0.1 if sys.stderr.isatty() else 30.0):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        xb, yb = x[idx], y[idx]
        z = enc(xb)  # (B, d)
        loss = reconstruction_error(xb, dec(z)).mean()
        if variant == "class_ce":
            loss = loss + F.cross_entropy(head(z), yb)
        elif variant == "pull":
            d2 = (z[:, None] - enc(anchors)[None]).pow(2).sum(-1)  # (B, K * N_a)
            d2 = d2.masked_fill(anchor_labels[None] != yb[:, None], float("inf"))
            loss = loss + 0.5 * d2.min(1).values.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enc.eval(), dec.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="MNIST root (torchvision layout), as data.root")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["plain", "more_4000", "more_8000", "class_ce", "pull"])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--latent-dim", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--num-eval", type=int, default=2000, help="held-out test digits that score each variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    dm = MNISTDataModule(root=args.root, download=not args.no_download, anchors_per_class=8, seed=args.seed)
    dm.setup("fit")
    dm.setup("test")
    x_train, y_train = dataset_tensors(dm.train_set)
    x_test, y_test = dataset_tensors(dm.test_set)
    # The judge of evaluate.py: the same classifier, trained on the train split only.
    clf = cached_classifier(x_train, y_train, steps=1500, seed=args.seed, cache_dir=Path("data/classifiers"))
    perm = torch.randperm(x_test.shape[0], generator=torch.Generator().manual_seed(1))
    held, pool = perm[: args.num_eval], perm[args.num_eval:]  # scored digits; extra training images
    x_eval, y_eval = x_test[held], y_test[held]

    rows = []
    for variant in args.variants:
        extra = int(variant.split("_")[1]) if variant.startswith("more_") else 0
        if extra > pool.numel():
            parser.error(f"{variant}: only {pool.numel()} test images are left outside the {args.num_eval} scored")
        x = torch.cat([x_train, x_test[pool[:extra]]])
        y = torch.cat([y_train, y_test[pool[:extra]]])
        start = time.perf_counter()
        enc, dec = train_autoencoder(x, y, dm.anchors, dm.anchor_labels, variant=variant, steps=args.steps,
                                     latent_dim=args.latent_dim, lr=args.lr, batch_size=32, seed=args.seed)
        with torch.no_grad():
            recon = torch.cat([dec(enc(chunk)) for chunk in x_eval.split(500)])
        rows.append({
            "variant": variant, "train_images": x.shape[0],
            "ceiling": float((predict(clf, recon) == y_eval).float().mean()),
            "test_mse": float((recon - x_eval).pow(2).mean()), "seconds": time.perf_counter() - start,
        })
        print(f"{variant}: ceiling {rows[-1]['ceiling']:.3f}", flush=True)

    clf_acc = float((predict(clf, x_eval) == y_eval).float().mean())
    print(f"\nd = {args.latent_dim}, {args.steps} batches; {args.num_eval} held-out test digits; "
          f"classifier on the originals: {clf_acc:.3f}")
    print(f"{'variant':<12}{'train images':>14}{'ceiling':>10}{'test mse':>10}{'time (s)':>10}")
    for r in rows:
        print(f"{r['variant']:<12}{r['train_images']:>14}{r['ceiling']:>10.3f}{r['test_mse']:>10.4f}"
              f"{r['seconds']:>10.0f}")
    print(json.dumps({"benchmark": "mnist_class_ceiling", "latent_dim": args.latent_dim, "steps": args.steps,
                      "num_eval": args.num_eval, "classifier_accuracy": clf_acc, "rows": rows}))


if __name__ == "__main__":
    main()
