"""The authors' trained models (github ``siplab-gt/VAELLS``, ``pretrained_models/``) as vaells runs.

``python -m vaells.release import FILE --experiment EXPERIMENT [--map MAT] [--logs MAT] [--out RUN] [OVERRIDE ...]``
turns one of the release's ``network_batch*_zdim*.pt`` files into a run folder that ``evaluate.py``, ``paths.py``
and ``vaells.load`` accept (docs/running.md, "The authors' models").

A release file is a plain dict (``torch.save`` of the release's training script):

- ``model_state_dict_encoder``/``model_state_dict_decoder``: the same networks as ``vaells.networks`` under other
  names (``RELEASE_NAMES``);
- ``Psi``: (d·d, M), column m holding Ψ_m flattened in column-major (Fortran) order, so that
  A = reshape(Ψ c, (d, d), order="F") = Σ_m c_m Ψ_m (eq. 1);
- ``anchors``: the anchors in data space, class-major (the circles' file lacks them; its training log holds
  them);
- ``step``: the training batches done.

The training log that the release saved beside each model (``spreadInferenceTest.mat``) holds the final Ψ
(``Psi_new``), the anchors and their scaled encodings ``a_mu_scale_np``: the latent scale s is read from those
(encodings divided by s, docs/method.md §1). The rest of the run's settings are the experiment's own
(``conf/experiment/``, ``conf/model_experiment/``), with the sizes of the file and the release's unbounded
coefficients. The release did not save Ψ's starting point: ``psi_init`` is a fresh draw from the release's
N(0, 0.01²) start, so the Ψ-at-initialisation control and ``operator_drift`` compare with a typical start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: The experiments whose models the release ships, and the classes of each (its anchors are class-major).
RELEASE_EXPERIMENTS = {"swiss_roll": 1, "concentric_circles": 2, "natural_mnist": 10}

#: Release parameter-name prefixes -> this project's, per network kind (fullyConnectedModel.py, covNetModel.py).
RELEASE_NAMES = {
    "mlp": {"encoder": {"model_enc.0.": "net.0.", "fc_mean.": "net.2."},
            "decoder": {"model.0.": "net.0.", "model.2.": "net.2."}},
    "conv": {"encoder": {"model_enc.": "features.", "fc_mean.": "head."},
             "decoder": {"fc.": "head.", "model.": "features."}},
}

#: The training log the release writes beside each model.
LOG_NAME = "spreadInferenceTest.mat"


@dataclass
class ReleaseModel:
    """A release checkpoint in this project's terms.

    Attributes: ``encoder``/``decoder`` (state dicts under this project's names), ``psi`` (M, d, d) float64,
    ``anchors`` (N_a, *input_shape) float32, ``anchor_labels`` (N_a,) long, ``latent_scale`` (s; None when no
    log gave it), ``step`` (batches trained), ``logged_psi`` ((M, d, d) from the log, or None).
    """

    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor]
    psi: Tensor
    anchors: Tensor
    anchor_labels: Tensor
    latent_scale: float | None
    step: int
    logged_psi: Tensor | None


def release_psi(columns: Tensor) -> Tensor:
    """The release's (d·d, M) dictionary, each column a column-major d × d operator, as (M, d, d) float64."""
    columns = torch.as_tensor(columns).detach().to(torch.float64)
    if columns.ndim != 2:
        raise ValueError(f"the release's Psi must be (d*d, M), got shape {tuple(columns.shape)}")
    d = round(columns.shape[0] ** 0.5)
    if d * d != columns.shape[0]:
        raise ValueError(f"the release's Psi has {columns.shape[0]} rows, not a square d*d")
    # Column-major: entry (i, j) of Psi_m sits at row i + d*j, i.e. the C-order reshape is the transpose.
    return columns.T.reshape(-1, d, d).transpose(1, 2).contiguous()


def _renamed(state: dict[str, Tensor], names: dict[str, str], what: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"the release's {what} has a parameter {key!r} that no vaells network has; expected "
                             f"names starting with {', '.join(names)}")
        out[names[prefix] + key.removeprefix(prefix)] = value.detach().float()
    return out


def _network_kind(encoder: dict[str, Tensor]) -> str:
    return "conv" if encoder["model_enc.0.weight"].ndim == 4 else "mlp"


def read_log(path: Path) -> dict:
    """The fields of a release training log (``spreadInferenceTest.mat``) that the import uses."""
    from scipy.io import loadmat  # only the release's files need it

    return {k: v for k, v in loadmat(path).items() if k in ("Psi_new", "anchors", "a_mu_scale_np")}


def read_release(path: str | Path, experiment: str, logs: str | Path | None = None) -> ReleaseModel:
    """Read a release checkpoint (and its training log: ``logs``, or ``spreadInferenceTest.mat`` beside it)."""
    path = Path(path).expanduser()
    if experiment not in RELEASE_EXPERIMENTS:
        raise ValueError(f"--experiment {experiment!r}: the release ships models of "
                         f"{', '.join(RELEASE_EXPERIMENTS)} only")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the release's models are in pretrained_models/ of github "
                                "siplab-gt/VAELLS (docs/running.md, \"The authors' models\")")
    # The release saved a legacy (non-zip) pickle with optimizer states, which weights_only cannot read: load only
    # files you trust, as with any pickle.
    raw = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"model_state_dict_encoder", "model_state_dict_decoder", "Psi"} - set(raw if isinstance(raw, dict)
                                                                                   else ())
    if missing:
        raise ValueError(f"{path} is not a release checkpoint: it lacks {', '.join(sorted(missing))}")
    log_path = Path(logs).expanduser() if logs is not None else path.parent / LOG_NAME
    if logs is not None and not log_path.is_file():
        raise FileNotFoundError(f"--logs {log_path} does not exist")
    log = read_log(log_path) if log_path.is_file() else {}

    kind = _network_kind(raw["model_state_dict_encoder"])
    encoder = _renamed(raw["model_state_dict_encoder"], RELEASE_NAMES[kind]["encoder"], "encoder")
    decoder = _renamed(raw["model_state_dict_decoder"], RELEASE_NAMES[kind]["decoder"], "decoder")
    psi = release_psi(raw["Psi"])
    if "anchors" in raw:
        anchors = torch.as_tensor(raw["anchors"]).detach().float()
    elif "anchors" in log:
        anchors = torch.as_tensor(log["anchors"]).float()
    else:
        raise ValueError(f"{path} holds no anchors and no training log was found at {log_path}; give the log "
                         f"with --logs (the release's {LOG_NAME} beside the model)")
    num_classes = RELEASE_EXPERIMENTS[experiment]
    if len(anchors) % num_classes:
        raise ValueError(f"{len(anchors)} anchors cannot be split evenly among the {num_classes} classes of "
                         f"{experiment}; is --experiment right?")
    labels = torch.arange(num_classes).repeat_interleave(len(anchors) // num_classes)
    scale = None
    if "a_mu_scale_np" in log and "anchors" in log:
        scale = _logged_scale(encoder, kind, torch.as_tensor(log["anchors"]).float(),
                              torch.as_tensor(log["a_mu_scale_np"]).double())
    logged = release_psi(torch.as_tensor(log["Psi_new"])) if "Psi_new" in log else None
    return ReleaseModel(encoder, decoder, psi, anchors, labels, scale, int(raw.get("step", 0)), logged)


def _logged_scale(encoder_state: dict[str, Tensor], kind: str, anchors: Tensor, scaled: Tensor) -> float:
    """s from the log: the encodings of the logged anchors divided by their logged scaled encodings, rounded to
    the release's settings (1 or 10; any other ratio is kept as measured)."""
    from vaells.networks import ConvEncoder, MLPEncoder

    weight = encoder_state["head.weight" if kind == "conv" else "net.2.weight"]
    if kind == "conv":
        net = ConvEncoder(in_channels=anchors.shape[1], image_size=anchors.shape[-1], latent_dim=weight.shape[0])
    else:
        net = MLPEncoder(input_dim=anchors.shape[1], hidden_dim=weight.shape[1], latent_dim=weight.shape[0])
    net.load_state_dict(encoder_state)
    with torch.no_grad():
        mu = net(anchors).double()
    ratio = float((mu.abs().sum() / scaled.abs().sum()).item())
    nearest = min((1.0, 10.0), key=lambda s: abs(s - ratio))
    return nearest if abs(ratio / nearest - 1) < 0.05 else ratio


def release_overrides(model: ReleaseModel, experiment: str, map_file: str | Path | None) -> list[str]:
    """The config overrides that make ``experiment``'s VAELLS run the shape and settings of ``model``."""
    overrides = [
        f"experiment={experiment}", "model=vaells",
        f"backbone.latent_dim={model.psi.shape[-1]}",
        f"model.num_operators={model.psi.shape[0]}",
        f"data.anchors_per_class={len(model.anchors) // RELEASE_EXPERIMENTS[experiment]}",
        "++model.prior_solver.max_coeff=null",  # the release bounds no coefficient
    ]
    if model.latent_scale is not None:
        overrides.append(f"model.latent_scale={model.latent_scale:g}")
    if map_file is not None:
        if experiment == "natural_mnist":
            raise ValueError("--map is the synthetic data's linear map; natural_mnist takes none")
        overrides.append(f"data.projection_file={Path(map_file).expanduser().resolve()}")
    return overrides


def import_release(path: str | Path, experiment: str, *, map_file: str | Path | None = None,
                   logs: str | Path | None = None, out: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the run folder of a release checkpoint (``<out>/checkpoints/last.ckpt`` and ``<out>/release.json``)
    and return it. ``overrides`` are further config overrides (e.g. ``data.root=...``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vaells.app.builders import instantiate_model
    from vaells.app.report import CONF_DIR

    path = Path(path).expanduser()
    model = read_release(path, experiment, logs)
    settings = release_overrides(model, experiment, map_file) + list(overrides)
    folder = (Path(out) if out is not None else Path("outputs") / "release" / experiment).resolve()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=settings, return_hydra_config=True)
    # The run's paths (${hydra:runtime.output_dir}) resolve to the folder written here, as a train.py run's do.
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder)
    HydraConfig.instance().set_config(cfg)
    if map_file is not None:
        # The map's own check (shape, ambient_dim) before anything is written.
        from vaells.data.synthetic import load_projection

        load_projection(cfg.data.projection_file, cfg.data.ambient_dim)
    torch.manual_seed(int(cfg.seed))  # psi_init: a seeded draw of the release's start
    module = instantiate_model(cfg, tuple(model.anchors.shape[1:]),
                               lambda _: {"anchors": model.anchors, "anchor_labels": model.anchor_labels})
    state = module.state_dict()
    loaded = {**{f"encoder.{k}": v for k, v in model.encoder.items()},
              **{f"decoder.{k}": v for k, v in model.decoder.items()},
              "transport.psi": model.psi.to(state["transport.psi"].dtype),
              "anchor_inputs": model.anchors, "anchor_labels": model.anchor_labels}
    for key, value in loaded.items():
        if key not in state or state[key].shape != value.shape:
            raise ValueError(f"the release's {key} has shape {tuple(value.shape)}, but {experiment}'s VAELLS "
                             f"expects {tuple(state[key].shape) if key in state else 'no such parameter'}")
    module.load_state_dict({**state, **loaded})
    module.batch_counter = model.step  # past the warm-up: the release trained this many batches

    source = {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "step": model.step, "latent_scale": model.latent_scale,
              "map_file": None if map_file is None else str(Path(map_file).expanduser().resolve())}
    module.run_config["run"] = {"experiment": experiment, "model": "vaells",
                                "overrides": dict(o.lstrip("+").split("=", 1) for o in settings[2:]), "release": source}
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    checkpoint = {"state_dict": module.state_dict(), "epoch": 0, "global_step": model.step}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
    readings = {"psi_eigenvalues": _eigenvalues(model.psi)}
    if model.logged_psi is not None:
        readings["logged_psi_eigenvalues"] = _eigenvalues(model.logged_psi)
        readings["psi_matches_log"] = bool(torch.allclose(model.psi, model.logged_psi, rtol=1e-6, atol=1e-9))
    (folder / "release.json").write_text(json.dumps({**source, "overrides": settings, **readings}, indent=2) + "\n")
    return folder


def _eigenvalues(psi: Tensor) -> list[list[str]]:
    """Each operator's eigenvalues as strings (``-0.0026+0.0267j``), the reading the release's logs allow."""
    return [[f"{complex(v):.4f}".strip("()") for v in torch.linalg.eigvals(op)] for op in psi]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaells.release", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="turn a release checkpoint into a vaells run folder")
    imp.add_argument("file", help="the release's network_batch*_zdim*.pt")
    imp.add_argument("--experiment", required=True, choices=sorted(RELEASE_EXPERIMENTS))
    imp.add_argument("--map", dest="map_file", help="the release's mapMat_*.mat (synthetic data): the run's data "
                     "then lie on the authors' own manifold")
    imp.add_argument("--logs", help=f"the release's training log ({LOG_NAME}; default: the one beside FILE)")
    imp.add_argument("--out", help="the run folder to write (default: outputs/release/<experiment>)")
    parser.epilog = "Further arguments KEY=VALUE are config overrides for the run, e.g. data.root=DIR."
    # Overrides may follow the options, which a positional nargs="*" after FILE would not take (argparse).
    args, overrides = parser.parse_known_args(argv)
    if any("=" not in o for o in overrides):
        parser.error(f"unrecognized arguments: {' '.join(o for o in overrides if '=' not in o)} (config overrides "
                     "are KEY=VALUE)")
    from hydra.errors import HydraException

    try:
        folder = import_release(args.file, args.experiment, map_file=args.map_file, logs=args.logs,
                                out=args.out, overrides=overrides)
    except (ValueError, FileNotFoundError, HydraException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = json.loads((folder / "release.json").read_text())
    print(f"wrote {folder} (step {info['step']}, latent scale {info['latent_scale']})")
    print("operator eigenvalues: " + "; ".join(", ".join(op) for op in info["psi_eigenvalues"]))
    if "psi_matches_log" in info:
        print(f"Psi equals the training log's Psi_new: {info['psi_matches_log']}")
    print(f"evaluate it: python evaluate.py ckpt_path={folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
