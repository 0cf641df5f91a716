"""ESD figures of paper A for chosen snapshots, one file per (step, member), never overwritten.

* ``plots/esd/step_<step>_m<k>_fig2.png`` — Figure 2: per layer, (left) the ESD λ = σ²(W) as a
  log-log density with the fitted power law p(λ) ∝ λ^(-α) on [xmin, xmax] (drawn scaled to the
  tail's share of the eigenvalues) and the xmin / xmax lines; (right) the ESD of the
  element-shuffled W, rescaled to unit mean, with the fitted Marchenko–Pastur density and its
  bulk edge λ+.
* ``plots/esd/step_<step>_m<k>_fig3.png`` — Figure 3: per layer, the shuffled ESD (log counts)
  with the MP fit, the edge λ+ + sqrt(TW) and the correlation traps beyond it marked in red.

The shuffle is replicate 0 of the monitor's seeded shuffles (``htsr_seed``), so the trap count
drawn is the monitor's replicate-0 count.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import htsr  # noqa: E402
from .plots import _save  # noqa: E402

ESD_DIR = "esd"


def esd_paths(run_path: Path, step: int, member: int) -> tuple[Path, Path]:
    d = Path(run_path) / "plots" / ESD_DIR
    return d / f"step_{step:09d}_m{member}_fig2.png", d / f"step_{step:09d}_m{member}_fig3.png"


def _layer_data(w: torch.Tensor, seed: int) -> dict:
    fit = htsr.fit_alpha(w).member(())
    ev = htsr.eigenvalues(w).numpy()
    shuf = htsr.shuffled_eigenvalues(w, 1, seed)[0].numpy()
    N, M = max(w.shape), min(w.shape)
    mp = htsr.mp_fit_evals(shuf, N, M, ks=False)
    return {"ev": ev[ev > htsr.EVALS_THRESH], "fit": fit, "x": shuf * mp.w_scale ** 2, "mp": mp}


def _degenerate(ax, d: dict, name: str) -> bool:
    """A layer whose weights collapsed (fewer than 2 eigenvalues above weightwatcher's 1e-5
    threshold, e.g. W_Q under wd 1.0): a note instead of log-scaled axes with no data."""
    if len(d["ev"]) >= 2 and np.isfinite(d["x"]).all() and (d["x"] > 0).any():
        return False
    ax.text(0.5, 0.5, f"{name}: {len(d['ev'])} eigenvalue(s) above {htsr.EVALS_THRESH:g}\n(not fitted)",
            ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return True


def _plot_pl(ax, d: dict, name: str) -> None:
    if _degenerate(ax, d, name):
        return
    ev, fit = d["ev"], d["fit"]
    bins = np.logspace(np.log10(ev.min()), np.log10(ev.max()), 40)
    ax.hist(ev, bins=bins, density=True, color="tab:blue", alpha=0.55, label="ESD")
    alpha, xmin, xmax = fit["alpha"], fit["xmin"], fit["xmax"]
    if np.isfinite(alpha) and alpha > 1:
        share = np.mean(ev >= xmin)
        xs = np.logspace(np.log10(xmin), np.log10(xmax), 50)
        ax.plot(xs, share * (alpha - 1) / xmin * (xs / xmin) ** (-alpha), "r-", lw=2,
                label=f"PL fit α={alpha:.2f}")
        ax.axvline(xmin, color="r", ls="--", lw=1, label=f"xmin={xmin:.3g}")
        ax.axvline(xmax, color="orange", ls="--", lw=1, label=f"xmax={xmax:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ = σ²")
    ax.set_title(f"{name}: ESD (log-log)", fontsize=10)
    ax.legend(fontsize=7)


def _plot_mp(ax, d: dict, name: str, traps: bool) -> None:
    if _degenerate(ax, d, name):
        return
    x, mp = d["x"], d["mp"]
    if traps:
        ax.hist(x, bins=80, color="tab:gray", alpha=0.6, label="shuffled ESD")
        ax.set_yscale("log")
        ax.set_ylabel("count")
        spikes = x[x > mp.lambda_plus_tw]
        ax.plot(spikes, np.ones_like(spikes), "rv", ms=9, label=f"traps: {len(spikes)}")
        ax.axvline(mp.lambda_plus_tw, color="r", ls=":", lw=1.2, label="λ+ + √TW")
    else:
        dens, _, _ = ax.hist(x, bins=60, density=True, color="tab:gray", alpha=0.6, label="shuffled ESD")
        xs = np.linspace(max(mp.lambda_minus, 1e-9), mp.lambda_plus, 400)
        pdf = htsr.mp_pdf(xs, mp.Q, mp.sigma)
        ax.plot(xs, pdf, "k-", lw=1.8, label=f"MP fit σ={mp.sigma:.3f}, Q={mp.Q:.2f}")
        # Q = 1: the MP density diverges at 0; scale the axis to the histogram, not the pole
        ax.set_ylim(0, 1.3 * max(dens.max(), np.median(pdf[pdf > 0]) if (pdf > 0).any() else 0))
    ax.axvline(mp.lambda_plus, color="k", ls="--", lw=1, label="λ+")
    ax.set_xlabel("eigenvalue (rescaled to unit mean)")
    ax.set_title(f"{name}: shuffled ESD" + (" with traps" if traps else " + MP fit"), fontsize=10)
    ax.legend(fontsize=7)


def plot_esd_snapshot(run_path: str | os.PathLike, snapshot: Path, seed: int = 0) -> list[Path]:
    """Figures 2 and 3 of every member of one snapshot; existing files are left alone."""
    snap = torch.load(snapshot, map_location="cpu", weights_only=False)
    made = []
    for k in range(len(snap["seeds"])):
        f2, f3 = esd_paths(Path(run_path), int(snap["step"]), k)
        if f2.is_file() and f3.is_file():
            continue
        f2.parent.mkdir(parents=True, exist_ok=True)
        data = [(name, _layer_data(w[k], seed)) for name, w in zip(snap["layers"], snap["weights"])]
        L = len(data)
        fig, axes = plt.subplots(L, 2, figsize=(10, 3.1 * L), squeeze=False)
        for (name, d), (a1, a2) in zip(data, axes):
            _plot_pl(a1, d, name)
            _plot_mp(a2, d, name, traps=False)
        fig.suptitle(f"Figure 2 — step {snap['step']}, member {k} (seed {snap['seeds'][k]})")
        fig.tight_layout()
        _save(fig, f2)
        fig, axes = plt.subplots(1, L, figsize=(4.6 * L, 3.4), squeeze=False)
        for (name, d), ax in zip(data, axes[0]):
            _plot_mp(ax, d, name, traps=True)
        fig.suptitle(f"Figure 3 — correlation traps, step {snap['step']}, member {k}")
        fig.tight_layout()
        _save(fig, f3)
        made += [f2, f3]
    return made


def esd_steps(snapshot_steps: list[int], total: int, per_decade: int) -> list[int]:
    """Snapshot steps that get ESD figures: the log schedule at ``per_decade`` and the last one."""
    if per_decade <= 0 or not snapshot_steps:
        return []
    from .schedule import log_points
    wanted = set(log_points(total, per_decade)) | {max(snapshot_steps)}
    return sorted(wanted & set(snapshot_steps))
