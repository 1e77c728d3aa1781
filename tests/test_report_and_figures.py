"""What a short comparison and the figures tell a reader: ``python -m vaells.app.report`` states the overrides all
runs share, how long each trained, and warns when runs trained less than their experiment's schedule; M and N_a
lead only a sweep over them; the path and orbit figures explain their marks; TensorBoard gets no placeholder
``hp_metric``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import hydra
import matplotlib
import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from vaells.app.report import main
from vaells.figures import plotting
from vaells.figures.paths import path_pair_figure
from vaells.training.figures import LatentFigures

matplotlib.use("Agg")


def _run(folder: Path, metrics: dict, config: dict | None = None, log: str | None = None) -> Path:
    """A fake run folder: its ``metrics.json``, and optionally its ``.hydra/config.yaml`` and ``train.log``."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        (folder / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    if log is not None:
        (folder / "train.log").write_text(log)
    return folder


def _record(experiment: str, model: str, **overrides: str) -> dict:
    return {"experiment": experiment, "model": model, "overrides": {"model": model, **overrides}}


def _markdown(root: Path) -> list[str]:
    return (root / "report.md").read_text().splitlines()


def _csv(root: Path) -> list[dict]:
    with open(root / "report.csv") as f:
        return list(csv.DictReader(f))


# -- the report -------------------------------------------------------------------------------------------------
def test_a_short_comparison_is_marked_as_one(tmp_path: Path, capsys) -> None:
    """``train.py -m experiment=concentric_circles model=vaells,vae trainer.max_epochs=3``: the 3 epochs, which
    every run shares, are stated, each run's time is there, and a warning above the table says that 3 of the
    experiment's 50 epochs do not compare, naming the override to drop."""
    root = tmp_path / "multirun"
    _run(root / "0", {**_record("concentric_circles", "vaells", **{"trainer.max_epochs": "3"}),
                      "mse": 0.153, "num_operators": 1, "anchors_per_class": 3, "log_likelihood": -8.6e5,
                      "log_likelihood_stderr": 1e4, "train_seconds": 41.2, "train_epochs": 3, "train_batches": 48})
    _run(root / "1", {**_record("concentric_circles", "vae", **{"trainer.max_epochs": "3"}),
                      "mse": 0.0055, "log_likelihood": -69.0, "log_likelihood_stderr": 2.0,
                      "train_seconds": 750.0, "train_epochs": 3, "train_batches": 48})
    main([str(root)])
    markdown = _markdown(root)
    table_start = next(i for i, line in enumerate(markdown) if line.startswith("| "))
    above = "\n".join(markdown[:table_start])
    assert "Warning: 2 of the 2 runs trained less than their experiment's schedule" in above
    assert "- `0` (model=vaells): 3 of the 50 epochs of experiment=concentric_circles" in above
    assert "drop `trainer.max_epochs=3`" in above
    assert "Shared by all runs: `experiment=concentric_circles`, `trainer.max_epochs=3`" in above
    # M and N_a are one model's constants here, not a Table 2 sweep: the scores lead.
    assert markdown[table_start] == "| model | LL ± stderr | mse | M | N_a | train time | epochs | batches | run |"
    assert "| vae | -69 ± 2 | 0.0055 |  |  | 12.5 min | 3 | 48 | 1 |" in markdown
    rows = _csv(root)
    assert [float(r["train_seconds"]) for r in rows] == [41.2, 750.0]
    assert "3 of the 50 epochs" in capsys.readouterr().out  # on the terminal too


def test_m_and_n_a_lead_only_a_sweep_over_them(tmp_path: Path) -> None:
    """VAELLS's one operator beside a VAE is no Table 2: the scores lead; a sweep over M puts M first again."""
    _run(tmp_path / "models" / "0", {**_record("swiss_roll", "vaells"), "mse": 0.1, "num_operators": 1})
    _run(tmp_path / "models" / "1", {**_record("swiss_roll", "vae"), "mse": 0.2})
    main([str(tmp_path / "models")])
    assert "| model | mse | M | run |" in _markdown(tmp_path / "models")
    for job, m in enumerate([2, 4]):
        _run(tmp_path / "sweep" / str(job), {**_record("swiss_roll", "vaells", **{"model.num_operators": str(m)}),
                                             "mse": 0.1, "num_operators": m, "anchors_per_class": 3})
    main([str(tmp_path / "sweep")])
    assert "| model.num_operators | M | mse | N_a | run |" in _markdown(tmp_path / "sweep")


