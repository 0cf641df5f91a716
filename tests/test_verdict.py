"""The verdict (alphareg.verdict) on hand-made run directories: every number checked against
values computed by hand from the tables written here; paper A's constants against DESIGN.md."""
import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from alphareg.config import RunConfig
from alphareg.paper_values import PAPER_A_TABLE1_ALPHA, PAPER_A_TABLE2_TRAPS
from alphareg.phases import PhaseRules
from alphareg.verdict import (findings_markdown, late_trend, load_run, member_label, method_groups,
                              method_markdown, method_rows, paper_steps, paper_tables, run_rows, write_verdict)

STEPS = [0, 10, 100, 1000, 10000]


def make_run(root: Path, name: str, seeds, test_accs, fc1_alphas, *, wd=0.0, method="none",
             traps=None, wall=(0, 1, 2, 3, 4), steps=STEPS, device="cpu", extra=None, **method_args) -> Path:
    """A run directory as the engine writes it: config.json, metrics.csv, htsr.csv; ``extra``: more
    metrics columns (name -> values per member, per step), e.g. the penalty hook's."""
    extra = extra or {}
    cfg = RunConfig(lr=[5e-3], wd=[wd], seeds=list(seeds), method=method, name=name, **method_args)
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": cfg.to_dict(),
                                                  "provenance": {"host": "testhost",
                                                                 "git_commit": "abc1234"}}))
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "member", "seed", "lr", "wd", "train_acc", "test_acc", "wall_time"]
                   + list(extra))
        for i, st in enumerate(steps):
            for k, seed in enumerate(seeds):
                w.writerow([st, k, seed, 5e-3, wd, 0.5 if st == 0 else 1.0, test_accs[k][i], wall[i]]
                           + [v[k][i] for v in extra.values()])
    with open(path / "htsr.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "member", "seed", "layer", "alpha", "traps_mean"])
        for i, st in enumerate(steps):
            for k, seed in enumerate(seeds):
                w.writerow([st, k, seed, "fc1", fc1_alphas[k][i], (traps or {}).get((k, st), 1.0)])
                w.writerow([st, k, seed, "fc2", 3.0, 0.0])
    (path / "summary.json").write_text(json.dumps({"device": device}))
    return path


@pytest.fixture
def runs(tmp_path):
    a = make_run(tmp_path, "wd0_s01", [0, 1], [[0.1, 0.5, 0.9, 0.8, 0.7], [0.1, 0.4, 0.8, 0.8, 0.79]],
                 [[6, 5, 1.9, 1.8, 1.5], [6, 5, 4, 3, 2.5]], traps={(0, 1000): 4.0})
    b = make_run(tmp_path, "wd0_s2", [2], [[0.1, 0.3, 0.6, 0.9, 0.5]], [[6, 5, 4, 3, -1]])
    c = make_run(tmp_path, "pen_s0", [0], [[0.1, 0.5, 0.9, 0.9, 0.88]], [[6, 5, 2.5, 2.2, 2.1]],
                 method="penalty")
    return a, b, c


def test_member_rows_are_read_from_the_tables(runs):
    a, b, _ = runs
    r0, r1 = run_rows(a)
    assert r0["method"] == r1["method"] == "plain, lr 0.005, wd 0"
    assert (r0["peak_test_acc"], r0["peak_step"], r0["final_test_acc"]) == (0.9, 100, 0.7)
    assert r0["drop_from_peak"] == pytest.approx(0.2)
    # collapse: first step after the peak 0.05 below it; warning: fc1 alpha 1.9 < 2 at step 100
    assert (r0["collapsed"], r0["collapse_step"], r0["collapse_prevented"]) == (True, 1000, False)
    assert (r0["warning_step"], r0["lead_time"]) == (100, 900)
    assert r0["min_alpha_after_peak"] == 1.5 and r0["min_alpha_layer"] == "fc1"
    assert r0["max_traps_after_peak"] == 4.0          # fc1 at step 1000
    assert r0["end_alpha"] == "fc1:1.50 fc2:3.00" and r0["end_traps"] == "fc1:1.00 fc2:0.00"
    assert (r0["wall_time_s"], r0["K"], r0["device"], r0["commit"]) == (4.0, 2, "cpu (testhost)", "abc1234")
    assert r0["test_acc_1e6"] is None and r0["test_acc_1e7"] is None   # not reached
    # seed 1: 0.79 is only 0.01 below its peak 0.8 -> not collapsed; no warning ever fires
    assert (r1["collapsed"], r1["collapse_prevented"], r1["warning_step"], r1["lead_time"]) == (False, True, None, None)
    # seed 2: alpha -1 (not fitted) is neither a warning nor the minimum
    (r2,) = run_rows(b)
    assert r2["warning_step"] is None and r2["min_alpha_after_peak"] == 3.0


def test_alpha_at_the_collapse_is_read_at_the_last_analysed_step_not_after_it(runs):
    """Per member: every layer's alpha at the last HTSR step <= the collapse step; per method: mean ±
    sd per layer over the collapsed members (unfitted alphas left out), and how many had one < 2."""
    a, b, c = runs
    r0, r1 = run_rows(a)
    assert (r0["collapse_alpha"], r0["collapse_alpha_step"]) == ("fc1:1.80 fc2:3.00", 1000)
    assert "collapse_alpha" not in r1                       # seed 1 did not collapse
    (r2,) = run_rows(b)                                     # collapsed at 10000, fc1 unfitted (-1) there
    assert (r2["collapse_alpha_step"], r2["collapse_alpha_by_layer"]) == (10000, {"fc2": 3.0})
    # drop the HTSR rows at the collapse step 1000: the last analysed step before it (100) is used
    rows = list(csv.DictReader(open(a / "htsr.csv", newline="")))
    with open(a / "htsr.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["step"] != "1000")
    r0, _ = run_rows(a)
    assert (r0["collapse_step"], r0["collapse_alpha"], r0["collapse_alpha_step"]) == (1000, "fc1:1.90 fc2:3.00", 100)
    agg = {m["method"]: m for m in method_rows(run_rows(a) + run_rows(b) + run_rows(c))}
    plain = agg["plain, lr 0.005, wd 0"]
    assert plain["collapse_alpha"] == {"fc1": (1.9, 0.0), "fc2": (3.0, 0.0)}
    assert (plain["collapse_alpha_n"], plain["collapse_alpha_below"]) == (2, 1)   # seed 0's fc1 1.9 < 2
    assert ("alpha at the collapse (last analysed step at or before it, 2 collapsed members): "
            "fc1 1.90 ± 0.00, fc2 3.00 ± 0.00, a layer below 2 in 1 of 2") in findings_markdown(list(agg.values()))
    pen = agg["penalty, target_alpha 2, lr 0.005, wd 0"]    # never collapsed: nothing said
    assert pen["collapse_alpha_n"] == 0 and "alpha at the collapse" not in findings_markdown([pen])


def test_penalty_active_counts_the_log_points_where_the_penalty_term_was_positive(runs, tmp_path):
    """Per member "n/N" (log points with penalty > 0 / with a penalty value, cut at the horizon);
    per method summed over its members; nothing for a run without the column."""
    pen = make_run(tmp_path, "pen_s12", [1, 2], [[0.1, 0.5, 0.9, 0.9, 0.88]] * 2, [[6, 5, 2.5, 2.2, 2.1]] * 2,
                   method="penalty", extra={"penalty": [[0.0] * 5, [0.0, 0.0, 0.3, 0.0, 1e-9]]})
    r1, r2 = run_rows(pen)
    assert (r1["penalty_active"], r2["penalty_active"]) == ("0/5", "2/5")
    assert [r["penalty_active"] for r in run_rows(pen, horizon=100)] == ["0/3", "1/3"]
    a, b, c = runs
    assert all("penalty_active" not in r for r in run_rows(a) + run_rows(c))   # c: a penalty run without the column
    agg = {m["method"]: m for m in method_rows(run_rows(a) + run_rows(pen))}
    label = "penalty, target_alpha 2, lr 0.005, wd 0"
    assert agg[label]["penalty_active"] == "2/10" and agg["plain, lr 0.005, wd 0"]["penalty_active"] is None
    text = findings_markdown(list(agg.values()))
    assert text.count("the penalty term was > 0 at") == 1 and "> 0 at 2 of 10 log points (all members)" in text
    out = tmp_path / "v"
    write_verdict([a, pen], out)
    assert [r["penalty_active"] for r in csv.DictReader(open(out / "verdict.csv"))] == ["", "", "0/5", "2/5"]
    assert [m["penalty_active"] for m in csv.DictReader(open(out / "methods.csv"))] == ["", "2/10"]
    assert "| 2/10 | – | 0/2 |" in (out / "verdict.md").read_text()     # penalty > 0, refreshes, collapsed


def test_penalty_refreshes_active_reads_the_hooks_count_at_the_last_row_before_the_horizon(tmp_path):
    """The hook's cumulative count (empty before it was kept): per member "n/N from S" at the
    last row at or before the horizon; per method the sums and the range of S."""
    counts = {"penalty": [[0.0] * 5] * 2,
              "penalty_refreshes": [["", "", 3, 48, 498]] * 2,
              "penalty_refreshes_active": [["", "", 0, 5, 7], ["", "", 1, 1, 1]],
              "penalty_counted_from": [["", "", 40, 40, 40]] * 2}
    pen = make_run(tmp_path, "pen_s12", [1, 2], [[0.1, 0.5, 0.9, 0.9, 0.88]] * 2, [[6, 5, 2.5, 2.2, 2.1]] * 2,
                   method="penalty", extra=counts)
    r1, r2 = run_rows(pen)
    assert (r1["penalty_refreshes_active"], r2["penalty_refreshes_active"]) == ("7/498 from 40", "1/498 from 40")
    assert [r.get("penalty_refreshes_active") for r in run_rows(pen, horizon=1000)] == ["5/48 from 40", "1/48 from 40"]
    assert [r.get("penalty_refreshes_active") for r in run_rows(pen, horizon=10)] == [None, None]   # not counted yet
    (agg,) = method_rows(run_rows(pen, horizon=1000))
    assert (agg["penalty_refreshes_active"], agg["penalty_refreshes_members"]) == ("6/96 from 40", 2)
    assert ("the penalty term was > 0 at 0 of 8 log points (all members) and at 6 of 96 of the hook's refreshes "
            "counted from step 40 (2 of 2 members counted)") in findings_markdown([agg])
    other = make_run(tmp_path, "pen_s3", [3], [[0.1, 0.5, 0.9, 0.9, 0.88]], [[6, 5, 2.5, 2.2, 2.1]],
                     method="penalty", extra={"penalty": [[0.0] * 5], "penalty_refreshes": [[1, 2, 3, 4, 5]],
                                              "penalty_refreshes_active": [[0] * 5], "penalty_counted_from": [[0] * 5]})
    (agg,) = method_rows(run_rows(pen) + run_rows(other))
    assert agg["penalty_refreshes_active"] == "8/1001 from 0–40"


def test_horizon_cuts_every_number(runs):
    a, _, _ = runs
    r0, _ = run_rows(a, horizon=100)
    assert (r0["steps"], r0["final_test_acc"], r0["collapsed"], r0["collapse_prevented"]) == (100, 0.9, False, True)
    assert r0["wall_time_s"] == 2.0 and r0["end_alpha"] == "fc1:1.90 fc2:3.00"
    r0, _ = run_rows(a, rules=PhaseRules(collapse_drop=0.3))        # phase rules reach the verdict
    assert r0["collapsed"] is False


def test_methods_group_members_of_several_runs(runs):
    rows = [r for p in runs for r in run_rows(p)]
    agg = {a["method"]: a for a in method_rows(rows)}
    plain = agg["plain, lr 0.005, wd 0"]
    assert (plain["n"], plain["seeds"], plain["collapsed"], plain["prevented"]) == (3, "0,1,2", 2, 1)
    peaks = [0.9, 0.8, 0.9]
    assert plain["peak_test_acc"] == pytest.approx((statistics.fmean(peaks), statistics.stdev(peaks)))
    assert plain["lead_time"] == pytest.approx((900.0, 0.0))       # only seed 0 warned and collapsed
    # cost: run wall time / K / steps * 1e5 -> 4/2/1e4*1e5 = 20 (seeds 0, 1) and 4/1/1e4*1e5 = 40
    assert plain["seconds_per_1e5_member_steps"] == pytest.approx(
        (statistics.fmean([20, 20, 40]), statistics.stdev([20, 20, 40])))
    assert "penalty, target_alpha 2, lr 0.005, wd 0" in agg
    text = findings_markdown(list(agg.values()))
    assert "**plain, lr 0.005, wd 0** (3 seeds, to step 10,000): collapsed in 2 of 3, not collapsed by their last step (= collapse prevented) in 1;" in text
    # penalty: final 0.88, drop 0.02; plain: final mean(0.7, 0.79, 0.5), drop mean(0.2, 0.01, 0.4)
    d_final = 0.88 - statistics.fmean([0.7, 0.79, 0.5])
    d_drop = 0.02 - statistics.fmean([0.2, 0.01, 0.4])
    ratio = 40 / statistics.fmean([20, 20, 40])
    assert f"against plain, lr 0.005, wd 0: final {d_final:+.3f}, drop {d_drop:+.3f}, wall time per member-step ×{ratio:.2f}" in text


def test_a_wd_method_is_compared_with_its_fixed_wd_control(tmp_path):
    """The plain run whose wd is nearest (log scale) the method's wd_ref, within a factor 1.25."""
    acc = [[0.1, 0.5, 0.9, 0.9, 0.8]]                      # final 0.8, drop 0.1, collapsed
    runs = [make_run(tmp_path, "wd0.02", [0], acc, [[6, 5, 4, 3, 2]], wd=0.02),
            make_run(tmp_path, "wd0.0175", [0], [[0.1, 0.5, 0.9, 0.9, 0.9]], [[6, 5, 4, 3, 2]], wd=0.0175),
            make_run(tmp_path, "ctl", [0], [[0.1, 0.5, 0.9, 0.9, 0.85]], [[6, 5, 4, 3, 2]],
                     method="wd_controller", wd_ref=0.019),
            make_run(tmp_path, "ctl_far", [0], acc, [[6, 5, 4, 3, 2]], method="wd_controller", wd_ref=0.05),
            make_run(tmp_path, "pen", [0], acc, [[6, 5, 4, 3, 2]], method="penalty")]
    rows = [r for p in runs for r in run_rows(p)]
    assert [r["wd_ref"] for r in rows] == [None, None, 0.019, 0.05, None]
    lines = findings_markdown(method_rows(rows)).splitlines()
    ctl = next(ln for ln in lines if "wd_ref 0.019," in ln)
    # 0.02 is nearer 0.019 than 0.0175 is; final 0.85 - 0.8, drop 0.05 - 0.1
    assert ("; against its fixed-WD control plain, lr 0.005, wd 0.02 (wd_ref 0.019; collapsed in 1 of 1): "
            "final +0.050, drop -0.050; alpha at the collapse") in ctl
    # 0.05 is 2.5x the nearest plain wd: no control; neither for a method without wd_ref
    assert sum("fixed-WD control" in ln for ln in lines) == 1


def test_late_trend_is_the_least_squares_slope_per_decade_over_the_last_half_decade(tmp_path, monkeypatch):
    # an exact line: -0.1 per decade from 1e3 to 1e5 (window of 2 decades keeps all three points)
    assert late_trend([1000, 10000, 100000], [0.9, 0.8, 0.7], decades=2) == pytest.approx(-0.1)
    # the default half-decade window starts at 1e5 / 10^0.5 = 31623: step 30000 and earlier are out
    steps, accs = [0, 1000, 30000, 40000, 63096, 100000], [0.1, 0.9, 0.2, 0.85, 0.86, 0.84]
    ref = statistics.linear_regression([math.log10(t) for t in steps[3:]], accs[3:]).slope
    assert late_trend(steps, accs) == pytest.approx(ref)
    assert late_trend([0, 50000, 100000], [0.1, 0.9, 0.8]) is None          # 2 points in the window
    assert late_trend([100, 100, 100], [0.8, 0.9, 0.7], decades=1) is None  # no spread in log t
    # through run_rows, method_rows and the findings: member 0 falls 0.05 per decade (0.9, 0.85,
    # 0.8 at 1e3, 1e4, 1e5), member 1 is flat
    path = make_run(tmp_path, "trend", [0, 1], [[0.1, 0.9, 0.85, 0.8], [0.1, 0.9, 0.9, 0.9]], [[6, 5, 4, 3]] * 2,
                    steps=[0, 1000, 10000, 100000], wall=(0, 1, 2, 3))
    assert [r["late_trend"] for r in run_rows(path)] == [None, None]   # 1 point in the last half-decade
    monkeypatch.setattr("alphareg.verdict.LATE_WINDOW_DECADES", 2)
    r0, r1 = run_rows(path)
    assert (r0["late_trend"], r1["late_trend"]) == (pytest.approx(-0.05), pytest.approx(0.0))
    (agg,) = method_rows([r0, r1])
    assert agg["late_trend"] == pytest.approx((-0.025, statistics.stdev([-0.05, 0.0])))
    assert "late trend -0.025 ± 0.035 per decade of steps (slope of test accuracy over the last 2 decade)" in findings_markdown([agg])


def test_member_labels_name_what_differs():
    cfg = RunConfig(lr=[5e-3, 5e-4], wd=[0.0, 0.01], seeds=[0, 1], method="wd_controller", wd_gain=0.5)
    assert member_label(cfg, 1) == "wd_controller, target_alpha 2, wd_gain 0.5, lr 0.0005, wd 0.01"
    cfg = RunConfig(seeds=[0, 1], method="penalty", member_overrides=({"penalty_beta": 0.1}, {}))
    assert member_label(cfg, 0) == "penalty, penalty_beta 0.1, target_alpha 2, lr 0.0005, wd 0"
    assert member_label(cfg, 1) == "penalty, target_alpha 2, lr 0.0005, wd 0"
    cfg = RunConfig(method="weight_decay", wd_layers=("fc2", "fc3"))      # wd_ref at its default 0.01
    assert member_label(cfg, 0) == "weight_decay, wd_layers fc2,fc3, wd_ref 0.01, lr 0.0005, wd 0"


def test_paper_tables_read_at_paper_steps_moved_to_the_lr(runs):
    assert paper_steps(5e-4) == [10**5, 10**6, 10**7]
    assert paper_steps(5e-3) == [10**4, 10**5, 10**6]
    groups = method_groups([load_run(p) for p in runs])
    # read at steps scaled so that the paper's 1e5 falls on our step 1000 (lr 5e-4 * 100)
    for g in groups:
        g.lr = 5e-2
    md = paper_tables(groups)
    line = next(ln for ln in md.splitlines() if ln.startswith("| fc1 | pre-grokking"))
    plain = [1.8, 3.0, 3.0]          # fc1 alpha at step 1000 of seeds 0, 1, 2
    assert f"{statistics.fmean(plain):.3g} ± {statistics.stdev(plain):.2g}" in line
    assert line.endswith("| 4 ± 1.3 |")
    line = next(ln for ln in md.splitlines() if ln.startswith("| fc1 | grokking"))
    assert "not reached" not in line                                # 1e4 == our last step
    line = next(ln for ln in md.splitlines() if ln.startswith("| fc1 | anti-grokking"))
    assert line.count("not reached") == 2 and line.endswith("| 1 ± 0.4 |")
    # a member the monitor has not analysed yet (no htsr rows) is named, not an error
    groups[0].htsr = [r for r in groups[0].htsr if r["member"] != "2"]
    assert "10000, 10000, not analysed yet" in paper_tables(groups)


def test_write_verdict_files(runs, tmp_path):
    out = tmp_path / "verdict"
    rows = write_verdict(list(runs), out, horizon=1000, copy_runs=True)
    assert [r["steps"] for r in rows] == [1000] * 4
    first = list(csv.DictReader(open(out / "verdict.csv")))[0]
    assert (first["collapse_step"], first["collapse_alpha"], first["collapse_alpha_step"]) == ("1000", "fc1:1.80 fc2:3.00", "1000")
    methods = list(csv.DictReader(open(out / "methods.csv")))
    assert [m["n"] for m in methods] == ["3", "1"]
    assert [m["collapse_alpha"] for m in methods] == ["fc1:1.8 ± 0 fc2:3 ± 0", ""]
    assert "| yes (1000) | fc1:1.80 fc2:3.00 (1000) | no |" in (out / "verdict.md").read_text()
    assert "cut at step 1000" in (out / "verdict.md").read_text()
    assert (out / "paper_tables.md").is_file() and (out / "verdict_test_acc_alpha.png").stat().st_size > 10_000
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["fig1_accuracy_penalty_target_alpha_2_lr_0.005_wd_0.png",
                    "fig1_accuracy_plain_lr_0.005_wd_0.png",
                    "fig4_alpha_penalty_target_alpha_2_lr_0.005_wd_0.png",
                    "fig4_alpha_plain_lr_0.005_wd_0.png"]
    # the copied run files (no checkpoints) rebuild the same verdict
    assert sorted(p.name for p in (out / "runs" / "wd0_s01").iterdir()) == [
        "config.json", "htsr.csv", "metrics.csv", "summary.json"]
    again = write_verdict(sorted((out / "runs").iterdir(), key=lambda p: [r.name for r in runs].index(p.name)),
                          tmp_path / "again", horizon=1000)
    assert again == rows


def test_paper_values_are_the_ones_design_md_quotes():
    design = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip(f"{design} not beside the checkout")
    text = " ".join(design.read_text().split())
    pm = r"([\d.]+)±([\d.]+)"
    for layer in ("FC1", "FC2"):
        m = re.search(rf"{layer} {pm} / {pm} / {pm}", text)
        got = [(float(m.group(i)), float(m.group(i + 1))) for i in (1, 3, 5)]
        assert tuple(got) == PAPER_A_TABLE1_ALPHA[layer.lower()]
    m = re.search(rf"WD=0 at collapse FC1 {pm}, FC2 (\d+(?:\.\d+)?)", text)
    assert PAPER_A_TABLE2_TRAPS["fc1"][2] == (float(m.group(1)), float(m.group(2)))
    assert PAPER_A_TABLE2_TRAPS["fc2"][2] == (float(m.group(3)), None)
    assert "Traps (Table 2): 0 before collapse" in text
    assert all(v[i] == (0.0, None) for v in PAPER_A_TABLE2_TRAPS.values() for i in (0, 1))


def test_members_short_of_the_horizon_are_undecided(runs, tmp_path):
    short = make_run(tmp_path, "short", [3], [[0.1, 0.5, 0.9, 0.89]], [[6, 5, 4, 3]], steps=STEPS[:4])
    rows = [r for p in (*runs, short) for r in run_rows(p, horizon=10_000)]
    r3 = rows[-1]
    assert (r3["seed"], r3["steps"], r3["reached_horizon"], r3["collapse_prevented"]) == (3, 1000, False, None)
    agg = method_rows(rows)[0]
    assert (agg["n"], agg["n_reached"], agg["collapsed"], agg["prevented"]) == (4, 3, 2, 1)
    assert agg["final_test_acc"] == pytest.approx((statistics.fmean([0.7, 0.79, 0.5]),
                                                  statistics.stdev([0.7, 0.79, 0.5])))   # seed 3 left out
    assert "(4 seeds, 3 of them at step 10,000, the others short of it (from step 1,000))" in findings_markdown([agg])
    assert "| plain, lr 0.005, wd 0 | 4 (0,1,2,3) | 1000–10000 | 3/4 |" in method_markdown([agg])


def test_device_column_names_the_accelerator_of_a_cuda_run_else_the_host():
    from types import SimpleNamespace

    from alphareg.verdict import _device

    def run(device, **prov):
        return SimpleNamespace(summary={"device": device}, cfg=SimpleNamespace(device=device), provenance=prov,
                               segments=[])
    assert _device(run("cuda", host="vm", accelerator="NVIDIA H200"), 10) == "cuda (NVIDIA H200)"
    assert _device(run("cuda", host="vm"), 10) == "cuda (vm)"                 # runs made before it was recorded
    assert _device(run("cpu", host="vm", accelerator="NVIDIA H200"), 10) == "cpu (vm)"
    assert _device(run("cpu"), 10) == "cpu"


def test_device_column_of_a_run_trained_on_several_machines_gives_each_ones_share(tmp_path):
    """segments.csv: each device's share of the steps up to the horizon, in order of first use;
    steps no segment covers are "unrecorded" (last); such a run's wall time is not compared."""
    from alphareg.rundir import RunDir
    from alphareg.verdict import device_kinds, same_device_kind
    path = make_run(tmp_path, "mixed", [0], [[0.1, 0.5, 0.9, 0.9, 0.9]], [[6, 5, 3, 3, 3]])
    rd = RunDir(RunConfig(runs_dir=str(tmp_path), name="mixed"))
    seg = {"wall_time_s": 1.0, "git_commit": "c", "ended": "", "outcome": "finished"}
    rd.put_segment(dict(seg, start_step=2000, end_step=6000, device="cuda:0", accelerator="NVIDIA H200",
                        host="gpu1", started="a"))
    rd.put_segment(dict(seg, start_step=6000, end_step=8000, device="cpu", accelerator="", host="vm", started="b"))
    rd.put_segment(dict(seg, start_step=8000, end_step=10000, device="cuda:0", accelerator="NVIDIA H200",
                        host="gpu2", started="c"))
    (r,) = run_rows(path)
    assert r["device"] == "cuda:0 (NVIDIA H200) 60 %, cpu (vm) 20 %, unrecorded 20 %"
    assert not same_device_kind(r["device"], "cuda (NVIDIA H200)")
    assert device_kinds(r["device"]) == "cpu+cuda+unrecorded"
    assert same_device_kind("cuda:0 (NVIDIA H200)", "cuda (NVIDIA H100)")
    (r,) = run_rows(path, horizon=1000)                  # only unrecorded steps before the horizon
    assert r["device"] == "unrecorded"
    rd.put_segment(dict(seg, start_step=0, end_step=2000, device="cuda:0", accelerator="NVIDIA H200",
                        host="gpu0", started="d"))
    (r,) = run_rows(path, horizon=1000)
    assert r["device"] == "cuda:0 (NVIDIA H200)"         # one device for every step: named alone


def test_cost_per_member_step_shares_the_wall_time_among_the_batched_members():
    from alphareg.verdict import seconds_per_1e5_member_steps as cost
    assert cost(300.0, 3, 50_000) == pytest.approx(200.0)          # 300 s / 3 members / 50,000 steps · 10^5
    assert cost("300.0", "3", "50000") == pytest.approx(200.0)     # the strings of a verdict.csv row
    assert cost(120.0, 1, 10**6) == pytest.approx(12.0)
    for wall, steps in (("", 1000), (None, 1000), (0.0, 1000), (300.0, 0)):
        assert cost(wall, 3, steps) is None


# ---------------------------------------------------------------------------- across horizons
def test_overview_puts_each_horizon_beside_the_others(runs, tmp_path):
    from alphareg.overview import read_folder, steps_label, write_overview
    short = make_run(tmp_path, "short", [3], [[0.1, 0.5, 0.9, 0.89]], [[6, 5, 4, 3]], steps=STEPS[:4])
    for h in (1000, 10_000):
        write_verdict([*runs, short], tmp_path / f"h{h}", horizon=h)
    cells = write_overview([tmp_path / "h10000", tmp_path / "h1000"], tmp_path / "ov")
    by = {(c.method, c.horizon): c for c in cells}
    assert [c.horizon for c in cells] == [1000, 1000, 10_000, 10_000]      # sorted by horizon
    plain, pen = "plain, lr 0.005, wd 0", "penalty, target_alpha 2, lr 0.005, wd 0"
    # by step 1000: seed 0 fell 0.9 -> 0.8 (collapsed), seed 1 0.8 -> 0.8, seed 2 still rising, seed 3 at 0.9
    acc = [0.8, 0.8, 0.9, 0.89]
    assert (by[plain, 1000].n, by[plain, 1000].collapsed) == (4, 1)
    assert by[plain, 1000].final == pytest.approx((statistics.fmean(acc), statistics.stdev(acc)))
    # by step 10^4 seed 2 fell 0.9 -> 0.5 too; seed 3 stopped at 1000: not counted at 10^4
    acc = [0.7, 0.79, 0.5]
    assert (by[plain, 10_000].n, by[plain, 10_000].collapsed) == (3, 2)
    assert by[plain, 10_000].final == pytest.approx((statistics.fmean(acc), statistics.stdev(acc)))
    assert by[pen, 10_000].final == (0.88, 0.0) and by[pen, 10_000].collapsed == 0
    assert by[pen, 1000].delta_vs_wd0 == pytest.approx(0.9 - statistics.fmean([0.8, 0.8, 0.9, 0.89]))
    assert by[pen, 10_000].delta_vs_wd0 == pytest.approx(0.88 - statistics.fmean([0.7, 0.79, 0.5]))
    assert by[plain, 1000].delta_vs_wd0 is None and by[plain, 1000].plain_wd0
    # cost: wall time (3 s at step 1000, 4 s at 10^4) / K / steps · 10^5; wd0_s01 trains K = 2
    assert by[plain, 1000].cost == pytest.approx(statistics.fmean([150, 150, 300, 300]))
    assert by[pen, 1000].cost_vs_wd0 == pytest.approx(300 / 225)
    assert by[pen, 10_000].cost_vs_wd0 == pytest.approx(40 / statistics.fmean([20, 20, 40]))
    # every cell agrees with the verdict folder's own per-method numbers (members that reached it)
    for h in (1000, 10_000):
        rows = [r for r in csv.DictReader(open(tmp_path / f"h{h}" / "verdict.csv")) if int(r["steps"]) >= h]
        for c in read_folder(tmp_path / f"h{h}"):
            finals = [float(r["final_test_acc"]) for r in rows if r["method"] == c.method]
            assert c.final[0] == pytest.approx(statistics.fmean(finals)) and c.n == len(finals)
    md = (tmp_path / "ov" / "overview.md").read_text()
    assert "| method | 1e3 | 1e4 |" in md
    assert f"| {plain} | 1/4 | 2/3 |" in md and f"| {pen} | 0/1 | 0/1 |" in md
    d1, d2 = (0.9 - statistics.fmean([0.8, 0.8, 0.9, 0.89]), 0.88 - statistics.fmean([0.7, 0.79, 0.5]))
    assert f"| {pen} | {d1:+.3f} | {d2:+.3f} |" in md.split("Δ test accuracy")[1]
    assert f"| {pen} | ×1.33 | ×1.50 |" in md.split("Cost:")[1]
    assert f"no collapsed seed — `{pen}`. Collapsed in every seed — none. Some seeds — `{plain}` (2/3)." in md
    out = list(csv.DictReader(open(tmp_path / "ov" / "overview.csv")))
    assert [(r["method"], r["horizon"], r["collapsed"]) for r in out] == [
        (pen, "1000", "0"), (pen, "10000", "0"), (plain, "1000", "1"), (plain, "10000", "2")]
    assert (tmp_path / "ov" / "overview_lr0.005.png").stat().st_size > 10_000
    assert [steps_label(s) for s in (1000, 100_000, 200_000, 125_000, 10**6)] == ["1e3", "1e5", "2e5", "1.25e5", "1e6"]
    assert [steps_label(s, 3) for s in (794_328, 1_995_262, 2_238_721)] == ["7.94e5", "2e6", "2.24e6"]
    assert steps_label(794_328) == "7.94328e5"


def test_no_wall_time_ratio_between_kinds_of_device(tmp_path):
    """A penalty run on the GPU beside a plain run on the CPU: their wall times are not a cost."""
    from alphareg.overview import write_overview
    from alphareg.verdict import device_kinds, same_device_kind
    assert device_kinds("cuda (NVIDIA H200), cuda (vm), cpu (vm)") == "cpu+cuda"
    assert same_device_kind("cuda (vm)", "cuda (NVIDIA H200)") and not same_device_kind("cpu (vm)", "cuda (vm)")
    plain = make_run(tmp_path, "wd0", [0], [[0.1, 0.5, 0.9, 0.8, 0.7]], [[6, 5, 4, 3, 2]])
    pen = make_run(tmp_path, "pen_gpu", [0], [[0.1, 0.5, 0.9, 0.9, 0.88]], [[6, 5, 4, 3, 2]],
                   method="penalty", wall=(0, 0.1, 0.2, 0.3, 0.4), device="cuda")
    same = make_run(tmp_path, "pen_cpu", [1], [[0.1, 0.5, 0.9, 0.9, 0.88]], [[6, 5, 4, 3, 2]],
                    method="penalty", wd=0.01, wall=(0, 2, 4, 6, 8))
    write_verdict([plain, pen, same], tmp_path / "v", horizon=10_000)
    md = (tmp_path / "v" / "verdict.md").read_text()
    assert "wall time not compared (cuda against cpu)" in md
    assert "wall time per member-step ×2.00" in md                     # 8 s against 4 s, both on the CPU
    cells = {c.method: c for c in write_overview([tmp_path / "v"], tmp_path / "ov")}
    gpu = cells["penalty, target_alpha 2, lr 0.005, wd 0"]
    assert gpu.cost_vs_wd0 is None and gpu.cost_note == "cuda vs cpu"
    assert cells["penalty, target_alpha 2, lr 0.005, wd 0.01"].cost_vs_wd0 == pytest.approx(2.0)
    assert "| penalty, target_alpha 2, lr 0.005, wd 0 | cuda vs cpu |" in \
        (tmp_path / "ov" / "overview.md").read_text().split("Cost:")[1]


def test_overview_refuses_ambiguous_or_foreign_folders(runs, tmp_path, capsys):
    from alphareg.overview import overview_cells
    from experiments.overview import main
    write_verdict(list(runs), tmp_path / "a", horizon=1000)
    write_verdict(list(runs), tmp_path / "b", horizon=1000)
    write_verdict(list(runs), tmp_path / "uncut")
    with pytest.raises(ValueError, match=r"'plain, lr 0.005, wd 0' at horizon 1000 is in both a and b"):
        overview_cells([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="not cut at one horizon"):
        overview_cells([tmp_path / "uncut"])
    with pytest.raises(SystemExit) as e:
        main([str(runs[0]), "--out", str(tmp_path / "ov")])       # a run directory, not a verdict
    assert e.value.code == 2 and "no verdict.csv — not a verdict folder" in capsys.readouterr().err
    assert not (tmp_path / "ov").exists()


# ---------------------------------------------------------------------------- a folder gains runs

def test_a_verdict_folder_gains_runs_and_keeps_the_ones_it_holds(tmp_path, monkeypatch, capsys):
    """experiments.evidence --verdict DIR --add (alphareg.compose): the held run copies, not the live
    run directories, give the old rows; the new run's rows are what a fresh verdict of the copies
    plus the new run gives; refusals leave the folder as it was."""
    import shutil

    import experiments.evidence as evidence
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "runs"
    make_run(live, "fast_lr5e-3_wd0_s01", [0, 1], [[0.1, 0.5, 0.9, 0.8, 0.7], [0.1, 0.4, 0.8, 0.8, 0.79]],
             [[6, 5, 1.9, 1.8, 1.5], [6, 5, 4, 3, 2.5]])
    make_run(live, "fast_lr5e-3_wd0_s2", [2], [[0.1, 0.3, 0.6, 0.9, 0.5]], [[6, 5, 4, 3, 2]])
    assert evidence.main(["fast", "--methods", "wd0", "--hours", "0", "--verdict", "v", "--horizon", "1000"]) == 0
    old = {n: (tmp_path / "v" / n).read_text().splitlines() for n in ("verdict.csv", "methods.csv")}
    held = (tmp_path / "v" / "runs" / "fast_lr5e-3_wd0_s01" / "metrics.csv").read_bytes()
    # the live run is re-run meanwhile (other numbers); the penalty reaches the horizon, mid-write
    shutil.rmtree(live / "fast_lr5e-3_wd0_s01")
    make_run(live, "fast_lr5e-3_wd0_s01", [0, 1], [[0.1, 0.2, 0.3, 0.4, 0.5]] * 2, [[6, 5, 4, 3, 2]] * 2)
    pen = make_run(live, "fast_lr5e-3_penalty_t2_s01", [0, 1], [[0.1, 0.5, 0.9, 0.9, 0.88], [0.1, 0.6, 0.7, 0.6, 0.6]],
                   [[6, 5, 2.5, 2.2, 2.1]] * 2, method="penalty")
    whole = (pen / "metrics.csv").read_bytes()
    with open(pen / "metrics.csv", "a") as f:
        f.write("1")                                     # a row being written: dropped, not read as step 1
    assert evidence.main(["fast", "--methods", "wd0,penalty_t2", "--hours", "0", "--verdict", "v", "--add"]) == 0
    assert "added fast_lr5e-3_penalty_t2_s01; the 2 runs it held" in capsys.readouterr().err
    new = {n: (tmp_path / "v" / n).read_text().splitlines() for n in ("verdict.csv", "methods.csv")}
    for n in old:
        assert set(old[n]) <= set(new[n])
    assert len(new["verdict.csv"]) == 1 + 3 + 2 and len(new["methods.csv"]) == 1 + 2
    assert (tmp_path / "v" / "runs" / "fast_lr5e-3_wd0_s01" / "metrics.csv").read_bytes() == held
    assert (tmp_path / "v" / "runs" / "fast_lr5e-3_penalty_t2_s01" / "metrics.csv").read_bytes() == whole
    # the same as a verdict written afresh from the copies plus the new run, cut at the folder's horizon
    fresh = write_verdict([tmp_path / "v" / "runs" / n for n in
                           ("fast_lr5e-3_wd0_s01", "fast_lr5e-3_wd0_s2", "fast_lr5e-3_penalty_t2_s01")],
                          tmp_path / "fresh", horizon=1000)
    assert (tmp_path / "fresh" / "verdict.csv").read_text() == (tmp_path / "v" / "verdict.csv").read_text()
    assert [r["final_test_acc"] for r in fresh][3:] == [0.9, 0.6]     # the penalty at step 1000
    runs_md = (tmp_path / "v" / "runs.md").read_text()
    assert "--name fast_lr5e-3_penalty_t2_s01 --runs-dir runs --no-progress" in runs_md
    assert "| fast_lr5e-3_penalty_t2_s01 |" in runs_md and runs_md.count("| 10,000 |") == 3

    def refused(args, message):
        before = {p: p.read_bytes() for p in (tmp_path / "v").rglob("*") if p.is_file()}
        with pytest.raises(SystemExit) as e:
            evidence.main(["fast", "--hours", "0", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err, err
        assert {p: p.read_bytes() for p in (tmp_path / "v").rglob("*") if p.is_file()} == before
    refused(["--methods", "wd0,penalty_t2", "--verdict", "v", "--add"], "nothing to add")
    refused(["--methods", "penalty_t2", "--verdict", "v", "--add"],
            "holds runs that --methods does not name: fast_lr5e-3_wd0_s01, fast_lr5e-3_wd0_s2")
    make_run(live, "fast_lr5e-3_wd0.02_s012", [0, 1, 2], [[0.1, 0.5, 0.9, 0.9, 0.9]] * 3, [[6, 5, 3, 3, 3]] * 3, wd=0.02)
    every = ["--methods", "wd0,wd0.02,penalty_t2", "--verdict", "v", "--add"]
    refused([*every, "--horizon", "100"], "is cut at step 1000, not 100")
    make_run(live, "fast_lr5e-3_wd0.01_s012", [0, 1, 2], [[0.1, 0.5, 0.9]] * 3, [[6, 5, 3]] * 3, wd=0.01, steps=STEPS[:3])
    refused(["--methods", "wd0,wd0.01,penalty_t2", "--verdict", "v", "--add"],
            "short of the folder's horizon 1,000: fast_lr5e-3_wd0.01_s012 (step 100)")
    refused(["--methods", "wd0", "--add"], "--add needs --verdict DIR")
    lines = (tmp_path / "v" / "verdict.csv").read_text().splitlines()
    (tmp_path / "v" / "verdict.csv").write_text("\n".join([lines[0], lines[1].replace("0.9", "0.95", 1), *lines[2:]]) + "\n")
    refused(every, "verdict.csv: 1 row(s) would change, nothing written")


def test_rebuild_adds_new_columns_to_a_folder_and_refuses_a_changed_cell(runs, tmp_path, capsys):
    """experiments.overview --rebuild (alphareg.compose.rebuild): a folder written before a column
    existed gains it, every old cell the same; a folder whose old cell the current code would change
    is left byte for byte as it was."""
    import experiments.overview as overview
    from alphareg.compose import missing_rows
    v = tmp_path / "v"
    write_verdict(list(runs), v, horizon=1000, copy_runs=True)
    fresh = {n: (v / n).read_text() for n in ("verdict.csv", "methods.csv", "verdict.md")}
    for name in ("verdict.csv", "methods.csv"):          # as an older code wrote them: no collapse_alpha*
        rows = list(csv.DictReader(open(v / name, newline="")))
        cols = [c for c in rows[0] if not c.startswith("collapse_alpha")]
        with open(v / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    (v / "verdict.md").write_text("old\n")
    (v / "gpu_session.log").write_text("kept\n")
    assert overview.main([str(v), "--out", str(tmp_path / "o"), "--rebuild"]) == 0
    assert f"rebuilt {v} from its run copies" in capsys.readouterr().err
    assert {n: (v / n).read_text() for n in fresh} == fresh and (v / "gpu_session.log").read_text() == "kept\n"
    # a dropped column makes every old row missing; a changed cell refuses the rebuild
    lines = (v / "verdict.csv").read_text().splitlines()
    (tmp_path / "dropped.csv").write_text("\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n")
    assert len(missing_rows(v / "verdict.csv", tmp_path / "dropped.csv")) == len(lines) - 1
    (v / "verdict.csv").write_text("\n".join([lines[0], lines[1].replace("0.9", "0.95", 1), *lines[2:]]) + "\n")
    before = {p: p.read_bytes() for p in v.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as e:
        overview.main([str(v), "--out", str(tmp_path / "o"), "--rebuild"])
    assert e.value.code == 2 and "verdict.csv: 1 row(s) would change, nothing written" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in v.rglob("*") if p.is_file()} == before
