"""``python paths.py``: its own help, ``ckpt_path`` as ``evaluate.py`` takes it (a checkpoint, a run folder, a folder of
runs), and one message without a traceback for a setting that cannot run; and every ``python train.py`` /
``evaluate.py`` / ``paths.py`` command quoted in conf/ composes and passes the checks its entry point runs before any
work. The entry points run in-process (``cli``) on the small checkpoint in ``fixtures/`` (a swiss roll run)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

import evaluate  # noqa: F401  (registers the resolvers of conf/evaluate.yaml's hydra.run.dir)
import paths
import train  # noqa: F401  (and of conf/train.yaml's)
from vaells.app.runs import check_data_choice, resolve_checkpoint, resumed_config, run_record
from vaells.app.validation import check_evaluate_config, check_train_config

FIXTURE = Path(__file__).parent / "fixtures" / "swiss_roll_5b90a44" / "last.ckpt"


def _runs(root: Path, *stamps: str, best: bool = False) -> Path:
    """A folder of runs, ``root/outputs/train/swiss_roll/vaells/<stamp>/checkpoints/last.ckpt`` (and with ``best``
    a ``best-epoch=001.ckpt``), written in order (the last is the newest); returns the folder of runs."""
    runs = root / "outputs" / "train" / "swiss_roll" / "vaells"
    for age, stamp in enumerate(reversed(stamps)):
        ckpt = runs / stamp / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        shutil.copy(FIXTURE, ckpt)
        os.utime(ckpt, (1e9 - age, 1e9 - age))
        if best:
            shutil.copy(FIXTURE, ckpt.with_name("best-epoch=001.ckpt"))
    return runs


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- help -----------------------------------------------------------------------------------------------------
def test_paths_help_is_its_own_usage_text(cli) -> None:
    code, out, _ = cli(paths.main, "--help")
    assert code == 0
    assert "Usage: python paths.py ckpt_path=RUN" in out, out
    # Not Hydra's generic help, which lists train.py's config groups and dumps the config.
    assert "Configuration groups" not in out and "model_experiment" not in out and "backbone" not in out
    for needed in ("outputs/train/swiss_roll/vaells", "checkpoint=", "pairs=", "num_steps=", "+data_overrides.",
                   "RUN/paths/<date_time>/", "paths.json", "--cfg job"):
        assert needed in out, needed


# -- ckpt_path as evaluate.py takes it ---------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["runs", "run", "run/checkpoints"])
def test_ckpt_path_takes_a_folder_of_runs_or_a_run_folder(given: str, tmp_path: Path, cli, monkeypatch) -> None:
    runs = _runs(tmp_path, "2024-01-01_00-00-00", "2024-01-02_00-00-00")
    newest = runs / "2024-01-02_00-00-00"
    path = {"runs": runs, "run": newest, "run/checkpoints": newest / "checkpoints"}[given]
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(paths.main, f"ckpt_path={path}", "pairs=[[3,17]]", "num_steps=3")
    assert code == 0, err
    (folder,) = (newest / "paths").iterdir()  # the newest run's paths/<date_time>/, not beside the given folder
    assert {"pair_3_17.png", "paths.json"} <= _files(folder)
    assert not (runs / "2024-01-01_00-00-00" / "paths").exists() and not (runs.parent / "paths").exists()


# -- one message for a setting that cannot run ---------------------------------------------------------------
BAD_SETTINGS = {  # CKPT: a run's last.ckpt; RUNS: a folder of runs
    "index out of range": (["ckpt_path=CKPT", "pairs=[[3,5000]]"],
                           ["pairs: [3, 5000] is not a pair of test indices", "0..99"]),
    "not pairs": (["ckpt_path=CKPT", "pairs=[3,17]"], ["pairs: 3 is not a pair of test indices", "pairs=[[i,j],"]),
    "no ckpt_path": ([], ["ckpt_path is required", "python paths.py --help"]),
    "no such path": (["ckpt_path=nowhere"], ["ckpt_path=nowhere does not exist", "a folder of runs"]),
    "one step": (["ckpt_path=CKPT", "num_steps=1"], ["num_steps=1 must be an integer >= 2", "e.g. num_steps=10"]),
    "no pairs to draw": (["ckpt_path=CKPT", "num_pairs=0"], ["num_pairs=0 must be an integer >= 1"]),
    "threads": (["ckpt_path=CKPT", "threads=0"], ["threads=0 must be >= 1"]),
    "data override": (["ckpt_path=CKPT", "+data_overrides.num_test=0"],
                      ["data.num_test=0 must be >= 1", "+data_overrides.num_test="]),
    "bad index, folder of runs": (["ckpt_path=RUNS", "pairs=[[3,5000]]"], ["pairs: [3, 5000] is not a pair"]),
    "checkpoint name": (["ckpt_path=RUNS", "checkpoint=worst"], ["checkpoint=worst is not one of last, best"]),
    "no best checkpoint": (["ckpt_path=RUNS", "checkpoint=best"], ["none of its 1 runs has a best checkpoint"]),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_stops_with_one_message_and_leaves_nothing(case: str, tmp_path: Path, cli,
                                                                 monkeypatch) -> None:
    overrides, expected = BAD_SETTINGS[case]
    runs = _runs(tmp_path / "work", "2024-01-01_00-00-00")
    before = set(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path / "work")
    ckpt = runs / "2024-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    code, out, err = cli(paths.main, *(o.replace("RUNS", str(runs)).replace("CKPT", str(ckpt)) for o in overrides))
    assert code != 0, out
    assert "Traceback" not in err and 'File "' not in err, err
    for text in expected:
        assert text in err, (text, err)
    # Nothing left: no paths/<date_time>/ (nor paths/) in the run, no outputs/paths/ in the working directory.
    assert set(tmp_path.rglob("*")) == before, sorted(set(tmp_path.rglob("*")) - before)


# -- the commands quoted in conf/ ------------------------------------------------------------------------------
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "paths.py": "paths"}
COMMAND = re.compile(r"python (train|evaluate|paths)\.py\b(.*)")
OVERRIDE = re.compile(r"^[+~]?[\w./@-]+(=.*)?$")
#: Flags that take a value (``--cfg job``) and flags that take none; neither is an override.
FLAG_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}
#: Words that stand for a value in the comments: NAME (any option of the group), <partition>, ...
PLACEHOLDER = re.compile(r"^NAME$|<[\w ]+>")
#: An instance of a value quoted in its general form (``pairs=[[i,j],...]``).
GENERAL_FORMS = {"pairs": "[[0,1],[2,3]]"}


def quoted_commands(text: str) -> list[tuple[str, list[str], str]]:
    """The ``python train.py|evaluate.py|paths.py`` commands of ``text`` as (script, overrides, mode): the words
    after the script up to the first that is no override (the prose around it); ``[...]`` marks an optional word,
    kept, ``a|b`` alternatives, ``key=value`` and ``...`` the general form, dropped. The mode is ``run``, ``multirun``
    (``-m``) or ``compose`` (``--help``, ``--cfg job``: Hydra composes the config, the job does not run)."""
    found = []
    for script, rest in COMMAND.findall(text):
        words, overrides, mode = rest.split(), [], "run"
        skip = False
        for word in words:
            if skip:
                skip = False
                continue
            word = word.rstrip(",;.:")
            if word.startswith("'") and word.endswith("'") and len(word) > 1:
                word = word[1:-1]
            if word.startswith("["):  # an optional word: [model=vae], [pairs=[[3,17]]], ['pairs=...']
                word = word[1:]
                if word.count("]") > word.count("["):
                    word = word[:-1]
                word = word.strip("'")
            while word.count(")") > word.count("(") and word.endswith(")"):  # (python train.py x=1), ...
                word = word[:-1]
            if word in ("-m", "--multirun"):
                mode = "multirun"
            elif word in FLAG_WITH_VALUE:
                skip, mode = True, "compose"
            elif word.startswith("-"):
                mode = "compose"  # --help, --hydra-help
            elif word in ("...", "key=value"):
                continue
            elif "=" in word and OVERRIDE.match(word):
                overrides.append(word)
            else:
                break
        found.append((f"{script}.py", overrides, mode))
    return found


def conf_commands() -> list[tuple[str, str, list[str], str]]:
    """(where, script, overrides, mode) of every command quoted in conf/ (comments and help texts), each command
    once, ``where`` the first place that quotes it."""
    found: dict[tuple, str] = {}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for script, overrides, mode in quoted_commands(line):
                found.setdefault((script, tuple(overrides), mode), f"{path.relative_to(CONF_DIR.parent)}:{number}")
    return [(where, script, list(overrides), mode) for (script, overrides, mode), where in found.items()]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def concrete(overrides: list[str], places: dict[str, Path]) -> list[list[str]]:
    """The command lines that a quoted command stands for: each ``a|b`` alternative, placeholders replaced by a
    group's first option or by ``places`` (a checkpoint, a run folder, a folder of runs, a data file)."""
    choices = []
    for item in overrides:
        key, _, value = item.partition("=")
        values = []
        for one in value.split("|") if value else [None]:
            if one is None:
                values.append(key)
                continue
            name = key.lstrip("+~")
            if name == "ckpt_path" and one not in ("last", "best"):
                one = str(places["ckpt"] if one.endswith(".ckpt") else places["runs"] if "<" in one else places["run"])
            elif name.endswith("path") and (one.endswith((".npz", ".pt")) or PLACEHOLDER.search(one)):
                one = str(places["data"])
            elif one == "NAME":
                one = _options(name)[0]
            elif "..." in one:  # the general form, e.g. pairs=[[i,j],...]
                one = GENERAL_FORMS[name]
            elif PLACEHOLDER.search(one):
                one = "placeholder"
            values.append(f"{key}={one}")
        choices.append(values)
    return [list(line) for line in itertools.product(*choices)]