def test_full_runs_get_no_warning_and_a_run_that_never_left_its_warm_up_does(tmp_path: Path) -> None:
    """Natural MNIST's 58 epochs in full: no warning; but a run whose batches all fell in its 5000-batch warm-up
    (the autoencoder alone) is flagged, whatever its epochs."""
    full = _record("natural_mnist", "vaells")
    config = {"model": {"schedule": {"warmup_steps": "${backbone.warmup_steps}"}}, "backbone": {"warmup_steps": 5000},
              "trainer": {"max_epochs": 58, "limit_train_batches": None}}
    _run(tmp_path / "full" / "0", {**full, "mse": 0.03, "train_seconds": 3600.0, "train_epochs": 58,
                                   "train_batches": 7598}, config)
    main([str(tmp_path / "full")])
    assert not any("Warning" in line for line in _markdown(tmp_path / "full"))

    _run(tmp_path / "warmup" / "0", {**full, "mse": 0.03, "train_seconds": 300.0, "train_epochs": 58,
                                     "train_batches": 580}, config)
    main([str(tmp_path / "warmup")])
    assert "- `0` (experiment=natural_mnist, model=vaells): 580 batches, all in its 5000-batch warm-up " \
           "(the autoencoder alone)" in _markdown(tmp_path / "warmup")


def test_the_training_time_of_older_resumed_and_evaluated_runs_comes_from_train_log(tmp_path: Path) -> None:
    """Runs scored before metrics.json recorded the time: ``train.log``'s "fit took" lines, summed over the parts
    of a resumed run; an evaluation (RUN/evaluations/<date_time>/) gets the time of the run it evaluated."""
    fit = "[2026-01-01][__main__][INFO] - fit took {} s ({:.1f} min), {} batches\n"
    config = {"trainer": {"max_epochs": 50, "max_steps": -1}}
    _run(tmp_path / "resumed", {**_record("concentric_circles", "vaells"), "mse": 0.1}, config,
         fit.format(100, 100 / 60, 300) + "resumed\n" + fit.format(200, 200 / 60, 800))
    run = tmp_path / "evaluated"
    (run / "evaluations").mkdir(parents=True)
    (run / "train.log").write_text(fit.format(30, 0.5, 800))
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    _run(run / "evaluations" / "t", {**_record("concentric_circles", "vae"), "mse": 0.2, "ckpt_path": "x"})
    main([str(tmp_path)])
    rows = {r["run"]: r for r in _csv(tmp_path)}
    assert (rows["resumed"]["train_seconds"], rows["resumed"]["train_batches"]) == ("300.0", "800")
    assert (rows["evaluated/evaluations/t"]["train_seconds"], rows["evaluated/evaluations/t"]["train_epochs"]) == \
           ("30.0", "50")  # the fit ended, and max_epochs alone could end it
    assert not any("Warning" in line for line in _markdown(tmp_path))


# -- the figures ------------------------------------------------------------------------------------------------
def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_the_path_figures_say_what_the_circle_and_the_x_mark() -> None:
    fig = plotting.transport_paths(torch.randn(40, 2), torch.randn(3, 9, 2), targets=torch.randn(3, 2))
    assert _legend_texts(fig) == ["path, t from 0 to 1", "start (t = 0)", "target (where the path should end)"]
    assert _legend_texts(plotting.transport_paths(torch.randn(40, 2), torch.randn(1, 9, 2)))[-1] == "end (t = 1)"
    # paths.py's figure of vector data: the decoded transport and linear paths
    pair = path_pair_figure([torch.randn(10, 5), torch.randn(10, 5)], ["transport", "linear"],
                            background=torch.randn(30, 5), target=torch.randn(5), title="test 3 -> 17")
    assert "start (t = 0)" in _legend_texts(pair) and "target (where the path should end)" in _legend_texts(pair)


