"""Phase labels (pre-grokking / grokking / anti-grokking) and the data-free early warning.

Labels come from accuracies only, per member, over its logged steps s with test accuracy a(s):

* peak:      the step s* of the highest test accuracy a* = max_s a(s) (first one on ties);
* onset:     the first step with a(s) >= a(0) + onset_fraction * (a* - a(0)) — the rise has
             started (default 0.1 of the way from the initial to the peak accuracy);
* collapse:  the first step after s* with a(s) <= a* - collapse_drop (default 0.05, i.e. five
             points of test accuracy below the peak) — the late drop has started.

Steps before the onset are **pre-grokking**, from the onset up to (not including) the collapse
**grokking**, from the collapse on **anti-grokking**. A member *collapsed* when a collapse step
exists. (Paper A reports drops of more than 25 points at 10^7 steps; 5 points is far above the
~0.5-point sampling noise of a 10k test set, and the threshold is a flag.)

Early warning (data-free: weights only). Two signals, each armed only once training accuracy
has reached ``min_train_acc`` (default 0.99: before the data is fitted the spectra are still close
to their random initialisation and mean nothing), and each required to hold for ``persist``
consecutive HTSR log points:

* **alpha**: any monitored layer has alpha < ``alpha_threshold`` (default 2.0);
* **traps**: any monitored layer's mean correlation-trap count has risen by at least
  ``trap_threshold`` (default 1) above its value at the first armed step. Traps are counted
  relative to that baseline because a layer whose entries acquire a non-zero mean carries one
  spike that survives shuffling from early training on (measured: fc1 of the paper MLP shows
  1 trap from step ~100, long before any collapse); "traps appear" means new ones.

The warning is the earlier of the two; lead time = collapse step - warning step (> 0: the
warning came first), reported for the combined warning and for each signal.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

PRE, GROK, ANTI = "pre-grokking", "grokking", "anti-grokking"


@dataclass
class PhaseRules:
    onset_fraction: float = 0.1
    collapse_drop: float = 0.05
    alpha_threshold: float = 2.0
    trap_threshold: float = 1.0
    min_train_acc: float = 0.99
    persist: int = 1
    layers: tuple[str, ...] | None = None   # monitored layers; None = every fitted layer


@dataclass
class MemberPhases:
    member: int
    peak_step: int
    peak_test_acc: float
    onset_step: int | None
    collapse_step: int | None
    collapsed: bool
    labels: dict[int, str]          # step -> label
    warning_step: int | None = None        # the earlier of the two signals
    warning_reason: str | None = None
    lead_time: int | None = None           # collapse_step - warning_step
    alpha_warning_step: int | None = None
    alpha_lead_time: int | None = None
    trap_warning_step: int | None = None
    trap_lead_time: int | None = None

    def brief(self) -> dict:
        d = asdict(self)
        d.pop("labels")
        return d


def label_member(steps: Sequence[int], test_acc: Sequence[float], rules: PhaseRules,
                 member: int = 0) -> MemberPhases:
    """Phase label of every logged step of one member (steps ascending)."""
    if not steps:
        raise ValueError("no logged steps")
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    s = [int(steps[i]) for i in order]
    a = [float(test_acc[i]) for i in order]
    i_peak = max(range(len(a)), key=lambda i: (a[i], -i))
    peak = a[i_peak]
    threshold = a[0] + rules.onset_fraction * (peak - a[0])
    onset = next((s[i] for i in range(len(a)) if a[i] >= threshold and peak > a[0]), None)
    collapse = next((s[i] for i in range(i_peak + 1, len(a)) if a[i] <= peak - rules.collapse_drop), None)
    labels = {}
    for st in s:
        if collapse is not None and st >= collapse:
            labels[st] = ANTI
        elif onset is not None and st >= onset:
            labels[st] = GROK
        else:
            labels[st] = PRE
    return MemberPhases(member, s[i_peak], peak, onset, collapse, collapse is not None, labels)


def early_warning(htsr_rows: Iterable[dict], train_acc: dict[int, float], rules: PhaseRules
                  ) -> dict[str, tuple[int | None, str | None]]:
    """First step where each signal fires: ``{"alpha": (step, reason), "traps": (step, reason)}``.

    ``htsr_rows``: one member's rows (step, layer, alpha, traps_mean); ``train_acc``: step ->
    training accuracy of that member.
    """
    by_step: dict[int, list[dict]] = {}
    for r in htsr_rows:
        if rules.layers and r["layer"] not in rules.layers:
            continue
        by_step.setdefault(int(r["step"]), []).append(r)
    armed = [st for st in sorted(by_step) if train_acc.get(st, 0.0) >= rules.min_train_acc]
    baseline = {r["layer"]: _num(r.get("traps_mean")) or 0.0 for r in by_step[armed[0]]} if armed else {}

    def fire(st: int, kind: str) -> list[str]:
        out = []
        for r in by_step[st]:
            if kind == "alpha":
                alpha = _num(r.get("alpha"))
                if alpha is not None and 0 <= alpha < rules.alpha_threshold:   # -1 = not fitted
                    out.append(f"alpha({r['layer']})={alpha:.2f}<{rules.alpha_threshold:g}")
            else:
                traps = _num(r.get("traps_mean"))
                base = baseline.get(r["layer"], 0.0)
                if traps is not None and traps - base >= rules.trap_threshold:
                    out.append(f"traps({r['layer']})={traps:.1f} (was {base:.1f})")
        return out

    result = {}
    for kind in ("alpha", "traps"):
        run, first = 0, None
        result[kind] = (None, None)
        for st in armed:
            reasons = fire(st, kind)
            if reasons:
                run += 1
                first = first or (st, ", ".join(reasons))
                if run >= rules.persist:
                    result[kind] = first
                    break
            else:
                run, first = 0, None
    return result


def _num(v) -> float | None:
    if v is None or v == "":
        return None
    x = float(v)
    return None if x != x else x   # NaN -> None


def analyse_run(metrics_rows: list[dict], htsr_rows: list[dict], rules: PhaseRules) -> list[MemberPhases]:
    """Labels, collapse and early warning for every member of a run."""
    out = []
    for k in sorted({int(r["member"]) for r in metrics_rows}):
        mine = sorted((r for r in metrics_rows if int(r["member"]) == k), key=lambda r: int(r["step"]))
        mp = label_member([int(r["step"]) for r in mine], [float(r["test_acc"]) for r in mine], rules, k)
        train_acc = {int(r["step"]): float(r["train_acc"]) for r in mine}
        sig = early_warning((r for r in htsr_rows if int(r["member"]) == k), train_acc, rules)
        mp.alpha_warning_step, mp.trap_warning_step = sig["alpha"][0], sig["traps"][0]
        fired = [v for v in sig.values() if v[0] is not None]
        if fired:
            mp.warning_step, mp.warning_reason = min(fired)
        if mp.collapse_step is not None:
            lead = lambda st: None if st is None else mp.collapse_step - st  # noqa: E731
            mp.lead_time, mp.alpha_lead_time = lead(mp.warning_step), lead(mp.alpha_warning_step)
            mp.trap_lead_time = lead(mp.trap_warning_step)
        out.append(mp)
    return out
