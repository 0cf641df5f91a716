"""The CLI end to end: outputs of a short run, bad input, kill -9 and resume, bad checkpoints."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env_extra=None, module="experiments.baseline"):
    env = dict(os.environ, ALPHAREG_NO_DOWNLOAD="1", MPLBACKEND="Agg")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_help_documents_every_flag_with_paper_defaults():
    out = cli("--help").stdout.split("options:", 1)[1]
    for flag, default in [("--lr", "0.0005"), ("--wd", "0"), ("--batch-size", "200"),
                          ("--init-scale", "8.0"), ("--loss", "mse"), ("--beta1", "0.9"),
                          ("--beta2", "0.999"), ("--eps", "1e-08"), ("--dtype", "float64"),
                          ("--steps", "10000000"), ("--seeds", "0"), ("--n-per-class", "100"),
                          ("--data-seed", "0"), ("--log-per-decade", "20"), ("--sparsity-tau", "0.0"),
                          ("--complexity-fraction", "0.1"), ("--device", "auto")]:
        assert f"\n  {flag} " in out, flag
        seg = out.split(f"\n  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {default})" in " ".join(seg.split()), (flag, seg)


@pytest.mark.parametrize("args, flag", [
    (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--wd", "-0.1"], "--wd"),
    (["--batch-size", "1001"], "--batch-size"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "float16"], "--dtype"),
    (["--seeds", "0,1", "--lr", "1e-3,2e-3,3e-3"], "--lr"),
    (["--seeds", "a,b"], "--seeds"),
    (["--complexity-layer", "4"], "--complexity-layer"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, flag):
    r = cli(*args, "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_cuda_requested_but_absent(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("--device", "cuda", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "--device cuda" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unwritable_runs_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = cli("--steps", "5", "--runs-dir", str(blocker / "runs"), "--no-progress")
    assert r.returncode == 2 and "--runs-dir" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def _run_args(tmp_path, name, steps=150):
    return ["--steps", str(steps), "--seeds", "0,1", "--log-per-decade", "10", "--runs-dir",
            str(tmp_path), "--name", name, "--no-progress", "--plot-minutes", "1000",
            "--ww-per-decade", "0", "--esd-per-decade", "0"]


def test_short_run_writes_everything_and_kill9_resume_is_bitwise_identical(tmp_path):
    ref = cli(*_run_args(tmp_path, "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "ref"
    for f in ["config.json", "metrics.csv", "checkpoint.pt", "summary.json",
              "plots/fig1_accuracy.png", "plots/fig5_progress_measures.png"]:
        assert (run / f).is_file(), f
    snap = torch.load(run / "snapshots" / "step_000000150.pt", weights_only=False)
    final = torch.load(run / "checkpoint.pt", weights_only=False)
    assert torch.equal(snap["weights"][0], final["model"]["weights.0"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["lr"] == [0.0005] and cfg["config"]["seeds"] == [0, 1]
    assert cfg["data"]["source"] and cfg["provenance"]["git_commit"]
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in ["step", "member", "train_loss", "train_acc", "test_loss", "test_acc", "l2_total",
                "l2_fc1", "sparsity_h1", "sparsity_h2", "entropy_fc1", "circuit_complexity", "wall_time"]:
        assert col in header
    steps = sorted({int(r.split(",")[0]) for r in rows[1:]})
    assert steps[0] == 0 and steps[-1] == 150 and len(rows) - 1 == 2 * len(steps)
    assert sorted(int(p.stem[5:]) for p in (run / "snapshots").glob("step_*.pt")) == steps

    # SIGKILL right after step 77 (between log points 63 and 100): nothing after the last
    # checkpoint survives; re-running the same command resumes there.
    killed = cli(*_run_args(tmp_path, "cut"), env_extra={"ALPHAREG_DEBUG_KILL_AT_STEP": "77"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli(*_run_args(tmp_path, "cut"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 63" in resumed.stderr
    a = torch.load(run / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 150
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for x, y in zip(a["optimizer"]["exp_avg"], b["optimizer"]["exp_avg"]):
        assert torch.equal(x, y)

    def strip_time(text):
        return [",".join(r.split(",")[:-1]) for r in text.splitlines()]
    assert strip_time((run / "metrics.csv").read_text()) == \
        strip_time((tmp_path / "cut" / "metrics.csv").read_text())

    # the HTSR monitor analysed every snapshot of both runs (the killed run's backlog was
    # caught up on resume), with identical, seeded results
    def htsr_rows(path):
        lines = (path / "htsr.csv").read_text().splitlines()
        return lines[0], sorted(lines[1:])
    head_a, rows_a = htsr_rows(run)
    head_b, rows_b = htsr_rows(tmp_path / "cut")
    assert head_a == head_b and "alpha" in head_a and "traps_mean" in head_a and "ks_pvalue" in head_a
    assert rows_a == rows_b and len(rows_a) == len(steps) * 2 * 3
    assert (run / "plots" / "fig4_alpha.png").is_file() and (run / "tables.md").is_file()

    # the same command once more: nothing left to do, same result
    again = cli(*_run_args(tmp_path, "cut"))
    assert again.returncode == 0 and "resumed at step 150" in again.stderr
    # segments.csv: the killed process's row was last written at its checkpoint 63 (its steps after
    # it were trained again by the resume), the resume wrote one, the call with nothing to do none
    from alphareg.rundir import read_segments
    assert [(r["start_step"], r["end_step"], r["outcome"]) for r in read_segments(tmp_path / "cut")] == [
        ("0", "63", "running"), ("63", "150", "finished")]
    assert [(r["start_step"], r["end_step"]) for r in read_segments(run)] == [("0", "150")]

    # a different configuration under the same name is refused, not silently restarted
    other = cli(*_run_args(tmp_path, "cut"), "--lr", "1e-3")
    assert other.returncode == 2 and "another configuration" in other.stderr and "lr" in other.stderr

    # a corrupt checkpoint is reported, never silently replaced
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(b"garbage" * 100)
    bad = cli(*_run_args(tmp_path, "cut"))
    assert bad.returncode == 2 and "unreadable" in bad.stderr
    assert (tmp_path / "cut" / "checkpoint.pt").read_bytes() == b"garbage" * 100


def test_resume_flag_without_run_is_an_error(tmp_path):
    r = cli(*_run_args(tmp_path, "none"), "--resume")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_report_redraws_figures(tmp_path):
    r = cli(*_run_args(tmp_path, "rep", steps=20))
    assert r.returncode == 0, r.stderr
    for f in (tmp_path / "rep" / "plots").iterdir():
        f.unlink()
    rep = cli(str(tmp_path / "rep"), "--no-progress", module="experiments.report")
    assert rep.returncode == 0, rep.stderr
    for fig in ("fig1_accuracy.png", "fig4_alpha.png", "fig5_progress_measures.png"):
        assert (tmp_path / "rep" / "plots" / fig).stat().st_size > 10_000
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["peak_test_acc"]["mean"] > 0 and len(summary["phases"]) == 2
    assert "Table 1" in rep.stdout and "| fc1 |" in rep.stdout
    missing = cli(str(tmp_path / "nothing"), module="experiments.report")
    assert missing.returncode == 2


def test_a_run_directory_in_use_is_refused(tmp_path):
    from alphareg.config import RunConfig
    from alphareg.rundir import RunDir
    cfg = RunConfig(steps=5, runs_dir=str(tmp_path), name="busy", progress=False)
    with RunDir(cfg).lock():   # another "process" holds the run
        r = cli("--steps", "5", "--runs-dir", str(tmp_path), "--name", "busy", "--no-progress")
    assert r.returncode == 2 and "in use by another process" in r.stderr and str(os.getpid()) in r.stderr
    assert not (tmp_path / "busy" / "metrics.csv").exists()


def test_report_leaves_a_run_in_training_to_its_own_monitor(tmp_path):
    from alphareg.config import RunConfig
    from alphareg.rundir import RunDir
    r = cli(*_run_args(tmp_path, "live", steps=10), "--no-htsr")
    assert r.returncode == 0, r.stderr
    cfg = RunConfig(steps=10, seeds=(0, 1), runs_dir=str(tmp_path), name="live")
    with RunDir(cfg).lock():   # as if the training process were still running
        rep = cli(str(tmp_path / "live"), "--no-progress", module="experiments.report")
    assert rep.returncode == 0 and "being trained right now" in rep.stderr
    assert not (tmp_path / "live" / "htsr.csv").exists()
    rep = cli(str(tmp_path / "live"), "--no-progress", module="experiments.report")
    assert rep.returncode == 0 and (tmp_path / "live" / "htsr.csv").is_file()


def test_alpha_reg_run_records_alpha_penalty_lr_and_wd_and_plots_them(tmp_path):
    r = cli("--steps", "60", "--lr", "5e-3", "--seeds", "0,1", "--target", "12", "--runs-dir",
            str(tmp_path), "--name", "ar", "--no-htsr", "--no-snapshots", "--no-progress",
            "--penalty-grad-every", "5", module="experiments.alpha_reg")
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(tmp_path / "ar" / "metrics.csv")))
    cfg = json.loads((tmp_path / "ar" / "config.json").read_text())["config"]
    assert cfg["method"] == "penalty" and cfg["target_alpha"] == 12.0
    for col in ("alpha_hat_fc1", "alpha_hat_fc2", "alpha_hat_fc3", "penalty", "lr_fc1", "wd_fc3"):
        assert col in rows[0], col
    assert any(float(r["penalty"]) > 0 for r in rows)      # target 12: some layer is below it
    assert (tmp_path / "ar" / "plots" / "fig_alpha_control.png").stat().st_size > 10_000


def test_two_sided_zipf_penalty_run_acts_above_the_target(tmp_path):
    """Target 1.5, every layer's alpha far above it: the one-sided penalty would be 0."""
    r = cli("--steps", "40", "--lr", "5e-3", "--target", "1.5", "--penalty-two-sided",
            "--penalty-gradient", "zipf", "--runs-dir", str(tmp_path), "--name", "z", "--no-htsr",
            "--no-snapshots", "--no-progress", "--penalty-grad-every", "5", module="experiments.alpha_reg")
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(tmp_path / "z" / "metrics.csv")))
    cfg = json.loads((tmp_path / "z" / "config.json").read_text())["config"]
    assert (cfg["penalty_two_sided"], cfg["penalty_gradient"]) == (True, "zipf")
    assert all(min(float(x[f"alpha_hat_fc{i}"]) for i in (1, 2, 3)) > 1.5 for x in rows)
    assert all(float(x["penalty"]) > 0 for x in rows)


