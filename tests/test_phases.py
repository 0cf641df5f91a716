"""Phase labels, collapse detection and the early-warning lead time on hand-made runs."""
from alphareg.phases import ANTI, GROK, PRE, PhaseRules, analyse_run, early_warning, label_member
from alphareg.report import htsr_tables, phase_points

STEPS = [0, 10, 100, 1000, 10000, 100000]
ACC = [0.10, 0.12, 0.30, 0.85, 0.78, 0.55]   # rise, peak at 1000, collapse from 100000


def test_labels_follow_the_documented_rules():
    mp = label_member(STEPS, ACC, PhaseRules())
    assert mp.peak_step == 1000 and mp.peak_test_acc == 0.85
    assert mp.onset_step == 100            # first >= 0.10 + 0.1 * 0.75 = 0.175
    assert mp.collapse_step == 10000       # first after the peak <= 0.85 - 0.05
    assert [mp.labels[s] for s in STEPS] == [PRE, PRE, GROK, GROK, ANTI, ANTI]
    assert mp.collapsed


def test_collapse_threshold_is_a_rule():
    mp = label_member(STEPS, ACC, PhaseRules(collapse_drop=0.25))
    assert mp.collapse_step == 100000 and mp.labels[10000] == GROK


def test_no_collapse_when_accuracy_holds():
    mp = label_member(STEPS, [0.1, 0.12, 0.3, 0.85, 0.84, 0.86], PhaseRules())
    assert not mp.collapsed and mp.collapse_step is None and mp.peak_step == 100000
    assert mp.labels[100000] == GROK


def _htsr(step, member, alpha_fc1, traps_fc2=0.0):
    return [{"step": step, "member": member, "layer": "fc1", "alpha": alpha_fc1, "traps_mean": 0.0},
            {"step": step, "member": member, "layer": "fc2", "alpha": 3.0, "traps_mean": traps_fc2}]


def test_alpha_warning_needs_fitted_data_and_persistence():
    rows = _htsr(10, 0, 1.5) + _htsr(100, 0, 2.5) + _htsr(1000, 0, 1.9) + _htsr(10000, 0, 1.8)
    train = {10: 0.5, 100: 1.0, 1000: 1.0, 10000: 1.0}
    step, reason = early_warning(rows, train, PhaseRules())["alpha"]
    assert step == 1000 and "alpha(fc1)=1.90<2" in reason   # step 10 ignored: data not fitted
    assert early_warning(rows, train, PhaseRules(persist=2))["alpha"][0] == 1000
    assert early_warning(rows, train, PhaseRules(persist=3))["alpha"][0] is None
    assert early_warning(rows, train, PhaseRules(layers=("fc2",)))["alpha"][0] is None


def test_trap_warning_counts_new_traps_above_the_armed_baseline():
    # fc2 carries one trap from the start (a mean-shift spike); it warns only when a second appears
    rows = [r for s, t in ((10, 1.0), (100, 1.0), (1000, 1.6), (10000, 2.2)) for r in _htsr(s, 0, 3.0, t)]
    train = {10: 1.0, 100: 1.0, 1000: 1.0, 10000: 1.0}
    step, reason = early_warning(rows, train, PhaseRules())["traps"]
    assert step == 10000 and "traps(fc2)=2.2 (was 1.0)" in reason
    assert early_warning(rows, train, PhaseRules(trap_threshold=0.5))["traps"][0] == 1000
    assert early_warning(rows, train, PhaseRules())["alpha"] == (None, None)


def test_lead_times_of_each_signal_and_the_earliest():
    metrics = [{"step": s, "member": 0, "test_acc": a, "train_acc": 1.0} for s, a in zip(STEPS, ACC)]
    alpha = {0: 5, 10: 5, 100: 4, 1000: 2.5, 10000: 1.9, 100000: 1.7}
    traps = {0: 0, 10: 0, 100: 0, 1000: 2.0, 10000: 2.0, 100000: 3.0}
    htsr = [r for s in STEPS for r in _htsr(s, 0, alpha[s], traps[s])]
    (mp,) = analyse_run(metrics, htsr, PhaseRules())
    assert mp.collapse_step == 10000
    assert mp.trap_warning_step == 1000 and mp.trap_lead_time == 9000
    assert mp.alpha_warning_step == 10000 and mp.alpha_lead_time == 0
    assert mp.warning_step == 1000 and "traps(fc2)" in mp.warning_reason and mp.lead_time == 9000


def test_tables_read_the_phase_points():
    metrics = [{"step": s, "member": k, "test_acc": a, "train_acc": 1.0}
               for k in (0, 1) for s, a in zip(STEPS, ACC)]
    htsr = []
    for k in (0, 1):
        for s in STEPS:
            for layer, alpha in (("fc1", 4.0 if s < 1000 else (2.0 + k * 0.2 if s < 100000 else 1.0)),):
                htsr.append({"step": s, "member": k, "layer": layer, "alpha": alpha, "traps_mean": float(k),
                             "ks_stat": 0.1, "ks_pvalue": 0.5})
    phases = analyse_run(metrics, htsr, PhaseRules())
    assert phase_points(phases[0]) == {"pre-grokking edge": 10, "grokking peak": 1000, "end": 100000}
    md = htsr_tables(htsr, phases)
    assert "| fc1 | 4 ± 0 | 2.1 ± 0.14 | 1 ± 0 |" in md      # alpha: (2.0, 2.2) at the peak
    assert "| fc1 | 0.5 ± 0.71 | 0.5 ± 0.71 | 0.5 ± 0.71 |" in md   # traps 0 and 1


def test_trajectory_table_and_unfitted_alpha():
    """Table 5 picks about 4 analysed steps per decade plus the last one, averages members, and
    shows weightwatcher's not-fitted sentinel (alpha -1) as missing, not as a number."""
    from alphareg.report import trajectory_table
    steps = [1, 2, 3, 5, 10, 13, 20, 100, 150]
    metrics = [{"step": s, "member": k, "test_acc": 0.1 * k} for k in (0, 1) for s in steps]
    htsr = [{"step": s, "member": k, "layer": layer, "alpha": (-1.0 if layer == "q" and s >= 100 else 2.0 + k)}
            for k in (0, 1) for s in steps for layer in ("emb", "q")]
    md = trajectory_table(metrics, htsr, per_decade=4)
    rows = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    # bins floor(4 log10 s): 1->0, 2,3->1, 5->2, 10,13->4, 20->5, 100,150->8 (150: the last step)
    assert [int(r.split("|")[1]) for r in rows] == [1, 2, 5, 10, 20, 100, 150]
    assert "| 1 | 0.05 | 2.5 | 2.5 |" in md                  # means over the two members
    assert "| 150 | 0.05 | 2.5 | — |" in md                  # -1 (not fitted) -> missing
    md1 = htsr_tables([{**r, "traps_mean": 0.0, "ks_stat": 0.1, "ks_pvalue": 0.5} for r in htsr],
                      analyse_run([{**m, "train_acc": 1.0} for m in metrics], htsr, PhaseRules()))
    assert "-1" not in md1
