"""Optuna studies over the penalty / controller hyper-parameters, selected on validation data.

Search spaces are declared once (``SEARCH_SPACES``, one entry per ``--method`` component) and can
be overridden per parameter (``parse_space_override``: ``name=log:lo:hi``, ``name=float:lo:hi``,
``name=int:lo:hi``, ``name=cat:a,b,c``, ``name=fixed:value``).

Objective (``late_window_objective``), on the validation split (``--val-per-class``; never the
test set): the *minimum* validation accuracy over the log points at or after ``late_from`` steps
(default 10^6 for the paper configuration: the collapse happens late, so the worst late value is
what a method must keep high), and a collapse flag: validation accuracy fell ``collapse_drop`` below
its own peak by the end. With ``multi_objective`` the wall time is a second objective (minimised).
Intermediate values (validation accuracy) are reported at every log point. Pruning is off by
default: the quantity of interest only exists after ``late_from``, and a pruner that judged
trials earlier would remove exactly the runs that grok late and stay high. ``LatePruner`` wraps a
median pruner so that it only acts on steps >= ``late_from``.

Storage by URL (``make_storage``): ``sqlite:///path.db`` (default ``studies/<study>.db``),
``postgresql://user:pw@host:port/db`` (Optuna's RDB storage; many workers on many machines), and
``journal:///path.log`` (Optuna's JournalStorage on a file with a lock: many processes on one
machine or a shared file system). A trial that raises is recorded as FAIL and the study goes on;
Ctrl-C fails the running trial, leaves the storage consistent and the same command resumes the
study (its trials count towards ``n_trials``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import optuna

from .config import ConfigError, RunConfig
from .hooks import TrainingHook

#: name -> (kind, low, high[, ...]) per --method component
SEARCH_SPACES: dict[str, dict[str, tuple]] = {
    "penalty": {"penalty_beta": ("log", 1e-4, 1e-1), "target_alpha": ("float", 1.5, 3.0),
                "penalty_sharpness": ("log", 1.0, 100.0)},
    "lr_controller": {"lr_gain": ("log", 0.1, 10.0), "target_alpha": ("float", 1.5, 3.0),
                      "deadband": ("float", 0.0, 0.5), "alpha_ema": ("float", 0.0, 0.95)},
    "wd_controller": {"wd_gain": ("log", 0.1, 10.0), "wd_ref": ("log", 1e-3, 1e-1),
                      "target_alpha": ("float", 1.5, 3.0), "deadband": ("float", 0.0, 0.5)},
    "grokfast": {"grokfast_alpha": ("float", 0.8, 0.99), "grokfast_lamb": ("log", 0.1, 5.0)},
    "spectral_norm": {"specnorm_beta": ("log", 1e-4, 1e-1)},
    "weight_decay": {"wd_ref": ("log", 1e-4, 1e-1)},
}
KINDS = ("log", "float", "int", "cat", "fixed")


def default_space(method: str) -> dict[str, tuple]:
    from .methods import parse_method
    space: dict[str, tuple] = {}
    for comp in parse_method(method):
        space.update(SEARCH_SPACES.get(comp, {}))
    return space


def parse_space_override(text: str) -> tuple[str, tuple]:
    """``name=kind:args`` -> (name, spec); ConfigError naming ``--space`` otherwise."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    try:
        name, spec = text.split("=", 1)
        kind, args = spec.split(":", 1)
    except ValueError:
        raise ConfigError(f"--space {text!r} is not name=kind:args (e.g. penalty_beta=log:1e-4:1e-1)") from None
    if name not in fields:
        raise ConfigError(f"--space {text!r}: {name!r} is not a config field")
    if kind not in KINDS:
        raise ConfigError(f"--space {text!r}: kind {kind!r} unknown; allowed: {', '.join(KINDS)}")
    try:
        if kind in ("log", "float"):
            lo, hi = (float(x) for x in args.split(":"))
            if not lo < hi or (kind == "log" and lo <= 0):
                raise ValueError
            return name, (kind, lo, hi)
        if kind == "int":
            lo, hi = (int(x) for x in args.split(":"))
            if not lo < hi:
                raise ValueError
            return name, (kind, lo, hi)
        if kind == "cat":
            return name, (kind, *[_literal(x) for x in args.split(",")])
        return name, (kind, _literal(args))
    except ValueError:
        raise ConfigError(f"--space {text!r}: bad bounds for kind {kind} (lo < hi, log needs lo > 0)") from None


