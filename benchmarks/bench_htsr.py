"""HTSR measurements of alphareg.htsr against weightwatcher 0.7.7's analyze(), same process.

    python -m benchmarks.bench_htsr [--repeats 5] [--shuffles 5] [--K 8] [--threads N]
                                    [--json reports/benchmarks/htsr_cpu.json]

Model: the paper MLP 784-200-200-10 (float64, init x 8, seed 0). Contenders:

* alpha: ``htsr.fit_alpha`` on the three weight matrices vs one ``WeightWatcher(model).analyze()``
  (quiet), which computes the same alpha / xmin / D plus its norm metrics;
* traps: ``htsr.correlation_traps`` (``--shuffles`` seeded shuffles per layer, MP fit + KS test)
  on the three matrices vs ``analyze(randomize=True)`` (one shuffle per layer, 5 pooled for the
  200x10 layer; its time includes the ~alpha analyze() above);
* population rows: ``htsr.fit_alpha`` / ``correlation_traps`` batched over K members per layer
  (what ``analyze_population`` does), against K x the weightwatcher time (extrapolated, not run).

Each contender is warmed up once, then timed ``--repeats`` times alternating with the others;
the median is reported. ``speed-up`` = weightwatcher time / ours.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch
from torch import nn

from alphareg import htsr
from alphareg.models import PopulationMLP, make_mlp
from benchmarks.common import save_results


def _ww_analyze(model: nn.Module, randomize: bool) -> Callable[[], object]:
    with htsr.quiet_weightwatcher():
        import weightwatcher as ww

    def run():
        with htsr.quiet_weightwatcher():
            return ww.WeightWatcher(model=model).analyze(randomize=randomize)
    return run


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shuffles", type=int, default=5, help="our trap replicates per layer")
    ap.add_argument("--K", type=int, default=8, help="population size for the batched rows (0: skip)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and BLAS threads (default: leave as is)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    with htsr.quiet_weightwatcher():
        import scipy.linalg  # noqa: F401  (BLAS libraries must be loaded before limiting them)
        import weightwatcher  # noqa: F401
    limiter = None
    if args.threads:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads)

    model = make_mlp([784, 200, 200, 10], seed=0, init_scale=8.0)
    Ws = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    ours_alpha = lambda: [htsr.fit_alpha(W) for W in Ws]                       # noqa: E731
    ours_traps = lambda: [htsr.correlation_traps(W, args.shuffles, 0) for W in Ws]  # noqa: E731
    pairs = {"alpha (3 layers)": (ours_alpha, _ww_analyze(model, False), 1),
             "traps (3 layers)": (ours_traps, _ww_analyze(model, True), 1)}
    if args.K:
        pop = PopulationMLP([784, 200, 200, 10], seeds=list(range(args.K)))
        Ps = [w.detach() for w in pop.weights]
        pairs[f"alpha, K={args.K} batched"] = (lambda: [htsr.fit_alpha(P) for P in Ps], None, args.K)
        pairs[f"traps, K={args.K} batched"] = (
            lambda: [htsr.correlation_traps(P, args.shuffles, 0) for P in Ps], None, args.K)

    fns = {}
    for name, (ours, ww_fn, _) in pairs.items():
        fns[(name, "ours")] = ours
        if ww_fn is not None:
            fns[(name, "ww")] = ww_fn
    for fn in fns.values():                                                   # warm-up
        fn()
    times: dict = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            times[key].append(_timed(fn))
    med = {key: statistics.median(v) for key, v in times.items()}

    rows = []
    for name, (_, ww_fn, K) in pairs.items():
        base = name.split(",")[0].split(" (")[0]
        ww_t = med[(f"{base} (3 layers)", "ww")] * K
        rows.append({"task": name, "ours_s": med[(name, "ours")], "ww_s": ww_t,
                     "ww_extrapolated": ww_fn is None, "speedup": ww_t / med[(name, "ours")]})

    print(f"paper MLP 784-200-200-10 float64, {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats}, "
          f"{args.shuffles} shuffles/layer (ours)")
    print(f"{'task':26s} {'ours [s]':>10s} {'weightwatcher [s]':>18s} {'speed-up':>9s}")
    for r in rows:
        ww_txt = f"{r['ww_s']:.4f}" + (" (K x)" if r["ww_extrapolated"] else "")
        print(f"{r['task']:26s} {r['ours_s']:10.4f} {ww_txt:>18s} {r['speedup']:8.1f}x")
    out = {"benchmark": "htsr_vs_weightwatcher", "repeats": args.repeats, "shuffles": args.shuffles,
           "K": args.K, "threads": torch.get_num_threads(), "rows": rows,
           "raw_s": {f"{k[0]} | {k[1]}": v for k, v in times.items()}}
    if limiter is not None:
        limiter.restore_original_limits()
    return save_results(args.json, out)


if __name__ == "__main__":
    main()
