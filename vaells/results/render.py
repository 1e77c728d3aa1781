"""``docs/results.md``, its figures and the front page's generated blocks, from ``results/`` alone.

Each cell is the mean ± sd over the seeds that have a result, then each seed's value. Each row gives the commits
that computed it, marked *stale* when the code that computes results (``vaells/`` and ``conf/``, less this package
and the suite and help files) has changed between that commit and HEAD, as git's history says; a change of comments
or docstrings alone does not count.
"""

from __future__ import annotations

import ast
import difflib
import json
import statistics
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path

import yaml

from vaells.results.suites import CODE_PATHS
from vaells.results.tables import BASELINES, EXPERIMENTS, TABLE2_JOBS, Experiment, Row, Table

FRONT_PAGE = "README.md"  # the repository's front page, whose marked blocks render fills
HEADER = ("<!-- Written by `python -m vaells.results render` from results/. Do not edit: CI compares this file with "
          "what render writes. -->")


class Results:
    """Every result file under a folder, by job less its seed (``swiss_roll/vaells``) and seed."""

    def __init__(self, results_dir: Path) -> None:
        self.by_job: dict[str, dict[int, dict]] = defaultdict(dict)
        for path in sorted(Path(results_dir).rglob("*.json")):
            result = json.loads(path.read_text())
            *job, seed = result["job"].split("/")
            self.by_job["/".join(job)][int(seed.removeprefix("seed"))] = result

    def values(self, job: str, key: str | None) -> dict[int, object]:
        if key is None:
            return {}
        return {seed: r["metrics"][key] for seed, r in sorted(self.by_job.get(job, {}).items())
                if r["metrics"].get(key) is not None}

    def all(self) -> list[dict]:
        return [r for seeds in self.by_job.values() for r in seeds.values()]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _code(source: str) -> str:
    """Python source less its comments and docstrings: what runs."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def same_meaning(path: str, old: str, new: str) -> bool:
    """Whether two versions of a file compute the same: equal YAML data, or equal Python less comments and
    docstrings; any other change counts."""
    try:
        if path.endswith((".yaml", ".yml")):
            return yaml.safe_load(old) == yaml.safe_load(new)
        if path.endswith(".py"):
            return _code(old) == _code(new)
    except (SyntaxError, yaml.YAMLError):
        return False
    return old == new


@cache
def code_changed(commit: str | None, root: Path) -> str:
    """``""`` when the code that computes results means the same at HEAD as at ``commit`` (comments and docstrings
    aside), ``"stale"`` when it changed, or why that is not known."""
    if commit is None:
        return "commit unknown"
    diff = _git(root, "diff", "--name-only", commit, "HEAD", "--", *CODE_PATHS)
    if diff.returncode != 0:
        return "commit not in this history"
    for name in diff.stdout.split():
        old, new = _git(root, "show", f"{commit}:{name}"), _git(root, "show", f"HEAD:{name}")
        if old.returncode and not new.returncode:
            continue  # added since: the commit's code could not use it, and starting to use it changes another file
        if old.returncode or new.returncode or not same_meaning(name, old.stdout, new.stdout):
            return "stale"
    return ""


def provenance(results: list[dict], root: Path) -> str:
    commits = sorted({(r["commit"] or "?")[:7] + (" (uncommitted changes)" if r["uncommitted_changes"] else "")
                      for r in results})
    marks = sorted({code_changed(r["commit"], root) or "" for r in results} - {""})
    marks += ["uncommitted"] if any(r["uncommitted_changes"] for r in results) else []
    return ", ".join(commits) + "".join(f" *{m}*" for m in marks)


def number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 0.995 and abs(value) < 1.005 and value != 1:
        return f"{value:.5f}"  # trustworthiness and continuity sit near 1: three digits would hide them
    return f"{value:.3g}"


def cell(values: dict[int, object]) -> str:
    if not values:
        return "–"
    items = list(values.values())
    if not all(isinstance(v, int | float) for v in items):
        return ", ".join("/".join(number(x) if isinstance(x, int | float) else str(x) for x in v)
                         if isinstance(v, list) else str(v) for v in items)
    if len(items) == 1:
        return number(items[0])
    each = ", ".join(number(v) for v in items)
    return f"{number(statistics.fmean(items))} ± {number(statistics.stdev(items))} ({each})"


def mean(results: Results, job: str, key: str) -> float | None:
    values = results.values(job, key)
    return statistics.fmean(values.values()) if values else None


def row_values(results: Results, row: Row, key: str | None) -> dict[int, object]:
    values = results.values(row.job, key)
    return values if row.seed is None else {s: v for s, v in values.items() if s == row.seed}


def render_table(table: Table, results: Results, root: Path) -> list[str]:
    lines = [f"**{table.title}**", "", "| | " + " | ".join(f"`{c}`" for c in table.columns) + " | seeds | commit |",
             "| --- " * (len(table.columns) + 3) + "|"]
    for row in table.rows:
        cells = [cell(row_values(results, row, row.key_for(c))) for c in table.columns]
        seeds = sorted(s for s in results.by_job.get(row.job, {}) if row.seed is None or s == row.seed)
        commit = provenance([results.by_job[row.job][s] for s in seeds], root) if seeds else "no results"
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {', '.join(map(str, seeds)) or '–'} | {commit} |")
    return lines + (["", table.note] if table.note else []) + [""]


# The paper's claims, each a test on the results over seeds: (text, section, function -> (number, verdict)).
def _per_seed(results: Results, job: str, keys: list[str]) -> list[dict[str, float]]:
    columns = {k: results.values(job, k) for k in keys}
    seeds = sorted(set.intersection(*(set(v) for v in columns.values()))) if columns else []
    return [{k: columns[k][s] for k in keys} for s in seeds]


def _verdict(ok: bool, seeds: int, wanted: int = 3) -> str:
    if seeds == 0:
        return "no results yet"
    verdict = "met" if ok else "**not met**"
    return verdict if seeds >= wanted else f"{verdict} ({seeds} of {wanted} seeds)"


def paths_claim(results: Results, experiment: str, job: str | None = None) -> tuple[str, str]:
    rows = _per_seed(results, job or f"{experiment}/vaells", ["path_manifold_error", "linear_path_manifold_error",
                                                       "path_manifold_error_init_psi", "path_endpoint_error"])
    if not rows:
        return "–", _verdict(False, 0)
    ok = all(r["path_endpoint_error"] <= 0.1 and r["path_manifold_error"] <= 0.5 * r["linear_path_manifold_error"]
             and r["path_manifold_error"] <= 0.5 * r["path_manifold_error_init_psi"] for r in rows)
    m = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    worst = max(r["path_manifold_error"] / r["linear_path_manifold_error"] for r in rows)
    text = (f"path error {number(m['path_manifold_error'])} against {number(m['linear_path_manifold_error'])} "
            f"(straight line) and {number(m['path_manifold_error_init_psi'])} (Psi at init); endpoint error "
            f"{number(m['path_endpoint_error'])}; worst seed {number(worst)} x the line, endpoint "
            f"{number(max(r['path_endpoint_error'] for r in rows))}")
    return text, _verdict(ok, len(rows))


def prior_claim(results: Results, experiment: str, key: str = "prior_fit") -> tuple[str, str]:
    """VAELLS's prior (``key``: sampled at its own b, or ``prior_fit_loss_scale``) against the anchors and every
    baseline's prior."""
    job = f"{experiment}/vaells"
    vaells, anchors = mean(results, job, key), mean(results, job, "prior_fit_anchor_points")
    baselines = {m: mean(results, f"{experiment}/{m}", "prior_fit") for m in BASELINES}
    if vaells is None or anchors is None or None in baselines.values():
        return "–", _verdict(False, 0)
    best = min(baselines, key=baselines.get)
    seeds = min(len(results.values(f"{experiment}/{m}", "prior_fit")) for m in ("vaells", *BASELINES))
    text = (f"`{key}` {number(vaells)} against {number(anchors)} (anchors alone) and {number(baselines[best])} "
            f"(best baseline, {best})")
    return text, _verdict(vaells < anchors and vaells < baselines[best], seeds)


