"""Is a layer's weightwatcher alpha a clear answer? The runner-up fit at every snapshot of a run.

    python -m experiments.fit_ambiguity runs/paper_lr5e-4_wdctl_t2_s012 --layer fc1 --out reports/verdict/fit_ambiguity

For each kept snapshot (``snapshots/step_*.pt``) and member: weightwatcher's alpha (argmin of the
KS distance D over xmin candidates), the best candidate whose alpha differs from it by more than
--alpha-gap (the runner-up) and the margin D_runner-up - D (``alphareg.fit_ambiguity``), next to
the controller's smoothed alpha and the layer's wd / lr where metrics.csv logged them. Writes
into --out: ``<run>_<layer>.csv`` (one row per snapshot and member), ``<run>_<layer>_summary.csv``,
``<run>_<layer>.png`` and ``<run>_<layer>.md`` (the summary with command, commit, machine and
wall time). Exit status 2 on bad input.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

from tqdm import tqdm

from alphareg.fit_ambiguity import plot_ambiguity, run_ambiguity, summarise
from alphareg.rundir import provenance


def _md(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.to_dict("records"):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.fit_ambiguity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory with snapshots/ (e.g. runs/<name>)")
    p.add_argument("--layer", default="fc1", help="layer name (default fc1)")
    p.add_argument("--alpha-gap", type=float, default=0.5,
                   help="the runner-up's alpha must differ from the chosen one by more than this (default 0.5)")
    p.add_argument("--out", required=True, help="folder to write the table, summary, plot and .md into")
    a = p.parse_args(argv)
    run = Path(a.run)
    if not run.is_dir():
        p.error(f"run {a.run}: no such directory")
    if not a.alpha_gap > 0:
        p.error(f"--alpha-gap {a.alpha_gap}: must be > 0")
    t0 = time.time()
    try:
        df = run_ambiguity(run, a.layer, a.alpha_gap,
                           progress=lambda s: tqdm(s, desc=f"fits {run.name}", unit="snapshot", file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    summary = summarise(df, a.alpha_gap)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{run.name}_{a.layer}"
    df.to_csv(out / f"{stem}.csv", index=False)
    summary.to_csv(out / f"{stem}_summary.csv", index=False)
    plot_ambiguity(df, out / f"{stem}.png", a.layer, title=f"{run.name}: weightwatcher alpha vs its runner-up")
    prov = provenance()
    cmd = "python -m experiments.fit_ambiguity " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    (out / f"{stem}.md").write_text(
        f"# {run.name}, {a.layer}: weightwatcher alpha and its runner-up (gap > {a.alpha_gap})\n\n"
        f"`{cmd}`\n\ncommit {prov['git_commit']}, host {prov['host']} ({prov['platform']}), "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, wall time {time.time() - t0:.0f} s\n\n"
        "margin = D(runner-up) - D(chosen); switches = consecutive snapshots whose chosen alpha moved "
        f"by more than {a.alpha_gap} (out of `pairs`).\n\n" + _md(summary) +
        f"\n![alpha and runner-up]({stem}.png)\n")
    print(_md(summary), end="")
    print(f"experiments.fit_ambiguity: wrote {out / stem}.{{csv,md,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
