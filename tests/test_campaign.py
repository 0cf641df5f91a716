"""The evidence campaign runner (alphareg.campaign, experiments.evidence): real runs in chunks,
resumed, stopped by the budget with a checkpoint."""
import json
import signal
import subprocess
import sys

import pytest

from alphareg.campaign import PlannedRun, commands_markdown, next_stop, plan, progress, run_campaign

FAST = ("--wd", "0", "--esd-per-decade", "0", "--ww-per-decade", "0")


def test_plan_keeps_the_existing_run_names_and_seeds():
    runs = {r.name: r for r in plan("fast")}
    assert runs["fast_lr5e-3_wd0_s01"].seeds == "0,1" and runs["fast_lr5e-3_wd0_s2"].seeds == "2"
    assert runs["fast_lr5e-3_penalty_t2_s2"].flags == ("--target", "2.0")
    assert runs["fast_lr5e-3_wd0.01_s012"].seeds == "0,1,2"
    assert runs["fast_lr5e-3_penalty2s_t2_s012"].flags == ("--target", "2.0", "--penalty-two-sided",
                                                           "--penalty-gradient", "zipf")
    assert (runs["fast_lr5e-3_wd0.02_s012"].module, runs["fast_lr5e-3_wd0.02_s012"].flags) == ("experiments.baseline", ("--wd", "0.02"))
    fc23 = runs["fast_lr5e-3_wd0.01_fc23_s012"]
    assert (fc23.module, fc23.flags) == ("experiments.alpha_reg", ("--method", "weight_decay", "--wd-ref",
                                                                   "0.01", "--wd-layers", "fc2,fc3"))
    assert runs["fast_lr5e-3_wd0.004_fc23_s012"].flags[3] == "0.004"
    cmd = runs["fast_lr5e-3_wdctl_t2_s2"].command(300_000, "runs")
    assert cmd[1:] == ["-m", "experiments.alpha_reg", "--lr", "5e-3", "--method", "wd_controller",
                       "--target", "2.0", "--seeds", "2", "--steps", "300000", "--name",
                       "fast_lr5e-3_wdctl_t2_s2", "--runs-dir", "runs", "--no-progress", "--plot-minutes", "5"]
    assert {r.seeds for r in plan("paper")} == {"0,1,2"}
    with pytest.raises(ValueError, match="--methods magic"):
        plan("fast", ["wd0", "magic"])


def test_next_stop():
    assert [next_stop(s, 100_000, 1_000_000) for s in (0, 99_999, 100_000, 273_446, 999_000)] == \
        [100_000, 100_000, 200_000, 300_000, 1_000_000]


def test_runs_advance_in_chunks_and_resume(tmp_path):
    runs = [PlannedRun("fast", "wd0", s, f"r{s}", "experiments.baseline", FAST) for s in ("0", "1")]
    logs = []
    # a budget far above what these steps need even on a loaded machine (the budget's own test is
    # test_budget_stops_runs_at_a_checkpoint): the run must end by its target, never by the clock
    ends = []    # on_chunk_end (the archive hook): once per finished chunk, after its checkpoint
    codes = run_campaign(runs, target=30, hours=2.0, workers=2, chunk=20, runs_dir=str(tmp_path), log=logs.append,
                         on_chunk_end=lambda r: ends.append((r.name, progress(tmp_path, r))))
    assert codes == {"r0": 0, "r1": 0}
    assert sorted(ends) == [("r0", 20), ("r0", 30), ("r1", 20), ("r1", 30)]
    for r in runs:
        assert progress(tmp_path, r) == 30
        log = (tmp_path / f"{r.name}.log").read_text()
        assert "new run" in log and "resumed at step 20" in log
    assert sum("-> 20:" in s for s in logs) == 2 and sum("step 20 -> 30" in s for s in logs) == 2
    md = commands_markdown(runs + [PlannedRun("fast", "wd0", "2", "never", "experiments.baseline", FAST)],
                           str(tmp_path), 30)
    assert f"| r1 | `python -m experiments.baseline --lr 5e-3 {' '.join(FAST)} --seeds 1 --steps 30 --name r1" in md
    assert md.rstrip().endswith("| 30 |") and "never" not in md
    # nothing left to do: returns at once
    assert run_campaign(runs, 30, 0.2, 2, 20, str(tmp_path), log=logs.append) == {}