def _literal(x: str):
    for conv in (int, float):
        try:
            return conv(x)
        except ValueError:
            pass
    return x


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        elif kind == "cat":
            out[name] = trial.suggest_categorical(name, list(spec[1:]))
        else:
            out[name] = spec[1]
    return out


# ---------------------------------------------------------------------------------------------
def late_window_objective(rows: list[dict], member: int, late_from: int,
                          collapse_drop: float = 0.05) -> tuple[float, bool, bool]:
    """(min validation accuracy over steps >= late_from, collapsed?, window reached?).

    If the run never reached ``late_from`` the minimum over its last log point is used and the
    third value is False (the trial is marked as such in its user attributes)."""
    mine = sorted((r for r in rows if int(r["member"]) == member), key=lambda r: int(r["step"]))
    if not mine or "val_acc" not in mine[0]:
        raise ValueError("the run has no validation accuracy (needs --val-per-class > 0)")
    vals = [(int(r["step"]), float(r["val_acc"])) for r in mine]
    late = [v for s, v in vals if s >= late_from]
    reached = bool(late)
    window = late if late else [vals[-1][1]]
    peak = max(v for _, v in vals)
    collapsed = peak - vals[-1][1] >= collapse_drop
    return min(window), collapsed, reached


class LatePruner(optuna.pruners.BasePruner):
    """``MedianPruner`` that never prunes a trial before step ``late_from``."""

    def __init__(self, late_from: int, n_startup_trials: int = 5):
        self.late_from = late_from
        self.inner = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials)

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < self.late_from:
            return False
        return self.inner.prune(study, trial)


def make_storage(url: str):
    """Optuna storage from a URL: sqlite:///, postgresql://, journal:///path."""
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        path = url[len("journal://"):]
        if not path:
            raise ConfigError(f"--storage {url!r}: give journal:///path/to/study.log")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if url.startswith(("postgresql://", "postgresql+", "mysql://", "mysql+")):   # SQLAlchemy URLs
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    raise ConfigError(f"--storage {url!r} is not supported; use sqlite:///FILE.db, "
                      "postgresql://USER:PW@HOST:PORT/DB or journal:///FILE.log")


# ---------------------------------------------------------------------------------------------
class _TrialReporter(TrainingHook):
    """Training hook: at log points, member k's validation accuracy goes to ``trials[k]``
    (single-objective studies only). With ``prune`` (one trial per run) the trial is pruned
    when the study's pruner says so; a member cannot leave a lockstep population, so
    populations never prune."""

    name = "optuna_reporter"

    def __init__(self, trials: list, prune: bool):
        self.trials, self.prune = trials, prune

    def at_log_point(self, trainer, rows):
        if "val_acc" not in rows[0] or trainer.step == 0:
            return {}
        for t, row in zip(self.trials, rows):
            if len(t.study.directions) == 1:
                t.report(float(row["val_acc"]), trainer.step)
                if self.prune and t.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {trainer.step}")
        return {}


def _train(cfg: RunConfig, reporter: TrainingHook):
    """Train ``cfg`` in a fresh run directory with ``reporter`` attached; returns (run_dir,
    wall seconds). Ctrl-C (the trainer's Interrupted) becomes KeyboardInterrupt for Optuna."""
    from .engine import Interrupted, make_trainer
    from .rundir import RunDir

    cfg.validate()
    run_dir = RunDir(cfg)
    run_dir.check(restart=True)
    trainer = make_trainer(cfg, run_dir)
    trainer.hooks.append(reporter)
    t0 = time.perf_counter()
    with run_dir.lock():
        run_dir.create(trainer.data_info, restart=True)
        try:
            trainer.run()
        except Interrupted:
            raise KeyboardInterrupt from None    # optuna fails the trial and stops the study
    return run_dir, time.perf_counter() - t0


