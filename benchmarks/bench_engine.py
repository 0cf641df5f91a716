"""Training throughput of the population engine against a plain PyTorch loop, same process.

    python -m benchmarks.bench_engine [--steps 300] [--K 1,4] [--dtype float64] [--repeats 3]
                                      [--json reports/benchmarks/engine_cpu.json]

The plain loop is what a user would write: ``nn.Sequential`` of the paper's MLP, init x 8,
``torch.optim.AdamW`` (defaults), MSE on one-hot, batch 200 from a per-epoch ``randperm``.
The engine runs ``Trainer.train_steps`` (no logging) for populations of K members. Reported:
steps/s, member-steps/s (= steps/s x K) and the ratio of member-steps/s to the plain loop's
steps/s, i.e. how much faster K members train in lockstep than K separate plain runs.
Timings alternate between the contenders and the median of ``--repeats`` is kept.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from alphareg.config import RunConfig
from alphareg.data import paper_data
from alphareg.engine import Trainer
from benchmarks.common import save_results


def plain_loop(train, steps: int, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 200, dtype=dtype), nn.ReLU(), nn.Linear(200, 200, dtype=dtype),
                          nn.ReLU(), nn.Linear(200, 10, dtype=dtype))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(train.y)

    def run(k: int) -> None:
        done = 0
        while done < k:
            perm = torch.randperm(n, generator=gen)
            for j in range(n // 200):
                if done == k:
                    break
                idx = perm[j * 200:(j + 1) * 200]
                loss = nn.functional.mse_loss(model(train.x[idx]), train.onehot[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
    return run


def timed(fn, steps: int) -> float:
    t = time.perf_counter()
    fn(steps)
    return steps / (time.perf_counter() - t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="timed steps per contender and repeat")
    ap.add_argument("--K", default="1,4", help="population sizes, comma-separated")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    data = paper_data(100, 0, dtype, "cpu")
    Ks = [int(k) for k in args.K.split(",")]

    contenders = {"plain": plain_loop(data[0], args.steps, dtype)}
    for K in Ks:
        cfg = RunConfig(seeds=tuple(range(K)), dtype=args.dtype, device="cpu", progress=False)
        contenders[f"engine K={K}"] = Trainer(cfg, data=data).train_steps
    for fn in contenders.values():   # warm-up
        fn(20)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            rates[name].append(timed(fn, args.steps))
    plain = statistics.median(rates["plain"])
    rows = [{"contender": "plain PyTorch loop (K=1)", "K": 1, "steps_per_s": plain,
             "member_steps_per_s": plain, "ratio_vs_plain": 1.0}]
    for K in Ks:
        r = statistics.median(rates[f"engine K={K}"])
        rows.append({"contender": f"alphareg engine, K={K}", "K": K, "steps_per_s": r,
                     "member_steps_per_s": r * K, "ratio_vs_plain": r * K / plain})
    print(f"{args.dtype}, batch 200, 784-200-200-10, AdamW, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats} x {args.steps} steps")
    print(f"{'contender':32s} {'steps/s':>9s} {'member-steps/s':>15s} {'ratio vs plain':>15s}")
    for r in rows:
        print(f"{r['contender']:32s} {r['steps_per_s']:9.1f} {r['member_steps_per_s']:15.1f} "
              f"{r['ratio_vs_plain']:15.2f}")
    out = {"benchmark": "engine_throughput", "dtype": args.dtype, "steps": args.steps,
           "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows,
           "raw_steps_per_s": rates}
    return save_results(args.json, out)


if __name__ == "__main__":
    main()
