"""Every method at every horizon: verdict folders side by side (``alphareg.overview``).

    python -m experiments.overview reports/verdict/fast_preset_h* reports/verdict/paper_preset_h1e5 --out reports/verdict
    python -m experiments.overview reports/verdict/*_h* --out reports/verdict --rebuild

Reads each folder's ``verdict.csv`` / ``methods.csv`` (written by ``experiments.evidence --verdict
DIR --horizon STEPS``) and writes ``overview.md`` (collapsed seeds, test accuracy, late trend and
Δ against plain WD = 0 as method × horizon tables, one section per lr), ``overview.csv`` and
one figure per lr, ``overview_lr<lr>.png``, into --out. With ``--rebuild`` each folder is first
rewritten from the run copies it holds by the current code (``alphareg.compose.rebuild``: refused,
the folder untouched, if a cell of its old verdict.csv / methods.csv would change; new columns are
added). Exit status 2 on bad input (a folder that is not a verdict, or the
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
    p.add_argument("--rebuild", action="store_true",
                   help="first rewrite each folder from its held run copies by the current code "
                        "(refused if an old cell would change)")
    a = p.parse_args(argv)
    if a.rebuild:
        from alphareg.compose import rebuild
        for folder in a.folders:
            try:
                rebuild(folder)
            except (FileNotFoundError, ValueError) as e:
                p.error(f"--rebuild {folder}: {e}")
            print(f"experiments.overview: rebuilt {folder} from its run copies", file=sys.stderr)
    try:
        cells = write_overview(a.folders, a.out)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f"experiments.overview: {len(cells)} method × horizon cells from {len(a.folders)} folder(s) "
          f"written to {a.out}/overview.md, .csv and one figure per lr", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