def test_controller_run_changes_layer_lrs(tmp_path):
    r = cli("--steps", "40", "--method", "lr_controller", "--control-every", "10", "--target", "8",
            "--runs-dir", str(tmp_path), "--name", "lc", "--no-htsr", "--no-snapshots",
            "--no-progress", module="experiments.alpha_reg")
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(tmp_path / "lc" / "metrics.csv")))
    last = rows[-1]
    assert float(last["lr_fc3"]) < 5e-4          # fc3's alpha (~3.5) is far below 8: lr cut
    assert "alpha_ema_fc1" in last


def test_held_controller_resumes_to_the_same_run(tmp_path):
    """--control-until 20 trained 0 -> 30 -> 60 in two calls = one call 0 -> 60 at every logged step; from
    step 20 on every layer's lr is the one the update at step 10 set."""
    import csv
    common = ("--method", "lr_controller", "--control-every", "10", "--target", "8",
              "--control-until", "20", "--runs-dir", str(tmp_path), "--no-htsr", "--no-snapshots",
              "--no-progress")
    for name, stops in (("split", ("30", "60")), ("whole", ("60",))):
        for steps in stops:
            r = cli("--steps", steps, "--name", name, *common, module="experiments.alpha_reg")
            assert r.returncode == 0, r.stderr
    split, whole = (list(csv.DictReader(open(tmp_path / n / "metrics.csv"))) for n in ("split", "whole"))
    def by_step(rows):   # the first call's end adds a row at step 30; wall times differ
        return {r["step"]: {k: v for k, v in r.items() if k != "wall_time"} for r in rows}
    split, whole = by_step(split), by_step(whole)
    assert set(whole) < set(split) and all(split[s] == whole[s] for s in whole)
    whole = list(whole.values())
    at10 = next(r for r in whole if int(r["step"]) == 11)
    late = [r for r in whole if int(r["step"]) >= 21]
    assert late and all(r[f"lr_{n}"] == at10[f"lr_{n}"] for r in late for n in ("fc1", "fc2", "fc3"))
    assert float(at10["lr_fc3"]) < 5e-4                  # the held dose is the controller's, not lr
    assert len({r["alpha_ema_fc3"] for r in late}) > 1    # alpha is still measured while held


