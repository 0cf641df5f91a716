"""Cost of HTSR monitoring on training throughput.

    python -m benchmarks.bench_monitor [--steps 3000] [--K 1] [--json PATH]

Runs the same short baseline run (paper config, float64, CPU) three ways in this process:
a plain PyTorch loop (reference), ``Trainer.run()`` with the HTSR monitor off, and with it on
(background low-priority process; weightwatcher reference columns at their default cadence).
Reported: training wall time and steps/s of each (the monitored run's training time excludes
the final wait for the monitor's backlog, reported separately), and the ratio
monitored / unmonitored throughput — the target is >= 0.9.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from alphareg.config import RunConfig
from alphareg.data import paper_data
from alphareg.engine import Trainer
from alphareg.rundir import RunDir
from benchmarks.common import save_results
from benchmarks.bench_engine import plain_loop


def timed_run(cfg: RunConfig, data) -> tuple[float, float]:
    rd = RunDir(cfg)
    rd.create(data[2])
    tr = Trainer(cfg, rd, data)
    t = time.perf_counter()
    tr.run()
    total = time.perf_counter() - t
    return tr.wall_time, total


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--K", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    data = paper_data(100, 0, torch.float64, "cpu")
    plain = plain_loop(data[0], args.steps, torch.float64)
    plain(20)
    t = time.perf_counter()
    plain(args.steps)
    plain_rate = args.steps / (time.perf_counter() - t)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, htsr in (("monitor off", False), ("monitor on", True)):
            cfg = RunConfig(steps=args.steps, seeds=tuple(range(args.K)), device="cpu", progress=False,
                            runs_dir=tmp, name=name.replace(" ", "_"), htsr=htsr, plot_minutes=1e6)
            train_s, total_s = timed_run(cfg, data)
            results[name] = {"train_wall_s": train_s, "total_s": total_s,
                             "member_steps_per_s": args.steps * args.K / train_s}
            if htsr:
                rows = (Path(tmp) / cfg.run_name() / "htsr.csv").read_text().splitlines()
                results[name]["htsr_rows"] = len(rows) - 1
    ratio = results["monitor on"]["member_steps_per_s"] / results["monitor off"]["member_steps_per_s"]
    print(f"{args.steps} steps, K={args.K}, float64, CPU, {torch.get_num_threads()} threads; plain loop "
          f"{plain_rate:.1f} steps/s (training only, no evaluation)")
    print(f"{'run':14s} {'train s':>8s} {'total s':>8s} {'member-steps/s':>15s} {'vs plain':>9s}")
    for name, r in results.items():
        print(f"{name:14s} {r['train_wall_s']:8.1f} {r['total_s']:8.1f} {r['member_steps_per_s']:15.1f} "
              f"{r['member_steps_per_s'] / plain_rate:9.2f}")
    print(f"throughput ratio monitor on / off: {ratio:.3f}  (target >= 0.9); "
          f"rows analysed: {results['monitor on'].get('htsr_rows')}")
    out = {"benchmark": "monitor_overhead", "steps": args.steps, "K": args.K, "plain_steps_per_s": plain_rate,
           "results": results, "ratio_on_off": ratio}
    return save_results(args.json, out)


if __name__ == "__main__":
    main()