def _record(trial, rows: list[dict], member: int, spec: "StudySpec", wall: float, run_dir) -> float:
    """Objective of ``member`` into the trial's user attributes; returns the objective."""
    value, collapsed, reached = late_window_objective(rows, member, spec.late_from, spec.collapse_drop)
    for key, v in (("collapsed", collapsed), ("late_window_reached", reached), ("wall_time_s", wall),
                   ("run_dir", str(run_dir.path)), ("member", member)):
        trial.set_user_attr(key, v)
    return value


@dataclasses.dataclass
class StudySpec:
    base: RunConfig                 # the run configuration every trial starts from
    space: dict[str, tuple]
    late_from: int
    collapse_drop: float = 0.05
    multi_objective: bool = False
    runs_dir: str = "studies/runs"


def run_trial(trial: optuna.Trial, spec: StudySpec) -> Any:
    """Train one trial (a run directory of its own) and return its objective value(s)."""
    params = suggest(trial, spec.space)
    params.update({k: (float(params[k]),) for k in ("lr", "wd") if k in params})   # tuples in RunConfig
    cfg = dataclasses.replace(spec.base, **params, runs_dir=spec.runs_dir,
                              name=f"{trial.study.study_name}-trial{trial.number:04d}", progress=False,
                              wandb_group=spec.base.wandb_group or trial.study.study_name)
    trial.set_user_attr("run_dir", str(Path(cfg.runs_dir) / cfg.run_name()))   # also if it fails
    try:
        run_dir, wall = _train(cfg, _TrialReporter([trial], prune=True))
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)     # not counted, retried (``retry_interrupted``)
        raise
    value = _record(trial, run_dir.read_metrics(), 0, spec, wall, run_dir)
    if not math.isfinite(value):
        raise ValueError(f"objective is {value}")
    return (value, wall) if spec.multi_objective else value


def create_or_load(study_name: str, storage_url: str, multi_objective: bool, seed: int = 0):
    storage = make_storage(storage_url)
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                               directions=directions,
                               sampler=optuna.samplers.TPESampler(seed=seed))


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--n-trials``: complete, pruned or failed, except those stopped
    by Ctrl-C / SIGTERM (user attribute ``interrupted``), whose parameters are tried again."""
    from optuna.trial import TrialState
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False, states=done))


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue the parameters of every interrupted trial that has no retry yet (the retry carries
    ``retry_of``); returns the numbers of the trials enqueued again."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    again = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
             and t.number not in retried]
    for t in again:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in again]


def optimize(study: optuna.Study, spec: StudySpec, n_trials: int) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (``finished_trials``), counted
    over every worker; a failing trial is recorded and the loop goes on; interrupted trials are
    retried first with their parameters."""
    retry_interrupted(study)
    if finished_trials(study) >= n_trials:
        return

    def enough(study, trial):
        if finished_trials(study) >= n_trials:
            study.stop()
    study.optimize(lambda t: run_trial(t, spec), catch=(Exception,), callbacks=[enough])


