"""The authors' trained models in the results: ``python -m vaells.results release DIR [OVERRIDE ...]``.

``DIR`` is the release's ``pretrained_models/`` folder (github ``siplab-gt/VAELLS``). Each shipped model is imported
(``vaells.release``) into ``outputs/release/<experiment>``, scored by ``evaluate.py`` with every metric and control,
and written as ``results/<job>.json`` like a suite's job; a model whose result exists is skipped. The synthetic
models are scored on their own data maps, beside the ``authors`` suite's VAELLS runs on the same maps
(docs/running.md, "The authors' models").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vaells.results.suites import ROOT
from vaells.results.writer import result_record, write_result


@dataclass(frozen=True)
class Shipped:
    """One model of the release: its job (result path), experiment, and files below ``pretrained_models/``."""

    job: str
    experiment: str
    checkpoint: str
    map_file: str | None = None


SHIPPED = (
    Shipped("swiss_roll/authors_map/release/seed0", "swiss_roll", "swiss_roll/network_batch30_zdim2.pt",
            "swiss_roll/mapMat_swissRollHighDim_nonLinear_z2_x20.mat"),
    Shipped("concentric_circles/authors_map/release/seed0", "concentric_circles",
            "concen_circle/network_batch30_zdim2.pt", "concen_circle/mapMat_circleHighDim_nonLinear_z2_x20.mat"),
    Shipped("natural_mnist/release/seed0", "natural_mnist", "natMNIST/network_batch32_zdim6.pt"),
)

#: Evaluation settings as the suites score the same experiment (conf/suite/paper.yaml).
EVALUATION = {"natural_mnist": ["ll_points=250"]}


def newest_metrics(run: Path) -> Path:
    found = sorted((run / "evaluations").glob("*/metrics.json"))
    if not found:
        raise FileNotFoundError(f"evaluate.py wrote no metrics.json under {run / 'evaluations'}")
    return found[-1]


def score_release(release_dir: Path, results_dir: Path, overrides: list[str], outputs: Path) -> int:
    """Import, evaluate and record each shipped model that has no result; returns an exit status."""
    from vaells.release import import_release
    from vaells.results.writer import data_label

    release_dir = release_dir.expanduser().resolve()
    missing = [s.checkpoint for s in SHIPPED if not (release_dir / s.checkpoint).is_file()]
    if missing:
        print(f"error: {release_dir} lacks {', '.join(missing)}; give the release's pretrained_models/ folder",
              file=sys.stderr)
        return 2
    data_overrides = [o for o in overrides if o.startswith("data.")]
    for shipped in SHIPPED:
        path = results_dir / f"{shipped.job}.json"
        if path.is_file():
            print(f"{shipped.job}: has a result, skipped")
            continue
        synthetic = shipped.map_file is not None
        start = time.perf_counter()
        run = import_release(release_dir / shipped.checkpoint, shipped.experiment,
                             map_file=release_dir / shipped.map_file if synthetic else None,
                             out=outputs / shipped.experiment, overrides=[] if synthetic else data_overrides)
        evaluation = [f"ckpt_path={run}", *EVALUATION.get(shipped.experiment, []),
                      *(o for o in overrides if not o.startswith("data."))]
        print(f"{shipped.job}: imported into {run}; evaluating")
        status = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *evaluation]).returncode
        if status:
            print(f"error: evaluate.py {' '.join(evaluation)} failed with status {status}", file=sys.stderr)
            return status
        metrics = json.loads(newest_metrics(run).read_text())
        info = json.loads((run / "release.json").read_text())
        config = _run_config(run)
        command = (f"python -m vaells.release import {shipped.checkpoint} --experiment {shipped.experiment}"
                   + (f" --map {shipped.map_file}" if synthetic else "") + " && python evaluate.py "
                   + " ".join(evaluation))
        result = result_record(job=shipped.job, suite="release", command=command,
                               suite_command="python -m vaells.results release " + " ".join([str(release_dir),
                                                                                              *overrides]),
                               threads=1, data=data_label(shipped.experiment, config),
                               wall_time_s=round(time.perf_counter() - start, 1), train_time_s=None,
                               metrics=metrics)
        result["release"] = {k: info[k] for k in ("sha256", "step", "latent_scale", "psi_eigenvalues")}
        print(f"result: {write_result(path, result)}")
    return 0


def _run_config(run: Path):
    from vaells.app.builders import load_run

    return load_run(run / "checkpoints" / "last.ckpt")[0]