@pytest.mark.parametrize("args, flag", [
    (["--method", "magic"], "--method"),
    (["--method", "early_stop"], "--val-per-class"),
    (["--penalty-layers", "fc7"], "--penalty-layers"),
    (["--method", "weight_decay", "--wd-layers", "fc7"], "--wd-layers"),
    (["--wd-layers", "fc2"], "--method weight_decay"),
    (["--alpha-ema", "1.5"], "--alpha-ema"),
    (["--lr-bounds", "2,1"], "--lr-bounds"),
    (["--optimizer", "lookahead"], "--optimizer"),
    (["--penalty-gradient", "newton"], "--penalty-gradient"),
    (["--method", "lr_controller", "--control-until", "-5"], "--control-until"),
    (["--method", "penalty", "--control-until", "100"], "--control-until"),
])
def test_alpha_reg_bad_input_is_one_line_exit_2(tmp_path, args, flag):
    r = cli(*args, "--runs-dir", str(tmp_path), module="experiments.alpha_reg")
    assert r.returncode == 2
    assert flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())


def test_report_verdict_table_traces_to_the_run_directories(tmp_path):
    import csv
    for name, extra in (("plain", ["--method", "none"]), ("pen", ["--target", "12"])):
        r = cli("--steps", "40", "--seeds", "0,1", "--runs-dir", str(tmp_path), "--name", name,
                "--no-progress", "--lr", "5e-3", "--esd-per-decade", "0", "--ww-per-decade", "0",
                *extra, module="experiments.alpha_reg")
        assert r.returncode == 0, r.stderr
    out = tmp_path / "verdict"
    r = cli(str(tmp_path / "plain"), str(tmp_path / "pen"), "--verdict", str(out), "--no-progress",
            module="experiments.report")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "verdict.csv")))
    plain, pen = "plain, lr 0.005, wd 0", "penalty, target_alpha 12, lr 0.005, wd 0"
    assert [(r["method"], r["seed"]) for r in rows] == [(plain, "0"), (plain, "1"), (pen, "0"), (pen, "1")]
    for row in rows:
        metrics = [m for m in csv.DictReader(open(tmp_path / row["run"] / "metrics.csv"))
                   if m["member"] == str(int(row["seed"]))]
        assert float(row["peak_test_acc"]) == max(float(m["test_acc"]) for m in metrics)
        assert float(row["final_test_acc"]) == float(metrics[-1]["test_acc"])
        htsr = [h for h in csv.DictReader(open(tmp_path / row["run"] / "htsr.csv"))
                if h["member"] == str(int(row["seed"])) and h["step"] == "40"]
        assert row["end_alpha"] == " ".join(f"{h['layer']}:{float(h['alpha']):.2f}" for h in htsr)
    md = (out / "verdict.md").read_text()
    assert md.count(f"| {plain} | 2 (0,1) | 40 |") == 1 and md.count(f"| {pen} |") == 3
    assert (out / "verdict_test_acc_alpha.png").stat().st_size > 10_000
    assert len(list((out / "figures").glob("fig4_alpha_*.png"))) == 2
    assert "| fc1 | pre-grokking (~1e5) |" in (out / "paper_tables.md").read_text()
    r = cli(str(tmp_path / "plain"), "--horizon", "0", "--verdict", str(out), module="experiments.report")
    assert r.returncode == 2 and "--horizon" in r.stderr
