"""Writes engine_gpu_h200.md from engine_gpu_h200.log (the raw output of the device command in
the .md) and the three paper-config run summaries of the same session.

    PYTHONPATH=. python reports/benchmarks/engine_gpu_h200.py
"""
import json
from pathlib import Path

from benchmarks.bench_engine import step_flops
from benchmarks.bench_gpu import fp64_peak

HERE = Path(__file__).parent
COMMAND = '''export ALPHAREG_CACHE_DIR=.gpu/cache ALPHAREG_NO_DOWNLOAD=1 PYTHONUNBUFFERED=1; timeout 100 python3 -c "
import torch,json
from benchmarks.bench_gpu import *
dev=torch.device('cuda'); data=paper_data(100,0,torch.float64,dev)
plain=rate(plain_loop(data[0],1000,torch.float64),1000,dev); print('plain',plain)
for K,g in ((8,False),(1,True),(8,True),(32,True)):
    tr=trainer(K,dev,data,g); print(K,g,tr.graphed is not None,K*rate(tr.train_steps,1000,dev))
tr=trainer(2,dev,data,lr=(5e-4,1e-3),wd=(0.0,0.01)); tr.train_steps(1000)
from tests.test_engine import deviation_from_plain_loop
c=paper_data(100,0,torch.float64,'cpu')[0]; print('dev',max(deviation_from_plain_loop(tr,c,k,1000) for k in range(2)))
" 2>&1 | tee $OUT/b.log'''


def main():
    vals, engine = {}, {}     # "plain" / "dev" -> value; (K, graphs used) -> member-steps/s
    for line in (HERE / "engine_gpu_h200.log").read_text().splitlines():
        f = line.split()
        if f[0] in ("plain", "dev"):
            vals[f[0]] = float(f[1])
        else:
            engine[(int(f[0]), f[2] == "True")] = float(f[3])
    flops, peak = step_flops(), fp64_peak("NVIDIA H200") * 1e12
    plain = vals["plain"]
    rows = [("plain PyTorch loop (nn.Sequential + torch.optim.AdamW)", 1, plain)]
    rows += [(f"engine, {'CUDA graphs of 50 steps' if g else 'eager fast path'}, K={K}", K, v)
             for (K, g), v in engine.items()]
    out = ["# GPU figures: NVIDIA H200, float64, paper MLP (784-200-200-10), batch 200",
           "",
           "Measured 2026-11-27 with the device tool (one NVIDIA H200, 16 CPU cores; torch 2.11.0+cu130,",
           "Python 3.12.3) at commit 655a0b6, the command below: parts 1-3 of `benchmarks.bench_gpu`",
           "(the full bench had stopped at its 150 s limit in part 4, the HTSR-monitor backlog; fixed since:",
           "`--quick`, progressive output, 5 log points per decade in part 4). Whole command 30.8 s.",
           "Every rate is member-steps/s in one process, the median of 3 timed runs of 1,000 steps after a",
           "warm-up, synchronised; ratios are against the plain loop in the same process.",
           "", "```bash", COMMAND, "```", "",
           f"{flops / 1e6:.1f} MFLOP per member-step; float64 peak taken as {peak / 1e12:.0f} TFLOP/s.", "",
           "| contender | K | member-steps/s | × plain loop | minutes per 10^7 steps (all K members) | of fp64 peak |",
           "|---|---|---|---|---|---|"]
    for name, K, v in rows:
        out.append(f"| {name} | {K} | {v:,.0f} | {v / plain:.1f} | {1e7 * K / v / 60:,.1f} | {v * flops / peak:.2%} |")
    out += ["", "Correctness on the GPU: the CUDA-graph path (K = 2, lr 5e-4 / 1e-3, WD 0 / 0.01) against the",
            f"test suite's plain loop on the CPU after 1,000 steps: max relative deviation {vals['dev']:.1e}.", "",
            "## The paper-config runs of the same session (eager path, three processes sharing the GPU)", "",
            "`bash experiments/gpu_chunk.sh 560` at commit 1dbe70b (log: `reports/verdict/paper_preset_h1e5/gpu_session.log`).",
            "Its bench had failed at the first line (the plain loop's model stayed on the CPU; fixed in 655a0b6),",
            "so the script switched CUDA graphs off (`ALPHAREG_CUDA_GRAPHS=0`) and the three runs trained on",
            "the eager fast path, side by side (from each run's `summary.json`):", "",
            "| run | steps | wall s | member-steps/s |", "|---|---|---|---|"]
    for run in ("paper_lr5e-4_wd0_s012", "paper_lr5e-4_wd0.01_s012", "paper_lr5e-4_wdctl_t2_s012"):
        s = json.loads((HERE.parent / "verdict" / "paper_preset_h1e5" / "runs" / run / "summary.json").read_text())
        out.append(f"| {run} | {s['step']:,} | {s['wall_time_s']:.0f} | {s['member_steps_per_s']:,.0f} |")
    lo, hi = engine[(8, True)] / 8, engine[(1, True)]     # steps/s of a population: K = 8 and K = 1
    out += ["", f"With CUDA graphs a K = 3 run would make between {lo:,.0f} and {hi:,.0f} steps/s alone (the K = 8",
            f"and K = 1 rows), i.e. 10^7 steps in {1e7 / hi / 60:.0f}-{1e7 / lo / 60:.0f} minutes of H200 time (3-5 ten-minute",
            "device calls). In that session every hook ran the eager path; since the eleventh session the lr / wd",
            "controllers run on CUDA graphs too (graph-safe hooks, `alphareg/hooks.py`; tested on the CPU against the",
            "eager path, not yet timed on a GPU), the soft-α penalty and the baselines that touch gradients stay eager.", ""]
    (HERE / "engine_gpu_h200.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
