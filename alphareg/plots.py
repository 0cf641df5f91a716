"""Figures of a run directory, drawn from its metrics table.

* ``fig1_accuracy.png`` — paper A Figure 1: train and test accuracy against log10 steps, one thin
  line per member and, with K > 1, the member mean in bold.
* ``fig_alpha_control.png`` — runs with a ``--method``: the alpha the method acts on (penalty's
  α̂ or the controllers' smoothed alpha) with the target, the penalty value, and every layer's lr
  and wd, each beside the test accuracy.
* ``fig5_progress_measures.png`` — paper A Figure 5: l2 norm, activation sparsity, absolute
  weight entropy and approximate local circuit complexity against log steps, beside test
  accuracy so the phases can be read off.
Step 0 cannot sit on a log axis; it is drawn at step 1/2 (marked "init").
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .monitor import HTSR  # noqa: E402
from .rundir import METRICS, PLOTS  # noqa: E402

FIG1 = "fig1_accuracy.png"
FIG5 = "fig5_progress_measures.png"
FIG4 = "fig4_alpha.png"
FIG_CONTROL = "fig_alpha_control.png"
PHASE_COLORS = {"pre-grokking": "#dddddd", "grokking": "#c8e6c9", "anti-grokking": "#ffcdd2"}


def _x(steps: pd.Series) -> np.ndarray:
    return np.where(steps.to_numpy() == 0, 0.5, steps.to_numpy())


def _lines(ax, df: pd.DataFrame, col: str, label: str, color, style="-") -> None:
    members = sorted(df["member"].unique())
    for k in members:
        d = df[df["member"] == k]
        ax.plot(_x(d["step"]), d[col], style, color=color, lw=0.8 if len(members) > 1 else 1.6,
                alpha=0.45 if len(members) > 1 else 1.0,
                label=label if len(members) == 1 else None)
    if len(members) > 1:
        m = df.groupby("step")[col].mean()
        ax.plot(_x(m.index.to_series()), m.to_numpy(), style, color=color, lw=2.0,
                label=f"{label} (mean of {len(members)})")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_accuracy(df: pd.DataFrame, path: Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _lines(ax, df, "train_acc", "train", "tab:blue", "--")
    _lines(ax, df, "test_acc", "test", "tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("optimisation steps (step 0 drawn at 0.5)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best")
    ax.set_title(title or "Figure 1: train / test accuracy")
    _save(fig, path)


def plot_progress_measures(df: pd.DataFrame, path: Path, title: str = "") -> None:
    layers = [c[len("entropy_"):] for c in df.columns if c.startswith("entropy_")]
    hidden = [c for c in df.columns if c.startswith("sparsity_h")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    panels = [
        ("test accuracy", [("test_acc", "test")]),
        ("l2 weight norm", [("l2_total", "total")] + [(f"l2_{n}", n) for n in layers]),
        ("activation sparsity (fraction <= tau)", [(c, c.split("_")[1]) for c in hidden]),
        ("absolute weight entropy  -sum|w|log|w|", [(f"entropy_{n}", n) for n in layers]),
        ("approx. local circuit complexity (sum KL)", [("circuit_complexity", "KL")]),
        ("loss", [("train_loss", "train"), ("test_loss", "test")]),
    ]
    for ax, (name, series) in zip(axes.flat, panels):
        for i, (col, label) in enumerate(series):
            _lines(ax, df, col, label, colors[i % len(colors)])
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_xlabel("steps")
    axes.flat[5].set_yscale("log")
    fig.suptitle(title or "Figure 5: progress measures")
    fig.tight_layout()
    _save(fig, path)


def plot_control(df: pd.DataFrame, path: Path, target: float | None = None, title: str = "") -> bool:
    """Alpha (penalty α̂ / controller EMA), penalty, per-layer lr and wd, each with test accuracy
    on a right axis. Returns False (nothing drawn) for a run without method columns."""
    alpha_cols = [c for c in df.columns if c.startswith(("alpha_hat_", "alpha_ema_"))]
    layer_lr = [c for c in df.columns if c.startswith("lr_fc")]
    layer_wd = [c for c in df.columns if c.startswith("wd_fc")]
    varies = any(df[c].nunique() > 1 for c in layer_lr + layer_wd)
    if not alpha_cols and "penalty" not in df.columns and not varies:
        return False
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("alpha the method sees", [(c, c.split("_", 2)[2] + (" (EMA)" if "ema" in c else ""))
                                         for c in alpha_cols])]
    if "penalty" in df.columns:
        panels.append(("soft-alpha penalty (per member)", [("penalty", "penalty")]))
    panels += [("learning rate per layer", [(c, c[3:]) for c in layer_lr]),
               ("weight decay per layer", [(c, c[3:]) for c in layer_wd])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels):
        for i, (col, label) in enumerate(series):
            _lines(ax, df, col, label, colors[i % len(colors)])
        if name.startswith("alpha") and target is not None:
            ax.axhline(target, color="k", ls=":", lw=1.2, label=f"target {target:g}")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("steps")
        ax2 = ax.twinx()
        _lines(ax2, df, "test_acc", "test acc", "tab:red", "--")
        ax2.set_ylim(0, 1.02)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    fig.suptitle(title or "alpha-guided training")
    fig.tight_layout()
    _save(fig, path)
    return True


def _shade_phases(ax, phases, member: int = 0) -> None:
    """Background bands of member ``member``'s phase labels (grey / green / red)."""
    mp = next((p for p in phases or [] if p.member == member), None)
    if mp is None:
        return
    steps = sorted(mp.labels)
    for a, b in zip(steps, steps[1:] + [steps[-1]]):
        ax.axvspan(max(a, 0.5), max(b, 0.5), color=PHASE_COLORS[mp.labels[a]], lw=0, zorder=0)