def test_budget_stops_runs_at_a_checkpoint(tmp_path):
    run = PlannedRun("fast", "wd0", "0", "long", "experiments.baseline", FAST)
    ends = []
    codes = run_campaign([run], target=10**6, hours=20 / 3600, workers=1, chunk=10**6,
                         runs_dir=str(tmp_path), log=lambda s: None, on_chunk_end=ends.append)
    assert codes == {"long": 130} and ends == [run]
    summary = json.loads((tmp_path / "long" / "summary.json").read_text())
    assert 0 < summary["step"] < 10**6 and progress(tmp_path, run) == summary["step"]
    assert (tmp_path / "long" / "checkpoint.pt").is_file()
    assert "Re-run the same command to resume" in (tmp_path / "long.log").read_text()


def test_a_run_the_budget_signal_kills_outside_its_loop_is_stopped_not_failed(tmp_path):
    """A run whose process dies of the runner's own SIGTERM (it arrived before the run's handler
    was up, or after it was down) counts as stopped (130) and reaches the archive hook; the same
    death from a signal the runner did not send is a failure (its code stays -15)."""
    class NoHandler(PlannedRun):
        def command(self, steps, runs_dir, extra=()):
            return [sys.executable, "-c", "import time; time.sleep(60)"]
    run = NoHandler("fast", "wd0", "0", "bare", "experiments.baseline", FAST)
    ends, logs = [], []
    codes = run_campaign([run], target=100, hours=3 / 3600, workers=1, chunk=100,
                         runs_dir=str(tmp_path), log=logs.append, on_chunk_end=ends.append)
    assert codes == {"bare": 130} and ends == [run], logs
    assert any("stopped outside its training loop" in s for s in logs)

    class KilledElsewhere(PlannedRun):
        def command(self, steps, runs_dir, extra=()):
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    run = KilledElsewhere("fast", "wd0", "0", "killed", "experiments.baseline", FAST)
    ends = []
    codes = run_campaign([run], target=100, hours=2.0, workers=1, chunk=100,
                         runs_dir=str(tmp_path), log=logs.append, on_chunk_end=ends.append)
    assert codes == {"killed": -signal.SIGTERM} and ends == []