def rotation_claim(results: Results, experiment: str = "rotated_mnist") -> tuple[str, str]:
    rows = _per_seed(results, f"{experiment}/vaells", ["rotation_order", "rotation_order_zero_psi",
                                                       "rotation_order_init_psi"])
    if not rows:
        return "–", _verdict(False, 0)
    ok = all(r["rotation_order"] >= 0.9 and r["rotation_order"] >= 0.3 + max(r["rotation_order_zero_psi"],
                                                                             r["rotation_order_init_psi"])
             for r in rows)
    m = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    lowest = min(r["rotation_order"] for r in rows)
    text = (f"`rotation_order` {number(m['rotation_order'])} (lowest seed {number(lowest)})"
            f" against {number(m['rotation_order_zero_psi'])} (Psi = 0) and {number(m['rotation_order_init_psi'])} "
            "(Psi at init)")
    return text, _verdict(ok, len(rows))


def classes_claim(results: Results, experiment: str = "natural_mnist") -> tuple[str, str]:
    key = "class_preservation_matched"
    models = {m: mean(results, f"{experiment}/{m}", key) for m in ("vaells", *BASELINES)}
    if None in models.values():
        return "–", _verdict(False, 0)
    best = max(BASELINES, key=models.get)
    seeds = min(len(results.values(f"{experiment}/{m}", key)) for m in models)
    text = f"`{key}` {number(models['vaells'])} against {number(models[best])} (best baseline, {best})"
    return text, _verdict(models["vaells"] > models[best], seeds)


