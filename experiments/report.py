"""Bring run directories up to date and summarise them:

    python -m experiments.report RUN [RUN ...] [phase-rule flags] [--verdict reports/NAME]

For each run: analyse every weight snapshot the HTSR monitor has not analysed yet (a run killed
with a backlog, or trained with --no-htsr), label the phases, find the early warning and its
lead time, write Tables 1/2/4 (``tables.md``), ``phases.csv``, ``summary.json`` and every figure
(Figures 1, 4, 5; ESD Figures 2 and 3 at the chosen steps), then print the summary. With ``--verdict DIR`` the runs are also compared side by side
(``alphareg.verdict``: verdict.csv / verdict.md / a figure in DIR).
"""
import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from alphareg.config import ConfigError, RunConfig
from alphareg.monitor import HTSRMonitor, ww_steps
from alphareg.phases import PhaseRules
from alphareg.report import finalize_run
from alphareg.rundir import CONFIG, METRICS, RunDir


def catch_up_htsr(path: Path, progress: bool = True) -> int:
    """Analyse (in this process) the snapshots of ``path`` that have no HTSR rows yet."""
    cfg = RunConfig.from_dict(json.loads((path / CONFIG).read_text())["config"])
    cfg.runs_dir, cfg.name = str(path.parent), path.name
    run_dir = RunDir(cfg)
    try:
        with run_dir.lock():
            monitor = HTSRMonitor(run_dir, cfg.htsr_shuffles, cfg.htsr_seed,
                                  ww_steps(cfg.steps, cfg.ww_per_decade), background=False)
            missing = monitor.missing_steps()
            for step in tqdm(missing, desc=f"HTSR {path.name}", unit="snapshot",
                             disable=not progress or not missing):
                monitor.submit(step)
            return len(missing)
    except ConfigError:   # the lock is held: training goes on and its own monitor owns htsr.csv
        print(f"experiments.report: {path} is being trained right now; its HTSR rows are left to "
              "the run's monitor (figures and tables are made from what exists)", file=sys.stderr)
        return 0


def main(argv=None) -> int:
    d = PhaseRules()
    p = argparse.ArgumentParser(prog="experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run directories (runs/<name>)")
    p.add_argument("--study", default=None, help="also report this Optuna study (needs --storage) into --out")
    p.add_argument("--storage", default=None, help="the study's storage URL (sqlite:///, postgresql://, journal://)")
    p.add_argument("--out", default=None, help="folder of the study report (default reports/study_<name>)")
    p.add_argument("--wandb", action="store_true",
                   help="also create a wandb Report of these runs (needs a logged-in user; offline says so)")
    p.add_argument("--wandb-project", default=RunConfig.wandb_project, help="wandb project of the runs")
    p.add_argument("--onset-fraction", type=float, default=d.onset_fraction,
                   help="grokking starts when test acc has risen this fraction of the way to its peak")
    p.add_argument("--collapse-drop", type=float, default=d.collapse_drop,
                   help="anti-grokking starts when test acc is this far below its peak (absolute)")
    p.add_argument("--alpha-threshold", type=float, default=d.alpha_threshold,
                   help="early warning when a layer's alpha falls below this")
    p.add_argument("--trap-threshold", type=float, default=d.trap_threshold,
                   help="early warning when a layer's mean trap count reaches this")
    p.add_argument("--min-train-acc", type=float, default=d.min_train_acc,
                   help="the warning is only armed once train accuracy reaches this")
    p.add_argument("--persist", type=int, default=d.persist,
                   help="the signal must hold for this many consecutive HTSR log points")
    p.add_argument("--no-htsr", action="store_true", help="do not analyse missing snapshots")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verdict", default=None, metavar="DIR",
                   help="also write the side-by-side verdict table and figure of the runs to DIR")
    p.add_argument("--horizon", type=int, default=None, metavar="STEPS",
                   help="with --verdict: ignore everything logged after this step, so runs that got "
                        "different distances compare at the same point (default: each run to its end)")
    args = p.parse_args(argv)
    if args.horizon is not None and args.horizon < 1:
        p.error(f"--horizon must be a positive number of steps, got {args.horizon}")
    if args.horizon is not None and not args.verdict:
        p.error("--horizon only applies to the verdict: give --verdict DIR too")
    rules = PhaseRules(args.onset_fraction, args.collapse_drop, args.alpha_threshold,
                       args.trap_threshold, args.min_train_acc, args.persist)
    code = 0
    if not args.runs and not args.study:
        p.error("give run directories and/or --study NAME --storage URL")
    if args.study:
        import optuna
        from alphareg.tuning import make_storage, write_study_report
        if not args.storage:
            p.error("--study needs --storage URL")
        try:
            study = optuna.load_study(study_name=args.study, storage=make_storage(args.storage))
        except (KeyError, ConfigError) as e:
            print(f"experiments.report: error: no study {args.study!r} in {args.storage} ({e})", file=sys.stderr)
            return 2
        md = write_study_report(study, args.out or f"reports/study_{args.study}")
        print(md.read_text())
    for run in args.runs:
        path = Path(run)
        if not (path / METRICS).is_file():
            print(f"experiments.report: error: {path} has no {METRICS}; give a run directory "
                  "such as runs/<name>", file=sys.stderr)
            code = 2
            continue
        analysed = 0
        if not args.no_htsr and (path / CONFIG).is_file():
            analysed = catch_up_htsr(path, progress=not args.no_progress)
        summary = finalize_run(path, rules)
        brief = {k: v for k, v in summary.items() if k not in ("members", "phases", "phase_rules")}
        print(json.dumps({"run": str(path), "snapshots_analysed_now": analysed, **brief}, indent=1))
        if (path / "tables.md").is_file():
            print((path / "tables.md").read_text())
    if args.verdict and code == 0:
        from alphareg.verdict import markdown_table, write_verdict
        rows = write_verdict([Path(r) for r in args.runs], args.verdict, rules, args.horizon)
        print(markdown_table(rows))
        print(f"experiments.report: verdict written to {args.verdict}", file=sys.stderr)
    if args.wandb:
        from alphareg.tracking import publish_report
        groups = [json.loads((Path(r) / CONFIG).read_text())["config"].get("wandb_group") or Path(r).name
                  for r in args.runs] + ([args.study] if args.study else [])
        print(publish_report(f"alphareg: {', '.join(groups)}", groups, args.wandb_project,
                             local_dir=args.verdict or args.out or ", ".join(args.runs)))
    return code


if __name__ == "__main__":
    sys.exit(main())
