"""Where the soft-alpha penalty's time goes on a device (paper config, K=3, float64).

    python -m benchmarks.profile_penalty cuda     # or cpu
    python -m benchmarks.profile_penalty threads  # host refresh time per torch thread count

Prints steps/s of ``--method none`` and ``--method penalty`` (K = 3, the engine's CUDA-graph path
where it applies), the time of each spectral piece the penalty hook uses (``svdvals``, the Gram
matrix's ``eigvalsh``, the KS tail scan) per layer on the device and on host copies of the same
weights, one ``_refresh`` with and without the tail refit, and on CUDA a torch.profiler table of
two refreshes. Since the hook works on host copies (``host_layers``) its refresh times are host
times on every device. ``reports/benchmarks/penalty_gpu_h200_7d99770.log`` is the H200 output of
this script's first version (commit a05a5fd: one timed block of steps instead of ``rate``'s median
of three), run there at commit 7d99770 as ``.gpu/prof_penalty.py``.

``threads``: the refresh is host work whatever the device, so its speed depends on the host's
torch / MKL thread count (tiny LAPACK calls can get slower with more threads). Prints, per count,
one refresh without and with the tail refit and the host time per 100 steps at the run config's
``refit_every`` / ``penalty_grad_every`` (defaults 100 / 20: 4 refreshes + 1 with refit), then
``best threads N``; ``experiments/gpu_chunk.sh`` runs it and gives the runs ``--threads N``.
"""
import os
import statistics
import sys
import time

import torch

from alphareg.htsr import fit_alpha_evals
from alphareg.regularizers import SoftAlphaHook, SpectralLayer, gram_spectrum, spectral_layers, spectrum
from benchmarks.bench_gpu import paper_data, rate, sync, trainer


def ms(fn, dev, repeats: int = 5) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` synchronised calls, after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3


def main(device: str = "cuda") -> None:
    dev = torch.device(device)
    data = paper_data(100, 0, torch.float64, dev)
    steps = 1000 if dev.type == "cuda" else 100
    for method in ("none", "penalty"):
        tr = trainer(3, dev, data, method=method)
        n = steps if method == "none" else steps // 5 if dev.type == "cuda" else steps
        print(f"{method}: {rate(tr.train_steps, n, dev):.1f} steps/s (K=3), graphed={tr.graphed is not None}",
              flush=True)
    hook = next(h for h in tr.hooks if isinstance(h, SoftAlphaHook))
    model, pen = tr.model, hook.penalty
    print("penalty active layers after", tr.step, "steps:", list(hook.grads), flush=True)
    for where in ("dev", "cpu"):
        for layer in spectral_layers(model):
            W = layer.param.detach() if where == "dev" else layer.param.detach().cpu()
            one = SpectralLayer(layer.name, W, False)
            print(f"{where} {layer.name} {tuple(W.shape)}: svdvals {ms(lambda: spectrum(one), dev):.2f} ms, "
                  f"gram eigvalsh {ms(lambda: gram_spectrum(one), dev):.2f} ms, "
                  f"fit_alpha_evals {ms(lambda: fit_alpha_evals(spectrum(one)), dev):.2f} ms", flush=True)
    print(f"refit (all layers) {ms(lambda: pen.refit(model), dev):.2f} ms", flush=True)
    print(f"_refresh no refit {ms(lambda: hook._refresh(model, 1), dev):.2f} ms", flush=True)
    print(f"_refresh with refit {ms(lambda: hook._refresh(model, 0), dev):.2f} ms", flush=True)
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            hook._refresh(model, 0)
            hook._refresh(model, 1)
            sync(dev)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


def best_threads(counts=None) -> int:
    """The torch thread count with the least host time per 100 steps of the penalty's refresh
    (K = 3, paper shapes, weights after 0 steps: the penalty inactive, as in most of a run)."""
    dev = torch.device("cpu")
    cores = os.cpu_count() or 1
    counts = counts or sorted({c for c in (1, 2, 4, 8, 16, cores) if c <= cores})
    tr = trainer(3, dev, paper_data(100, 0, torch.float64, dev), method="penalty")
    hook = next(h for h in tr.hooks if isinstance(h, SoftAlphaHook))
    cfg = tr.cfg    # per refit period: one refresh with the refit, the others without
    per_refit = cfg.refit_every // cfg.penalty_grad_every - 1
    before = torch.get_num_threads()
    per100 = {}
    try:
        for n in counts:
            torch.set_num_threads(n)
            plain, refit = ms(lambda: hook._refresh(tr.model, 1), dev), ms(lambda: hook._refresh(tr.model, 0), dev)
            per100[n] = (per_refit * plain + refit) * 100 / cfg.refit_every
            print(f"threads {n}: refresh {plain:.2f} ms, with refit {refit:.2f} ms, "
                  f"{per100[n]:.1f} ms per 100 steps", flush=True)
    finally:
        torch.set_num_threads(before)
    best = min(per100, key=per100.get)
    print(f"best threads {best}", flush=True)
    return best


if __name__ == "__main__":
    if sys.argv[1:2] == ["threads"]:
        best_threads()
    else:
        main(*sys.argv[1:2])
