"""``python -m vaells.app.report`` on a small fake multirun folder: the table it writes, and the side-by-side figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from vaells.app.report import main

JOBS = {
    "0": (["experiment=concentric_circles", "model=vaells"], {"mse": 0.07, "knn_accuracy": 1.0,
                                                               "operator_norm": [0.1, 3.4], "ckpt_path": "x"}),
    "1": (["experiment=concentric_circles", "model=vae"], {"mse": 0.29, "knn_accuracy": 0.5, "elbo": -1.5}),
    "2": (["experiment=concentric_circles", "model=svae"], {"mse": 0.2, "knn_accuracy": 0.75}),
}


def _fake_multirun(root: Path) -> Path:
    for job, (overrides, metrics) in JOBS.items():
        run = root / job
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run / "metrics.json").write_text(json.dumps(metrics))
        if job != "2":  # one run without figures: its panel is left out
            fig = Figure(figsize=(2, 2))
            fig.add_subplot().scatter(np.arange(5), np.arange(5))
            (run / "figures").mkdir()
            fig.savefig(run / "figures" / "latent.png")
        if job == "1":  # and one with a matched ring too: a second row of panels
            fig.savefig(run / "figures" / "matched_ring.png")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_report_tabulates_the_runs_with_the_swept_values_first(tmp_path: Path, capsys) -> None:
    root = _fake_multirun(tmp_path / "multirun")
    main([str(root)])
    with open(root / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "mse", "knn_accuracy", "elbo", "run"]  # experiment did not vary
    assert [r["model"] for r in rows] == ["vaells", "vae", "svae"] and [r["run"] for r in rows] == ["0", "1", "2"]
    assert [float(r["mse"]) for r in rows] == [0.07, 0.29, 0.2] and rows[0]["elbo"] == ""
    markdown = (root / "report.md").read_text().splitlines()
    assert "| model | mse | knn_accuracy | elbo | run |" in markdown
    assert "| vae | 0.29 | 0.5 | -1.5 | 1 |" in markdown
    image = plt.imread(root / "comparison.png")
    # The two runs with figures side by side (4 in each at 120 dpi), in two rows (latent, matched ring) of 4.4 in.
    assert image.shape[:2] == (round(2 * 4.4 * 120), 2 * 4 * 120)
    assert "report.md" in capsys.readouterr().out


def test_report_puts_a_table2_multirun_in_the_papers_layout(tmp_path: Path) -> None:
    """Five fake Table 2 jobs (``python train.py -m experiment=table2``): M, N_a, LL +- stderr and mse lead."""
    root = tmp_path / "table2"
    rows = [("M2_Na8", 2, 8), ("M4_Na8", 4, 8), ("M8_Na8", 8, 8), ("M4_Na12", 4, 12), ("M4_Na16", 4, 16)]
    for job, (name, m, n_a) in enumerate(rows):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- +table2_row={name}\n- experiment=table2\n")
        metrics = {"mse": 0.03 + job / 1000, "elbo": -9.5, "num_operators": m, "operator_norm": [1.0] * m,
                   "anchors_per_class": n_a, "knn_accuracy": 0.9, "log_likelihood": -600.0 - job,
                   "log_likelihood_stderr": 2.5, "log_likelihood_k": 100, "log_likelihood_points": 1000}
        (run / "metrics.json").write_text(json.dumps(metrics))
    main([str(root)])
    with open(root / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:6] == ["table2_row", "num_operators", "anchors_per_class", "log_likelihood",
                                  "log_likelihood_stderr", "mse"]
    assert [(int(r["num_operators"]), int(r["anchors_per_class"])) for r in table] == [(m, n) for _, m, n in rows]
    markdown = (root / "report.md").read_text().splitlines()
    header = next(line for line in markdown if line.startswith("| table2_row"))
    assert header.startswith("| table2_row | M | N_a | LL ± stderr | mse | elbo |")
    assert "log_likelihood_stderr" not in header
    assert "| M4_Na12 | 4 | 12 | -603 ± 2.5 | 0.033 | -9.5 |" in "\n".join(markdown)


def test_evaluations_are_reported_with_the_record_in_their_metrics(tmp_path: Path) -> None:
    """evaluate.py writes RUN/evaluations/<time>/metrics.json, whose .hydra/ holds evaluate.py's own overrides
    (ckpt_path=...): the swept values come from the run's record in metrics.json instead."""
    for i, model in enumerate(["vaells", "vae"]):
        folder = tmp_path / f"run{i}" / "evaluations" / "t"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path=run{i}\n")
        record = {"experiment": "swiss_roll", "model": model, "overrides": {"model": model, "seed": "3"}}
        (folder / "metrics.json").write_text(json.dumps({**record, "mse": 0.1 * (i + 1), "ckpt_path": "x"}))
    main([str(tmp_path)])
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "mse", "run"]  # experiment and seed did not vary; no ckpt_path column
    assert [r["model"] for r in rows] == ["vaells", "vae"]
