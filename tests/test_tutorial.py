"""docs/tutorial.md, run as written: every ```bash and ```python block, in order, in a fresh folder that holds the
repository's entry points and configs (as a checkout would), with ``python`` this interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# End-to-end: the tutorial's commands, run as written.
pytestmark = pytest.mark.e2e

TUTORIAL = ROOT / "docs" / "tutorial.md"
#: The tutorial's promise: start to finish in under 3 minutes on a CPU.
BUDGET_S = 180


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced bash or python block, in order."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)


def test_the_tutorial_runs_start_to_finish(tmp_path: Path) -> None:
    blocks = code_blocks(TUTORIAL.read_text())
    assert [lang for lang, _ in blocks] == ["bash", "bash", "python", "bash"]
    for name in ("train.py", "evaluate.py", "paths.py", "conf"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # a wrapper, not a link: a link to a venv's python loses the venv
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    for lang, code in blocks:
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BUDGET_S)
        report = f"{lang} block failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, report
    run = tmp_path / "outputs" / "tutorial"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.json").is_file()
    assert (run / "my_paths.png").is_file() and (run / "my_prior.png").is_file()
    (paths_dir,) = (run / "paths").iterdir()
    assert {p.name for p in paths_dir.glob("*.png")} == {"pair_0_10.png", "pair_5_300.png"}
