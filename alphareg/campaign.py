"""The evidence campaign: every method × seed group of a preset as resumable runs, advanced in
chunks by a budgeted runner so that one command, repeated each session, moves all of them towards
the target step count and rebuilds the verdict from whatever they reached.

A planned run is one ``experiments.baseline`` / ``experiments.alpha_reg`` command with a fixed
``--name``; re-running it with a larger ``--steps`` resumes its checkpoint (``alphareg.engine``),
and SIGTERM makes it checkpoint at the next step boundary and exit 130. The runner:

1. reads each run's progress (the last logged step of ``metrics.csv``; 0 if it does not exist);
2. starts up to ``workers`` runs at a time, always the least advanced first, each to the next
   multiple of ``chunk`` steps (capped at the target), with ``OMP_NUM_THREADS`` = cores / workers
   and its output appended to ``<runs_dir>/<name>.log``;
3. when the wall-clock budget is spent (or the runner gets SIGINT/SIGTERM) sends SIGTERM to the
   runs in flight and waits for their checkpoints (a run the signal kills outside its training
   loop, while starting or finishing, counts as stopped too: code 130). A run that fails (exit code not 0 or 130), or
   ends without advancing, is not restarted in the same invocation and is reported.

Tuned methods (``TUNED``: ``wdctl_opt``, ``lrctl_opt``) train with the best trial of an Optuna
study (``experiments.tune``, objective: the minimum validation accuracy from ``late_from`` on, see
``alphareg.tuning``) over their search space. While the study has no complete trial the run's job
*is* the study (``study_command``: trials of target / 10 steps, late window from target / 20,
``STUDY_TRIALS`` trials trained as one population, no HTSR); when it ends the run is planned again
with the best trial's settings as flags and trains like any other. Nothing is typed in by hand:
the flags come from ``study.best_trial.params`` and the parser's own option names.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .rundir import last_step

#: preset -> (learning rate flag, default target steps, run-name prefix)
PRESETS = {"fast": ("5e-3", 10**6, "fast_lr5e-3"), "paper": ("5e-4", 10**7, "paper_lr5e-4")}

#: method key -> (module, flags). The WD = 0.01 control is the paper's; WD = 0.02 is the fixed-WD
#: control of the tuned WD controller (its study's best reference WD is about that); the α-guided
#: methods use their defaults at target 2 (the Optuna study's best settings replace them once one
#: exists). ``penalty2s_t2`` is the soft-α penalty made two-sided with the rank-size gradient
#: (``alphareg.regularizers``: it also pulls an alpha above the target down to it): in the paper
#: config WD = 0 collapses with fc1's and fc2's alphas far above 2, where the one-sided
#: ``penalty_t2`` has nothing to correct and never acted. ``wd0.01_fc23`` and ``wd0.004_fc23`` are
#: per-layer fixed-WD controls of the WD controller: a constant WD on fc2 and fc3 only, the layers
#: the controller decays in the paper config (it leaves fc1 near 0) — whether its gain is just "WD
#: on those layers". 0.01 is its reference WD; 0.004 is about the step-averaged WD it gave fc2 and
#: fc3 over its first 3.5e6 steps (0.003-0.007 per layer and seed; fc1 under 0.001).
METHODS = {
    "wd0": ("experiments.baseline", ("--wd", "0")),
    "wd0.01": ("experiments.baseline", ("--wd", "0.01")),
    "wd0.02": ("experiments.baseline", ("--wd", "0.02")),
    "wd0.01_fc23": ("experiments.alpha_reg", ("--method", "weight_decay", "--wd-ref", "0.01",
                                              "--wd-layers", "fc2,fc3")),
    "wd0.004_fc23": ("experiments.alpha_reg", ("--method", "weight_decay", "--wd-ref", "0.004",
                                               "--wd-layers", "fc2,fc3")),
    "penalty_t2": ("experiments.alpha_reg", ("--target", "2.0")),
    "penalty2s_t2": ("experiments.alpha_reg", ("--target", "2.0", "--penalty-two-sided",
                                                "--penalty-gradient", "zipf")),
    "wdctl_t2": ("experiments.alpha_reg", ("--method", "wd_controller", "--target", "2.0")),
    "lrctl_t2": ("experiments.alpha_reg", ("--method", "lr_controller", "--target", "2.0")),
    "grokfast": ("experiments.alpha_reg", ("--method", "grokfast")),
    "spectral_norm": ("experiments.alpha_reg", ("--method", "spectral_norm")),
    "orthograd": ("experiments.alpha_reg", ("--method", "orthograd")),
    "early_stop": ("experiments.alpha_reg", ("--method", "early_stop", "--val-per-class", "100")),
}

#: tuned method key -> --method whose search space an Optuna study explores (seed 0, validation split)
TUNED = {"wdctl_opt": "wd_controller", "lrctl_opt": "lr_controller"}
#: held controls, key -> (tuned method, step): the tuned controller trained with
#: ``--control-until step`` — the same run up to that step, then every layer's lr / wd held where
#: the controller set it last while alpha is still measured: the control that tells the α feedback
#: from the dose it settled at. The fast preset's tuned LR controller (``lrctl_opt``) has fc1's and
#: fc3's learning rates at its floor (5e-4) in every seed from the log point 177,828 on (its
#: ``metrics.csv`` in ``archive/``), fc2's at 2.7e-3-3.1e-3 there: held from that step. Planned
#: only when named in ``--methods`` and once the tuned method's study has a complete trial.
HELD = {"lrctl_opt_held": ("lrctl_opt", 177_828)}
#: trials per study, all trained at once as one lockstep population
STUDY_TRIALS = 4

#: seed groups per (preset, method): one run per group (a population of those seeds). The fast
#: preset's first runs trained seeds 0,1 together and seed 2 alone; later methods train 0,1,2.
SEED_GROUPS = {("fast", m): ("0,1", "2") for m in ("wd0", "penalty_t2", "wdctl_t2")}
DEFAULT_SEEDS = ("0,1,2",)


@dataclass(frozen=True)
class PlannedRun:
    preset: str
    method: str
    seeds: str
    name: str
    module: str
    flags: tuple[str, ...]
    study: tuple[str, ...] = ()     # a tuned method whose study has no complete trial: its command

    def command(self, steps: int, runs_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
        if self.study:
            return [sys.executable, *self.study, *extra]
        return [sys.executable, "-m", self.module, "--lr", PRESETS[self.preset][0], *self.flags,
                "--seeds", self.seeds, "--steps", str(steps), "--name", self.name,
                "--runs-dir", runs_dir, "--no-progress", "--plot-minutes", "5", *extra]


def study_key(method: str) -> str | None:
    """The tuned method whose study a method trains from (itself, a held control's base), or None."""
    key = HELD[method][0] if method in HELD else method
    return key if key in TUNED else None


def study_keys(methods) -> list[str]:
    """The distinct studies the given methods train from, in order."""
    return [k for k in dict.fromkeys(study_key(m) for m in methods) if k]


def study_name(preset: str, key: str) -> str:
    return f"{PRESETS[preset][2]}_{key}"


def study_db(preset: str, key: str, studies_dir: str = "studies") -> Path:
    """The SQLite file of a tuned method's study."""
    return Path(studies_dir) / f"{study_name(preset, key)}.db"


def study_command(preset: str, key: str, studies_dir: str = "studies") -> tuple[str, ...]:
    """The ``experiments.tune`` command of a tuned method's study (storage ``study_db``; trial
    run directories in ``studies/<study>/``)."""
    lr, target, _ = PRESETS[preset]
    return ("-m", "experiments.tune", "--method", TUNED[key], "--lr", lr, "--seeds", "0",
            "--steps", str(target // 10), "--late-from", str(target // 20),
            "--population", str(STUDY_TRIALS), "--n-trials", str(STUDY_TRIALS),
            "--study", study_name(preset, key),
            "--storage", f"sqlite:///{study_db(preset, key, studies_dir)}", "--no-htsr", "--no-snapshots",
            "--no-progress")


def load_study(preset: str, key: str, studies_dir: str = "studies"):
    """The method's Optuna study, or None while its database or the study in it does not exist."""
    db = study_db(preset, key, studies_dir)
    if not db.is_file():
        return None
    import optuna

    from .tuning import make_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name(preset, key), storage=make_storage(f"sqlite:///{db}"))
    except KeyError:
        return None


def best_flags(preset: str, key: str, studies_dir: str = "studies") -> tuple[str, ...] | None:
    """The best complete trial of the method's study as command-line flags (the parser's own
    option name of each parameter), or None while the study has no complete trial."""
    from optuna.trial import TrialState

    from .cli import build_parser
    study = load_study(preset, key, studies_dir)
    if study is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    options = {a.dest: a.option_strings[0] for a in build_parser("x", "", default_method=TUNED[key])._actions
               if a.option_strings}
    flags: list[str] = []
    for name, value in sorted(study.best_trial.params.items()):
        flags += [options[name], repr(value) if isinstance(value, float) else str(value)]
    return tuple(flags)


def write_study_reports(preset: str, methods: list[str], out_dir: str | Path,
                        studies_dir: str = "studies") -> list[Path]:
    """For each tuned method among ``methods`` whose study exists: its report
    (``alphareg.tuning.write_study_report``) and a copy of its database in
    ``out_dir/studies/<study>/``. Returns the report paths."""
    import shutil

    from .tuning import write_study_report
    out = []
    for key in study_keys(methods):
        study = load_study(preset, key, studies_dir)
        if study is None:
            continue
        dest = Path(out_dir) / "studies" / study.study_name
        out.append(write_study_report(study, dest))
        db = study_db(preset, key, studies_dir)
        shutil.copy2(db, dest / db.name)
    return out


def plan(preset: str, methods: list[str] | None = None, studies_dir: str = "studies") -> list[PlannedRun]:
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; allowed: {', '.join(PRESETS)}")
    known = [*METHODS, *TUNED]
    bad = [m for m in methods or [] if m not in known and m not in HELD]
    if bad:
        raise ValueError(f"--methods {','.join(bad)} unknown; allowed: {', '.join([*known, *HELD])}")
    prefix = PRESETS[preset][2]
    out = []
    for m in methods or known:
        if m in HELD:
            key, step = HELD[m]
            best = best_flags(preset, key, studies_dir)
            if best is None:
                raise ValueError(f"--methods {m} holds the tuned {key} from step {step:,}, but the "
                                 f"study of {key} has no complete trial: run --methods {key} first")
            module, study = "experiments.alpha_reg", ()
            flags = ("--method", TUNED[key], *best, "--control-until", str(step))
        elif m in TUNED:
            best = best_flags(preset, m, studies_dir)
            module, flags = "experiments.alpha_reg", ("--method", TUNED[m], *(best or ()))
            study = () if best is not None else study_command(preset, m, studies_dir)
        else:
            (module, flags), study = METHODS[m], ()
        for seeds in SEED_GROUPS.get((preset, m), DEFAULT_SEEDS):
            tag = "s" + seeds.replace(",", "")
            out.append(PlannedRun(preset, m, seeds, f"{prefix}_{m}_{tag}", module, flags, study))
    return out


def progress(runs_dir: str | Path, run: PlannedRun) -> int:
    """How far the run got (``alphareg.rundir.last_step`` of its directory); 0 when not started."""
    return last_step(Path(runs_dir) / run.name)


def next_stop(step: int, chunk: int, target: int) -> int:
    """The next multiple of ``chunk`` above ``step``, capped at ``target``."""
    return min(target, (step // chunk + 1) * chunk)


def run_campaign(runs: list[PlannedRun], target: int, hours: float, workers: int, chunk: int,
                 runs_dir: str = "runs", extra: tuple[str, ...] = (), log=print,
                 studies_dir: str = "studies", threads: int | None = None,
                 on_chunk_end=None) -> dict[str, int]:
    """Advance ``runs`` towards ``target`` steps for at most ``hours`` of wall time; returns each
    run's exit code of its last chunk (missing: never started). A run still waiting for its study
    runs the study first (stopped by SIGINT, which Optuna's worker records) and is then planned
    again with the best trial's flags. ``threads`` per run: default cores / workers.
    ``on_chunk_end(run)`` is called whenever a run's chunk ends with a checkpoint (exit 0 or 130),
    e.g. to archive it (``alphareg.archive.save``)."""
    runs = list(runs)
    deadline = time.monotonic() + hours * 3600
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, PlannedRun]] = {}
    codes: dict[str, int] = {}
    started_at: dict[str, int] = {}
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for name, (proc, run) in list(running.items()):
                if proc.poll() is not None:
                    codes[name] = proc.returncode
                    del running[name]
                    if run.study:
                        again = plan(run.preset, [run.method], studies_dir)
                        again = next(r for r in again if r.name == name)
                        log(f"{name}: study exit {proc.returncode}; "
                            + (f"best trial: {' '.join(again.flags)}" if not again.study else "no complete trial"))
                        runs[runs.index(run)] = again
                        if proc.returncode == 0 and again.study:
                            codes[name] = -1
                        continue
                    now = progress(runs_dir, run)
                    log(f"{name}: exit {proc.returncode} at step {now}")
                    if on_chunk_end and proc.returncode in (0, 130):
                        on_chunk_end(run)
                    if proc.returncode == 0 and now <= started_at[name]:
                        codes[name] = -1      # ended without advancing: do not loop on it
                        log(f"{name}: did not advance past step {now}; left alone this time")
            out_of_time = stop["now"] or time.monotonic() >= deadline
            if out_of_time:
                sent = {}
                for name, (proc, run) in running.items():
                    if proc.poll() is None:
                        sent[name] = signal.SIGINT if run.study else signal.SIGTERM
                        proc.send_signal(sent[name])
                for name, (proc, run) in running.items():
                    codes[name] = proc.wait()
                    if name in sent and codes[name] == -sent[name]:
                        # killed by our own signal before its handler was up (starting) or after
                        # it was down (final report): a stop, not a failure; outside the loop a run
                        # writes only files that are replaced atomically or rebuilt from them, so
                        # it resumes from its last checkpoint as after a caught signal
                        log(f"{name}: stopped outside its training loop, where the signal is not "
                            "caught (starting up or writing its final report)")
                        codes[name] = 130
                    log(f"{name}: stopped ({codes[name]}) at step {progress(runs_dir, run)}; "
                        "the same command resumes it")
                    if on_chunk_end and not run.study and codes[name] in (0, 130):
                        on_chunk_end(run)
                break
            idle = [r for r in runs if r.name not in running and codes.get(r.name, 0) in (0, 130)]
            todo = sorted(t for t in ((progress(runs_dir, r), r.name, r) for r in idle) if t[0] < target)
            if not todo and not running:
                break
            for step, name, run in todo[:max(0, workers - len(running))]:
                stop_at = next_stop(step, chunk, target)
                cmd = run.command(stop_at, runs_dir, extra)
                what = "study (its best trial sets the run's flags)" if run.study else f"step {step} -> {stop_at}"
                log(f"{name}: {what}: {' '.join(cmd[1:])}")
                started_at[name] = step
                with open(Path(runs_dir) / f"{name}.log", "a") as f:
                    running[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL, env=env), run)
            time.sleep(1.0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return codes


def progress_table(runs: list[PlannedRun], runs_dir: str, target: int) -> str:
    lines = ["| run | method | seeds | steps | of target |", "|---|---|---|---|---|"]
    for r in runs:
        st = progress(runs_dir, r)
        method = f"{r.method} (study pending)" if r.study else r.method
        lines.append(f"| {r.name} | {method} | {r.seeds} | {st:,} | {st / target:.1%} |")
    return "\n".join(lines) + "\n"


def commands_markdown(runs: list[PlannedRun], runs_dir: str, target: int,
                      command_runs_dir: str | None = None) -> str:
    """Each started run: the command that trains it (rerun = resume; a fresh runs_dir retrains it
    from step 0), the commit that created it, and how far it got. ``command_runs_dir`` — the
    ``--runs-dir`` the commands name, when ``runs_dir`` holds copies (default: ``runs_dir``)."""
    lines = ["| run | command (add `--steps N`; re-running resumes) | created at commit | steps reached |",
             "|---|---|---|---|"]
    for r in runs:
        cfg = Path(runs_dir) / r.name / "config.json"
        if not cfg.is_file():
            continue
        commit = json.loads(cfg.read_text()).get("provenance", {}).get("git_commit", "?")
        cmd = " ".join(["python", *r.command(target, command_runs_dir or runs_dir)[1:]])
        lines.append(f"| {r.name} | `{cmd}` | {commit} | {progress(runs_dir, r):,} |")
    return "\n".join(lines) + "\n"