def plot_alpha(htsr: pd.DataFrame, metrics: pd.DataFrame, path: Path, phases=None, title: str = "") -> None:
    """Paper A Figure 4: layer-averaged alpha and per-layer alpha vs log steps, alpha = 2 line,
    test accuracy on the right axis, phases of member 0 shaded."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    _shade_phases(ax, phases)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    d = htsr.copy()
    d["alpha"] = d["alpha"].where(d["alpha"] >= 0)   # -1 = not fitted (weightwatcher's sentinel)
    avg = d.groupby(["step", "member"], as_index=False)["alpha"].mean()
    avg["alpha_mean"] = avg["alpha"]
    _lines(ax, avg, "alpha_mean", "mean alpha", "black")
    for i, layer in enumerate(sorted(d["layer"].unique())):
        dl = d[d["layer"] == layer].sort_values("step")
        _lines(ax, dl, "alpha", f"alpha {layer}", colors[i % len(colors)], "-")
    ax.axhline(2.0, color="k", ls=":", lw=1.2, label="alpha = 2")
    ax.set_xscale("log")
    ax.set_xlabel("steps")
    ax.set_ylabel("HTSR alpha")
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    _lines(ax2, metrics, "test_acc", "test acc", "tab:red", "--")
    ax2.set_ylabel("test accuracy", color="tab:red")
    ax2.set_ylim(0, 1.02)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    ax.set_title(title or "Figure 4: alpha per layer (phases of member 0 shaded)")
    _save(fig, path)


def plot_run(run_path: str | os.PathLike, phases=None) -> list[Path]:
    """(Re)draw the figures of a run directory; returns their paths (none without metrics).
    Figure 4 needs ``htsr.csv``; ``phases`` (from ``alphareg.phases``) shade its background."""
    run_path = Path(run_path)
    metrics = run_path / METRICS
    if not metrics.is_file():
        return []
    df = pd.read_csv(metrics)
    if df.empty:
        return []
    out = run_path / PLOTS
    out.mkdir(exist_ok=True)
    plot_accuracy(df, out / FIG1, f"{run_path.name}: accuracy (Figure 1)")
    plot_progress_measures(df, out / FIG5, f"{run_path.name}: progress measures (Figure 5)")
    made = [out / FIG1, out / FIG5]
    cfg_path = run_path / "config.json"
    target = None
    if cfg_path.is_file():
        import json
        target = json.loads(cfg_path.read_text()).get("config", {}).get("target_alpha")
    if plot_control(df, out / FIG_CONTROL, target, f"{run_path.name}: alpha-guided training"):
        made.append(out / FIG_CONTROL)
    htsr_path = run_path / HTSR
    if htsr_path.is_file():
        h = pd.read_csv(htsr_path)
        if not h.empty:
            plot_alpha(h, df, out / FIG4, phases, f"{run_path.name}: alpha (Figure 4)")
            made.append(out / FIG4)
    return made