def sweep(config: str, overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun (``-m``): the product of its comma lists and of the config's
    ``hydra.sweeper.params`` (e.g. ``experiment=table2``'s five rows)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    lines = []
    for override in parsed:
        head = override.input_line.split("=", 1)[0]
        lines.append([f"{head}={v}" for v in override.sweep_string_iterator()] if override.is_sweep_override()
                     else [override.input_line])
    jobs = [list(job) for job in itertools.product(*lines)]
    params = _compose(config, jobs[0]).hydra.sweeper.get("params") or {}
    extra = [[f"{k}={v.strip()}" for v in str(values).split(",")] for k, values in params.items()]
    return [[*job, *more] for job in jobs for more in itertools.product(*extra)]


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def check_command(script: str, overrides: list[str], out_dir: Path, mode: str = "run") -> None:
    """Compose ``conf/<script>.yaml`` with ``overrides`` as Hydra would for the job, resolve it, and (where the
    job runs) run the checks that the entry point runs on it before any data loads; raises what the command would
    stop with."""
    config = SCRIPTS[script]
    cfg = _compose(config, overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        if mode == "compose":
            return
        str(cfg.hydra.sweep.dir if mode == "multirun" else cfg.hydra.run.dir)  # resolved, as Hydra does first
        hydra_cfg = cfg.hydra
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation of the job
        if config == "train":
            if cfg.ckpt_path:
                cfg, _, _ = resumed_config(cfg, hydra_cfg)
            else:
                check_data_choice(run_record(hydra_cfg), CONF_DIR)
            check_train_config(cfg)
        elif config == "evaluate":
            check_evaluate_config(cfg)
            resolve_checkpoint(cfg.ckpt_path, cfg.checkpoint)
        else:
            paths.check_paths_config(cfg)
            resolve_checkpoint(cfg.ckpt_path, cfg.checkpoint)
    finally:
        HydraConfig.instance().cfg = None


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    runs = _runs(tmp_path, "2024-01-01_00-00-00", best=True)
    data = tmp_path / "my.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), labels=np.arange(40) % 2)
    run = runs / "2024-01-01_00-00-00"
    return {"runs": runs, "run": run, "ckpt": run / "checkpoints" / "last.ckpt", "data": data}


QUOTED = conf_commands()


def test_the_commands_are_found() -> None:
    scripts = {script for _, script, _, _ in QUOTED}
    assert scripts == set(SCRIPTS) and len(QUOTED) >= 20, QUOTED
    where = {w.split(":")[0] for w, *_ in QUOTED}
    assert {"conf/data/tensor_file.yaml", "conf/paths.yaml", "conf/hydra/help/paths.yaml"} <= where


def jobs(script: str, overrides: list[str], mode: str, places: dict[str, Path]) -> list[list[str]]:
    """Every job a quoted command stands for: its concrete command lines, and for ``-m`` each one's sweep."""
    lines = concrete(overrides, places)
    return [job for line in lines for job in (sweep(SCRIPTS[script], line) if mode == "multirun" else [line])]


@pytest.mark.parametrize(("where", "script", "overrides", "mode"), QUOTED, ids=[q[0] for q in QUOTED])
def test_a_command_quoted_in_conf_composes(where: str, script: str, overrides: list[str], mode: str,
                                           places: dict[str, Path], tmp_path: Path) -> None:
    if "hydra/launcher=slurm" in overrides:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for job in jobs(script, overrides, mode, places):
        try:
            check_command(script, job, tmp_path / "out", mode)
        except Exception as err:
            pytest.fail(f"{where}: python {script} {' '.join(job)}\n  {type(err).__name__}: {err}")


@pytest.mark.parametrize(("line", "refused"), [
    ("# Your own vectors: python train.py data=tensor_file data.path=my.npz (.npz)", "experiment=tensor_file"),
    ("#   python train.py -m model=vaells,vae trainer.max_epoch=3", "max_epoch"),
    ("# python evaluate.py ckpt_path=RUN checkpoint=worst", "checkpoint=worst"),
    ("# python paths.py ckpt_path=RUN num_steps=1", "num_steps=1"),
])
def test_a_stale_command_is_caught(line: str, refused: str, places: dict[str, Path], tmp_path: Path) -> None:
    """The check above refuses what the entry point would: e.g. ``data=X`` without an experiment, which
    ``train.py`` refuses although Hydra composes it."""
    ((script, overrides, mode),) = quoted_commands(line)
    with pytest.raises(Exception, match=re.escape(refused)):
        for job in jobs(script, overrides, mode, places):
            check_command(script, job, tmp_path / "out", mode)