def test_the_training_figures_explain_their_marks_and_the_span_of_t() -> None:
    from test_plotting_callbacks import FakeVAELLS, TinyData

    figs = LatentFigures(num_points=40, num_orbit_starts=3, num_paths=2).build_figures(
        SimpleNamespace(datamodule=TinyData()), FakeVAELLS(num_operators=1))
    orbits = figs["orbits"]
    assert _legend_texts(orbits) == ["orbit; the arrow points to increasing t", "start z0 (t = 0)"]
    title = orbits._suptitle.get_text().replace("\n", " ")
    assert "from 3 encoded points" in title and "one and a half turns" in title and "a large t" in title
    assert orbits.axes[0].get_title().startswith("operator 1: t from -")
    assert "start (t = 0)" in _legend_texts(figs["paths"]) and "Transport paths" in figs["paths"]._suptitle.get_text()
    fixed = LatentFigures(num_points=40, orbit_t_max=2.0).build_figures(SimpleNamespace(datamodule=TinyData()),
                                                                        FakeVAELLS(num_operators=1))
    assert "orbit_t_max" in fixed["orbits"]._suptitle.get_text()
    assert fixed["orbits"].axes[0].get_title() == "operator 1: t from -2 to 2"


# -- TensorBoard ----------------------------------------------------------------------------------------------------
def test_tensorboard_gets_the_run_config_but_no_placeholder_hp_metric(tmp_path: Path) -> None:
    """The logger of conf/logger/tensorboard.yaml, as train.py uses it (log_hyperparams of the run config)."""
    cfg = OmegaConf.load(CONF_DIR / "logger" / "tensorboard.yaml")
    cfg.save_dir = str(tmp_path)
    logger = hydra.utils.instantiate(cfg)
    logger.log_hyperparams({"model": {"num_operators": 1}})
    logger.finalize("success")
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and not any(b"hp_metric" in path.read_bytes() for path in events)
    assert "num_operators: 1" in (tmp_path / "hparams.yaml").read_text()


# -- end to end -----------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_short_multirun_reports_its_times_and_warns(tmp_path: Path, cli, monkeypatch) -> None:
    """``train.py -m experiment=concentric_circles model=vaells,vae trainer.max_epochs=1`` for real, in a fresh
    folder, then the report; a single run beside it shows where TensorBoard's logs go: ``tensorboard --logdir .``
    from that folder finds both."""
    from tensorboard.backend.event_processing.io_wrapper import GetLogdirSubdirectories

    import train

    monkeypatch.chdir(tmp_path)
    short = ["experiment=concentric_circles", "trainer.max_epochs=1", "data.num_test_per_class=40",
             "ll_points=20", "ll_samples=5", "~callbacks.latent_figures"]
    code, out, err = cli(train.main, "-m", "model=vaells,vae", *short, "hydra.sweep.dir=multirun/train/sweep")
    assert code == 0, err
    code, out, err = cli(train.main, *short, "evaluate=false")
    assert code == 0, err
    root = tmp_path / "multirun" / "train" / "sweep"
    metrics = json.loads((root / "0" / "metrics.json").read_text())
    assert metrics["train_epochs"] == 1 and metrics["train_batches"] > 0 and "train_seconds" not in metrics
    main([str(root)])
    markdown = "\n".join(_markdown(root))
    assert "- `0` (model=vaells): 1 of the 50 epochs of experiment=concentric_circles" in markdown
    assert "Shared by all runs: `experiment=concentric_circles`, `trainer.max_epochs=1`" in markdown
    assert all(float(r["train_seconds"]) > 0 for r in _csv(root))
    # train.log's own record of the fit, which the report reads for runs without these keys in metrics.json
    from vaells.app.report import training

    (single,) = (tmp_path / "outputs" / "train" / "concentric_circles" / "vaells").iterdir()
    assert training(single)["train_seconds"] >= 0 and training(single)["train_batches"] > 0
    logdirs = {Path(d).relative_to(tmp_path).parts[0] for d in GetLogdirSubdirectories(str(tmp_path))}
    assert logdirs == {"outputs", "multirun"}
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and not any(b"hp_metric" in path.read_bytes() for path in events)
