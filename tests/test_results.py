"""Results as code (vaells/results; docs/running.md, "Results"): the suites' jobs, the skip of finished jobs, the
result files a suite run writes, the claims' verdicts, and the check that catches a hand-edited page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from vaells.results.render import (
    CLAIMS,
    Results,
    authors_claim,
    check_rendered,
    claims_table,
    manifold_claim,
    paths_claim,
    prior_claim,
    render_all,
    render_table,
)
from vaells.results.suites import job_for_overrides, load_suite, missing_environment, pending_jobs
from vaells.results.tables import Row, Table

README_MARKERS = "".join(f"<!-- results:{b}:start -->\n<!-- results:{b}:end -->\n"
                         for b in ("quickstart", "times", "glance"))


def test_suites_name_their_jobs_and_share_them():
    quick = {job.name: job for job in load_suite("quick")}
    paper = {job.name: job for job in load_suite("paper")}
    assert len(quick) == 24 and len(paper) == 24 + 24 + 4
    assert set(quick) <= set(paper)  # a job that quick ran is not run again by paper
    assert quick["swiss_roll/vaells/seed0"].overrides == ("experiment=swiss_roll", "model=vaells", "seed=0")
    assert paper["table2/vaells/M4_Na12/seed0"].overrides == (
        "experiment=table2", "model=vaells", "+table2_row=M4_Na12", "seed=0", "ll_points=250")
    assert job_for_overrides(list(paper.values()), ["experiment=table2", "model=vaells", "+table2_row=M4_Na12",
                                                    "seed=0", "ll_points=250", "data.root=x"]).name == \
        "table2/vaells/M4_Na12/seed0"


def test_a_variant_files_its_jobs_apart_and_reads_the_environment(monkeypatch):
    jobs = {job.name: job for job in load_suite("authors")}
    job = jobs["swiss_roll/authors_map/vaells/seed1"]
    assert job.overrides[:3] == ("experiment=swiss_roll", "model=vaells", "seed=1")
    monkeypatch.delenv("VAELLS_RELEASE_DIR", raising=False)
    assert missing_environment(list(jobs.values())) == ["VAELLS_RELEASE_DIR"]
    monkeypatch.setenv("VAELLS_RELEASE_DIR", "/r")
    assert missing_environment(list(jobs.values())) == []
    # Hydra records the override with the variable resolved; the plain job, whose overrides are a prefix, loses.
    plain = load_suite("quick")[0]
    ran = ["experiment=swiss_roll", "model=vaells", "seed=1",
           "data.projection_file=/r/swiss_roll/mapMat_swissRollHighDim_nonLinear_z2_x20.mat", "ll_points=9"]
    assert job_for_overrides([*jobs.values(), plain], ran).name == "swiss_roll/authors_map/vaells/seed1"


def test_a_job_with_a_result_is_skipped(tmp_path):
    jobs = load_suite("quick")
    done = jobs[3].result_path(tmp_path)
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert [j.name for j in pending_jobs(jobs, tmp_path)] == [j.name for j in jobs if j is not jobs[3]]


def test_a_suite_that_does_not_exist_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="paper, quick"):
        load_suite("qiuck")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - experiment: swiss_roll\n")
    with pytest.raises(ValueError, match="experiment must be a non-empty list"):
        load_suite(str(bad))


def write_result(folder: Path, job: str, metrics: dict, commit: str | None = None) -> None:
    path = folder / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "job": job, "suite": "quick", "command": "python train.py", "suite_command": "", "commit": commit,
        "uncommitted_changes": False, "date": "2026-12-07T00:00:00+00:00",
        "machine": {"platform": "p", "processor": "x86_64", "cpus": 2, "gpu": None, "python": "3", "torch": "2"},
        "threads": 1, "data": "synthetic", "wall_time_s": 10.0, "train_time_s": 8.0, "metrics": metrics}))


def paths_metrics(path: float, line: float, init: float, endpoint: float) -> dict:
    return {"path_manifold_error": path, "linear_path_manifold_error": line, "path_manifold_error_init_psi": init,
            "path_endpoint_error": endpoint}


def test_the_paths_claim_needs_every_seed_to_beat_both_controls_and_arrive(tmp_path):
    for seed in range(3):
        write_result(tmp_path, f"swiss_roll/vaells/seed{seed}", paths_metrics(0.1, 0.3, 0.5, 0.05))
    assert paths_claim(Results(tmp_path), "swiss_roll")[1] == "met"
    # one seed whose path never arrives: its error is low, but the claim fails
    write_result(tmp_path, "swiss_roll/vaells/seed2", paths_metrics(0.05, 0.3, 0.5, 0.5))
    assert paths_claim(Results(tmp_path), "swiss_roll")[1] == "**not met**"
    # one seed only beats the line by less than 2x
    write_result(tmp_path, "swiss_roll/vaells/seed2", paths_metrics(0.2, 0.3, 0.5, 0.05))
    assert paths_claim(Results(tmp_path), "swiss_roll")[1] == "**not met**"


def test_a_row_of_one_seed_shows_that_seed_only(tmp_path):
    for seed, value in enumerate((0.1, 0.2, 0.4)):
        write_result(tmp_path, f"swiss_roll/vaells/seed{seed}", {"path_manifold_error": value})
    rows = (Row("all", "swiss_roll/vaells"), Row("one", "swiss_roll/vaells", seed=1))
    table = Table("t", ("path_manifold_error",), rows)
    lines = render_table(table, Results(tmp_path), tmp_path)
    assert lines[4].startswith("| all | 0.233 ± 0.153 (0.1, 0.2, 0.4) | 0, 1, 2 |")
    assert lines[5].startswith("| one | 0.2 | 1 |")


def test_the_manifold_claim_counts_manifolds_whose_every_seed_meets_every_target(tmp_path):
    from vaells.data.manifolds import MANIFOLDS

    good = {**paths_metrics(0.1, 0.3, 0.5, 0.05), "operator_drift": [0.9, 0.6], "knn_accuracy": 1.0}
    for embedding in ("linear", "nonlinear"):
        for name in MANIFOLDS:
            for seed in range(3):
                write_result(tmp_path, f"manifold_suite/{name}/{embedding}/vaells/seed{seed}", good)
    assert manifold_claim(Results(tmp_path)) == ("linear map: 8 of 8 manifolds; nonlinear map: 8 of 8", "met")
    # One operator that barely moved at one seed costs its manifold; a second such manifold fails the claim.
    for name in list(MANIFOLDS)[:2]:
        write_result(tmp_path, f"manifold_suite/{name}/linear/vaells/seed2", {**good, "operator_drift": [0.9, 0.2]})
    assert manifold_claim(Results(tmp_path)) == ("linear map: 6 of 8 manifolds; nonlinear map: 8 of 8",
                                                 "**not met**")


def test_the_authors_claim_compares_every_seed_with_the_authors_model(tmp_path):
    write_result(tmp_path, "swiss_roll/authors_map/release/seed0", paths_metrics(0.06, 0.38, 0.6, 0.03))
    for seed, path in enumerate((0.08, 0.085, 0.07)):
        write_result(tmp_path, f"swiss_roll/authors_map/vaells/seed{seed}", paths_metrics(path, 0.38, 0.6, 0.05))
    assert authors_claim(Results(tmp_path), "swiss_roll")[1] == "met"
    write_result(tmp_path, "swiss_roll/authors_map/vaells/seed1", paths_metrics(0.095, 0.38, 0.6, 0.05))
    assert authors_claim(Results(tmp_path), "swiss_roll")[1] == "**not met**"


def test_a_prior_that_loses_to_a_baseline_or_the_anchors_fails(tmp_path):
    write_result(tmp_path, "concentric_circles/vaells/seed0", {"prior_fit": 0.3, "prior_fit_anchor_points": 0.5,
                                                                 "prior_fit_loss_scale": 0.1})
    for model, fit in (("vae", 0.4), ("vampprior", 0.35), ("svae", 0.6)):
        write_result(tmp_path, f"concentric_circles/{model}/seed0", {"prior_fit": fit})
    assert prior_claim(Results(tmp_path), "concentric_circles")[1] == "met (1 of 3 seeds)"
    write_result(tmp_path, "concentric_circles/vampprior/seed0", {"prior_fit": 0.29})
    measured, verdict = prior_claim(Results(tmp_path), "concentric_circles")
    assert verdict == "**not met** (1 of 3 seeds)" and "vampprior" in measured


def test_render_writes_the_page_and_the_readme_blocks_and_the_check_catches_a_hand_edit(tmp_path):
    results = tmp_path / "results"
    for seed in range(3):
        write_result(results, f"swiss_roll/vaells/seed{seed}",
                     paths_metrics(0.1 + seed / 100, 0.3, 0.5, 0.05) | {"mse": 1e-4, "operator_reading": ["spiral"]})
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("intro\n" + README_MARKERS + "end\n")
    render_all(results, tmp_path)
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "| VAELLS | 0.11 ± 0.01 (0.1, 0.11, 0.12) |" in page
    assert "| linear path (control) | 0.3 ± 0 (0.3, 0.3, 0.3) |" in page
    assert "commit unknown" in page and (tmp_path / "docs/figures/results/swiss_roll.png").is_file()
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("end\n") and "`mse` 0.0001" in readme
    assert check_rendered(results, tmp_path) == []
    (tmp_path / "docs" / "results.md").write_text(page.replace("0.11 ± 0.01", "0.09 ± 0.01"))
    [(path, diff)] = check_rendered(results, tmp_path)
    assert path.name == "results.md" and "-| VAELLS | 0.09 ± 0.01" in diff


def test_a_result_is_stale_once_the_code_that_computed_it_changes():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()
    if not head or not first:
        pytest.skip("not a git checkout with history")
    from vaells.results.render import code_changed

    assert code_changed(head, ROOT) == ""
    assert code_changed(first[0], ROOT) == "stale"
    assert code_changed("0" * 40, ROOT) == "commit not in this history"


def test_comments_and_docstrings_do_not_make_a_result_stale():
    from vaells.results.render import same_meaning

    code = 'def f(x):\n    """Doc."""\n    return x + 1  # why\n'
    assert same_meaning("a.py", code, 'def f(x):\n    """Other words."""\n    return x + 1\n')
    assert not same_meaning("a.py", code, code.replace("x + 1", "x + 2"))
    assert same_meaning("c.yaml", "lr: 0.1  # why\n", "# a note\nlr: 0.1\n")
    assert not same_meaning("c.yaml", "lr: 0.1\n", "lr: 0.2\n")
    assert not same_meaning("notes.txt", "a", "b")


def test_the_claims_table_says_when_there_are_no_results(tmp_path):
    lines = claims_table(Results(tmp_path), "docs/results.md")
    assert len(lines) == 2 + len(CLAIMS) and all(line.endswith("| no results yet |") for line in lines[2:])


@pytest.mark.e2e
def test_a_suite_runs_through_hydra_writes_results_and_resumes(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text("groups:\n  - experiment: [concentric_circles]\n    model: [vae, vaells]\n    seed: [0]\n"
                     "    overrides: [trainer.max_epochs=1, ll_points=10, '~callbacks.latent_figures']\n")
    results = tmp_path / "results"
    command = [sys.executable, "-m", "vaells.results", "run", str(suite), "--results", str(results)]
    # model.num_operators: a key of VAELLS's config only, so the VAE's job runs without it; the solver's warm_iter is
    # VAELLS's too, and null there: a key all the same
    first = subprocess.run(command + ["--jobs", "2", "model.num_operators=1", "model.prior_solver.warm_iter=3",
                                      "ll_seed=0"], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    vae = json.loads((results / "concentric_circles/vae/seed0.json").read_text())
    vaells = json.loads((results / "concentric_circles/vaells/seed0.json").read_text())
    assert vae["command"] == ("python train.py experiment=concentric_circles model=vae seed=0 "
                              "trainer.max_epochs=1 ll_points=10 ~callbacks.latent_figures ll_seed=0")
    assert vaells["command"].endswith("~callbacks.latent_figures model.num_operators=1 model.prior_solver.warm_iter=3 "
                                      "ll_seed=0")
    assert vae["suite_command"].endswith("--jobs 2 model.num_operators=1 model.prior_solver.warm_iter=3 ll_seed=0")
    assert vae["threads"] == 1
    assert len(vae["commit"]) == 40 and vae["machine"]["cpus"] >= 1 and vae["wall_time_s"] > 0
    assert vae["metrics"]["train_epochs"] == 1 and "log_likelihood" in vaells["metrics"]
    assert not list(results.rglob("*.ckpt"))
    # one result gone: only that job runs again
    (results / "concentric_circles/vae/seed0.json").unlink()
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and "2 jobs, 1 with results" in again.stdout, again.stdout + again.stderr
    assert json.loads((results / "concentric_circles/vaells/seed0.json").read_text())["date"] == vaells["date"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert "0 to run" in done.stdout and len(list((tmp_path / "multirun/train").iterdir())) == 2


def test_the_maps_claim_needs_every_map_at_every_seed(tmp_path):
    from vaells.results.render import maps_claim

    for k in range(1, 6):
        for seed in range(3):
            write_result(tmp_path, f"swiss_roll/map{k}/vaells/seed{seed}", paths_metrics(0.1, 0.3, 0.5, 0.05))
    assert maps_claim(Results(tmp_path), "swiss_roll") == ("5 of 5 maps meet it at every seed (maps 1, 2, 3, 4, 5)",
                                                           "met")
    write_result(tmp_path, "swiss_roll/map4/vaells/seed1", paths_metrics(0.1, 0.3, 0.5, 0.3))
    assert maps_claim(Results(tmp_path), "swiss_roll") == ("4 of 5 maps meet it at every seed (maps 1, 2, 3, 5)",
                                                           "**not met**")
