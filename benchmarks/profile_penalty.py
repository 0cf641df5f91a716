"""Where the soft-alpha penalty's time goes on a device (paper config, K=3, float64).

    python -m benchmarks.profile_penalty cuda     # or cpu

Prints steps/s of ``--method none`` and ``--method penalty`` (K = 3, the engine's CUDA-graph path
where it applies), the time of each spectral piece the penalty hook uses (``svdvals``, the Gram
matrix's ``eigvalsh``, the KS tail scan) per layer on the device and on host copies of the same
weights, one ``_refresh`` with and without the tail refit, and on CUDA a torch.profiler table of
two refreshes. Since the hook works on host copies (``host_layers``) its refresh times are host
times on every device. Ran on the H200 at commit 7d99770 as ``.gpu/prof_penalty.py``:
``reports/benchmarks/penalty_gpu_h200_7d99770.log``.
"""
import statistics
import sys
import time

import torch

from alphareg.config import RunConfig
from alphareg.engine import Trainer
from benchmarks.bench_gpu import paper_data
from alphareg.regularizers import SoftAlphaHook, SpectralLayer, gram_spectrum, spectral_layers, spectrum
from alphareg.htsr import fit_alpha_evals

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()
def timeit(fn, n=5):
    fn(); sync(); out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); sync(); out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3
data = paper_data(100, 0, torch.float64, dev)
res = {}
for method in ("none", "penalty"):
    cfg = RunConfig(seeds=(0, 1, 2), device=dev.type, progress=False, method=method)
    tr = Trainer(cfg, data=data)
    n = (1000 if method == "none" else 200) if dev.type == "cuda" else 100
    tr.train_steps(n); sync(); t = time.perf_counter(); tr.train_steps(n); sync()
    res[method] = n / (time.perf_counter() - t)
    print(f"{method}: {res[method]:.1f} steps/s (K=3), graphed={tr.graphed is not None}", flush=True)
hook = [h for h in tr.hooks if isinstance(h, SoftAlphaHook)][0]
print("penalty active layers after", tr.step, "steps:", list(hook.grads), flush=True)
model = tr.model
for where in ("dev", "cpu"):
    for L in spectral_layers(model):
        W = L.param.detach()
        if where == "cpu":
            W = W.cpu()
        l = SpectralLayer(L.name, W, False)
        print(f"{where} {L.name} {tuple(W.shape)}: svdvals {timeit(lambda: spectrum(l)):.2f} ms, "
              f"gram eigvalsh {timeit(lambda: gram_spectrum(l)):.2f} ms, "
              f"fit_alpha_evals {timeit(lambda: fit_alpha_evals(spectrum(l))):.2f} ms", flush=True)
pen = hook.penalty
print(f"refit (all layers) {timeit(lambda: pen.refit(model)):.2f} ms", flush=True)
print(f"_refresh no refit {timeit(lambda: hook._refresh(model, 1)):.2f} ms", flush=True)
print(f"_refresh with refit {timeit(lambda: hook._refresh(model, 0)):.2f} ms", flush=True)
if dev.type == "cuda":
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        hook._refresh(model, 0); hook._refresh(model, 1); sync()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
