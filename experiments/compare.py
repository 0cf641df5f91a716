"""Did two runs follow the same trajectory? (a re-run against a committed copy, a resumed run
against one never stopped, the same run on two machines)

    python -m experiments.compare runs/fast_lr5e-3_wd0.02_s012 reports/verdict/fast_preset_h5e5/runs/fast_lr5e-3_wd0.02_s012

Compares the metrics.csv rows at every (step, member) both runs logged, bit for bit, over the
columns both have (wall time aside; ``alphareg.rundir.compare_metrics``), and prints each column
that differs with the number of rows and the largest relative difference. Exit status 0 when no
column differs by more than --rtol (default 0: bit for bit), 1 otherwise, 2 on bad input.
"""
import argparse
import sys
from pathlib import Path

from alphareg.rundir import METRICS, compare_metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", help="a run directory (with metrics.csv)")
    p.add_argument("run_b", help="another run directory")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="largest relative difference accepted in any column (default 0: bit for bit)")
    a = p.parse_args(argv)
    if not a.rtol >= 0:
        p.error(f"--rtol must be >= 0, got {a.rtol}")
    for name, path in (("run_a", a.run_a), ("run_b", a.run_b)):
        if not (Path(path) / METRICS).is_file():
            p.error(f"{name} {path} has no {METRICS}: not a run directory, or not started")
    c = compare_metrics(a.run_a, a.run_b)
    if not c["common"]:
        print(f"no (step, member) row in common between {a.run_a} and {a.run_b}")
        return 1
    print(f"{c['identical']:,} of {c['common']:,} common rows identical in every column "
          f"(steps up to {c['last_common_step']:,})")
    for col, (n, rel) in sorted(c["columns"].items()):
        print(f"  {col}: differs in {n:,} rows, max relative difference {rel:.3g}")
    if c["first_difference"]:
        step, member, col, va, vb = c["first_difference"]
        print(f"first difference: step {step:,}, member {member}, {col}: {va} vs {vb}")
    return 0 if all(rel <= a.rtol for _, rel in c["columns"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
