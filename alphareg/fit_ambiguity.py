"""How decisive weightwatcher's xmin choice is: the runner-up power-law fit of each matrix.

weightwatcher's alpha is the fit at xmin = x_b, b = argmin_i D_i, where D_i is the KS distance of
the Pareto fit with alpha_i = 1 + k_i / s_i to the k_i eigenvalues >= x_i (``alphareg.htsr``,
standard path, n >= 20 eigenvalues > 1e-5). When the curve D_i has two minima of nearly equal
depth at very different tail sizes, a small change of the weights moves the argmin from one to
the other and the reported alpha jumps, although the spectrum barely changed.

For a gap Δ > 0 the *runner-up* of a fit is the best candidate whose alpha differs from the
chosen one by more than Δ:

    r = argmin_{i : |alpha_i - alpha_b| > Δ} D_i,        margin = D_r - D_b >= 0.

A small margin with a large |alpha_r - alpha_b| means the reported alpha is one of two nearly
equally good answers. ``switches`` counts consecutive log points at which the chosen alpha moved
by more than Δ: the jumps an alpha-driven controller reacts to.
Matrices on the small-n path (fewer than 20 eigenvalues) and those without a candidate beyond
the gap get NaN runner-up fields.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .htsr import SMALL_N_CUTOFF, eigenvalues, fit_alpha_evals, standard_candidates
from .rundir import METRICS, snapshot_file, snapshot_steps

FIELDS = ("alpha", "D", "k", "alpha_alt", "D_alt", "k_alt", "margin")


def runner_up(W, alpha_gap: float = 0.5) -> dict[str, np.ndarray]:
    """The chosen fit and its runner-up (module doc) for each matrix of W (..., N, M).

    Returns arrays of W's leading shape: alpha, D, k (= weightwatcher's alpha, D, num_pl_spikes),
    alpha_alt, D_alt, k_alt and margin = D_alt - D."""
    if not alpha_gap > 0:
        raise ValueError(f"alpha_gap must be > 0, got {alpha_gap}")
    W = torch.as_tensor(W)
    lead = W.shape[:-2]
    lam = eigenvalues(W.reshape(-1, *W.shape[-2:]))          # ascending, float64 (B, n)
    fit = fit_alpha_evals(lam)                                # = fit_alpha(W) without the layer filter
    c = standard_candidates(lam)
    far = c.cand & ((c.alpha - fit.alpha.unsqueeze(-1)).abs() > alpha_gap)
    D_far = torch.where(far, c.D, torch.full_like(c.D, math.inf))
    r = torch.argmin(D_far, -1, keepdim=True)
    ok = (torch.gather(D_far, -1, r).squeeze(-1).isfinite() & ~fit.small_n & (fit.alpha > 0))
    nan = torch.full_like(fit.alpha, math.nan)

    def alt(x):
        return torch.where(ok, torch.gather(x, -1, r).squeeze(-1), nan)

    D_alt = alt(c.D)
    out = {"alpha": fit.alpha, "D": fit.D, "k": fit.num_pl_spikes.to(torch.float64),
           "alpha_alt": alt(c.alpha), "D_alt": D_alt, "k_alt": alt(c.k), "margin": D_alt - fit.D}
    return {name: v.reshape(lead).numpy() for name, v in out.items()}


def run_ambiguity(run_path: str | os.PathLike, layer: str, alpha_gap: float = 0.5,
                  steps: list[int] | None = None, progress=None) -> pd.DataFrame:
    """One row per (snapshot, member) of a run directory's ``layer``: step, member, seed and
    ``FIELDS``; plus the controller's smoothed alpha ``alpha_ema`` and the layer's ``wd`` / ``lr``
    from metrics.csv at that step where the run logged them (NaN otherwise)."""
    run_path = Path(run_path)
    steps = snapshot_steps(run_path) if steps is None else steps
    if not steps:
        raise FileNotFoundError(f"{run_path} has no snapshots/step_*.pt")
    rows = []
    for step in (progress(steps) if progress else steps):
        snap = torch.load(snapshot_file(run_path, step), map_location="cpu", weights_only=False)
        if layer not in snap["layers"]:
            raise ValueError(f"--layer {layer!r} is not a layer of {run_path.name}; it has "
                             f"{', '.join(snap['layers'])}")
        W = snap["weights"][snap["layers"].index(layer)]
        if min(W.shape[-2:]) < SMALL_N_CUTOFF:
            raise ValueError(f"--layer {layer}: {tuple(W.shape[-2:])} has fewer than {SMALL_N_CUTOFF} "
                             "eigenvalues, weightwatcher's small-n path has no runner-up here")
        res = runner_up(W, alpha_gap)
        for m, seed in enumerate(snap["seeds"]):
            rows.append({"step": int(snap["step"]), "member": m, "seed": int(seed),
                         **{f: float(res[f][m]) for f in FIELDS}})
    df = pd.DataFrame(rows)
    metrics = run_path / METRICS
    extra = {f"alpha_ema_{layer}": "alpha_ema", f"wd_{layer}": "wd", f"lr_{layer}": "lr"}
    if metrics.is_file():
        m = pd.read_csv(metrics)
        cols = [c for c in extra if c in m.columns]
        df = df.merge(m[["step", "member", *cols]].drop_duplicates(["step", "member"], keep="last"),
                      on=["step", "member"], how="left").rename(columns=extra)
    for c in extra.values():
        if c not in df.columns:
            df[c] = math.nan
    return df


def summarise(df: pd.DataFrame, alpha_gap: float) -> pd.DataFrame:
    """Per member: snapshots, median margin, share of snapshots with margin < 0.01, median
    |alpha_alt - alpha|, and switches (consecutive snapshots whose chosen alpha moved by > Δ)."""
    out = []
    for (m, seed), g in df.sort_values("step").groupby(["member", "seed"]):
        jumps = g["alpha"].diff().abs().iloc[1:]
        out.append({"member": m, "seed": seed, "snapshots": len(g), "first_step": int(g.step.min()),
                    "last_step": int(g.step.max()), "median_alpha": g.alpha.median(),
                    "median_margin": g.margin.median(),
                    "share_margin_below_0.01": float((g.margin < 0.01).mean()),
                    "median_alpha_distance": (g.alpha_alt - g.alpha).abs().median(),
                    "switches": int((jumps > alpha_gap).sum()), "pairs": len(jumps)})
    return pd.DataFrame(out)


def plot_ambiguity(df: pd.DataFrame, path: Path, layer: str, title: str = "") -> None:
    """Per member: chosen alpha (dots), runner-up alpha (open circles) and the controller's
    smoothed alpha (line, when logged) over steps; below, the margin D_alt - D."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted(df.member.unique())
    fig, axes = plt.subplots(2, len(members), figsize=(4.5 * len(members), 6), squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for j, m in enumerate(members):
        g = df[df.member == m].sort_values("step")
        ax = axes[0, j]
        ax.plot(g.step, g.alpha, ".", color="C0", label="chosen alpha (argmin D)")
        ax.plot(g.step, g.alpha_alt, "o", mfc="none", color="C1", ms=4, label="runner-up alpha")
        if g.alpha_ema.notna().any():
            ax.plot(g.step, g.alpha_ema, "-", color="C2", lw=1, label="controller's alpha EMA")
        ax.set_title(f"{layer}, seed {g.seed.iloc[0]}")
        ax.set_ylabel("alpha")
        ax.grid(alpha=0.3)
        axes[1, j].plot(g.step, g.margin, ".", color="C3")
        axes[1, j].set_ylabel("margin D_alt - D")
        axes[1, j].set_xlabel("step")
        axes[1, j].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
