"""Side-by-side verdict of finished runs: did the method prevent the late collapse, at what cost?

One row per run and member, read only from the run directories (``config.json``,
``metrics.csv``, ``htsr.csv``, ``summary.json``; nothing typed in):

* peak test accuracy and its step; test accuracy at 10^6 and 10^7 steps (the last log point at or
  before them; empty if the run did not get there); final test and train accuracy;
* min alpha: the smallest weightwatcher alpha of any layer over the steps after the test-accuracy
  peak (the late phase the question is about), with its layer; alpha of every layer at the end;
* traps at the end: mean correlation-trap count of every layer at the last analysed step;
* collapsed: the phase labeller's verdict (test accuracy ``collapse_drop`` below its peak at some
  later log point, ``alphareg.phases``); "late drop prevented" = not collapsed.

``write_verdict`` writes ``verdict.csv``, ``verdict.md`` and ``verdict_test_acc_alpha.png``.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd

from .rundir import CONFIG, METRICS, SUMMARY
from .monitor import HTSR

COLUMNS = ("run", "method", "seed", "steps", "peak_test_acc", "peak_step", "test_acc_1e6",
   "test_acc_1e7", "final_test_acc",
           "final_train_acc", "drop_from_peak", "min_alpha_after_peak", "min_alpha_layer",
           "end_alpha", "end_traps", "collapsed", "late_drop_prevented", "wall_time_s")


def _fmt_layers(d: dict) -> str:
    return " ".join(f"{k}:{v:.2f}" for k, v in d.items())


def run_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    cfg = json.loads((path / CONFIG).read_text())["config"]
    summary = json.loads((path / SUMMARY).read_text())
    m = pd.read_csv(path / METRICS)
    h = pd.read_csv(path / HTSR) if (path / HTSR).is_file() else pd.DataFrame()
    collapsed = {p["member"]: bool(p["collapsed"]) for p in summary.get("phases", [])}
    rows = []
    for k, d in m.groupby("member"):
        d = d.sort_values("step")
        peak = d.loc[d["test_acc"].idxmax()]
        last = d.iloc[-1]
        row = {"run": path.name, "method": cfg.get("method", "none"), "seed": int(last["seed"]),
               "steps": int(last["step"]), "peak_test_acc": float(peak["test_acc"]),
               "peak_step": int(peak["step"]), "final_test_acc": float(last["test_acc"]),
               "final_train_acc": float(last["train_acc"]),
               "drop_from_peak": float(peak["test_acc"] - last["test_acc"]),
               "wall_time_s": summary.get("wall_time_s")}
        for label, at in (("test_acc_1e6", 10**6), ("test_acc_1e7", 10**7)):
            upto = d[d["step"] <= at]       # the log point at or just before; None if not reached
            row[label] = float(upto.iloc[-1]["test_acc"]) if int(last["step"]) >= at else None
        hk = h[h["member"] == k] if not h.empty else h
        if not hk.empty:
            late = hk[hk["step"] >= row["peak_step"]]
            late = late if not late.empty else hk
            i = late["alpha"].idxmin()
            row["min_alpha_after_peak"] = float(late.loc[i, "alpha"])
            row["min_alpha_layer"] = str(late.loc[i, "layer"])
            end = hk[hk["step"] == hk["step"].max()].sort_values("layer")
            row["end_alpha"] = _fmt_layers(dict(zip(end["layer"], end["alpha"])))
            row["end_traps"] = _fmt_layers(dict(zip(end["layer"], end["traps_mean"])))
        c = collapsed.get(int(k))
        row["collapsed"] = c
        row["late_drop_prevented"] = None if c is None else not c
        rows.append(row)
    return rows


def write_verdict(runs, out_dir: str | Path) -> list[dict]:
    """Rows of every run (``run_rows``) into ``out_dir``: CSV, Markdown table, figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for run in runs for r in run_rows(run)]
    with open(out / "verdict.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "verdict.md").write_text(markdown_table(rows))
    plot_verdict(runs, out / "verdict_test_acc_alpha.png")
    return rows


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    head = ["method", "seed", "steps", "peak test acc (step)", "test acc at 1e6", "test acc at 1e7",
            "final test acc", "final train acc",
            "min alpha after peak (layer)", "alpha at end", "traps at end (mean)", "collapsed",
            "late drop prevented", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], str(r["seed"]), str(r["steps"]),
            f"{r['peak_test_acc']:.4f} ({r['peak_step']})", _cell(r.get("test_acc_1e6")),
            _cell(r.get("test_acc_1e7")), _cell(r["final_test_acc"]),
            _cell(r["final_train_acc"]),
            f"{_cell(r.get('min_alpha_after_peak'))} ({r.get('min_alpha_layer', '–')})",
            r.get("end_alpha", "–"), r.get("end_traps", "–"), _cell(r["collapsed"]),
            _cell(r["late_drop_prevented"]), r["run"]]) + " |")
    return "\n".join(lines) + "\n"


def plot_verdict(runs, path: Path) -> None:
    from .plots import _lines, _save, plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        run = Path(run)
        cfg = json.loads((run / CONFIG).read_text())["config"]
        label = f"{cfg.get('method', 'none')} ({run.name})"
        m = pd.read_csv(run / METRICS)
        _lines(a1, m, "test_acc", label, colors[i % len(colors)])
        if (run / HTSR).is_file():
            h = pd.read_csv(run / HTSR)
            h = h[h["layer"] == "fc1"].copy()
            _lines(a2, h, "alpha", label, colors[i % len(colors)])
    a2.axhline(2.0, color="k", ls=":", lw=1.2)
    for ax, t in ((a1, "test accuracy"), (a2, "weightwatcher alpha of fc1")):
        ax.set_xscale("log")
        ax.set_xlabel("steps")
        ax.set_title(t)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