def authors_claim(results: Results, experiment: str) -> tuple[str, str]:
    """VAELLS's default, trained on the authors' data map, against the authors' model on the same data."""
    theirs = results.values(f"{experiment}/authors_map/release", "path_manifold_error").get(0)
    rows = _per_seed(results, f"{experiment}/authors_map/vaells", ["path_manifold_error", "path_endpoint_error"])
    if theirs is None or not rows:
        return "–", _verdict(False, 0)
    worst = max(r["path_manifold_error"] for r in rows)
    text = (f"path error {', '.join(number(r['path_manifold_error']) for r in rows)} (seeds) against the authors' "
            f"{number(theirs)}; endpoint error at most {number(max(r['path_endpoint_error'] for r in rows))}")
    ok = worst <= 1.5 * theirs and all(r["path_endpoint_error"] <= 0.1 for r in rows)
    return text, _verdict(ok, len(rows))


def maps_claim(results: Results, experiment: str) -> tuple[str, str]:
    """The paths claim on every random map of conf/suite/maps.yaml, each at every seed."""
    from vaells.results.tables import MAPS

    verdicts = [paths_claim(results, experiment, f"{experiment}/map{k}/vaells") for k in MAPS]
    seeds = [len(results.values(f"{experiment}/map{k}/vaells", "path_manifold_error")) for k in MAPS]
    if not any(seeds):
        return "–", _verdict(False, 0)
    met = [k for k, (_, v) in zip(MAPS, verdicts, strict=True) if v.startswith("met")]
    text = f"{len(met)} of {len(MAPS)} maps meet it at every seed"
    text += f" (maps {', '.join(map(str, met))})" if met else ""
    return text, _verdict(len(met) == len(MAPS), min(seeds))


def manifold_claim(results: Results) -> tuple[str, str]:
    """Per embedding, the manifolds whose every seed meets the path, operator and class targets."""
    from vaells.data.manifolds import MANIFOLDS

    counts, seeds_seen = {}, []
    for embedding in ("linear", "nonlinear"):
        met = 0
        for name in MANIFOLDS:
            job = f"manifold_suite/{name}/{embedding}/vaells"
            rows = _per_seed(results, job, ["path_manifold_error", "linear_path_manifold_error",
                                            "path_manifold_error_init_psi", "path_endpoint_error", "operator_drift"])
            knn = results.values(job, "knn_accuracy")
            seeds_seen.append(len(rows))
            met += bool(rows) and all(
                r["path_endpoint_error"] <= 0.1 and r["path_manifold_error"] <= 0.5 * r["linear_path_manifold_error"]
                and r["path_manifold_error"] <= 0.5 * r["path_manifold_error_init_psi"]
                and min(r["operator_drift"]) >= 0.5 for r in rows) and all(v >= 0.95 for v in knn.values())
        counts[embedding] = met
    if not any(seeds_seen):
        return "–", _verdict(False, 0)
    text = f"linear map: {counts['linear']} of 8 manifolds; nonlinear map: {counts['nonlinear']} of 8"
    return text, _verdict(min(counts.values()) >= 7, min(seeds_seen))


