"""Summaries of a run directory's metrics table (per member and mean +- sd over members)."""
from __future__ import annotations

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
