"""Interpolate between test inputs of a trained run: ``python paths.py ckpt_path=RUN/checkpoints/last.ckpt
pairs=[[3,17],[5,40]]``. Writes, per pair, the transport path over the linear latent path as
``pair_<i>_<j>.png`` into ``RUN/paths/<date_time>/``, and ``paths.json``; models without transport operators get
the linear path alone."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import vaells
from vaells.evaluation.paths import same_label_pairs
from vaells.figures.paths import path_pair_figure


def run_folder(ckpt_path: str) -> str:
    """The run folder of a checkpoint: the parent of its ``checkpoints/`` folder (else the checkpoint's folder)."""
    folder = Path(ckpt_path).resolve().parent
    return str(folder.parent if folder.name == "checkpoints" else folder)


OmegaConf.register_new_resolver("run_dir", run_folder, replace=True)


def check_pairs(pairs: object, num_test: int) -> list[tuple[int, int]]:
    """``pairs`` as (i, j) index pairs into a test split of ``num_test`` inputs, or a ValueError naming the fix."""
    hint = f"give pairs=[[i,j],...] with indices 0..{num_test - 1} of the test split"
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"pairs={pairs} is not a list of pairs; {hint}")
    out = []
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(i, int) and 0 <= i < num_test for i in pair)):
            raise ValueError(f"pairs: {pair} is not a pair of test indices; {hint}")
        out.append((int(pair[0]), int(pair[1])))
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="paths")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    if int(cfg.num_steps) < 2:
        raise ValueError(f"num_steps={cfg.num_steps} must be at least 2")
    run = vaells.load(cfg.ckpt_path, data_overrides=OmegaConf.to_container(cfg.data_overrides))
    x, labels = run.test_data()
    if cfg.pairs is None:
        i0, i1 = same_label_pairs(labels, int(cfg.num_pairs), torch.Generator().manual_seed(int(cfg.seed)))
        pairs = list(zip(i0.tolist(), i1.tolist(), strict=True))
    else:
        pairs = check_pairs(OmegaConf.to_container(cfg.pairs), x.shape[0])
    out = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
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
    (out / "paths.json").write_text(json.dumps({"ckpt_path": str(cfg.ckpt_path), "pairs": records}, indent=2))
    print(f"Wrote {len(records)} figures and paths.json to {out}")


if __name__ == "__main__":
    main()
