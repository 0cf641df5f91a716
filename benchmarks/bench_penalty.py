"""Cost per training step of the soft-alpha penalty, the alpha controllers and the baselines.

    python -m benchmarks.bench_penalty [--steps 300] [--repeats 15] [--K 1]
                                       [--json reports/benchmarks/penalty_cpu.json]

Every contender is ``Trainer.train_steps`` of the paper's MLP (float64, batch 200, AdamW) with one
``--method``; the reference is the same engine with ``--method none`` and, as everywhere in
``benchmarks/``, a plain PyTorch loop in the same process. Reported: steps/s and the overhead
``time per step / time per step without the method − 1``. The penalty is timed

* inactive — default settings, target 2.0 (at initialisation every alpha is above 2, as through
  most of a run: the hook only evaluates alpha without gradient every ``--penalty-grad-every``);
* active   — target 20 (every layer penalised: a differentiable pass every 20 steps);
* active, no gradient reuse — ``--penalty-grad-every 1`` (what a naive per-step penalty costs);
* the same two with ``--penalty-gradient zipf`` (the gradient of the rank-size exponent
  α_Z = 1 − least-squares slope of ln rank on ln eigenvalue over the tail, instead of Hill's),
  and the two-sided zipf penalty at target 2 (the evidence method ``penalty2s_t2``: every alpha
  above 2 is penalised too, so it is active from the first step).

Timings alternate between the contenders; the median of ``--repeats`` is kept (many short repeats
resist the drift of a shared VM's speed better than a few long ones). ``--steps`` should
span several refresh intervals (20) and refits (100).
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch

from alphareg.config import RunConfig
from alphareg.data import paper_data
from alphareg.engine import Trainer
from benchmarks.bench_engine import plain_loop, timed
from benchmarks.common import save_results

CONTENDERS = {
    "none (reference)": {},
    "penalty, inactive (defaults, target 2)": {"method": "penalty"},
    "penalty, active (target 20)": {"method": "penalty", "target_alpha": 20.0},
    "penalty, active, no gradient reuse": {"method": "penalty", "target_alpha": 20.0,
                                           "penalty_grad_every": 1},
    "penalty, active, zipf gradient (target 20)": {"method": "penalty", "target_alpha": 20.0,
                                                   "penalty_gradient": "zipf"},
    "penalty, active, zipf gradient, no gradient reuse": {"method": "penalty", "target_alpha": 20.0,
                                                          "penalty_gradient": "zipf",
                                                          "penalty_grad_every": 1},
    "penalty, two-sided zipf (target 2: penalty2s_t2)": {"method": "penalty", "target_alpha": 2.0,
                                                         "penalty_two_sided": True,
                                                         "penalty_gradient": "zipf"},
    "lr controller (defaults)": {"method": "lr_controller"},
    "wd controller (defaults)": {"method": "wd_controller"},
    "grokfast": {"method": "grokfast"},
    "spectral_norm": {"method": "spectral_norm"},
    "orthograd": {"method": "orthograd"},
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="timed steps per contender and repeat")
    ap.add_argument("--repeats", type=int, default=15,
                    help="alternating repeats; the median is kept (this VM's speed drifts by ~±10 %%)")
    ap.add_argument("--K", type=int, default=1, help="population size of every contender")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    data = paper_data(100, 0, torch.float64, "cpu")
    fns = {"plain PyTorch loop": plain_loop(data[0], args.steps, torch.float64)}
    for name, kw in CONTENDERS.items():
        cfg = RunConfig(seeds=tuple(range(args.K)), device="cpu", progress=False, **kw)
        fns[name] = Trainer(cfg, data=data).train_steps
    for fn in fns.values():
        fn(20)
    rates: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(args.repeats):
        for n, fn in fns.items():
            rates[n].append(timed(fn, args.steps))
    ref = statistics.median(rates["none (reference)"])
    plain = statistics.median(rates["plain PyTorch loop"])
    rows = []
    print(f"float64, K={args.K}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats} x {args.steps} steps")
    print(f"{'method':50s} {'steps/s':>8s} {'overhead vs none':>17s} {'ratio vs plain':>15s}")
    for n in fns:
        r = statistics.median(rates[n])
        row = {"method": n, "steps_per_s": r, "overhead_vs_none": ref / r - 1,
               "member_steps_ratio_vs_plain": r * (1 if n.startswith("plain") else args.K) / plain}
        rows.append(row)
        print(f"{n:50s} {r:8.1f} {row['overhead_vs_none']:16.1%} {row['member_steps_ratio_vs_plain']:15.2f}")
    return save_results(args.json, {"benchmark": "method_overhead", "K": args.K, "steps": args.steps,
                                    "repeats": args.repeats, "threads": torch.get_num_threads(),
                                    "rows": rows, "raw_steps_per_s": rates})


if __name__ == "__main__":
    main()
