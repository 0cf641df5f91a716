"""Optuna study over a method's hyper-parameters, selected on the validation split:

    python -m experiments.tune --method penalty --study pen --n-trials 20 --workers 2 [run flags]

Every flag of ``experiments.alpha_reg`` sets the base configuration of the trials; ``--space``
overrides one parameter's search range (see ``alphareg.tuning``). Storage by URL
(``--storage``): SQLite file (default ``studies/<study>.db``), ``postgresql://...`` or
``journal:///file.log``. ``--workers N`` starts N local worker processes; to add workers on other
machines run the same command there with the same ``--storage`` (PostgreSQL, or a journal file on
a shared file system). Re-running the command resumes the study.
"""
import os
import subprocess
import sys

from alphareg.cli import build_parser, config_from_args




def parser():
    p = build_parser("experiments.tune", __doc__, default_method="penalty")
    g = p.add_argument_group("Optuna study")
    g.add_argument("--study", default=None, help="study name (default: the method's name)")
    g.add_argument("--storage", default=None,
                   help="sqlite:///FILE.db (default studies/<study>.db), postgresql://USER:PW@HOST:PORT/DB "
                        "or journal:///FILE.log")
    g.add_argument("--n-trials", type=int, default=20, help="finished trials the study should hold")
    g.add_argument("--workers", type=int, default=1, help="local worker processes")
    g.add_argument("--late-from", type=int, default=1_000_000,
                   help="objective: min validation accuracy over log points at or after this step")
    g.add_argument("--collapse-drop", type=float, default=0.05,
                   help="a trial 'collapsed' when its validation accuracy ends this far below its peak")
    g.add_argument("--multi-objective", action="store_true", help="also minimise wall time")
    g.add_argument("--space", action="append", default=[], metavar="NAME=KIND:ARGS",
                   help="override a search range, e.g. penalty_beta=log:1e-3:1e-1 or target_alpha=fixed:2.0")
    g.add_argument("--pruner", choices=("none", "late-median"), default="none",
                   help="none (default: the quantity of interest only exists late) or a median pruner "
                        "that only acts after --late-from")
    g.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    g.add_argument("--population", type=int, default=1,
                   help="train this many trials at once as one lockstep population (ask/tell; "
                        "only per-member parameters may be searched, no pruning)")
    g.add_argument("--worker-only", action="store_true", help=argparse_suppress())
    g.add_argument("--worker-index", type=int, default=0, help=argparse_suppress())
    return p


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def main(argv=None) -> int:
    from alphareg.config import ConfigError
    from alphareg import tuning

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        base = config_from_args(args)
        if base.task != "mnist":
            raise ConfigError(f"--task {base.task} cannot be tuned yet: the objective is read on a "
                              "validation split, which only --task mnist has")
        if base.val_per_class == 0:
            base.val_per_class = 100      # the objective is read on validation data
        base.validate()
        space = tuning.default_space(base.method)
        for text in args.space:
            name, spec = tuning.parse_space_override(text)
            space[name] = spec
        if not space:
            raise ConfigError(f"--method {base.method!r} has no search space; give --space NAME=KIND:ARGS")
        if args.n_trials < 1 or args.workers < 1 or args.population < 1:
            raise ConfigError("--n-trials, --workers and --population must be >= 1")
        study_name = args.study or base.method.replace("+", "-")
        storage = args.storage or f"sqlite:///studies/{study_name}.db"
        # every worker samples with its own seed (same seeds would propose the same parameters)
        study = tuning.create_or_load(study_name, storage, args.multi_objective,
                                      args.sampler_seed * 1000 + args.worker_index)
    except ConfigError as e:
        print(f"experiments.tune: error: {e}", file=sys.stderr)
        return 2
    if args.pruner == "late-median":
        study.pruner = tuning.LatePruner(args.late_from)
    spec = tuning.StudySpec(base, space, args.late_from, args.collapse_drop, args.multi_objective,
                            runs_dir=os.path.join("studies", study_name))
    if args.workers > 1 and not args.worker_only:
        cmd = [sys.executable, "-m", "experiments.tune", *argv, "--worker-only", "--storage", storage,
               "--study", study_name]
        procs = [subprocess.Popen([*cmd, "--worker-index", str(i + 1)]) for i in range(args.workers)]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                p.wait()
            print("experiments.tune: interrupted; re-run the same command to resume", file=sys.stderr)
            return 130
        if any(codes):
            print(f"experiments.tune: worker exit codes {codes}", file=sys.stderr)
    else:
        try:
            if args.population > 1:
                tuning.optimize_population(study, spec, args.n_trials, args.population)
            else:
                tuning.optimize(study, spec, args.n_trials)
        except ConfigError as e:
            print(f"experiments.tune: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("experiments.tune: interrupted; the running trial is recorded as failed. "
                  "Re-run the same command to resume.", file=sys.stderr)
            return 130
    if args.worker_only:
        return 0
    print(tuning.study_summary(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
