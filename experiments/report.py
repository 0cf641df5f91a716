"""Redraw a run's figures and print its summary: ``python -m experiments.report RUN [RUN ...]``."""
import argparse
import json
import sys
from pathlib import Path

from alphareg.plots import plot_run
from alphareg.report import summarize_metrics
from alphareg.rundir import METRICS, read_metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.report", description=__doc__)
    p.add_argument("runs", nargs="+", help="run directories (runs/<name>)")
    args = p.parse_args(argv)
    code = 0
    for run in args.runs:
        path = Path(run)
        if not (path / METRICS).is_file():
            print(f"experiments.report: error: {path} has no {METRICS}; give a run directory "
                  "such as runs/<name>", file=sys.stderr)
            code = 2
            continue
        figs = plot_run(path)
        summary = summarize_metrics(read_metrics(path))
        print(json.dumps({"run": str(path), "figures": [str(f) for f in figs],
                          **{k: v for k, v in summary.items() if k != "members"}}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