def study_summary(study: optuna.Study) -> str:
    """Counts by state and the best trial(s) with their parameters and validation objective."""
    from collections import Counter
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    lines = [f"study {study.study_name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))]
    try:
        best = study.best_trials
    except ValueError:
        best = []
    for t in best:
        lines.append(f"best trial {t.number}: objective {t.values} params {t.params} "
                     f"collapsed={t.user_attrs.get('collapsed')} run={t.user_attrs.get('run_dir')}")
    return "\n".join(lines)


def write_study_report(study: optuna.Study, out_dir: str | Path) -> Path:
    """``study.md`` (state counts, best trials, parameter importances, every trial) and Optuna's
    optimisation-history and importance figures into ``out_dir``; returns the Markdown path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lines = [f"# Study `{study.study_name}`", "", study_summary(study), ""]
    single = len(study.directions) == 1
    if single and len(complete) >= 2 and len(complete[0].params) >= 1:
        imp = optuna.importance.get_param_importances(study)
        lines += ["## Parameter importances (fANOVA)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
        lines.append("")
        for name, fn in (("optimization_history.png", ovm.plot_optimization_history),
                         ("param_importances.png", ovm.plot_param_importances)):
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
        lines += ["![history](optimization_history.png)", "![importances](param_importances.png)", ""]
    names = sorted({p for t in study.trials for p in t.params})
    lines += ["## Trials", "", "| # | state | objective | collapsed | " + " | ".join(names) + " | run |",
              "|" + "---|" * (len(names) + 5)]
    for t in study.trials:
        val = "–" if t.values is None else ", ".join(f"{v:.4f}" for v in t.values)
        lines.append(f"| {t.number} | {t.state.name} | {val} | {t.user_attrs.get('collapsed', '–')} | "
                     + " | ".join(f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float)
                                  else str(t.params.get(n, "–")) for n in names)
                     + f" | {t.user_attrs.get('run_dir', '–')} |")
    md = out / "study.md"
    md.write_text("\n".join(lines) + "\n")
    return md


# ---------------------------------------------------------------------------------------------
# several trials as one population (ask / tell)
# ---------------------------------------------------------------------------------------------
def run_population(study: optuna.Study, spec: StudySpec, size: int) -> list[int]:
    """Ask ``size`` trials, train them in lockstep as one population (every member with the base
    seed, its own parameters via ``member_overrides``; ``lr``/``wd`` may be searched too), tell
    each trial its member's objective. Returns the trial numbers. Parameters that cannot differ
    between members (``PER_MEMBER_FIELDS`` plus lr, wd) raise ConfigError before training."""
    from optuna.trial import TrialState

    from .config import PER_MEMBER_FIELDS

    allowed = set(PER_MEMBER_FIELDS) | {"lr", "wd"}
    bad = sorted(set(spec.space) - allowed)
    if bad:
        raise ConfigError(f"--population: {bad} cannot differ within a population; per-member "
                          f"parameters: {', '.join(sorted(allowed))} (or use --population 1)")
    trials = [study.ask() for _ in range(size)]
    params = [suggest(t, spec.space) for t in trials]
    overrides = tuple({k: v for k, v in p.items() if k not in ("lr", "wd")} for p in params)
    extra = {}
    for key in ("lr", "wd"):
        if any(key in p for p in params):
            base = getattr(spec.base, key)[0]
            extra[key] = tuple(float(p.get(key, base)) for p in params)
    name = f"{study.study_name}-pop{trials[0].number:04d}-{trials[-1].number:04d}"
    try:
        cfg = dataclasses.replace(spec.base, **extra, seeds=(spec.base.seeds[0],) * size,
                                  member_overrides=overrides, runs_dir=spec.runs_dir, name=name,
                                  progress=False, wandb_group=spec.base.wandb_group or study.study_name)
        run_dir, wall = _train(cfg, _TrialReporter(trials, prune=False))
        wall /= size
        rows = run_dir.read_metrics()
        for k, t in enumerate(trials):
            value = _record(t, rows, k, spec, wall, run_dir)
            study.tell(t, (value, wall) if spec.multi_objective else value)
    except KeyboardInterrupt:
        for t in trials:
            t.set_user_attr("interrupted", True)     # not counted, retried (``retry_interrupted``)
            study.tell(t, state=TrialState.FAIL)
        raise
    except Exception as e:   # a crashed population: every trial in it failed, the study goes on
        import warnings
        warnings.warn(f"population {name} failed: {e!r}")
        for t in trials:
            t.set_user_attr("fail_reason", repr(e))
            study.tell(t, state=TrialState.FAIL)
    return [t.number for t in trials]


def optimize_population(study: optuna.Study, spec: StudySpec, n_trials: int, size: int) -> None:
    """Populations of ``size`` trials until the study holds ``n_trials`` finished trials
    (``finished_trials``); the parameters of interrupted trials are tried again first."""
    retry_interrupted(study)
    while True:
        left = n_trials - finished_trials(study)
        if left <= 0:
            return
        run_population(study, spec, min(size, left))