def operators_claim(results: Results) -> tuple[str, str]:
    """Seed 0 at each M: Table 2 runs one seed per row."""
    jobs = [TABLE2_JOBS.get(r, f"table2/vaells/{r}") for r in ("M2_Na8", "M4_Na8", "M8_Na8")]
    ll = [results.values(job, "log_likelihood").get(0) for job in jobs]
    if None in ll:
        return "–", _verdict(False, 0)
    text = "`log_likelihood` at M = 2, 4, 8 (seed 0): " + ", ".join(number(v) for v in ll)
    return text, _verdict(ll[0] < ll[1] < ll[2], 1, wanted=1)


CLAIM_TARGETS = {
    "paths": "endpoint error <= 0.1 and path error <= 0.5 x the straight line's and <= 0.5 x Psi at init's, each seed",
    "prior": "below the anchor point mass and every baseline's `prior_fit` (lower is better), mean over seeds",
    "rotation": "`rotation_order` >= 0.9 and >= 0.3 above both Psi controls, each seed",
    "classes": "`class_preservation_matched` above every baseline, mean over seeds",
    "operators": "M = 2 < M = 4 < M = 8 at N_a = 8",
    "authors": "path error <= 1.5 x the authors' model's and endpoint error <= 0.1, each seed",
    "manifolds": "7 of 8 manifolds per map, each seed: endpoint error <= 0.1, path error <= 0.5 x the straight "
                 "line's and <= 0.5 x Psi at init's, every `operator_drift` >= 0.5, `knn_accuracy` >= 0.95",
}
# name: (the claim, its target in CLAIM_TARGETS, the test on the results)
CLAIMS = {
    "swiss_roll_paths": ("Swiss roll: transport paths follow the roll and arrive (Fig. 3a)", "paths",
                         lambda r: paths_claim(r, "swiss_roll")),
    "swiss_roll_prior": ("Swiss roll: the prior, as sampled, fits the roll better than the anchors and every baseline",
                         "prior", lambda r: prior_claim(r, "swiss_roll")),
    "swiss_roll_prior_loss_scale": ("Swiss roll: the same, at the Laplace scale that the loss trains (Fig. 3b's "
                                    "\"increased b\")", "prior",
                                    lambda r: prior_claim(r, "swiss_roll", "prior_fit_loss_scale")),
    "concentric_circles_paths": ("Circles: transport paths follow the circles and arrive (Fig. 4)", "paths",
                                 lambda r: paths_claim(r, "concentric_circles")),
    "concentric_circles_prior": ("Circles: the prior, as sampled, fits the circles better than the anchors and every "
                                 "baseline", "prior", lambda r: prior_claim(r, "concentric_circles")),
    "concentric_circles_prior_loss_scale": ("Circles: the same, at the Laplace scale that the loss trains", "prior",
                                            lambda r: prior_claim(r, "concentric_circles", "prior_fit_loss_scale")),
    "rotated_mnist_rotation": ("Rotated MNIST: the transport paths rotate the digit in order (Fig. 5)", "rotation",
                               rotation_claim),
    "natural_mnist_classes": ("Natural MNIST: samples keep their class more often than the baselines' at matched "
                              "variation (Fig. 7)", "classes", classes_claim),
    "table2_operators": ("Table 2: the log-likelihood rises with the number of operators M", "operators",
                         operators_claim),
    "authors_swiss_roll": ("Swiss roll, the authors' map: VAELLS's default paths as good as the authors' model's",
                           "authors", lambda r: authors_claim(r, "swiss_roll")),
    "maps_swiss_roll": ("Swiss roll: paths follow the roll and arrive under any random linear map", "paths",
                        lambda r: maps_claim(r, "swiss_roll")),
    "maps_concentric_circles": ("Circles: paths follow the circles and arrive under any random linear map", "paths",
                                lambda r: maps_claim(r, "concentric_circles")),
    "manifold_suite": ("Manifolds nobody tuned for: VAELLS's default learns operators that carry paths along them",
                       "manifolds", manifold_claim),
    "authors_concentric_circles": ("Circles, the authors' map: VAELLS's default paths as good as the authors' model's",
                                   "authors", lambda r: authors_claim(r, "concentric_circles")),
}


