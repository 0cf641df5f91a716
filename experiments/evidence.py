"""The evidence campaign (issue 8): every method × seeds of a preset, advanced in resumable chunks
within a time budget, then the verdict rebuilt from what the runs reached.

    python -m experiments.evidence fast --hours 2.5            # CPU: lr 5e-3 to 1e6 steps
    python -m experiments.evidence paper --hours 0.15 --workers 1 --run-args "--device cuda"
    python -m experiments.evidence fast --list                 # progress of every planned run
    python -m experiments.evidence fast --methods wdctl_opt    # Optuna study, then its best trial
    python -m experiments.evidence fast --hours 0 --verdict reports/verdict/fast_preset
    python -m experiments.evidence fast --methods wd0,penalty_t2 --hours 0 \
        --verdict reports/verdict/fast_preset_h8e5 --add      # a committed folder gains the penalty

Repeat the same command every session: each run resumes from its checkpoint; the least advanced
runs go first, each to the next multiple of --chunk steps. Ctrl-C / SIGTERM stops every run at a
step boundary with a checkpoint. Runs live in --runs-dir/<preset prefix>_<method>_s<seeds>.

With --archive DIR (the project's own: archive/, committed) every run's resumable state is kept in
DIR/<run>.tar.gz and each tuned method's study database in DIR/studies/: a run directory that is
missing is restored from it before training, and the archive is updated after every chunk and at
the end, so the same command continues on a fresh clone (alphareg/archive.py).
"""
import argparse
import shlex
import sys
from pathlib import Path

from alphareg.campaign import (HELD, METHODS, PRESETS, TUNED, commands_markdown, plan, progress_table,
                               run_campaign, study_db, study_keys, write_study_reports)


