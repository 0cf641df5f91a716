"""Summaries of a run directory's metrics table (per member and mean +- sd over members)."""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict


def summarize_metrics(rows: list[dict]) -> dict:
    """Per member: peak test accuracy and its step, final train/test accuracy; plus means.

    ``rows`` are metrics-table rows (values may be strings, as read from CSV).
    """
    by_member: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_member[int(r["member"])].append(r)
    members = []
    for k in sorted(by_member):
        rs = sorted(by_member[k], key=lambda r: int(r["step"]))
        peak = max(rs, key=lambda r: float(r["test_acc"]))
        last = rs[-1]
        members.append({"member": k, "seed": int(last["seed"]),
                        "peak_test_acc": float(peak["test_acc"]), "peak_step": int(peak["step"]),
                        "final_step": int(last["step"]), "final_test_acc": float(last["test_acc"]),
                        "final_train_acc": float(last["train_acc"]),
                        "drop_from_peak": float(peak["test_acc"]) - float(last["test_acc"])})
    out: dict = {"members": members}
    for key in ("peak_test_acc", "final_test_acc", "final_train_acc", "drop_from_peak"):
        vals = [m[key] for m in members]
        if vals:
            out[key] = {"mean": statistics.fmean(vals),
                        "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


# ---------------------------------------------------------------------------- phases, tables
PHASE_POINTS = ("pre-grokking edge", "grokking peak", "end")


def phase_points(mp) -> dict[str, int]:
    """Steps at which paper A's tables read the spectra of one member (``MemberPhases``):
    the last pre-grokking step, the test-accuracy peak, and the last logged step."""
    from .phases import PRE
    pre = [s for s, lab in mp.labels.items() if lab == PRE]
    return {"pre-grokking edge": max(pre) if pre else min(mp.labels),
            "grokking peak": mp.peak_step, "end": max(mp.labels)}


def _nearest_row(rows: list[dict], step: int) -> list[dict]:
    """HTSR rows of the latest analysed step <= ``step``."""
    steps = sorted({int(r["step"]) for r in rows if int(r["step"]) <= step})
    if not steps:
        return []
    return [r for r in rows if int(r["step"]) == steps[-1]]


def _mean_sd(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.3g}"
    return f"{statistics.fmean(vals):.3g} ± {statistics.stdev(vals):.2g}"


def _value(row: dict, col: str) -> float:
    """A float cell of htsr.csv; NaN when empty, and for alpha when not fitted (weightwatcher's
    sentinel -1: too few eigenvalues above 1e-5, e.g. a layer weight decay drove to zero)."""
    v = row.get(col, "")
    x = float(v) if v not in ("", None) else math.nan
    return math.nan if col == "alpha" and x < 0 else x


def htsr_tables(htsr_rows: list[dict], phases: list) -> str:
    """Markdown tables in the layout of paper A Tables 1, 2 and 4: per layer, mean ± sd over
    members of alpha, correlation traps, and the KS statistic / p-value, at the phase points."""
    layers = sorted({r["layer"] for r in htsr_rows})
    cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for mp in phases:
        mine = [r for r in htsr_rows if int(r["member"]) == mp.member]
        for name, step in phase_points(mp).items():
            for r in _nearest_row(mine, step):
                for col in ("alpha", "traps_mean", "ks_stat", "ks_pvalue"):
                    cells[(col, r["layer"], name)].append(_value(r, col))
    out = []
    for title, col in (("Table 1 — HTSR alpha", "alpha"), ("Table 2 — correlation traps (mean over shuffles)", "traps_mean"),
                       ("Table 4a — KS statistic, shuffled ESD vs fitted MP", "ks_stat"),
                       ("Table 4b — KS p-value", "ks_pvalue")):
        out.append(f"### {title} (mean ± sd over {len(phases)} member(s))\n")
        out.append("| layer | " + " | ".join(PHASE_POINTS) + " |")
        out.append("|---" * (len(PHASE_POINTS) + 1) + "|")
        for layer in layers:
            out.append(f"| {layer} | " + " | ".join(_mean_sd(cells[(col, layer, p)]) for p in PHASE_POINTS) + " |")
        out.append("")
    pts = "; ".join(f"member {mp.member}: " + ", ".join(f"{k} {v}" for k, v in phase_points(mp).items())
                    for mp in phases)
    out.append(f"Steps read (the latest analysed step at or before each): {pts}. "
               "— = not fitted (fewer than 2 eigenvalues above 1e-5) or not analysed.\n")
    return "\n".join(out)


def trajectory_table(metrics: list[dict], htsr_rows: list[dict], per_decade: int = 4) -> str:
    """Markdown table: at about ``per_decade`` analysed steps per decade, test accuracy and the
    alpha of every layer (mean over members), read from metrics.csv and htsr.csv."""
    steps = sorted({int(r["step"]) for r in htsr_rows if int(r["step"]) > 0})
    if not steps:
        return ""
    picked, last = [], -1.0
    for s in steps:   # the first analysed step of each 1/per_decade of a decade, and the last one
        b = math.floor(math.log10(s) * per_decade)
        if b != last or s == steps[-1]:
            picked.append(s)
            last = b
    layers = list(dict.fromkeys(r["layer"] for r in htsr_rows))
    alpha = defaultdict(list)
    for r in htsr_rows:
        alpha[(int(r["step"]), r["layer"])].append(_value(r, "alpha"))
    acc = defaultdict(list)
    for r in metrics:
        acc[int(r["step"])].append(float(r["test_acc"]))
    out = [f"### Table 5 — alpha along training (mean over members; {per_decade} steps per decade)\n",
           "| step | test acc | " + " | ".join(layers) + " |", "|---" * (len(layers) + 2) + "|"]
    for s in dict.fromkeys(picked):
        cells = [_mean_sd(alpha[(s, layer)]).split(" ±")[0] for layer in layers]
        out.append(f"| {s} | {_mean_sd(acc.get(s, [])).split(' ±')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def phase_summary(phases: list) -> dict:
    """Collapse / warning figures of every member plus their means, for summary.json."""
    members = [mp.brief() for mp in phases]

    def leads(key: str):
        vals = [m[key] for m in members if m[key] is not None]
        return {"mean": statistics.fmean(vals), "values": vals} if vals else None
    return {"phases": members,
            "collapsed_members": sum(m["collapsed"] for m in members),
            "warned_members": sum(m["warning_step"] is not None for m in members),
            "warning_lead_time": leads("lead_time"),
            "alpha_warning_lead_time": leads("alpha_lead_time"),
            "trap_warning_lead_time": leads("trap_lead_time")}


def finalize_run(run_path, rules=None, wait_label: str = "") -> dict:
    """Bring a run directory's derived outputs up to date: HTSR rows for every snapshot
    (analysed here, in this process, if missing), phase labels and early warning, Tables 1/2/4
    (``tables.md``), ``summary.json`` (merged with what training wrote) and all figures."""
    import json
    from pathlib import Path

    from .monitor import HTSRTable
    from .phases import PhaseRules, analyse_run
    from .plots import plot_run
    from .rundir import SUMMARY, read_metrics, write_json_atomic

    run_path = Path(run_path)
    rules = rules or PhaseRules()
    metrics = read_metrics(run_path)
    htsr_rows = HTSRTable(run_path).read()
    phases = analyse_run(metrics, htsr_rows, rules)
    labels = {(mp.member, s): lab for mp in phases for s, lab in mp.labels.items()}
    summary_path = run_path / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(summarize_metrics(metrics))
    summary.update(phase_summary(phases))
    summary["phase_rules"] = dataclasses.asdict(rules)
    write_json_atomic(summary_path, summary)
    with open(run_path / "phases.csv", "w") as f:
        f.write("step,member,phase\n")
        f.writelines(f"{s},{k},{lab}\n" for (k, s), lab in sorted(labels.items(), key=lambda t: (t[0][1], t[0][0])))
    if htsr_rows:
        (run_path / "tables.md").write_text(htsr_tables(htsr_rows, phases) + "\n" +
                                            trajectory_table(metrics, htsr_rows))
    plot_run(run_path, phases=phases)
    _esd_figures(run_path)
    return summary


def _esd_figures(run_path) -> None:
    """Figures 2 and 3 at the configured steps (snapshots needed; existing files kept)."""
    import json

    from .config import RunConfig
    from .esd_plots import esd_steps, plot_esd_snapshot
    from .rundir import CONFIG, snapshot_file, snapshot_steps

    cfg_file = run_path / CONFIG
    if not cfg_file.is_file():
        return
    cfg = RunConfig.from_dict(json.loads(cfg_file.read_text())["config"])
    for step in esd_steps(snapshot_steps(run_path), cfg.steps, cfg.esd_per_decade):
        plot_esd_snapshot(run_path, snapshot_file(run_path, step), cfg.htsr_seed)
