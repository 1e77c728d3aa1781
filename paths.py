"""Draw paths between test inputs of a trained run: ``python paths.py ckpt_path=RUN 'pairs=[[3,17],[5,40]]'``.

``ckpt_path`` is what ``evaluate.py`` takes: a run folder, a folder of runs such as ``outputs/train/swiss_roll/vaells``
(its newest run) or a ``.ckpt`` file (``checkpoint=best``: a folder's best checkpoint); ``python paths.py --help``.
Writes, per pair, the transport path over the linear latent path (docs/method.md §7) as ``pair_<i>_<j>.png`` into
``RUN/paths/<date_time>/``, and ``paths.json``; models without transport operators get the linear path alone. A
setting that cannot run stops with one message and leaves no folder (``vaells.app.runs.fail_before_work``)."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import vaells
from vaells.app.overrides import suggest_close_keys
from vaells.app.runs import SETTING_ERRORS, UsageError, fail_before_work, resolve_checkpoint, run_folder
from vaells.app.schema import RunSchema
from vaells.app.validation import Failures, check_data, check_node
from vaells.evaluation.paths import same_label_pairs
from vaells.figures.paths import path_pair_figure

#: The default output folder while ``ckpt_path`` names no checkpoint; the job then stops and removes it again.
NO_RUN_FOLDER = "outputs/paths"
PAIRS_FIX = "give pairs=[[i,j],...] (quoted in the shell: 'pairs=[[3,17],[5,40]]') with indices of the test split"


def paths_folder(ckpt_path: str | None, which: str = "last") -> str:
    """``conf/paths.yaml``'s ``hydra.run.dir``: ``<run>/paths`` of the checkpoint that ``ckpt_path`` names (as
    ``evaluate.py`` resolves it), else ``NO_RUN_FOLDER``."""
    try:
        return str(run_folder(resolve_checkpoint(ckpt_path, which)) / "paths")
    except (UsageError, TypeError, OSError):  # TypeError: ckpt_path missing (None)
        return NO_RUN_FOLDER


OmegaConf.register_new_resolver("paths_folder", paths_folder, replace=True)
suggest_close_keys()  # num_step=5: "did you mean num_steps=5?", not Hydra's +num_step


def _is_int(value: object) -> bool:
    """An integer and not a bool, which Python counts as one (``num_steps=true`` would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_pairs(pairs: object, num_test: int | None = None) -> list[tuple[int, int]]:
    """``pairs`` as (i, j) index pairs into a test split of ``num_test`` inputs (None: the shape alone), or a
    ``UsageError`` naming the pair and the fix."""
    hint = PAIRS_FIX + (f" (0..{num_test - 1}: it has {num_test} inputs)" if num_test is not None else "")
    if not isinstance(pairs, list | tuple) or not pairs:
        raise UsageError(f"pairs={pairs} is not a list of pairs; {hint}")
    out = []
    for pair in pairs:
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(_is_int(i) and 0 <= i and (num_test is None or i < num_test) for i in pair)):
            raise UsageError(f"pairs: {pair} is not a pair of test indices; {hint}")
        out.append((int(pair[0]), int(pair[1])))
    return out


def check_paths_config(cfg: DictConfig) -> None:
    """Refuse a composed ``conf/paths.yaml`` whose settings cannot run, before the checkpoint loads: seed, threads
    and checkpoint as for ``evaluate.py`` (``RunSchema``), num_steps, num_pairs and the shape of pairs. Raises
    ``UsageError`` listing each failure (field, value, fix)."""
    failures = Failures()
    check_node(cfg, RunSchema, "", failures)
    if not (_is_int(cfg.num_steps) and cfg.num_steps >= 2):
        failures.add("num_steps", f"num_steps={cfg.num_steps} must be an integer >= 2 (the points of each path, "
                                  "both ends included); e.g. num_steps=10")
    if not (_is_int(cfg.num_pairs) and cfg.num_pairs >= 1):
        failures.add("num_pairs", f"num_pairs={cfg.num_pairs} must be an integer >= 1 (the random same-class pairs "
                                  "drawn while pairs=null); e.g. num_pairs=4")
    if cfg.pairs is not None:
        try:
            check_pairs(OmegaConf.to_container(cfg.pairs) if OmegaConf.is_config(cfg.pairs) else cfg.pairs)
        except UsageError as err:
            failures.add("pairs", str(err))
    if not isinstance(cfg.data_overrides, DictConfig):
        failures.add("data_overrides", f"data_overrides={cfg.data_overrides} must be a group of data settings; "
                                       "e.g. +data_overrides.root=/path/to/mnist")
    failures.raise_any()


@hydra.main(version_base="1.3", config_path="conf", config_name="paths")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:  # everything that can refuse the settings, before any figure
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise UsageError("ckpt_path is required: python paths.py ckpt_path=outputs/train/<experiment>/<model> "
                             "(its newest run), a run folder or a .ckpt file; python paths.py --help")
        check_paths_config(cfg)
        torch.set_num_threads(cfg.threads)
        ckpt_path = resolve_checkpoint(cfg.ckpt_path, cfg.checkpoint)
        run = vaells.load(ckpt_path, data_overrides=OmegaConf.to_container(cfg.data_overrides))
        check_data(run.config.data)  # e.g. a moved data file: its fix is +data_overrides.path, not data.path
        x, labels = run.test_data()
        if cfg.pairs is None:
            i0, i1 = same_label_pairs(labels, int(cfg.num_pairs), torch.Generator().manual_seed(int(cfg.seed)))
            pairs = list(zip(i0.tolist(), i1.tolist(), strict=True))
        else:
            pairs = check_pairs(OmegaConf.to_container(cfg.pairs), x.shape[0])
    except SETTING_ERRORS as err:
        given = OmegaConf.select(cfg, "ckpt_path", default=None, throw_on_missing=False)
        owner = run_folder(given) if given is not None and Path(str(given)).exists() else None
        # Empty folders above this job's are removed up to the run it draws (its paths/), else up to the working
        # directory (NO_RUN_FOLDER's).
        root = owner if owner is not None and owner in out.resolve().parents else Path.cwd()
        fail_before_work(out, err, root=root)
    records = []
    for i, j in pairs:
        rows, names, record = [], [], {"start": i, "end": j, "labels": [int(labels[i]), int(labels[j])]}
        if run.has_operators:
            path = run.latent_path(x[i], x[j], cfg.num_steps)
            rows.append(run.decode(path.z))
            names.append("transport")
            z1 = run.encode(x[j])
            record |= {"c_hat": path.c.tolist(),
                       "end_error": float((path.z[-1] - z1).norm() / (z1 - path.z[0]).norm().clamp_min(1e-12))}
        rows.append(run.interpolate(x[i], x[j], cfg.num_steps, linear=True))
        names.append("linear")
        vector = x.dim() == 2
        fig = path_pair_figure(rows, names, background=x if vector else None, target=x[j] if vector else None,
                               title=f"test {i} -> {j}")
        record["figure"] = f"pair_{i}_{j}.png"
        fig.savefig(out / record["figure"], dpi=120)
        records.append(record)
    (out / "paths.json").write_text(json.dumps({"ckpt_path": str(ckpt_path), "pairs": records}, indent=2))
    print(f"Wrote {len(records)} figures and paths.json to {out}")


if __name__ == "__main__":
    main()