def anchor(title: str) -> str:
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def claims_table(results: Results, link_prefix: str, targets: bool = True) -> list[str]:
    lines = ["| claim | target | measured | verdict |" if targets else "| claim | measured | verdict |",
             "| --- " * (4 if targets else 3) + "|"]
    for experiment in EXPERIMENTS:
        for name in experiment.claims:
            text, target_name, test = CLAIMS[name]
            measured, verdict = test(results)
            target = f" {CLAIM_TARGETS[target_name]} |"
            lines.append(f"| [{text}]({link_prefix}#{anchor(experiment.title)}) |{target if targets else ''} "
                         f"{measured} | {verdict} |")
    return lines


def figure_rows(experiment: Experiment, results: Results) -> list[tuple[str, dict[int, object], dict[int, object]]]:
    """The headline metric of the experiment's first tables (all of them for a table per map), for each row with
    results, with its control's values where the experiment names one."""
    key, control = experiment.figure_key, experiment.figure_control
    tables = experiment.tables if experiment.figure_control else experiment.tables[:1]
    merged: dict[tuple[str, str], tuple[str, dict, dict]] = {}
    for table in tables:
        for row in table.rows:  # rows of one seed each merge into one line per job, its seeds as dots
            label = (row.label if row.seed is None else row.label.rsplit(", seed", 1)[0]) + (
                f" ({table.title.split()[-2]})" if len(tables) > 1 else "")
            merge_key = (table.title, row.job, str(row.key)) + (() if row.seed is not None else (row.label,))
            _, values, controls = merged.setdefault(merge_key, (label, {}, {}))
            values.update(row_values(results, row, row.key_for(key)))
            controls.update(row_values(results, row, control) if control else {})
    return [row for row in merged.values() if row[1]]


