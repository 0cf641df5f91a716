"""GPU figures of issue 6 in one command (also runs on the CPU as a smoke test, without graphs).

    python -m benchmarks.bench_gpu [--device cuda] [--steps 2000] [--full-steps 20000] [--quick]
                                   [--json reports/benchmarks/engine_gpu.json]

Measured in one process, float64, paper MLP, batch 200:
1. the plain PyTorch loop (``nn.Sequential`` + ``torch.optim.AdamW`` defaults, batches indexed
   from a per-epoch ``randperm``) - the reference every ratio is against;
2. the engine's eager fast path (K = 8, no graphs) and the CUDA-graph path (K = 1, 8, 32):
   member-steps/s, ratio, projected time for 10^7 steps, roofline (nominal FLOPs x rate against the
   GPU's float64 peak);
3. correctness: the graph path (K = 2) against the plain loop on the GPU after 1,000 steps, and
   the graph path with graph-safe hooks (the soft-alpha penalty and the WD controller) against the
   eager path with the same hooks after 500 steps;
4. a real run (``Trainer.run``: 5 log points per decade, checkpoints, HTSR monitor on, its
   backlog drained at the end) of ``--full-steps`` steps, K = 8: member-steps/s with everything on;
5. overhead of the soft-alpha penalty and the controllers, K = 8, vs ``--method none`` (all on
   CUDA graphs: graph-safe hooks; the path each ran is printed).
Each part prints as it ends; the JSON is written after part 3 and again at the end.
Nothing needs weightwatcher (``--ww-per-decade 0`` in 4). MNIST comes from alphareg's cache
(``ALPHAREG_CACHE_DIR``; see README "Running on a GPU").
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from alphareg.config import RunConfig
from alphareg.data import paper_data
from alphareg.engine import Trainer
from alphareg.rundir import RunDir
from benchmarks.bench_engine import plain_loop, step_flops
from benchmarks.common import save_results

#: float64 peak TFLOP/s by device name (tensor-core DGEMM where the chip has it)
FP64_PEAK_TFLOPS = {"H100 SXM": 67.0, "H100 80GB HBM3": 67.0, "H100 PCIe": 51.0, "H100 NVL": 60.0,
                    "H200": 67.0, "A100": 19.5}


def fp64_peak(name: str) -> float:
    for key, v in FP64_PEAK_TFLOPS.items():
        if key in name:
            return v
    return float("nan")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, steps: int, dev, repeats: int = 3) -> float:
    """Median steps/s of ``fn(steps)`` over ``repeats`` (synchronised timings)."""
    fn(min(steps, 100))
    out = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn(steps)
        sync(dev)
        out.append(steps / (time.perf_counter() - t))
    return statistics.median(out)


def trainer(K: int, dev, data, graphs: bool = True, **kw) -> Trainer:
    cfg = RunConfig(seeds=tuple(range(K)), device=dev.type, progress=False, **kw)
    tr = Trainer(cfg, data=data)
    if not graphs:
        tr.graphed = None
    return tr


#: part 3b: both kinds of graph-safe hook at once (a held penalty gradient added inside the graph,
#: lr / wd set between graphs); target 6 keeps the penalty active from step 0
HOOKS_CHECK = dict(method="penalty+wd_controller", target_alpha=6.0, control_every=50, steps=500)


def hooks_graph_vs_eager(dev, data) -> tuple[float, int]:
    """Max relative deviation of the weights after ``HOOKS_CHECK['steps']`` steps (K = 2, lr 5e-4 /
    1e-3) between the graph path and the eager path on ``dev`` (on the CPU the graph's step function
    runs uncaptured, as in the tests), and the graph length. On the CPU 2e-11 (round-off, amplified
    by the penalty)."""
    from alphareg.cudagraph import uncaptured
    kw = {k: v for k, v in HOOKS_CHECK.items() if k != "steps"}
    graphed = trainer(2, dev, data, lr=(5e-4, 1e-3), **kw)
    eager = trainer(2, dev, data, graphs=False, lr=(5e-4, 1e-3), **kw)
    if graphed.graphed is None:           # CPU: the same step function, run eagerly
        uncaptured(graphed)
    for tr in (graphed, eager):
        tr.train_steps(HOOKS_CHECK["steps"])
    return max(((a - b).abs().max() / b.abs().max()).item()
               for a, b in zip(graphed.model.parameters(), eager.model.parameters())), graphed.graphed.G


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=2000, help="timed steps per contender and repeat")
    ap.add_argument("--full-steps", type=int, default=20000, help="steps of the real run (part 4)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="parts 1-3 only (speed and correctness; about 30 s on an H200)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    data = paper_data(100, 0, torch.float64, dev)
    flops = step_flops()
    peak = fp64_peak(name) * 1e12
    res: dict = {"benchmark": "engine_gpu", "device": name, "dtype": "float64",
                 "flops_per_member_step": flops, "fp64_peak_flops": peak}

    plain = rate(plain_loop(data[0], args.steps, torch.float64), args.steps, dev)
    rows = [{"contender": "plain PyTorch loop", "K": 1, "member_steps_per_s": plain}]
    for K, graphs in ((8, False), (1, True), (8, True), (32, True)):
        tr = trainer(K, dev, data, graphs)
        label = f"engine {'CUDA graphs' if tr.graphed is not None else 'eager fast path'}, K={K}"
        rows.append({"contender": label, "K": K,
                     "member_steps_per_s": K * rate(tr.train_steps, args.steps, dev)})
    print(f"{name}, float64, batch 200, 784-200-200-10; {flops / 1e6:.1f} MFLOP per member-step; "
          f"fp64 peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    for r in rows:
        r["ratio_vs_plain"] = r["member_steps_per_s"] / plain
        r["minutes_for_1e7_steps"] = 1e7 * r["K"] / r["member_steps_per_s"] / 60
        r["fraction_of_fp64_peak"] = r["member_steps_per_s"] * flops / peak
        print(f"{r['contender']:34s} {r['member_steps_per_s']:12.0f} member-steps/s  x{r['ratio_vs_plain']:6.2f}  "
              f"{r['minutes_for_1e7_steps']:8.1f} min per 1e7 steps  {r['fraction_of_fp64_peak']:7.2%} of peak",
              flush=True)
    res["rows"] = rows

    # 3. correctness against the plain loop on this device
    tr = trainer(2, dev, data, lr=(5e-4, 1e-3), wd=(0.0, 0.01))
    tr.train_steps(1000)
    from tests.test_engine import deviation_from_plain_loop   # the test suite's independent loop
    cpu_train = paper_data(100, 0, torch.float64, "cpu")[0]
    res["max_relative_deviation_vs_plain_cpu_loop_1000_steps"] = max(
        deviation_from_plain_loop(tr, cpu_train, k, 1000) for k in range(2))
    print(f"graph path vs plain loop after 1000 steps: max relative deviation "
          f"{res['max_relative_deviation_vs_plain_cpu_loop_1000_steps']:.2e}", flush=True)
    hooks, G = hooks_graph_vs_eager(dev, data)
    res["max_relative_deviation_hooks_graph_vs_eager"] = hooks
    print(f"graph path with graph-safe hooks ({HOOKS_CHECK['method']}, G = {G}) vs the eager path after "
          f"{HOOKS_CHECK['steps']} steps: max relative deviation {hooks:.2e}", flush=True)
    saved = save_results(args.json, res)          # kept even if a later part is stopped
    if args.quick:
        return saved

    # 4. a real run with log points, checkpoints and the HTSR monitor
    # 5 log points per decade: the monitor's backlog, drained at the end, counts in the wall time
    # (with the default 20 an H200 run of 10,000 steps was still draining after 100 s)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(seeds=tuple(range(8)), device=dev.type, steps=args.full_steps, runs_dir=tmp,
                        name="full", progress=False, ww_per_decade=0, esd_per_decade=0,
                        plot_minutes=5.0, log_per_decade=5)
        rd = RunDir(cfg)
        full = Trainer(cfg, rd, data)
        with rd.lock():
            rd.create(data[2])
            t = time.perf_counter()
            summary = full.run()
            wall = time.perf_counter() - t
    res["full_run"] = {"steps": args.full_steps, "K": 8, "wall_s": wall,
                       "member_steps_per_s_training": summary.get("member_steps_per_s"),
                       "member_steps_per_s_all_in": 8 * args.full_steps / wall,
                       "minutes_for_1e7_steps_all_in": 1e7 / (args.full_steps / wall) / 60}

    # 5. penalty and controllers (graph-safe hooks)
    base = rate(trainer(8, dev, data).train_steps, args.steps // 4, dev)
    over, paths = {}, {}
    for method in ("penalty", "lr_controller", "wd_controller"):
        tr = trainer(8, dev, data, method=method)
        paths[method] = "CUDA graphs" if tr.graphed is not None else "eager"
        over[method] = base / rate(tr.train_steps, args.steps // 4, dev) - 1
    res["hook_overhead_vs_none"] = over
    res["hook_path"] = paths
    res["hook_base_member_steps_per_s"] = 8 * base

    f = res["full_run"]
    print(f"real run K=8, {f['steps']} steps, log points + checkpoints + HTSR monitor: "
          f"{f['member_steps_per_s_all_in']:.0f} member-steps/s -> {f['minutes_for_1e7_steps_all_in']:.1f} min per 1e7")
    print("hook overhead vs --method none (K=8): " +
          ", ".join(f"{m} ({paths[m]}) {v:+.1%}" for m, v in over.items()))
    return save_results(args.json, res)


if __name__ == "__main__":
    main()
