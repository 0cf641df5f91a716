"""The evidence campaign (issue 8): every method × seeds of a preset, advanced in resumable chunks
within a time budget, then the verdict rebuilt from what the runs reached.

    python -m experiments.evidence fast --hours 2.5            # CPU: lr 5e-3 to 1e6 steps
    python -m experiments.evidence paper --hours 0.15 --workers 1 --run-args "--device cuda"
    python -m experiments.evidence fast --list                 # progress of every planned run
    python -m experiments.evidence fast --methods wdctl_opt    # Optuna study, then its best trial
    python -m experiments.evidence fast --hours 0 --verdict reports/verdict/fast_preset

Repeat the same command every session: each run resumes from its checkpoint; the least advanced
runs go first, each to the next multiple of --chunk steps. Ctrl-C / SIGTERM stops every run at a
step boundary with a checkpoint. Runs live in --runs-dir/<preset prefix>_<method>_s<seeds>.
"""
import argparse
import shlex
import sys

from alphareg.campaign import (METHODS, PRESETS, TUNED, commands_markdown, plan, progress_table,
                               run_campaign, write_study_reports)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.evidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", choices=sorted(PRESETS), help="fast = lr 5e-3 (1e6 steps); paper = lr 5e-4 (1e7)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join([*METHODS, *TUNED])} (default: all; "
                        f"{', '.join(TUNED)} first run their Optuna study)")
    p.add_argument("--steps", type=int, default=None, help="target steps (default: the preset's)")
    p.add_argument("--hours", type=float, default=1.0, help="wall-clock budget of this invocation")
    p.add_argument("--workers", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP threads per run (default: cores / workers)")
    p.add_argument("--chunk", type=int, default=100_000, help="runs stop at multiples of this many steps")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--run-args", default="", metavar="FLAGS",
                   help='extra flags for every run, e.g. "--device cuda --ww-per-decade 0"')
    p.add_argument("--list", action="store_true", help="print the plan and each run's progress, then exit")
    p.add_argument("--verdict", default=None, metavar="DIR",
                   help="afterwards write the verdict of every started run to DIR (experiments.report "
                        "--verdict), with the runs' tables and summaries (not checkpoints) in DIR/runs/ "
                        "and their commands in DIR/runs.md")
    p.add_argument("--horizon", type=int, default=None, help="with --verdict: cut every run at this step")
    a = p.parse_args(argv)
    if a.hours < 0:
        p.error(f"--hours must be >= 0, got {a.hours}")
    for flag, v in (("--workers", a.workers), ("--threads", a.threads), ("--chunk", a.chunk), ("--steps", a.steps), ("--horizon", a.horizon)):
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    methods = a.methods.split(",") if a.methods else None
    try:
        runs = plan(a.preset, methods)
    except ValueError as e:
        p.error(str(e))
    try:
        extra = tuple(shlex.split(a.run_args))
    except ValueError as e:
        p.error(f"--run-args {a.run_args!r}: {e}")
    target = a.steps or PRESETS[a.preset][1]
    code = 0
    if not a.list and a.hours > 0:
        codes = run_campaign(runs, target, a.hours, a.workers, a.chunk, a.runs_dir, extra,
                             log=lambda s: print(f"experiments.evidence: {s}", file=sys.stderr, flush=True),
                             threads=a.threads)
        failed = {n: c for n, c in codes.items() if c not in (0, 130)}
        if failed:
            print(f"experiments.evidence: runs that failed or did not advance (see <runs-dir>/<name>.log): "
                  f"{failed}", file=sys.stderr)
            code = 1
        runs = plan(a.preset, methods)  # again: a study that ended meanwhile now gives its run the best trial's flags
    print(progress_table(runs, a.runs_dir, target))
    if a.verdict:
        from pathlib import Path

        from alphareg.verdict import write_verdict
        started = [Path(a.runs_dir) / r.name for r in runs if (Path(a.runs_dir) / r.name / "metrics.csv").is_file()]
        if not started:
            p.error(f"--verdict: no run of the plan has started in {a.runs_dir}")
        write_verdict(started, a.verdict, horizon=a.horizon, copy_runs=True)
        (Path(a.verdict) / "runs.md").write_text(commands_markdown(runs, a.runs_dir, target))
        write_study_reports(a.preset, list(dict.fromkeys(r.method for r in runs)), a.verdict)
        print(f"experiments.evidence: verdict of {len(started)} runs written to {a.verdict}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
