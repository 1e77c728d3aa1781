"""Test-split metrics of a trained model (what ``evaluate.py`` and ``train.py`` report), through the model
interface (``vaells.models.base.LatentModel``) only. Figures are drawn separately (``vaells.training.figures``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vaells.data.base import AnchoredDataModule
from vaells.data.mnist import MNISTDataModule, RotatedMNISTDataModule
from vaells.evaluation.classifier import cached_classifier, predict
from vaells.evaluation.common import dataset_tensors, evaluating, seeded_pick
from vaells.evaluation.comparison import comparative_metrics
from vaells.evaluation.latent import continuity, knn_accuracy, trustworthiness
from vaells.evaluation.likelihood import split_log_likelihood
from vaells.evaluation.operators import operator_controls, operator_metrics
from vaells.evaluation.paths import path_metrics
from vaells.evaluation.preservation import class_preservation, class_preservation_ceiling, class_preservation_matched
from vaells.evaluation.progress import stage, track
from vaells.evaluation.rotation import rotation_flow_fit, rotation_metrics
from vaells.models.base import has_operators

#: Where the image metrics' digit classifier is cached between evaluations (git-ignored data/ of the checkout).
CLASSIFIER_CACHE = Path(__file__).resolve().parents[2] / "data" / "classifiers"


def training_record(callback_states: dict[str, dict]) -> dict[str, list]:
    """What training decided that the weights do not show, from the callbacks' saved states (a checkpoint's
    ``callbacks``): ``warmup_flow_orders``, the encoder's ``rotation_flow_order`` at each warm-up's end, one
    entry per warm-up trained (``vaells.training.monitors.WarmupFlowCheck``; empty dict if it did not run)."""
    out = {}
    for key, state in callback_states.items():
        if "WarmupFlowCheck" in key and state.get("scores"):
            out["warmup_flow_orders"] = [float(v) for v in state["scores"]]
    return out



def _warmup_batches(model: nn.Module, callback_states: dict[str, dict] | None) -> int:
    """The warm-up batches of ``model``'s run: its schedule's, plus the fresh warm-ups ``WarmupFlowCheck`` added,
    which its saved state holds (``callback_states``, a checkpoint's ``callbacks``) and which are already in the
    schedule of the model that trained them (``callback_states`` None)."""
    added = sum(int(state.get("added_batches", 0)) for key, state in (callback_states or {}).items()
                if "WarmupFlowCheck" in key)
    return int(model.schedule.warmup_steps) + added


def vaells_record(model: nn.Module, callback_states: dict[str, dict] | None = None) -> dict[str, int]:
    """``vaells_batches``: the batches a model with transport operators trained after its warm-up, in the VAELLS
    phases of docs/method.md §2 ({} for other models). 0: the run ended inside its warm-up, the operators were
    never stepped, and every operator metric describes Psi at its random initialisation. ``model`` is the one that
    trained, or (with its checkpoint's ``callbacks`` as ``callback_states``) one restored from a checkpoint with
    ``on_load_checkpoint``, which sets its batch counter."""
    if not has_operators(model) or getattr(model, "schedule", None) is None:
        return {}
    return {"vaells_batches": max(0, int(model.batch_counter) - _warmup_batches(model, callback_states))}


def warmup_only_message(model: nn.Module, callback_states: dict[str, dict] | None = None) -> str | None:
    """What to say of a model with operators whose run ended inside its warm-up (``vaells_batches`` 0), else None."""
    if vaells_record(model, callback_states).get("vaells_batches") != 0:
        return None
    warmup = _warmup_batches(model, callback_states)
    return (f"The VAELLS phase never began: training ended after {model.batch_counter} batches, inside the warm-up "
            f"of {warmup} batches (the autoencoder alone; docs/method.md §2). The operators were never trained: "
            "the operator metrics (operator_drift 0, operator_norm, ...) describe Psi at its random initialisation. "
            f"Train for more than {warmup} batches (trainer.max_epochs, resuming with ckpt_path=RUN "
            "trainer.max_epochs=N) or shorten model.schedule.warmup_steps.")


@torch.no_grad()
def encode_split(model: nn.Module, loader) -> dict[str, torch.Tensor]:
    """Latent locations of a whole split, with its labels and (synthetic data) true coordinates."""
    parts: dict[str, list[torch.Tensor]] = {"mu": [], "label": [], "coords": []}
    for batch in loader:
        parts["mu"].append(model.encode(batch["x"].to(model.device)).cpu())
        parts["label"].append(batch["label"])
        if "coords" in batch:
            parts["coords"].append(batch["coords"])
    return {k: torch.cat(v) for k, v in parts.items() if v}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dm: AnchoredDataModule,
    classifier_cache: Path | None = None,
    matched_variation: float = 0.01,
    ll_points: int = 1000,
    ll_samples: int = 100,
    ll_seed: int = 0,
) -> dict:
    """The model's ``batch_scores`` averaged over the test split (``mse`` from the posterior's centre, ``sample_mse``
    from a posterior sample drawn with seed 0, ``elbo`` for the baselines, ``vaells_objective`` for VAELLS), and
    the latent-structure metrics the data allows:
    knn_accuracy (k = 5, labelled data), trustworthiness and continuity (k = 10, against true coordinates);
    the image metrics of ``vaells.evaluation.rotation``; the comparative metrics of
    ``vaells.evaluation.comparison`` (the prior's fit to the manifold, the rotation share at matched
    variation); for models with transport operators what they learned (``operator_metrics``); and the
    importance-sampled log-likelihood of ``ll_points`` test points drawn with ``ll_seed``, at K = ``ll_samples``
    (``vaells.evaluation.likelihood``: ``log_likelihood`` and its ``log_likelihood_stderr`` over points; 0 points
    skip it)."""
    model.eval()
    dm.setup("test")
    sums: dict[str, float] = {}
    n = 0
    # Seeded like every other sampled metric: train.py scores its model after training has moved the global RNG,
    # evaluate.py after building one, and the posterior samples of the scores must not depend on which.
    with evaluating(model, seed=0):
        for batch in track(dm.test_dataloader(), "test split: mse and the objective (batches)"):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out_b = batch["x"].shape[0]
            for key, value in model.batch_scores(batch).items():
                sums[key] = sums.get(key, 0.0) + float(value) * out_b
            n += out_b
    metrics: dict[str, float | str | list] = {key: total / n for key, total in sums.items()} | {"num_test": n}
    if has_operators(model):
        metrics |= {"num_operators": model.transport.num_operators} | operator_metrics(model.transport)
    if getattr(model, "anchor_labels", None) is not None:  # class-matched anchors: N_a per class
        metrics["anchors_per_class"] = int(model.anchors_per_class)
    with stage("latent structure: knn_accuracy, trustworthiness, continuity"):
        test = encode_split(model, dm.test_dataloader())
        if dm.num_classes > 1:
            train = encode_split(model, dm.train_dataloader())
            metrics["knn_accuracy"] = knn_accuracy(train["mu"], train["label"], test["mu"], test["label"], k=5)
        if "coords" in test:
            metrics["trustworthiness"] = trustworthiness(test["coords"], test["mu"], k=10)
            metrics["continuity"] = continuity(test["coords"], test["mu"], k=10)
    metrics |= mnist_metrics(model, dm, seed=0, cache_dir=classifier_cache, matched_variation=matched_variation)
    with stage("comparative metrics"):
        metrics |= comparative_metrics(model, dm, matched_variation=matched_variation, seed=0)
    with stage("path metrics"):
        metrics |= path_metrics(model, dm, seed=0)
    if ll_points > 0:
        metrics |= split_log_likelihood(model, dm, num_points=ll_points, num_samples=ll_samples, seed=ll_seed)
    return metrics


def write_metrics(metrics: dict, directory: Path) -> Path:
    """``metrics`` as ``<directory>/metrics.json`` (what ``python -m vaells.app.report`` reads); returns the path."""
    path = Path(directory) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    return path


def format_metrics(metrics: dict) -> str:
    """A table for the terminal, one metric a line."""
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {_short(v)}" for k, v in metrics.items())


def _short(value) -> str:
    """A metric for the terminal: floats to 4 digits, lists element-wise, at most 4 entries per list."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        items = [_short(v) for v in value[:4]]
        return "[" + ", ".join(items) + (", ...]" if len(value) > 4 else "]")
    return str(value)


def mnist_metrics(
    model: nn.Module,
    dm: object,
    *,
    num_digits: int | None = None,
    seed: int = 0,
    classifier_steps: int = 1500,
    num_samples: int = 10,
    cache_dir: str | Path | None = None,
    matched_variation: float = 0.01,
) -> dict[str, float]:
    """The image metrics for ``dm``'s test split; {} for any other DataModule.

    RotatedMNISTDataModule: ``rotation_flow_fit`` on ``num_digits`` (default 100) upright test digits for every
    model, and ``rotation_metrics`` on the same digits for models with transport operators, with
    ``rotation_order`` and ``rotation_match`` of the controls Psi = 0 and Psi at its start
    (``operators.operator_controls``: ``*_zero_psi``, ``*_init_psi``).
    MNISTDataModule: ``classifier_accuracy`` on the whole test split, ``class_preservation`` and
    ``class_preservation_ceiling`` on ``num_digits`` (default 1000) test digits, with a classifier trained on
    the train split for ``classifier_steps`` batches (cached in ``cache_dir`` when given); then
    ``class_preservation_matched`` at ``matched_variation`` (with ``matched_spread`` and the variation
    reached), and for models with transport operators the same three with the operators reset to their random
    start (``*_init_psi``).
    Test digits are a seeded draw.
    """
    if not isinstance(dm, MNISTDataModule | RotatedMNISTDataModule):
        return {}
    dm.setup("test")
    if isinstance(dm, RotatedMNISTDataModule):
        pick = seeded_pick(len(dm.test_set), num_digits or 100, seed)
        digits = torch.stack([dm.test_set[int(i)]["digit"] for i in pick])  # upright, padded: (N, 1, 32, 32)
        with stage(f"rotation_flow_fit: the encoder's rotation loop ({len(pick)} upright test digits)"):
            out = rotation_flow_fit(model, digits, seed=seed)
        if has_operators(model):
            with stage(f"rotation metrics ({len(pick)} upright test digits)"):
                out |= rotation_metrics(model, digits, seed=seed)
            for name, control in operator_controls(model):  # what an autoencoder alone, or Psi at its start, scores
                with stage(f"rotation metrics with the control {name}"):
                    scores = rotation_metrics(control, digits, seed=seed)
                out |= {f"rotation_{key}_{name}": scores[f"rotation_{key}"] for key in ("order", "match")}
        return out
    x_train, y_train = dataset_tensors(dm.train_set)
    x_test, y_test = dataset_tensors(dm.test_set)
    with stage(f"digit classifier ({classifier_steps} batches, or from its cache) and classifier_accuracy"):
        clf = cached_classifier(x_train, y_train, steps=classifier_steps, seed=seed, cache_dir=cache_dir)
        accuracy = float((predict(clf, x_test) == y_test).float().mean())
    pick = seeded_pick(x_test.shape[0], num_digits or 1000, seed)
    x_pick, y_pick = x_test[pick], y_test[pick]
    with stage(f"class_preservation and its ceiling ({len(pick)} test digits)"):
        preservation = class_preservation(model, clf, x_pick, y_pick, num_samples=num_samples, seed=seed)
        ceiling = class_preservation_ceiling(model, clf, x_pick, y_pick)
    out = {"classifier_accuracy": accuracy, "class_preservation": preservation,
           "class_preservation_ceiling": ceiling}
    with stage("class_preservation_matched (searching the spread)"):
        out |= class_preservation_matched(model, clf, x_pick, y_pick, target=matched_variation,
                                          num_samples=num_samples, seed=seed)
    if not has_operators(model):
        return out
    # The same model with every operator at its random start: what the learned operators add. (Psi = 0 has no
    # spread to match: its samples vary by the noise alone.)
    for name, control in operator_controls(model):
        if name != "init_psi":
            continue
        with stage("class_preservation_matched with Psi at its random start (*_init_psi)"):
            init = class_preservation_matched(control, clf, x_pick, y_pick, target=matched_variation,
                                              num_samples=num_samples, seed=seed)
        out |= {f"{k}_init_psi": v for k, v in init.items()}
    return out
