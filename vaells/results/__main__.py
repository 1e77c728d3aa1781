"""``python -m vaells.results run SUITE [--jobs N] [--launcher joblib|slurm] [OVERRIDE ...]``,
``python -m vaells.results release DIR [OVERRIDE ...]`` and ``python -m vaells.results render [--check]``
(docs/running.md, "Results")."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from vaells.results.suites import ROOT, load_suite, missing_environment, pending_jobs, suite_names

RESULTS_DIR = ROOT / "results"


def launch_command(suite: str, jobs: int, launcher: str | None, results_dir: Path, overrides: list[str],
                   suite_command: str) -> list[str]:
    """``train.py -m`` with the suite's sweeper, the result writer and the launcher (Hydra runs every job)."""
    results_dir = results_dir.resolve()
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=suite", f"hydra.sweeper.suite={suite}",
               f"hydra.sweeper.results_dir={results_dir}",
               "+hydra.callbacks.results._target_=vaells.results.writer.ResultWriter",
               f"+hydra.callbacks.results.suite={suite}", f"+hydra.callbacks.results.results_dir={results_dir}",
               f"+hydra.callbacks.results.suite_command='{suite_command}'"]
    if overrides:  # through the sweeper, not the command line: the primary config need not have their keys
        command.append("hydra.sweeper.shared=[" + ",".join(quote(o) for o in overrides) + "]")
    launcher = launcher or ("joblib" if jobs > 1 else None)
    if launcher == "joblib":
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    elif launcher == "slurm":
        command += ["hydra/launcher=slurm", f"hydra.launcher.array_parallelism={jobs}"]
    return command


def quote(override: str) -> str:
    """One override as an element of a Hydra list override (a quoted string)."""
    if "'" in override:
        raise ValueError(f"override {override!r}: a suite's shared overrides cannot hold a single quote")
    return f"'{override}'"


def run(args: argparse.Namespace) -> int:
    try:
        jobs = load_suite(args.suite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    pending = pending_jobs(jobs, args.results)
    unset = missing_environment(pending)
    if unset:
        print(f"error: suite {args.suite} reads the environment variable(s) {', '.join(unset)}, which are not set; "
              "see the suite file's first line", file=sys.stderr)
        return 2
    print(f"suite {args.suite}: {len(jobs)} jobs, {len(jobs) - len(pending)} with results in {args.results}, "
          f"{len(pending)} to run")
    for job in pending:
        print(f"  {job.name}")
    if not pending:
        return 0
    shown = ["python -m vaells.results run", args.suite] + (["--jobs", str(args.jobs)] if args.jobs > 1 else [])
    shown += (["--launcher", args.launcher] if args.launcher else []) + args.overrides
    command = launch_command(args.suite, args.jobs, args.launcher, args.results, args.overrides, " ".join(shown))
    if args.dry_run:
        print(shlex.join(command))
        return 0
    return subprocess.run(command, cwd=Path.cwd()).returncode


def render(args: argparse.Namespace) -> int:
    from vaells.results.render import check_rendered, render_all

    if args.check:
        differing = check_rendered(args.results, ROOT)
        for path, diff in differing:
            print(f"{path} differs from what `python -m vaells.results render` writes:\n{diff}", file=sys.stderr)
        if differing:
            print("Rerun `python -m vaells.results render` and commit its output; never edit it by hand.",
                  file=sys.stderr)
        return 1 if differing else 0
    for path in render_all(args.results, ROOT):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaells.results",
                                     description="Run a results suite, or render docs/results.md from results/.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train and evaluate a suite's jobs that have no result yet")
    run_parser.add_argument("suite", help=f"one of {', '.join(suite_names())} (conf/suite/), or a suite file")
    run_parser.add_argument("--jobs", type=int, default=1, help="jobs at once (joblib, one torch thread each)")
    run_parser.add_argument("--launcher", choices=["joblib", "slurm"], default=None,
                            help="Hydra launcher (default: joblib when --jobs > 1, else one job after another)")
    run_parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where results go (default: results/)")
    run_parser.add_argument("--dry-run", action="store_true", help="list the pending jobs and the command only")
    run_parser.add_argument("overrides", nargs="*",
                            help="overrides for every job whose config has the key, e.g. data.root=DIR")
    release_parser = commands.add_parser("release", help="import, score and record the authors' trained models")
    release_parser.add_argument("release_dir", type=Path, help="the release's pretrained_models/ folder")
    release_parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    release_parser.add_argument("--outputs", type=Path, default=Path("outputs") / "release",
                                help="where the imported runs go (default: outputs/release/<experiment>)")
    render_parser = commands.add_parser("render", help="write docs/results.md, its figures and the front page's tables")
    render_parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    render_parser.add_argument("--check", action="store_true",
                               help="write nothing; exit 1 when the files differ from what render writes")
    # Overrides may come before or after the options (run quick --jobs 2 data.root=DIR): argparse's positional
    # list stops at the first option, so what follows it arrives here.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or args.command == "render"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.overrides += extra
        return run(args)
    if args.command == "release":
        from vaells.results.authors import score_release

        return score_release(args.release_dir, args.results, extra, args.outputs)
    return render(args)


if __name__ == "__main__":
    sys.exit(main())
