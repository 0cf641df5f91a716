"""The verdict: did a method prevent the late collapse, at what cost? Runs side by side.

Everything is read from run directories (``config.json``, ``metrics.csv``, ``htsr.csv``,
``summary.json``); nothing is typed in. Optionally every run is cut at a common ``horizon``
(steps): rows logged after it are ignored, so runs that got different distances compare fairly.

Per member (one row per run × member, ``run_rows``):

* peak test accuracy a* and its step; test accuracy at 10^6 and 10^7 steps (the last log point at
  or before them; empty unless the run got there); final (= at the horizon) test / train accuracy
  and drop = a* − final;
* late trend: the least-squares slope b of test accuracy against log10(step) over the log points
  of the last ``LATE_WINDOW_DECADES`` decade before the member's last step (a ≈ c + b·log10 t):
  test accuracy gained (> 0) or lost (< 0) per decade of steps at the end — a run that still
  declines and one that dipped 5 points once and is flat since have the same "collapsed" flag;
* min alpha after the peak: the smallest fitted weightwatcher alpha of any layer at the analysed
  steps ≥ the peak step, with its layer; alpha and mean trap count of every layer at the last
  analysed step; the largest trap count of any layer after the peak;
* alpha at the collapse: every layer's alpha at the last analysed step at or before the collapse
  step (and that step) — whether a layer had fallen below 2 when test accuracy fell, i.e. whether
  a one-sided α-method at target 2 could have acted by then;
* penalty active (soft-α penalty runs only: their ``penalty`` column): "n/N" — at n of the member's
  N log points the penalty term β Σ_l h(α* − α̂_l) was > 0, i.e. whether the method acted at all
  (one-sided, h(d) = 0 for d ≤ 0: exactly 0 while every layer's α̂ is at or above the target α*);
  a sample — between log points the hook refreshes every ``penalty_grad_every`` steps, so
  "penalty refreshes active" = "n/N from S": at n of the N refreshes the hook counted since step S
  (runs made before the count was kept: since the first resume after it) a layer's term was > 0;
* phases (``alphareg.phases.analyse_run`` with ``rules``): collapsed = test accuracy fell
  ``collapse_drop`` below a* at a later log point; "collapse prevented" = not collapsed by the
  horizon (by the run's last step without one; undecided while a run is short of the horizon);
  early warning step, its reason, lead time = collapse step − warning step;
* cost: wall time of the run up to the horizon (training seconds, shared by the K members trained
  together), K, device and host — for a run trained by several processes on several machines, each
  device's share of the steps (``segments.csv``; wall times of runs on more than one kind of device
  are not compared).

Per method (``method_rows``; a method = ``member_label``: method, its non-default settings, lr and
wd): seeds, collapsed / prevented counts, and mean ± sd of the numbers above over the members
that reached the horizon; the alpha at the collapse per layer over every collapsed member, with the
count of those that had a layer below ``ALPHA_AT_COLLAPSE_BELOW`` then; the penalty's active log
points summed over the members. The findings compare each method with the plain run at wd 0 and the
same lr and, for a method with a reference WD (``wd_ref``: the WD controller's base, the
``weight_decay`` method's constant), with its fixed-WD control: the plain run at the same lr whose
wd is nearest ``wd_ref``, within a factor ``CONTROL_WD_FACTOR`` — whether the α feedback or the
amount of WD does the work.
``paper_tables`` puts our Tables 1 and 2 (alpha and traps of every layer, mean ± sd over the
method's members, at paper A's steps moved to the method's lr and at the end) beside paper A's
values (``alphareg.paper_values``). ``write_verdict`` writes all of it plus Figure 1 (accuracy) and
Figure 4 (alpha per layer) style plots per method and one comparison figure.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .config import RunConfig
from .methods import method_fields, parse_method
from .monitor import HTSR, HTSRTable
from .phases import PhaseRules, analyse_run
from .report import _mean_sd, _nearest_row, _value
from .rundir import CONFIG, METRICS, SEGMENTS, SUMMARY, read_metrics, read_segments

COLUMNS = ("method", "lr", "wd", "run", "member", "seed", "steps", "peak_test_acc", "peak_step", "test_acc_1e6",
           "test_acc_1e7", "final_test_acc", "final_train_acc", "drop_from_peak",
           "late_trend", "min_alpha_after_peak", "min_alpha_layer", "max_traps_after_peak", "end_alpha",
           "end_traps", "penalty_active", "penalty_refreshes_active", "collapsed", "collapse_step", "collapse_alpha", "collapse_alpha_step", "collapse_prevented", "warning_step",
           "warning_reason", "lead_time", "wall_time_s", "K", "device", "commit")
CONTROL_WD_FACTOR = 1.25   # a plain run is a method's fixed-WD control if wd_ref / wd is within this factor
LATE_WINDOW_DECADES = 0.5  # the late trend is fitted over this last part (decades of steps) of a run
ALPHA_AT_COLLAPSE_BELOW = 2.0   # the findings count collapsed members with a layer's alpha below this then


def late_trend(steps, accs, decades: float = LATE_WINDOW_DECADES) -> float | None:
    """Slope b of the least-squares line a ≈ c + b·log10(t) through the points (t, a) with
    t ≥ t_last · 10^-decades, t > 0: b = Σ(x − x̄)(a − ā) / Σ(x − x̄)², x = log10 t — accuracy
    change per decade of steps at the end of a run. None with fewer than 3 points in the window."""
    pts = [(int(t), float(a)) for t, a in zip(steps, accs) if int(t) > 0]
    if not pts:
        return None
    start = max(t for t, _ in pts) * 10 ** -decades
    window = [(math.log10(t), a) for t, a in pts if t >= start]
    if len(window) < 3:
        return None
    xs, ys = zip(*window)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:                       # one step logged three times: no slope
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


@dataclass
class RunData:
    """One run directory read (and cut at the horizon): config, summary and table rows."""
    path: Path
    cfg: RunConfig
    provenance: dict
    summary: dict
    metrics: list[dict]
    htsr: list[dict]
    phases: list = field(default_factory=list)
    horizon: int | None = None
    segments: list[dict] = field(default_factory=list)   # segments.csv: which device trained which steps


def load_run(path: str | Path, rules: PhaseRules | None = None, horizon: int | None = None) -> RunData:
    path = Path(path)
    raw = json.loads((path / CONFIG).read_text())
    summary = json.loads((path / SUMMARY).read_text()) if (path / SUMMARY).is_file() else {}
    keep = (lambda r: True) if horizon is None else (lambda r: int(r["step"]) <= horizon)
    metrics = [r for r in read_metrics(path) if keep(r)]
    htsr = [r for r in HTSRTable(path).read() if keep(r)]
    if not metrics:
        raise ValueError(f"{path}: no metrics rows" + (f" at or before step {horizon}" if horizon else ""))
    run = RunData(path, RunConfig.from_dict(raw["config"]), raw.get("provenance", {}), summary,
                  metrics, htsr, horizon=horizon, segments=read_segments(path))
    run.phases = analyse_run(metrics, htsr, rules or PhaseRules())
    return run


def member_label(cfg: RunConfig, k: int) -> str:
    """What member ``k`` of a run trained with: method, its settings that differ from the
    defaults (always the target and the weight_decay method's wd_ref), lr, wd — and the task/dtype
    when not the MNIST paper defaults. A list setting reads ``fc2,fc3``."""
    default = RunConfig.for_task(cfg.task)
    parts = [cfg.method if cfg.method != "none" else "plain"]
    always = {"target_alpha"} | ({"wd_ref"} if "weight_decay" in parse_method(cfg.method) else set())
    if cfg.method != "none":
        for name in sorted(method_fields(cfg.method) - {"method"}):
            v = cfg.member_method_value(name, k)
            if name in always or v != getattr(default, name):
                if isinstance(v, (list, tuple)):
                    v = ",".join(x if isinstance(x, str) else f"{x:g}" for x in v)
                parts.append(f"{name} {v:g}" if isinstance(v, float) else f"{name} {v}")
    parts += [f"lr {cfg.member_lrs()[k]:g}", f"wd {cfg.member_wds()[k]:g}"]
    if cfg.task != "mnist":
        parts.insert(0, cfg.task)
    if cfg.dtype != default.dtype:
        parts.append(cfg.dtype)
    return ", ".join(parts)


def _fmt_layers(d: dict) -> str:
    return " ".join(f"{k}:{v:.2f}" for k, v in d.items())


def _device(run: RunData, steps: int) -> str:
    """Where the run's first ``steps`` steps were trained. Without ``segments.csv`` (runs made
    before it was kept): the device of the last process (``summary.json``) with the accelerator or
    host of the run's creation. With it: each device "kind (accelerator or host)" and its share of
    the steps, ", "-joined in order of first use, plus "unrecorded" for steps no segment covers
    (trained before the record was kept); one device covering every step is named alone."""
    if not run.segments:
        dev = run.summary.get("device") or run.cfg.device
        where = (run.provenance.get("accelerator") if str(dev).startswith("cuda") else None) \
            or run.provenance.get("host")
        return f"{dev} ({where})" if where else str(dev)
    share: dict[str, int] = {}
    for seg in run.segments:
        n = max(0, min(int(seg["end_step"]), steps) - int(seg["start_step"]))
        if n:
            label = f"{seg['device']} ({seg['accelerator'] or seg['host']})"
            share[label] = share.get(label, 0) + n
    rest = steps - sum(share.values())
    if rest > 0:
        share["unrecorded"] = rest
    if len(share) == 1:
        return next(iter(share))
    return ", ".join(f"{label} {100 * n / steps:.0f} %" for label, n in share.items())


def run_rows(path_or_run, rules: PhaseRules | None = None, horizon: int | None = None) -> list[dict]:
    """One verdict row per member of a run (see the module docstring)."""
    run = path_or_run if isinstance(path_or_run, RunData) else load_run(path_or_run, rules, horizon)
    rows = []
    for mp in run.phases:
        k = mp.member
        d = sorted((r for r in run.metrics if int(r["member"]) == k), key=lambda r: int(r["step"]))
        last = d[-1]
        steps = int(last["step"])
        reached = run.horizon is None or steps >= run.horizon
        wd_ref = (float(run.cfg.member_method_value("wd_ref", k))
                  if "wd_ref" in method_fields(run.cfg.method) else None)
        row = {"method": member_label(run.cfg, k), "method_name": run.cfg.method, "wd_ref": wd_ref,
               "lr": run.cfg.member_lrs()[k],
               "wd": run.cfg.member_wds()[k], "run": run.path.name, "member": k,
               "seed": int(last["seed"]), "steps": steps,
               "peak_test_acc": mp.peak_test_acc, "peak_step": mp.peak_step,
               "final_test_acc": float(last["test_acc"]), "final_train_acc": float(last["train_acc"]),
               "drop_from_peak": mp.peak_test_acc - float(last["test_acc"]),
               "late_trend": late_trend([r["step"] for r in d], [r["test_acc"] for r in d], LATE_WINDOW_DECADES),
               "collapsed": mp.collapsed, "collapse_step": mp.collapse_step,
               "reached_horizon": reached, "horizon": run.horizon,
               # prevented: not collapsed by the horizon; undecided (None) while short of it
               "collapse_prevented": (not mp.collapsed) if reached else (False if mp.collapsed else None),
               "warning_step": mp.warning_step,
               "warning_reason": mp.warning_reason, "lead_time": mp.lead_time,
               "wall_time_s": float(last["wall_time"]) if last.get("wall_time") not in (None, "") else None,
               "K": run.cfg.K, "device": _device(run, steps), "commit": run.provenance.get("git_commit")}
        for label, at in (("test_acc_1e6", 10**6), ("test_acc_1e7", 10**7)):
            upto = [r for r in d if int(r["step"]) <= at]
            row[label] = float(upto[-1]["test_acc"]) if steps >= at else None
        row.update(penalty_active(d))
        hk = [r for r in run.htsr if int(r["member"]) == k]
        if hk:
            late = [r for r in hk if int(r["step"]) >= mp.peak_step] or hk
            fitted = [r for r in late if not math.isnan(_value(r, "alpha"))]
            if fitted:
                lo = min(fitted, key=lambda r: _value(r, "alpha"))
                row["min_alpha_after_peak"], row["min_alpha_layer"] = _value(lo, "alpha"), lo["layer"]
            row["max_traps_after_peak"] = max(_value(r, "traps_mean") for r in late)
            end_step = max(int(r["step"]) for r in hk)
            end = sorted((r for r in hk if int(r["step"]) == end_step), key=lambda r: r["layer"])
            row["end_alpha"] = _fmt_layers({r["layer"]: _value(r, "alpha") for r in end})
            row["end_traps"] = _fmt_layers({r["layer"]: _value(r, "traps_mean") for r in end})
            if mp.collapsed:
                row.update(_alpha_at(hk, mp.collapse_step))
        rows.append(row)
    return rows


def penalty_active(metrics: list[dict]) -> dict:
    """How often the soft-α penalty acted, from one member's metrics rows: ``penalty_points`` =
    (log points with ``penalty`` > 0, log points with a ``penalty`` value) and ``penalty_active``
    = "n/N"; empty for a run without the column (not a penalty run). With the hook's refresh count
    (``penalty_refreshes*`` columns) also ``penalty_refreshes`` = (active, refreshes, counted from
    step) at the last row and ``penalty_refreshes_active`` = "n/N from S"."""
    vals = [float(r["penalty"]) for r in metrics if r.get("penalty") not in (None, "")]
    if not vals:
        return {}
    n = sum(v > 0 for v in vals)
    out = {"penalty_points": (n, len(vals)), "penalty_active": f"{n}/{len(vals)}"}
    counted = [r for r in metrics if r.get("penalty_refreshes") not in (None, "")]
    if counted:      # the hook's cumulative count: its last value at or before the horizon
        last = counted[-1]
        n, m, since = (int(float(last[c])) for c in ("penalty_refreshes_active", "penalty_refreshes",
                                                      "penalty_counted_from"))
        out.update(penalty_refreshes=(n, m, since), penalty_refreshes_active=f"{n}/{m} from {since}")
    return out


def _alpha_at(hk: list[dict], step: int) -> dict:
    """Every layer's fitted alpha at the last analysed step ≤ ``step`` among one member's HTSR rows
    ``hk``: ``collapse_alpha`` (as ``end_alpha``), ``collapse_alpha_step`` and the numbers per layer
    (``collapse_alpha_by_layer``; unfitted layers left out); empty if nothing was analysed by then."""
    rows = sorted(_nearest_row(hk, step), key=lambda r: r["layer"])
    if not rows:
        return {}
    alphas = {r["layer"]: _value(r, "alpha") for r in rows}
    return {"collapse_alpha": _fmt_layers(alphas), "collapse_alpha_step": int(rows[0]["step"]),
            "collapse_alpha_by_layer": {k: v for k, v in alphas.items() if not math.isnan(v)}}


# ---------------------------------------------------------------------------- per method
def _stats(vals) -> tuple[float, float] | None:
    vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def device_kinds(devices: str) -> str:
    """The kinds of device ("cpu", "cuda", ...: the part of a ``device`` cell before " (host or
    accelerator)", without a device index or a share: "cuda:0 (H200) 60 %" is "cuda", "unrecorded
    18 %" is "unrecorded") in a ``device`` cell or a method's ``devices`` (cells joined by ", "),
    sorted, joined by "+"."""
    return "+".join(sorted({re.split(r"[ :(]", d.strip())[0] for d in devices.split(", ") if d.strip()}))


def same_device_kind(devices_a: str, devices_b: str) -> bool:
    """Whether two runs' (or two methods') wall times may be compared: every device of both is of
    one kind (``device_kinds``)."""
    return "+" not in device_kinds(f"{devices_a}, {devices_b}")


def seconds_per_1e5_member_steps(wall_time_s, K, steps) -> float | None:
    """Training cost of one member: wall_time_s / K / steps · 10^5 seconds per 10^5 steps (a run's wall
    time is shared by its K batched members). None without a wall time (missing, "" or 0) or without steps.
    Accepts numbers or the strings of a verdict.csv row."""
    wall = None if wall_time_s in ("", None) else float(wall_time_s)
    if not wall or not int(steps):
        return None
    return wall / int(K) / int(steps) * 1e5


def method_rows(rows: list[dict]) -> list[dict]:
    """Rows grouped by ``method`` (order of first appearance): counts and mean ± sd."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    out = []
    for label, rs in groups.items():
        n = len(rs)
        done = [r for r in rs if r["reached_horizon"]]   # the numbers below describe these
        agg = {"method": label, "method_name": rs[0]["method_name"], "lr": rs[0]["lr"], "wd": rs[0]["wd"],
               "wd_ref": rs[0].get("wd_ref"), "n": n,
               "seeds": ",".join(str(r["seed"]) for r in rs),
               "steps_min": min(r["steps"] for r in rs), "steps_max": max(r["steps"] for r in rs),
               "horizon": rs[0]["horizon"], "n_reached": len(done),
               "collapsed": sum(bool(r["collapsed"]) for r in rs),
               "prevented": sum(r["collapse_prevented"] is True for r in rs),
               "warned": sum(r["warning_step"] is not None for r in rs),
               "devices": ", ".join(sorted({r["device"] for r in rs})),
               "runs": ", ".join(dict.fromkeys(r["run"] for r in rs))}
        for key in ("peak_test_acc", "peak_step", "final_test_acc", "final_train_acc", "drop_from_peak",
                    "late_trend", "min_alpha_after_peak", "max_traps_after_peak", "lead_time"):
            agg[key] = _stats(r.get(key) for r in done)
        for key in ("test_acc_1e6", "test_acc_1e7"):   # only when every member got there
            vals = [r.get(key) for r in rs]
            agg[key] = _stats(vals) if all(v is not None for v in vals) else None
        agg["seconds_per_1e5_member_steps"] = _stats(
            seconds_per_1e5_member_steps(r["wall_time_s"], r["K"], r["steps"]) for r in done)
        at = [r["collapse_alpha_by_layer"] for r in rs if r.get("collapse_alpha_by_layer")]
        agg["collapse_alpha"] = {layer: _stats(d.get(layer) for d in at)
                                 for layer in sorted({k for d in at for k in d})}
        agg["collapse_alpha_n"] = len(at)
        agg["collapse_alpha_below"] = sum(min(d.values()) < ALPHA_AT_COLLAPSE_BELOW for d in at)
        pts = [r["penalty_points"] for r in rs if r.get("penalty_points")]
        agg["penalty_active"] = (f"{sum(n for n, _ in pts)}/{sum(m for _, m in pts)}" if pts else None)
        ref = [r["penalty_refreshes"] for r in rs if r.get("penalty_refreshes")]
        agg["penalty_refreshes_active"], agg["penalty_refreshes_members"] = None, len(ref)
        if ref:
            lo, hi = min(s for *_, s in ref), max(s for *_, s in ref)
            agg["penalty_refreshes_active"] = (f"{sum(n for n, *_ in ref)}/{sum(m for _, m, _ in ref)} from "
                                               + (f"{lo}" if lo == hi else f"{lo}–{hi}"))
        out.append(agg)
    return out


