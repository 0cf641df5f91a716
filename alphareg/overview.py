"""Across horizons: the verdict folders side by side, one line per method, one column per horizon.

Each verdict folder (``alphareg.verdict.write_verdict``) holds every run cut at one horizon H
(``methods.csv`` → ``horizon``) and one row per member (``verdict.csv``). For method m (its
``member_label``) and horizon H, over the n members that reached H:

* collapsed c / n — members whose test accuracy fell ``collapse_drop`` below its peak by H;
* test accuracy at H, mean ± sd (sample sd) over the n members;
* late trend b, mean ± sd: slope of test accuracy against log10(step) over the last half decade
  before H (accuracy per decade; < 0 still falling);
* Δ test accuracy against the plain run (method ``none``, wd 0) at the same lr and H:
  mean(m) − mean(plain) — what the method bought over doing nothing, at that horizon;
* cost: training seconds per 10^5 member-steps, s = wall time to H / K / H · 10^5 (a run's wall
  time is shared by its K members), mean over the members, and its ratio to the plain wd-0 run's
  at the same lr and H (wall times of runs that shared a machine with others: indicative; no ratio
  between runs on different kinds of device, ``verdict.same_device_kind``).

A (method, horizon) pair found in two folders is an error (the overview would have to pick one):
pass the folders that make one consistent picture. Nothing is typed in: every cell is read from
the folders' ``verdict.csv``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .verdict import _ms, _stats, device_kinds, folder_horizon, same_device_kind, seconds_per_1e5_member_steps

OVERVIEW_COLUMNS = ("lr", "method", "horizon", "folder", "n", "collapsed", "final_test_acc_mean",
                    "final_test_acc_sd", "late_trend_mean", "late_trend_sd", "delta_vs_wd0",
                    "seconds_per_1e5_member_steps", "cost_vs_wd0")


@dataclass
class Cell:
    """One method at one horizon (see the module docstring)."""
    method: str
    lr: float
    plain_wd0: bool          # this method is the plain run at wd 0 (the reference)
    horizon: int
    folder: str
    n: int
    collapsed: int
    final: tuple[float, float]
    trend: tuple[float, float] | None
    cost: float | None                 # training seconds per 10^5 member-steps
    devices: str = ""                  # its members' device cells, joined by ", "
    delta_vs_wd0: float | None = None
    cost_vs_wd0: float | None = None
    cost_note: str = ""                # why no cost ratio: the two kinds of device, "cpu vs cuda"


def _float(v: str) -> float | None:
    return None if v in ("", None) else float(v)


def _cost(rows: list[dict]) -> float | None:
    """Mean training seconds per 10^5 member-steps over ``rows`` (verdict.csv rows, strings)."""
    per = _stats(seconds_per_1e5_member_steps(r["wall_time_s"], r["K"], r["steps"]) for r in rows)
    return per[0] if per else None


def read_folder(folder: str | Path) -> list[Cell]:
    """The cells of one verdict folder: its members that reached the folder's horizon, by method."""
    folder = Path(folder)
    horizon = folder_horizon(folder, required=True)     # also: is it a verdict folder at all
    with open(folder / "methods.csv", newline="") as f:
        methods = list(csv.DictReader(f))
    name_of = {m["method"]: m["method_name"] for m in methods}
    with open(folder / "verdict.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["steps"]) >= horizon]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    cells = []
    for label, rs in groups.items():
        cells.append(Cell(method=label, lr=float(rs[0]["lr"]),
                          plain_wd0=name_of.get(label) == "none" and float(rs[0]["wd"]) == 0.0,
                          horizon=horizon, folder=folder.name, n=len(rs),
                          collapsed=sum(r["collapsed"] == "True" for r in rs),
                          final=_stats(_float(r["final_test_acc"]) for r in rs),
                          trend=_stats(_float(r["late_trend"]) for r in rs),
                          cost=_cost(rs), devices=", ".join(sorted({r["device"] for r in rs}))))
    return cells


def overview_cells(folders) -> list[Cell]:
    """Every folder's cells, with Δ against the plain wd-0 run at the same lr and horizon."""
    cells: list[Cell] = []
    seen: dict[tuple[str, int], str] = {}
    for folder in folders:
        for c in read_folder(folder):
            key = (c.method, c.horizon)
            if key in seen:
                raise ValueError(f"{c.method!r} at horizon {c.horizon} is in both {seen[key]} and {c.folder}: "
                                 "pass only one of them")
            seen[key] = c.folder
            cells.append(c)
    ref = {(c.lr, c.horizon): c for c in cells if c.plain_wd0}
    for c in cells:
        r = ref.get((c.lr, c.horizon))
        if r is not None and not c.plain_wd0:
            c.delta_vs_wd0 = c.final[0] - r.final[0]
            if c.cost and r.cost and same_device_kind(c.devices, r.devices):
                c.cost_vs_wd0 = c.cost / r.cost
            elif c.cost and r.cost:
                c.cost_note = f"{device_kinds(c.devices)} vs {device_kinds(r.devices)}"
    return sorted(cells, key=lambda c: c.horizon)   # stable: methods in the shortest horizon's order


def steps_label(steps: int, digits: int = 6) -> str:
    """10^5 → "1e5", 2·10^5 → "2e5", 125000 → "1.25e5"; the mantissa to `digits` significant
    digits (794328 → "7.94328e5", with digits=3 → "7.94e5": the figure's tick labels)."""
    exp = int(math.floor(math.log10(steps))) if steps > 0 else 0
    mant = steps / 10**exp
    return f"{mant:.{digits}g}e{exp}"


def _matrix(cells: list[Cell], horizons: list[int], cell_text) -> list[str]:
    head = ["method"] + [steps_label(h) for h in horizons]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(c.method, c.horizon): c for c in cells}
    for m in dict.fromkeys(c.method for c in cells):
        lines.append("| " + " | ".join([m] + [cell_text(by[(m, h)]) if (m, h) in by else "·"
                                             for h in horizons]) + " |")
    return lines