def log(s: str) -> None:
    print(f"experiments.evidence: {s}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.evidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", choices=sorted(PRESETS), help="fast = lr 5e-3 (1e6 steps); paper = lr 5e-4 (1e7)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join([*METHODS, *TUNED, *HELD])} (default: "
                        f"all but {', '.join(HELD)}; {', '.join(TUNED)} first run their Optuna study; "
                        f"{', '.join(HELD)}: a tuned controller held from a step on, see alphareg/campaign.py)")
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
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="keep each run's resumable state in DIR/<run>.tar.gz (tuned studies in "
                        "DIR/studies/): restore missing run directories from it, update it after "
                        "every chunk; commit DIR to continue on a fresh clone (ours: archive/)")
    p.add_argument("--verdict", default=None, metavar="DIR",
                   help="afterwards write the verdict of every started run to DIR (experiments.report "
                        "--verdict), with the runs' tables and summaries (not checkpoints) in DIR/runs/ "
                        "and their commands in DIR/runs.md")
    p.add_argument("--horizon", type=int, default=None, help="with --verdict: cut every run at this step")
    p.add_argument("--add", action="store_true",
                   help="with --verdict: DIR is a verdict folder already; keep the run copies it holds "
                        "(DIR/runs/) and their rows as they are, add the runs of --methods it lacks, cut at "
                        "its horizon; refused, nothing written, if a line of its verdict.csv / methods.csv "
                        "would change (alphareg/compose.py). --methods must name every method it holds")
    a = p.parse_args(argv)
    if a.hours < 0:
        p.error(f"--hours must be >= 0, got {a.hours}")
    for flag, v in (("--workers", a.workers), ("--threads", a.threads), ("--chunk", a.chunk), ("--steps", a.steps), ("--horizon", a.horizon)):
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    if a.add and not a.verdict:
        p.error("--add needs --verdict DIR (the verdict folder that gains runs)")
    methods = a.methods.split(",") if a.methods else None
    archiving = a.archive and not a.list
    if archiving:
        from alphareg import archive
        if Path(a.archive).exists() and not Path(a.archive).is_dir():
            p.error(f"--archive {a.archive} is a file, not a folder")
        for key in study_keys(methods or TUNED):
            if archive.restore_file(study_db(a.preset, key), Path(a.archive) / "studies"):
                log(f"study of {key} restored from {a.archive}/studies")
    try:
        runs = plan(a.preset, methods)
    except ValueError as e:
        p.error(str(e))
    if archiving:
        for r in runs:
            try:
                restored, note = archive.restore(r.name, a.runs_dir, a.archive)
            except archive.ArchiveError as e:
                p.error(f"--archive: {e}")
            if note:
                log(f"{r.name}: {note}")

    def save(run) -> None:
        try:
            dest, written, note = archive.save(Path(a.runs_dir) / run.name, a.archive)
        except (archive.ArchiveError, OSError) as e:   # the runs go on; the run directory is intact
            log(f"{run.name}: NOT archived: {e}")
            return
        if written:
            log(f"{run.name}: archived to {dest} ({note})")
    try:
        extra = tuple(shlex.split(a.run_args))
    except ValueError as e:
        p.error(f"--run-args {a.run_args!r}: {e}")
    target = a.steps or PRESETS[a.preset][1]
    code = 0
    if not a.list and a.hours > 0:
        codes = run_campaign(runs, target, a.hours, a.workers, a.chunk, a.runs_dir, extra, log=log,
                             threads=a.threads, on_chunk_end=save if archiving else None)
        failed = {n: c for n, c in codes.items() if c not in (0, 130)}
        if failed:
            print(f"experiments.evidence: runs that failed or did not advance (see <runs-dir>/<name>.log): "
                  f"{failed}", file=sys.stderr)
            code = 1
        runs = plan(a.preset, methods)  # again: a study that ended meanwhile now gives its run the best trial's flags
    if archiving:
        for r in runs:
            save(r)
        for key in study_keys(r.method for r in runs):
            if archive.save_file(study_db(a.preset, key), Path(a.archive) / "studies"):
                log(f"study of {key} archived to {a.archive}/studies")
    print(progress_table(runs, a.runs_dir, target))
    if a.verdict and a.add:
        return add_to_verdict(p, a, runs, target, code)
    if a.verdict:
        from alphareg.verdict import write_verdict
        started = [Path(a.runs_dir) / r.name for r in runs if (Path(a.runs_dir) / r.name / "metrics.csv").is_file()]
        if not started:
            p.error(f"--verdict: no run of the plan has started in {a.runs_dir}")
        write_verdict(started, a.verdict, horizon=a.horizon, copy_runs=True)
        (Path(a.verdict) / "runs.md").write_text(commands_markdown(runs, a.runs_dir, target))
        write_study_reports(a.preset, list(dict.fromkeys(r.method for r in runs)), a.verdict)
        log(f"verdict of {len(started)} runs written to {a.verdict}")
    return code


def add_to_verdict(p: argparse.ArgumentParser, a: argparse.Namespace, runs, target: int, code: int) -> int:
    """--verdict DIR --add: the folder gains the plan's runs it lacks (alphareg.compose.add_runs)."""
    from alphareg.compose import add_runs
    folder = Path(a.verdict)
    held = {d.name for d in (folder / "runs").iterdir() if d.is_dir()} if (folder / "runs").is_dir() else set()
    unnamed = sorted(held - {r.name for r in runs})
    if unnamed:
        p.error(f"--add: {folder} holds runs that --methods does not name: {', '.join(unnamed)} "
                "(name every method the folder holds, and the ones to add)")
    dirs = [Path(a.runs_dir) / r.name for r in runs
            if r.name in held or (Path(a.runs_dir) / r.name / "metrics.csv").is_file()]
    try:
        added = add_runs(folder, dirs, a.horizon)
    except (ValueError, FileNotFoundError) as e:
        p.error(f"--verdict {a.verdict} --add: {e}")
    shown = [r for r in runs if (folder / "runs" / r.name).is_dir()]
    (folder / "runs.md").write_text(commands_markdown(shown, str(folder / "runs"), target, command_runs_dir=a.runs_dir))
    write_study_reports(a.preset, list(dict.fromkeys(r.method for r in shown)), a.verdict)
    log(f"{folder}: added {', '.join(added)}; the {len(held)} runs it held and their rows are unchanged")
    return code


if __name__ == "__main__":
    sys.exit(main())
