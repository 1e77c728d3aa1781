"""The importance-sampled log-likelihood of held-out data (Burda et al., 2016; docs/method.md §3), for every model of
the interface ``vaells.models.base.LatentModel``:

    LL(x) = log (1/K) sum_k w_k,   log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),   z_k ~ q(z | x),

a lower bound on log p(x) in expectation that tightens as K grows (at K = 1 it is a one-sample ELBO). Each model
supplies its own log-weights (``log_weights``): the baselines' exact q and p, VAELLS's auxiliary-variable bound
with an unbiased prior estimate (docs/method.md §3.1). All share the decoder likelihood, so their numbers compare.
VAELLS also reports the release's recipe (``release_log_weights``, docs/method.md §3.2) under its own name. The
estimator is batched over points and samples: a chunk of points at a time, the K samples of each in one call.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from vaells.data.base import AnchoredDataModule
from vaells.distributions import log_mean_exp
from vaells.evaluation.progress import track
from vaells.models.base import LatentModel

#: Samples (points x K) per call of ``log_weights``: bounds the memory of a chunk (decoded images, solver pairs).
SAMPLES_PER_CHUNK = 1000


def model_device(model: LatentModel) -> torch.device:
    """Where the model's parameters live (a LightningModule's ``device``; the CPU for a model without parameters)."""
    if isinstance(getattr(model, "device", None), torch.device):
        return model.device
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def log_likelihood_per_point(
    model: LatentModel,
    x: Tensor,
    num_samples: int,
    *,
    labels: Tensor | None = None,
    anchors: Tensor | None = None,
    points_per_chunk: int | None = None,
    progress: bool = False,
    weights: str = "log_weights",
) -> Tensor:
    """LL(x_n) for each point, from ``num_samples`` = K log-weights each (the model's method named ``weights``),
    with the random numbers as they come. x (N, *input_shape), labels (N,), anchors (N, N_a, *input_shape)
    -> (N,) float64."""
    n, device = x.shape[0], model_device(model)
    chunk = points_per_chunk or max(1, SAMPLES_PER_CHUNK // num_samples)
    starts = range(0, n, chunk)
    if progress:
        starts = track(starts, total=math.ceil(n / chunk), description=f"log-likelihood, {n} points x K={num_samples}")
    parts = []
    for i in starts:
        part = {k: v[i:i + chunk].to(device) for k, v in (("labels", labels), ("anchors", anchors)) if v is not None}
        log_w = getattr(model, weights)(x[i:i + chunk].to(device), num_samples, **part)  # (chunk, K)
        parts.append(log_mean_exp(log_w.double()).cpu())
    return torch.cat(parts)


def summarize(ll: Tensor, num_samples: int) -> dict[str, float | int]:
    """The mean LL over points, its standard error over points (std / sqrt(N)), K and N."""
    n = ll.numel()
    stderr = float(ll.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return {"log_likelihood": float(ll.mean()), "log_likelihood_stderr": stderr, "log_likelihood_k": num_samples,
            "log_likelihood_points": n}


def log_likelihood(
    model: LatentModel,
    x: Tensor,
    num_samples: int = 100,
    *,
    labels: Tensor | None = None,
    anchors: Tensor | None = None,
    seed: int = 0,
    points_per_chunk: int | None = None,
    progress: bool = True,
    weights: str = "log_weights",
) -> dict[str, float | int]:
    """The mean LL of the points ``x`` at K = ``num_samples`` (``summarize``) from the model's ``weights``, with
    random numbers from ``seed`` (the caller's random state is left as it was). ``labels`` and ``anchors`` go to a
    class-conditional prior (the release's recipe; the bound ignores them)."""
    if num_samples < 1 or x.shape[0] < 1:
        raise ValueError(f"need num_samples >= 1 and at least one point, got K={num_samples}, {x.shape[0]} points")
    device = model_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        ll = log_likelihood_per_point(model, x, num_samples, labels=labels, anchors=anchors,
                                      points_per_chunk=points_per_chunk, progress=progress, weights=weights)
    if not bool(torch.isfinite(ll).all()):
        bad = int((~torch.isfinite(ll)).sum())
        raise FloatingPointError(f"the log-likelihood of {bad} of {ll.numel()} points is not finite")
    return summarize(ll, num_samples)


def draw_test_points(dm: AnchoredDataModule, num_points: int, seed: int) -> dict[str, Tensor]:
    """``num_points`` test points drawn without replacement with ``seed`` (all of them when the split is smaller),
    as a batch dict (``x``, ``label``, and per-sample ``anchors`` where the data has them)."""
    dm.setup("test")
    loader = dm.test_dataloader()
    order = torch.randperm(len(loader.dataset), generator=torch.Generator().manual_seed(seed))[:num_points]
    subset = DataLoader(Subset(loader.dataset, order.tolist()), batch_size=loader.batch_size,
                        collate_fn=loader.collate_fn)
    batches = list(subset)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def split_log_likelihood(
    model: LatentModel, dm: AnchoredDataModule, num_points: int = 1000, num_samples: int = 100, seed: int = 0,
    progress: bool = True,
) -> dict[str, float | int]:
    """``log_likelihood`` of ``num_points`` test points of ``dm`` (``draw_test_points``) at K = ``num_samples``:
    the bound, for every model whose prior exists without the input (not VAELLS with per-sample anchors, rotated
    MNIST), and for VAELLS also ``log_likelihood_release_recipe`` (with its ``_stderr``), the release's recipe
    with the test labels and per-sample anchors passed to its class-conditional prior."""
    batch = draw_test_points(dm, num_points, seed)
    out: dict[str, float | int] = {}
    if getattr(model, "unconditional_prior", True):
        out |= log_likelihood(model, batch["x"], num_samples, seed=seed, progress=progress)
    if hasattr(model, "release_log_weights"):
        release = log_likelihood(model, batch["x"], num_samples, labels=batch.get("label"),
                                 anchors=batch.get("anchors"), seed=seed, progress=progress,
                                 weights="release_log_weights")
        out |= {"log_likelihood_release_recipe": release["log_likelihood"],
                "log_likelihood_release_recipe_stderr": release["log_likelihood_stderr"]}
        out |= {key: release[key] for key in ("log_likelihood_k", "log_likelihood_points")}
    return out


def likelihood_settings(cfg: DictConfig) -> dict[str, int]:
    """``ll_points``, ``ll_samples`` and ``ll_seed`` of a train or evaluate config, as ``evaluate_model``'s
    arguments; a bad value stops here, before any work, naming the key."""
    settings = {"ll_points": cfg.get("ll_points", 1000), "ll_samples": cfg.get("ll_samples", 100),
                "ll_seed": cfg.get("ll_seed", 0)}
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    if settings["ll_points"] < 0:
        raise ValueError(f"ll_points must be >= 0 (0 skips the log-likelihood), got {settings['ll_points']}")
    if settings["ll_samples"] < 1:
        raise ValueError(f"ll_samples must be >= 1 (K importance samples per point), got {settings['ll_samples']}")
    return settings