def test_evidence_cli_lists_and_rejects_bad_input(tmp_path):
    def cli(*a):
        return subprocess.run([sys.executable, "-m", "experiments.evidence", *a],
                              capture_output=True, text=True, timeout=120)
    r = cli("fast", "--list", "--runs-dir", str(tmp_path))
    assert r.returncode == 0 and "| fast_lr5e-3_wd0_s01 | wd0 | 0,1 | 0 | 0.0% |" in r.stdout
    r = cli("fast", "--hours", "0", "--run-args", "--device \"cuda", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "--run-args" in r.stderr, r.stderr
    for args, flag in ((["fast", "--methods", "magic"], "--methods"), (["fast", "--workers", "0"], "--workers"), (["fast", "--threads", "0"], "--threads"),
                       (["fast", "--hours", "-1"], "--hours"), (["fast", "--chunk", "0"], "--chunk"), (["fast", "--hours", "0", "--verdict", str(tmp_path / "v"),
                                                                 "--runs-dir", str(tmp_path)], "--verdict")):
        r = cli(*args)
        assert r.returncode == 2 and flag in r.stderr, (args, r.stderr)


def test_tuned_method_runs_its_study_then_trains_with_the_best_trial(tmp_path, monkeypatch):
    """A tuned method: the study runs first (a real, tiny one), then the run trains with the best
    trial's parameters as flags, read back from the study database."""
    import optuna

    from alphareg.campaign import best_flags, study_command, study_name
    monkeypatch.chdir(tmp_path)               # trial run directories go to ./studies/<study>/
    (pending,) = plan("fast", ["wdctl_opt"])
    assert pending.study == study_command("fast", "wdctl_opt")
    assert best_flags("fast", "wdctl_opt") is None
    full = list(pending.study)                # the real study, shortened for a test
    for flag, value in (("--steps", "40"), ("--late-from", "20"), ("--population", "2"), ("--n-trials", "2")):
        full[full.index(flag) + 1] = value
    run = PlannedRun("fast", "wdctl_opt", "0,1,2", pending.name, pending.module, pending.flags,
                     tuple(full) + ("--wd-ref", "0.01", "--control-every", "10"))
    logs = []
    # hours: ends by its target, not by the clock, also on a loaded machine (0.2 h was once too short)
    codes = run_campaign([run], target=30, hours=2.0, workers=1, chunk=100, runs_dir="runs",
                         log=logs.append)
    assert codes == {pending.name: 0}, logs
    study = optuna.load_study(study_name=study_name("fast", "wdctl_opt"),
                              storage=f"sqlite:///studies/{study_name('fast', 'wdctl_opt')}.db")
    best = study.best_trial.params
    assert len(study.trials) == 2 and set(best) == {"wd_gain", "wd_ref", "target_alpha", "deadband"}
    cfg = json.loads((tmp_path / "runs" / pending.name / "config.json").read_text())["config"]
    for name, value in best.items():          # the run trained with exactly the best trial's values
        assert cfg[name] == pytest.approx(value, rel=1e-12), name
    assert cfg["method"] == "wd_controller" and progress("runs", run) == 30
    assert any("best trial: --method wd_controller" in s for s in logs)
    from alphareg.campaign import write_study_reports
    (md,) = write_study_reports("fast", ["wd0", "wdctl_opt"], "verdict")
    assert f"| {study.best_trial.number} | COMPLETE | {study.best_value:.4f} |" in md.read_text()
    assert (md.parent / f"{study_name('fast', 'wdctl_opt')}.db").is_file()
    (resolved,) = plan("fast", ["wdctl_opt"])
    assert not resolved.study and resolved.flags[:2] == ("--method", "wd_controller")
    assert "--wd-gain" in resolved.flags and "--target" in resolved.flags


def test_evidence_reports_the_best_trial_run_once_its_study_ended_in_the_same_call(tmp_path, monkeypatch, capsys):
    """The table and runs.md printed after a campaign show a study that finished during it as
    resolved (the run's best-trial command), not as "study pending" (the plan from before)."""
    import optuna
    from optuna.distributions import FloatDistribution

    import experiments.evidence as evidence
    from alphareg.campaign import study_db, study_name
    monkeypatch.chdir(tmp_path)
    params = {"wd_gain": 0.7, "wd_ref": 0.02, "target_alpha": 2.2, "deadband": 0.4}

    def fake_campaign(runs, *a, **k):         # the study ends during the campaign
        assert runs[0].study                  # planned before: study pending
        study_db("fast", "wdctl_opt").parent.mkdir(exist_ok=True)
        study = optuna.create_study(study_name=study_name("fast", "wdctl_opt"), direction="maximize",
                                    storage=f"sqlite:///{study_db('fast', 'wdctl_opt')}")
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: FloatDistribution(0.0, 10.0) for n in params}, value=0.8))
        return {runs[0].name: 0}
    monkeypatch.setattr(evidence, "run_campaign", fake_campaign)
    assert evidence.main(["fast", "--methods", "wdctl_opt", "--hours", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "| fast_lr5e-3_wdctl_opt_s012 | wdctl_opt | 0,1,2 | 0 | 0.0% |" in out, out
    assert "study pending" not in out


def test_held_control_trains_the_tuned_best_trial_with_control_until(tmp_path, monkeypatch):
    """lrctl_opt_held: refused while lrctl_opt's study has no complete trial; then the best trial's
    flags plus --control-until at HELD's step, under its own run name; not in the default plan."""
    import optuna
    from optuna.distributions import FloatDistribution

    from alphareg.campaign import HELD, best_flags, study_db, study_keys, study_name
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="lrctl_opt_held .* run --methods lrctl_opt first"):
        plan("fast", ["lrctl_opt_held"])
    params = {"lr_gain": 1.4, "target_alpha": 2.9, "deadband": 0.04, "alpha_ema": 0.08}
    study_db("fast", "lrctl_opt").parent.mkdir()
    study = optuna.create_study(study_name=study_name("fast", "lrctl_opt"), direction="maximize",
                                storage=f"sqlite:///{study_db('fast', 'lrctl_opt')}")
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={n: FloatDistribution(0.0, 10.0) for n in params}, value=0.8))
    (held,) = plan("fast", ["lrctl_opt_held"])
    assert held.name == "fast_lr5e-3_lrctl_opt_held_s012" and not held.study
    step = HELD["lrctl_opt_held"][1]
    assert held.flags == ("--method", "lr_controller", *best_flags("fast", "lrctl_opt"),
                          "--control-until", str(step))
    assert "--lr-gain" in held.flags and step == 177_828
    assert "lrctl_opt_held" not in {r.method for r in plan("fast")}
    assert study_keys(["wd0", "lrctl_opt_held", "lrctl_opt", "wdctl_opt"]) == ["lrctl_opt", "wdctl_opt"]