def _ms(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    mean, sd = v
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def method_markdown(agg: list[dict]) -> str:
    head = ["method", "seeds", "steps reached", "at the horizon", "peak test acc", "test acc at 1e6", "test acc at 1e7",
            "final test acc", "drop from peak", "late trend (test acc per decade)", "min alpha after peak",
            "max traps after peak", "penalty > 0 (log points)", "penalty > 0 (refreshes, from step)", "collapsed", "collapse prevented", "warned", "warning lead time (steps)",
            "s per 1e5 member-steps", "device"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in agg:
        steps = str(a["steps_min"]) if a["steps_min"] == a["steps_max"] else f"{a['steps_min']}–{a['steps_max']}"
        lines.append("| " + " | ".join([
            a["method"], f"{a['n']} ({a['seeds']})", steps, f"{a['n_reached']}/{a['n']}", _ms(a["peak_test_acc"]),
            _ms(a["test_acc_1e6"]), _ms(a["test_acc_1e7"]), _ms(a["final_test_acc"]),
            _ms(a["drop_from_peak"]), _ms(a["late_trend"]), _ms(a["min_alpha_after_peak"], 2), _ms(a["max_traps_after_peak"], 1),
            a.get("penalty_active") or "–", a.get("penalty_refreshes_active") or "–", f"{a['collapsed']}/{a['n']}", f"{a['prevented']}/{a['n']}", f"{a['warned']}/{a['n']}",
            _ms(a["lead_time"], 0), _ms(a["seconds_per_1e5_member_steps"], 0), a["devices"]]) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict]) -> str:
    head = ["method", "seed", "steps", "peak test acc (step)", "test acc at 1e6", "test acc at 1e7",
            "final test acc", "final train acc", "late trend (per decade)", "min alpha after peak (layer)", "max traps after peak",
            "alpha at end", "traps at end (mean)", "penalty > 0 (log points)", "penalty > 0 (refreshes, from step)",
            "collapsed (step)", "alpha at collapse (step)",
            "collapse prevented", "warning (step, reason)", "lead time", "wall time s (K)", "device", "run (created at commit)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        warn = "–" if r["warning_step"] is None else f"{r['warning_step']} ({r['warning_reason']})"
        coll = _cell(r["collapsed"]) + (f" ({r['collapse_step']})" if r["collapsed"] else "")
        at_coll = (f"{r['collapse_alpha']} ({r['collapse_alpha_step']})" if r.get("collapse_alpha") else "–")
        lines.append("| " + " | ".join([
            r["method"], str(r["seed"]), str(r["steps"]),
            f"{r['peak_test_acc']:.4f} ({r['peak_step']})", _cell(r.get("test_acc_1e6")),
            _cell(r.get("test_acc_1e7")), _cell(r["final_test_acc"]), _cell(r["final_train_acc"]),
            _cell(r.get("late_trend")),
            f"{_cell(r.get('min_alpha_after_peak'))} ({r.get('min_alpha_layer', '–')})",
            _cell(r.get("max_traps_after_peak")), r.get("end_alpha", "–"), r.get("end_traps", "–"),
            r.get("penalty_active", "–"), r.get("penalty_refreshes_active", "–"), coll, at_coll, _cell(r["collapse_prevented"]), warn, _cell(r["lead_time"]),
            f"{_cell(r['wall_time_s'])} ({r['K']})", r["device"], f"{r['run']} ({r['commit']})"]) + " |")
    return "\n".join(lines) + "\n"


def fixed_wd_control(a: dict, agg: list[dict]) -> dict | None:
    """The fixed-WD control of method ``a`` (a ``method_rows`` row) among ``agg``: the plain run at
    the same lr whose wd is nearest ``a``'s ``wd_ref`` (log scale), if within ``CONTROL_WD_FACTOR``
    of it; None for a method without ``wd_ref`` or without such a run."""
    ref = a.get("wd_ref")
    if not ref:
        return None
    plain = [b for b in agg if b["method_name"] == "none" and b["lr"] == a["lr"] and b["wd"] > 0]
    near = [b for b in plain if max(b["wd"] / ref, ref / b["wd"]) <= CONTROL_WD_FACTOR]
    return min(near, key=lambda b: abs(math.log(b["wd"] / ref)), default=None)


def _against(a: dict, ref: dict, with_cost: bool) -> str:
    d_final = a["final_test_acc"][0] - ref["final_test_acc"][0]
    d_drop = a["drop_from_peak"][0] - ref["drop_from_peak"][0]
    s = f"final {d_final:+.3f}, drop {d_drop:+.3f}"
    if with_cost and a["seconds_per_1e5_member_steps"] and ref["seconds_per_1e5_member_steps"]:
        if same_device_kind(a["devices"], ref["devices"]):
            ratio = a["seconds_per_1e5_member_steps"][0] / ref["seconds_per_1e5_member_steps"][0]
            s += f", wall time per member-step ×{ratio:.2f}"
        else:
            s += f", wall time not compared ({device_kinds(a['devices'])} against {device_kinds(ref['devices'])})"
    return s


def findings_markdown(agg: list[dict]) -> str:
    """The answer in sentences, generated from ``method_rows``: for each method, how many members
    collapsed, final test accuracy, drop and late trend; final and drop against the reference (the
    plain run with wd 0 at the same lr, when present) with the cost ratio of training seconds per
    member-step, and against its fixed-WD control (``fixed_wd_control``) with that control's
    collapsed count."""
    lines = []
    for a in agg:
        ref = next((b for b in agg if b["method_name"] == "none" and b["wd"] == 0
                    and b["lr"] == a["lr"]), None)
        if a["horizon"] is None:
            reach = (f"{a['n']} seeds, to step " + (f"{a['steps_min']:,}" if a["steps_min"] == a["steps_max"]
                                                    else f"{a['steps_min']:,}–{a['steps_max']:,}"))
        else:
            reach = f"{a['n']} seeds, {a['n_reached']} of them at step {a['horizon']:,}"
            if a["n_reached"] < a["n"]:
                reach += f", the others short of it (from step {a['steps_min']:,})"
        by = f"step {a['horizon']:,}" if a["horizon"] is not None else "their last step"
        s = (f"* **{a['method']}** ({reach}): collapsed in {a['collapsed']} of {a['n']}, not collapsed by "
             f"{by} (= collapse prevented) in {a['prevented']}")
        if not a["n_reached"]:
            lines.append(s + "; no member has reached the horizon yet.")
            continue
        s += (f"; over the {a['n_reached']} at the end: peak test accuracy {_ms(a['peak_test_acc'])}, "
              f"final {_ms(a['final_test_acc'])}, drop {_ms(a['drop_from_peak'])}")
        if a["late_trend"] is not None:
            mean, sd = a["late_trend"]
            s += (f", late trend {mean:+.3f} ± {sd:.3f} per decade of steps (slope of test accuracy "
                  f"over the last {LATE_WINDOW_DECADES:g} decade)")
        if ref is not None and a is not ref and ref["n_reached"]:
            s += f"; against {ref['method']}: " + _against(a, ref, with_cost=True)
        ctl = fixed_wd_control(a, agg)
        if ctl is not None and ctl["n_reached"]:
            s += (f"; against its fixed-WD control {ctl['method']} (wd_ref {a['wd_ref']:g}; collapsed in "
                  f"{ctl['collapsed']} of {ctl['n']}): " + _against(a, ctl, with_cost=False))
        if a.get("penalty_active"):
            s += f"; the penalty term was > 0 at {a['penalty_active'].replace('/', ' of ')} log points (all members)"
        if a.get("penalty_refreshes_active"):
            n_m, since = a["penalty_refreshes_active"].split(" from ")
            s += (f" and at {n_m.replace('/', ' of ')} of the hook's refreshes counted from step {since} "
                  f"({a['penalty_refreshes_members']} of {a['n']} members counted)")
        if a["lead_time"] is not None:
            s += f"; the early warning came {_ms(a['lead_time'], 0)} steps before the collapse"
        if a.get("collapse_alpha_n"):
            s += (f"; alpha at the collapse (last analysed step at or before it, {a['collapse_alpha_n']} "
                  "collapsed member" + ("s" if a["collapse_alpha_n"] > 1 else "") + "): "
                  + ", ".join(f"{layer} {_ms(v, 2)}" for layer, v in a["collapse_alpha"].items())
                  + f", a layer below {ALPHA_AT_COLLAPSE_BELOW:g} in {a['collapse_alpha_below']} of "
                  f"{a['collapse_alpha_n']}")
        lines.append(s + ".")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- method groups
@dataclass
class MethodData:
    """The members of every run that trained with one ``member_label``, renumbered 0..n-1."""
    label: str
    lr: float
    metrics: list[dict] = field(default_factory=list)
    htsr: list[dict] = field(default_factory=list)
    phases: list = field(default_factory=list)


def method_groups(runs: list[RunData]) -> list[MethodData]:
    """Members of the runs grouped by ``member_label``; each keeps the phases its run computed."""
    groups: dict[str, MethodData] = {}
    for run in runs:
        for mp in run.phases:
            label = member_label(run.cfg, mp.member)
            g = groups.setdefault(label, MethodData(label, run.cfg.member_lrs()[mp.member]))
            new = len(g.phases)
            g.metrics += [{**r, "member": str(new)} for r in run.metrics if int(r["member"]) == mp.member]
            g.htsr += [{**r, "member": str(new)} for r in run.htsr if int(r["member"]) == mp.member]
            g.phases.append(dataclasses.replace(mp, member=new))
    return list(groups.values())


def paper_steps(lr: float) -> list[int]:
    """Paper A's table steps (1e5, 1e6, 1e7 at lr 5e-4) moved to learning rate ``lr``: with Adam the
    step size, hence the timeline, scales with lr, so step t at 5e-4 ~ step t * 5e-4 / lr (the
    fast preset lr 5e-3: 1e4, 1e5, 1e6 — its measured peak near 3e4 agrees to a factor ~3)."""
    from .paper_values import PAPER_A_LR, PAPER_A_STEPS
    return [max(1, round(s * PAPER_A_LR / lr)) for s in PAPER_A_STEPS]


def _cells_at(htsr: list[dict], steps: list[int], col: str) -> dict[tuple[str, int], list[float]]:
    """(layer, i) -> every member's value at steps[i] (the latest analysed step at or before it;
    only members whose analysis got to steps[i]); i = len(steps) is each member's last step."""
    cells: dict[tuple[str, int], list[float]] = {}
    for k in sorted({int(r["member"]) for r in htsr}):
        mine = [r for r in htsr if int(r["member"]) == k]
        last = max(int(r["step"]) for r in mine)
        for i, st in enumerate([*steps, last]):
            if last >= st:
                for r in _nearest_row(mine, st):
                    cells.setdefault((r["layer"], i), []).append(_value(r, col))
    return cells


def paper_tables(groups: list[MethodData]) -> str:
    """Our Tables 1 (alpha) and 2 (traps) per method beside paper A's values (WD = 0), read at
    paper A's steps moved to each method's learning rate (``paper_steps``) and at the end."""
    from .paper_values import PAPER_A, PAPER_A_POINTS, PAPER_A_TABLE1_ALPHA, PAPER_A_TABLE2_TRAPS, fmt_paper
    out = []
    at = {g.label: paper_steps(g.lr) for g in groups}
    layers = sorted({r["layer"] for g in groups for r in g.htsr})
    head = "| layer | point | " + " | ".join(
        f"ours: {g.label} (n={len(g.phases)}; read at steps {'/'.join(f'{s:,}' for s in at[g.label])})"
        for g in groups) + f" | {PAPER_A} |"
    for title, col, paper in (("Table 1 — HTSR alpha", "alpha", PAPER_A_TABLE1_ALPHA),
                              ("Table 2 — correlation traps (mean over shuffles)", "traps_mean",
                               PAPER_A_TABLE2_TRAPS)):
        cells = {g.label: _cells_at(g.htsr, at[g.label], col) for g in groups}
        out += [f"### {title}: ours (mean ± sd over each method's members) beside paper A\n", head,
                "|---" * (len(groups) + 3) + "|"]
        for layer in layers:
            for i, point in enumerate([*PAPER_A_POINTS, "end of our run"]):
                ours = [_mean_sd(cells[g.label].get((layer, i), [])) if cells[g.label].get((layer, i))
                        else "not reached" for g in groups]
                theirs = ("–" if i == len(PAPER_A_POINTS) else
                          fmt_paper(paper[layer][i]) if layer in paper else "not reported")
                out.append(f"| {layer} | {point} | " + " | ".join(ours) + f" | {theirs} |")
        out.append("")
    out.append("Each of our cells reads every member at the latest analysed step at or before the "
               "step in its column header (\"not reached\": the run has not got there yet); "
               "— = not fitted. End steps per member: " + "; ".join(
                   f"{g.label}: " + ", ".join(str(max((int(r['step']) for r in g.htsr if int(r['member']) == mp.member),
                                                      default="not analysed yet")) for mp in g.phases)
                   for g in groups) + ".\n")
    return "\n".join(out)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", label).strip("_")


def _frame(rows: list[dict], cols: tuple[str, ...]) -> pd.DataFrame:
    """Table rows (strings, as read from CSV) as a DataFrame with ``cols`` numeric (blank: NaN)."""
    df = pd.DataFrame(rows)
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def plot_methods(groups: list[MethodData], out: Path) -> list[Path]:
    """Per method: Figure 1 (train/test accuracy of every member, mean in bold) and Figure 4
    (alpha of every layer, members thin, phases of the first member shaded)."""
    from .plots import plot_accuracy, plot_alpha
    made = []
    for g in groups:
        m = _frame(g.metrics, ("step", "member", "train_acc", "test_acc"))
        p1 = out / f"fig1_accuracy_{_slug(g.label)}.png"
        plot_accuracy(m, p1, f"{g.label}: accuracy, {len(g.phases)} seed(s) (Figure 1)")
        made.append(p1)
        if g.htsr:
            h = _frame(g.htsr, ("step", "member", "alpha"))
            p4 = out / f"fig4_alpha_{_slug(g.label)}.png"
            plot_alpha(h, m, p4, g.phases, f"{g.label}: alpha per layer (Figure 4)")
            made.append(p4)
    return made


def plot_verdict(groups: list[MethodData], path: Path) -> None:
    """All methods on one page: the mean over each method's members of test accuracy and of the
    first layer's alpha (one line per method stays readable with many methods; the members are in
    the per-method figures of ``plot_methods``)."""
    from .plots import _lines, _save, plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        m = _frame(g.metrics, ("step", "member", "test_acc"))
        n = m["member"].nunique()
        label = f"{g.label} (mean of {n})" if n > 1 else g.label
        color, style = colors[i % len(colors)], "-" if i < len(colors) else "--"  # > 10 methods: dashed
        _lines(a1, _member_mean(m, "test_acc"), "test_acc", label, color, style)
        first = [r for r in g.htsr if r["layer"] == (g.htsr[0]["layer"] if g.htsr else "")]
        if first:
            h = _frame(first, ("step", "member", "alpha"))
            h["alpha"] = h["alpha"].where(h["alpha"] >= 0)
            _lines(a2, _member_mean(h, "alpha"), "alpha", label, color, style)
    a2.axhline(2.0, color="k", ls=":", lw=1.2)
    first_layer = next((g.htsr[0]["layer"] for g in groups if g.htsr), "first layer")
    for ax, t in ((a1, "test accuracy"), (a2, f"weightwatcher alpha of {first_layer}")):
        ax.set_xscale("log")
        ax.set_xlabel("steps")
        ax.set_title(t)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    # one legend for both panels, below them (method labels are long: inside an axes they hide lines)
    fig.legend(*a1.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               fontsize=8, frameon=False)
    _save(fig, path)


def _member_mean(df, col: str):
    """``df`` reduced to one pseudo-member 0 holding the mean of ``col`` over members per step."""
    out = df.groupby("step", as_index=False)[col].mean()
    out["member"] = 0
    return out


#: the files of a run directory a verdict needs (no checkpoints, no weight snapshots)
RUN_FILES = (CONFIG, METRICS, HTSR, SUMMARY, SEGMENTS, "phases.csv", "tables.md")


def folder_horizon(folder: str | Path, required: bool = False) -> int | None:
    """The step every run of a verdict folder is cut at (its ``methods.csv`` column ``horizon``);
    None for a folder written without ``horizon`` (an error with ``required``). A folder whose
    methods have different horizons, or one without ``verdict.csv`` / ``methods.csv`` (not a verdict
    folder), is an error."""
    for name in ("verdict.csv", "methods.csv"):
        if not (Path(folder) / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name} — not a verdict folder (write one with "
                                    "experiments.evidence --verdict DIR or experiments.report --verdict DIR)")
    with open(Path(folder) / "methods.csv", newline="") as f:
        horizons = {r["horizon"] for r in csv.DictReader(f)}
    if len(horizons) != 1 or (required and "" in horizons):
        raise ValueError(f"{folder}: its runs are not cut at one horizon (methods.csv horizon = {sorted(horizons)}); "
                         "build it with --horizon STEPS")
    h = horizons.pop()
    return int(h) if h else None


def copy_run_files(runs, dest: Path) -> None:
    """Copy each run's ``RUN_FILES`` to ``dest/<run name>/`` so the verdict can be rebuilt from
    committed files alone (``experiments.report dest/* --verdict ...``)."""
    import shutil
    for run in runs:
        run = Path(run)
        (dest / run.name).mkdir(parents=True, exist_ok=True)
        for f in RUN_FILES:
            if (run / f).is_file():
                shutil.copy2(run / f, dest / run.name / f)


def _flat(v) -> str:
    """A ``method_rows`` value as one ``methods.csv`` cell: mean ± sd; per layer "fc1:m ± sd ..."."""
    if isinstance(v, tuple):
        return f"{v[0]:.6g} ± {v[1]:.3g}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{_flat(x)}" for k, x in v.items() if x is not None)
    return v


def write_verdict(runs, out_dir: str | Path, rules: PhaseRules | None = None,
                  horizon: int | None = None, copy_runs: bool = False) -> list[dict]:
    """Read every run (cut at ``horizon``) and write into ``out_dir``: ``verdict.csv`` (one row
    per member), ``verdict.md`` (per-method table, then per-member table), ``methods.csv``,
    ``paper_tables.md``, ``verdict_test_acc_alpha.png`` and per-method figures in ``figures/``;
    with ``copy_runs`` also the run files themselves in ``runs/`` (``copy_run_files``)."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if copy_runs:
        copy_run_files(runs, out / "runs")
    data = [load_run(r, rules, horizon) for r in runs]
    rows = [row for run in data for row in run_rows(run)]
    with open(out / "verdict.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    agg = method_rows(rows)
    with open(out / "methods.csv", "w", newline="") as f:
        flat = [{k: _flat(v) for k, v in a.items()} for a in agg]
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    groups = method_groups(data)
    cut = f"cut at step {horizon}" if horizon else "each run to its last logged step"
    (out / "verdict.md").write_text(
        f"## Findings ({cut}; generated from the table below)\n\n" + findings_markdown(agg)
        + f"\n## Per method ({cut}; mean ± sd over members)\n\n" + method_markdown(agg)
        + "\n## Per member\n\n" + markdown_table(rows))
    (out / "paper_tables.md").write_text(paper_tables(groups))
    plot_verdict(groups, out / "verdict_test_acc_alpha.png")
    plot_methods(groups, out / "figures")
    return rows
