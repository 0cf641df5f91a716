"""Training throughput of the population engine against a plain PyTorch loop, same process.

    python -m benchmarks.bench_engine [--steps 300] [--K 1,8] [--dtype float64] [--repeats 5]
                                      [--engines fast,autograd] [--json reports/benchmarks/engine_cpu.json]

The plain loop is what a user would write: ``nn.Sequential`` of the paper's MLP, init x 8,
``torch.optim.AdamW`` (defaults), MSE on one-hot, batch 200 from a per-epoch ``randperm``; a second
plain loop with ``AdamW(fused=True)`` is reported beside it. The engine runs
``Trainer.train_steps`` (no logging) for populations of K members with each ``--engine``. Reported:
steps/s, member-steps/s (= steps/s x K), the ratio of member-steps/s to the plain loop's steps/s
(how much faster K members train in lockstep than K separate plain runs), and the roofline:
achieved GFLOP/s (nominal FLOPs of the model's forward + backward, see ``step_flops``) against a
large DGEMM measured in the same process and the cores' theoretical peak.
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


def step_flops(sizes=(784, 200, 200, 10), batch: int = 200) -> int:
    """Nominal FLOPs of one member-step: forward 2 B sum n_in n_out, weight gradients the same,
    input gradients of layers 2..L (2 B sum_{l>=2} n_in n_out); element-wise work not counted."""
    mats = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * batch * (2 * sum(mats) + sum(mats[1:]))


def gemm_gflops(dtype: torch.dtype, n: int = 1000, repeats: int = 10) -> float:
    """Measured GFLOP/s of an n x n x n matmul with the current thread count (practical peak)."""
    a = torch.randn(n, n, dtype=dtype)
    a @ a
    t = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def theoretical_gflops(dtype: torch.dtype) -> tuple[float, str]:
    """cores x FLOPs/cycle x nominal clock: AVX2 + 2 FMA units = 16 float64 / 32 float32 FLOPs per
    cycle per core (AVX-512 doubles it); the clock is /proc/cpuinfo's 'cpu MHz'."""
    try:
        info = open("/proc/cpuinfo").read()
        mhz = float(info.split("cpu MHz")[1].split(":")[1].split()[0])
        width = 2 if "avx512f" in info else 1
    except (OSError, IndexError, ValueError):
        return float("nan"), "unknown"
    per_cycle = (16 if dtype == torch.float64 else 32) * width
    cores = torch.get_num_threads()
    return cores * per_cycle * mhz / 1e3, f"{cores} cores x {per_cycle} FLOP/cycle x {mhz:.0f} MHz"


def plain_loop(train, steps: int, dtype: torch.dtype, seed: int = 0, fused: bool = False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 200, dtype=dtype), nn.ReLU(), nn.Linear(200, 200, dtype=dtype),
                          nn.ReLU(), nn.Linear(200, 10, dtype=dtype)).to(train.x.device)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0, fused=fused or None)
    gen = torch.Generator().manual_seed(seed)
    n = len(train.y)

    def run(k: int) -> None:
        done = 0
        while done < k:
            perm = torch.randperm(n, generator=gen)
            for j in range(n // 200):
                if done == k:
                    break
                idx = perm[j * 200:(j + 1) * 200].to(train.x.device)
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
    ap.add_argument("--K", default="1,8", help="population sizes, comma-separated")
    ap.add_argument("--engines", default="fast,autograd", help="engine paths (--engine), comma-separated")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    data = paper_data(100, 0, dtype, "cpu")
    Ks = [int(k) for k in args.K.split(",")]
    engines = args.engines.split(",")

    contenders = {"plain": (1, plain_loop(data[0], args.steps, dtype)),
                  "plain, fused AdamW": (1, plain_loop(data[0], args.steps, dtype, fused=True))}
    for engine in engines:
        for K in Ks:
            cfg = RunConfig(seeds=tuple(range(K)), dtype=args.dtype, device="cpu", engine=engine,
                            progress=False)
            contenders[f"engine {engine}, K={K}"] = (K, Trainer(cfg, data=data).train_steps)
    for _, fn in contenders.values():   # warm-up
        fn(20)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, (_, fn) in contenders.items():
            rates[name].append(timed(fn, args.steps))
    plain = statistics.median(rates["plain"])
    flops = step_flops()
    gemm = gemm_gflops(dtype)
    peak, peak_how = theoretical_gflops(dtype)
    rows = []
    for name, (K, _) in contenders.items():
        r = statistics.median(rates[name])
        gf = r * K * flops / 1e9
        rows.append({"contender": name, "K": K, "steps_per_s": r, "member_steps_per_s": r * K,
                     "ratio_vs_plain": r * K / plain, "gflops": gf, "fraction_of_gemm": gf / gemm,
                     "fraction_of_peak": gf / peak})
    print(f"{args.dtype}, batch 200, 784-200-200-10, AdamW, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats} x {args.steps} steps")
    print(f"roofline: {flops / 1e6:.1f} MFLOP per member-step; 1000^3 GEMM here {gemm:.1f} GFLOP/s; "
          f"theoretical peak {peak:.1f} GFLOP/s ({peak_how})")
    print(f"{'contender':28s} {'steps/s':>9s} {'member-steps/s':>15s} {'ratio vs plain':>15s} "
          f"{'GFLOP/s':>8s} {'of GEMM':>8s} {'of peak':>8s}")
    for r in rows:
        print(f"{r['contender']:28s} {r['steps_per_s']:9.1f} {r['member_steps_per_s']:15.1f} "
              f"{r['ratio_vs_plain']:15.2f} {r['gflops']:8.1f} {r['fraction_of_gemm']:8.0%} "
              f"{r['fraction_of_peak']:8.0%}")
    out = {"benchmark": "engine_throughput", "dtype": args.dtype, "steps": args.steps,
           "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows,
           "flops_per_member_step": flops, "gemm_gflops": gemm, "theoretical_gflops": peak,
           "theoretical_how": peak_how, "raw_steps_per_s": rates}
    return save_results(args.json, out)


if __name__ == "__main__":
    main()