def _answer(cells: list[Cell]) -> str:
    """One generated sentence: at the longest horizon, which methods kept every seed, which lost all."""
    h = max(c.horizon for c in cells)
    last = [c for c in cells if c.horizon == h]
    kept = [f"`{c.method}`" for c in last if c.collapsed == 0]
    lost = [f"`{c.method}`" for c in last if c.collapsed == c.n]
    some = [f"`{c.method}` ({c.collapsed}/{c.n})" for c in last if 0 < c.collapsed < c.n]
    s = f"At the longest horizon, {steps_label(h)} steps ({len(last)} method(s) got there): "
    s += f"no collapsed seed — {'; '.join(kept) or 'none'}. Collapsed in every seed — {'; '.join(lost) or 'none'}."
    return s + (f" Some seeds — {'; '.join(some)}." if some else "")


def overview_markdown(cells: list[Cell]) -> str:
    out = ["# Overview: every method at every horizon (generated by `python -m experiments.overview`; "
           "each cell read from the named folder's `verdict.csv`)", ""]
    for lr in sorted({c.lr for c in cells}, reverse=True):
        cs = [c for c in cells if c.lr == lr]
        horizons = sorted({c.horizon for c in cs})
        folders = ", ".join(f"`{f}`" for f in dict.fromkeys(c.folder for c in sorted(cs, key=lambda c: c.horizon)))
        out += [f"## lr {lr:g} (folders: {folders})", "", _answer(cs), "", f"![overview]({figure_name(lr)})", "",
                "**Collapsed seeds** (test accuracy 5 points below its peak by the horizon; · = not reached)", ""]
        out += _matrix(cs, horizons, lambda c: f"{c.collapsed}/{c.n}")
        out += ["", "**Test accuracy at the horizon** (mean ± sd over seeds)", ""]
        out += _matrix(cs, horizons, lambda c: _ms(c.final))
        out += ["", "**Late trend** (test accuracy per decade of steps over the last half decade; < 0: still falling)", ""]
        out += _matrix(cs, horizons, lambda c: _ms(c.trend))
        out += ["", "**Δ test accuracy against plain WD = 0** at the same lr and horizon (mean − mean)", ""]
        out += _matrix(cs, horizons, lambda c: "ref." if c.plain_wd0 else
                       ("–" if c.delta_vs_wd0 is None else f"{c.delta_vs_wd0:+.3f}"))
        out += ["", "**Cost: wall time per member-step ÷ plain WD = 0's** at the same lr and horizon "
                "(runs shared a machine with other runs: indicative; clean per-step overheads in "
                "`reports/benchmarks/`)", ""]
        out += _matrix(cs, horizons, lambda c: "ref." if c.plain_wd0 else
                       ((c.cost_note or "–") if c.cost_vs_wd0 is None else f"×{c.cost_vs_wd0:.2f}"))
        out.append("")
    return "\n".join(out)