def draw_figure(experiment: Experiment, rows: list[tuple[str, dict[int, object], dict[int, object]]],
                path: Path) -> None:
    """Each row's seeds as dots and their mean as a bar; a control's values, where given, as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(rows)))
    for i, (_, values, control) in enumerate(rows):
        ax.barh(i, statistics.fmean(values.values()), color="0.85")
        ax.plot(list(values.values()), [i] * len(values), "o", color="C0")
        if control:
            ax.plot(list(control.values()), [i] * len(control), "x", color="C3")
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows])
    ax.invert_yaxis()
    label = f"{experiment.figure_key} (bars: mean over seeds; dots: seeds"
    ax.set_xlabel(label + (f";\ncrosses: {experiment.figure_control})" if experiment.figure_control else ")"))
    ax.set_title(experiment.title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def results_page(results: Results, root: Path, figures: Path | None) -> str:
    every = results.all()
    lines = [HEADER, "", "# Results", ""]
    if not every:
        return "\n".join(lines + ["No results yet: `python -m vaells.results run quick --jobs 2`.", ""])
    machines = sorted({f"{r['machine']['cpus']} CPUs ({r['machine']['processor']}), "
                       f"GPU: {r['machine']['gpu'] or 'none'}, torch {r['machine']['torch']}, {r['threads']} thread(s)"
                       for r in every})
    data = sorted({r["data"] for r in every})
    dates = sorted(r["date"][:10] for r in every)
    lines += [
        "Every number here is read from a file under `results/`, written by `python -m vaells.results run SUITE` "
        "(`quick`: the synthetic experiments; `paper`: every experiment, model and seed, and Table 2); "
        "`python -m vaells.results render` writes this page. Each job's own command, commit, date, machine and wall "
        "time are in its file. Metric definitions and their controls: [metrics](metrics.md).",
        "",
        "Cells: the mean ± sd over seeds, then each seed's value in brackets. `commit`: the code that computed the row;"
        " *stale* when the code that computes results (`vaells/`, `conf/`) has changed since.",
        "",
        f"- Machines: {'; '.join(machines)}.",
        f"- Data: {'; '.join(data)}.",
        f"- Measured: {dates[0]} to {dates[-1]}, {len(every)} jobs.",
        "",
        "## The paper's claims", "", *claims_table(results, ""), "",
    ]
    for experiment in EXPERIMENTS:
        lines += [f"## {experiment.title}", ""]
        if not any(row.job in results.by_job for table in experiment.tables for row in table.rows):
            lines += [f"No results yet: `{experiment.command}`.", ""]
            continue
        rows = figure_rows(experiment, results)
        if rows:
            if figures is not None:
                draw_figure(experiment, rows, figures / f"{experiment.name}.png")
            lines += [f"![{experiment.title}: {experiment.figure_key} per row and seed]"
                      f"(figures/results/{experiment.name}.png)", ""]
        for table in experiment.tables:
            lines += render_table(table, results, root)
        times = [(label, results.by_job.get(f"{experiment.name}/{m}", {})) for m, label in
                 (("vaells", "VAELLS"), *((b, b) for b in BASELINES))]
        times = [f"{label} {number(statistics.fmean(r['wall_time_s'] for r in seeds.values()))} s"
                 for label, seeds in times if seeds]
        if times:
            lines += ["Wall time per job, training and evaluation, mean over seeds: " + ", ".join(times) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_blocks(results: Results) -> dict[str, str]:
    """The front page's generated blocks: the quick start's expectation, the experiments' run times, the claims."""
    quick = results.by_job.get("swiss_roll/vaells", {}).get(0)
    if quick:
        m = quick["metrics"]
        quickstart = (f"On a {quick['machine']['cpus']}-CPU machine without a GPU, `python train.py` took "
                      f"{number(quick['wall_time_s'])} s ({number(quick['train_time_s'] or 0)} s of training, then the "
                      f"test-split evaluation). Expect `mse` {number(m['mse'])}, a single operator that reads "
                      f"\"{m['operator_reading'][0]}\", and transport paths with `path_manifold_error` "
                      f"{number(m['path_manifold_error'])} against {number(m['linear_path_manifold_error'])} for "
                      "straight lines ([all results](docs/results.md#swiss-roll)).")
    else:
        quickstart = "No result yet for the swiss roll at seed 0: `python -m vaells.results run quick`."
    rows = ["| experiment | VAELLS | baselines | seeds |", "| --- | --- | --- | --- |"]
    for experiment in EXPERIMENTS:
        own = results.by_job.get(f"{experiment.name}/vaells", {})
        others = [r["wall_time_s"] for b in BASELINES
                  for r in results.by_job.get(f"{experiment.name}/{b}", {}).values()]
        if own:
            span = f"{number(min(others))}-{number(max(others))} s" if others else "–"
            own_time = number(statistics.fmean(r["wall_time_s"] for r in own.values()))
            rows.append(f"| {experiment.title} | {own_time} s | {span} | {len(own)} |")
    times = "Wall time of one run on the machine of [the results](docs/results.md) (training and evaluation):\n\n" + \
        "\n".join(rows)
    glance = "\n".join(claims_table(results, "docs/results.md", targets=False))
    return {"quickstart": quickstart, "times": times, "glance": glance}


def fill_blocks(text: str, blocks: dict[str, str], path: Path) -> str:
    for name, body in blocks.items():
        start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
        if start not in text or end not in text:
            raise ValueError(f"{path} lacks the markers {start} and {end} that render fills")
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"
    return text


def rendered(results_dir: Path, root: Path, figures: bool) -> dict[Path, str]:
    results = Results(results_dir)
    readme = root / FRONT_PAGE
    out = {root / "docs" / "results.md": results_page(results, root,
                                                      root / "docs" / "figures" / "results" if figures else None)}
    out[readme] = fill_blocks(readme.read_text(), readme_blocks(results), readme)
    return out


def render_all(results_dir: Path, root: Path) -> list[Path]:
    written = []
    for path, text in rendered(results_dir, root, figures=True).items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def check_rendered(results_dir: Path, root: Path) -> list[tuple[Path, str]]:
    """Each file whose text differs from what render writes, with the unified diff."""
    differing = []
    for path, text in rendered(results_dir, root, figures=False).items():
        current = path.read_text() if path.is_file() else ""
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path),
                                                "render", n=1))
            differing.append((path, diff))
    return differing
