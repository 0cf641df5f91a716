"""Every method at every horizon: verdict folders side by side (``alphareg.overview``).

    python -m experiments.overview reports/verdict/fast_preset_h* reports/verdict/paper_preset_h1e5 --out reports/verdict

Reads each folder's ``verdict.csv`` / ``methods.csv`` (written by ``experiments.evidence --verdict
DIR --horizon STEPS``) and writes ``overview.md`` (collapsed seeds, test accuracy, late trend and
Δ against plain WD = 0 as method × horizon tables, one section per lr), ``overview.csv`` and
one figure per lr, ``overview_lr<lr>.png``, into --out. Exit status 2 on bad input (a folder that is not a verdict, or the
same method at the same horizon in two folders).
"""
import argparse
import sys

from alphareg.overview import write_overview


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.overview", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="verdict folders, each cut at one horizon")
    p.add_argument("--out", required=True, help="folder to write overview.md / .csv / .png into")
    a = p.parse_args(argv)
    try:
        cells = write_overview(a.folders, a.out)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f"experiments.overview: {len(cells)} method × horizon cells from {len(a.folders)} folder(s) "
          f"written to {a.out}/overview.md, .csv and one figure per lr", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