def plot_overview(cells: list[Cell], path: Path) -> None:
    """One lr's cells: test accuracy at each horizon (mean ± sd) per method, and the collapsed
    seeds as a method × horizon map (colour = fraction collapsed, text = c/n, blank = not reached)."""
    import numpy as np

    from .plots import _save, plt
    methods = list(dict.fromkeys(c.method for c in cells))
    horizons = sorted({c.horizon for c in cells})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 1.2 + 0.42 * max(len(methods), 8)),
                                 gridspec_kw={"width_ratios": [1.1, 1]})
    colors = plt.get_cmap("tab20").colors
    frac = np.full((len(methods), len(horizons)), np.nan)
    for i, m in enumerate(methods):
        cs = sorted((c for c in cells if c.method == m), key=lambda c: c.horizon)
        a1.errorbar([c.horizon for c in cs], [c.final[0] for c in cs], yerr=[c.final[1] for c in cs],
                    color=colors[i % len(colors)], marker="o", capsize=3, label=m)
        for c in cs:
            j = horizons.index(c.horizon)
            frac[i, j] = c.collapsed / c.n
            a2.text(j, i, f"{c.collapsed}/{c.n}", ha="center", va="center", fontsize=9)
    a1.set_xscale("log")
    a1.set_xlabel("horizon (steps)")
    a1.set_title("test accuracy at the horizon (mean ± sd over seeds)")
    a1.grid(alpha=0.3, which="both")
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="white")
    a2.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=-0.3, vmax=1.3, aspect="auto")  # pale ends: text readable
    a2.set_xticks(range(len(horizons)), [steps_label(h, 3) for h in horizons], rotation=45, ha="right")
    a2.set_yticks(range(len(methods)), [m if len(m) <= 48 else m[:45] + "…" for m in methods], fontsize=8)
    a2.set_xlabel("horizon (steps)")
    a2.set_title("seeds collapsed by the horizon (blank: not reached)")
    fig.tight_layout()
    # the legend below both panels (method labels are long: inside the axes they hide points)
    fig.legend(*a1.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               fontsize=8, frameon=False, ncol=2)
    _save(fig, path)


def figure_name(lr: float) -> str:
    return f"overview_lr{lr:g}.png"


def write_overview(folders, out_dir: str | Path) -> list[Cell]:
    """``overview.md``, ``overview.csv`` (one row per method × horizon) and one figure per lr
    (``overview_lr<lr>.png``) in ``out_dir``."""
    cells = overview_cells(folders)
    if not cells:
        raise ValueError("no member reached its folder's horizon in any of the folders")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overview.md").write_text(overview_markdown(cells))
    with open(out / "overview.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OVERVIEW_COLUMNS)
        for c in sorted(cells, key=lambda c: (-c.lr, c.method, c.horizon)):
            w.writerow([c.lr, c.method, c.horizon, c.folder, c.n, c.collapsed, f"{c.final[0]:.6g}",
                        f"{c.final[1]:.3g}", "" if c.trend is None else f"{c.trend[0]:.6g}",
                        "" if c.trend is None else f"{c.trend[1]:.3g}",
                        "" if c.delta_vs_wd0 is None else f"{c.delta_vs_wd0:.6g}",
                        "" if c.cost is None else f"{c.cost:.6g}",
                        "" if c.cost_vs_wd0 is None else f"{c.cost_vs_wd0:.4g}"])
    for lr in {c.lr for c in cells}:
        plot_overview([c for c in cells if c.lr == lr], out / figure_name(lr))
    return cells
