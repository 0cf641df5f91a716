"""wandb mirror: an offline run is read back from wandb's own files and equals the run directory."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alphareg.tracking import read_offline_run, resolve_mode

ROOT = Path(__file__).resolve().parents[1]


def test_auto_mode_is_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError, match="--wandb-mode"):
        resolve_mode("sometimes")


def test_offline_wandb_holds_every_metric_htsr_row_phase_esd_image_and_summary(tmp_path):
    wb = tmp_path / "wb"
    env = dict(os.environ, ALPHAREG_NO_DOWNLOAD="1", MPLBACKEND="Agg", WANDB_DIR=str(wb),
               WANDB_CACHE_DIR=str(wb / "cache"), WANDB_CONFIG_DIR=str(wb / "config"),
               WANDB_SILENT="true", HOME=str(tmp_path))
    env.pop("WANDB_API_KEY", None)
    r = subprocess.run([sys.executable, "-m", "experiments.alpha_reg", "--steps", "30", "--seeds", "0,1",
                        "--lr", "5e-3", "--target", "12", "--runs-dir", str(tmp_path), "--name", "wbrun",
                        "--no-progress", "--wandb", "--wandb-group", "study-x", "--ww-per-decade", "0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "offline mode" in r.stdout
    run = tmp_path / "wbrun"
    metrics = list(csv.DictReader(open(run / "metrics.csv")))
    htsr = list(csv.DictReader(open(run / "htsr.csv")))
    summary = json.loads((run / "summary.json").read_text())
    offline = sorted((wb / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    seen = set()
    for d in offline:
        got = read_offline_run(d)
        k = got["config"]["member"]
        seen.add(k)
        assert got["name"] == f"wbrun-m{k}" and got["config"]["seed"] == k
        assert got["config"]["target_alpha"] == 12.0 and got["config"]["method"] == "penalty"
        hist = got["history"]
        by_step = {}
        for h in hist:
            by_step.setdefault(int(h["train_step"]), {}).update(h)
        mine = [m for m in metrics if m["member"] == str(k)]
        assert sorted(by_step) == sorted(int(m["step"]) for m in mine)
        for m in mine:
            h = by_step[int(m["step"])]
            for col in ("test_acc", "train_loss", "l2_fc1", "penalty", "alpha_hat_fc1", "lr_fc2"):
                assert h[col] == pytest.approx(float(m[col]), rel=1e-12), col
        for row in (x for x in htsr if x["member"] == str(k)):
            h = by_step[int(row["step"])]
            assert h[f"htsr/{row['layer']}/alpha"] == pytest.approx(float(row["alpha"]), rel=1e-12)
            assert h[f"htsr/{row['layer']}/traps_mean"] == pytest.approx(float(row["traps_mean"]))
        assert all("phase" in by_step[int(m["step"])] for m in mine)
        assert any(key.startswith("esd/") for h in hist for key in h)
        assert list((d / "files" / "media" / "images" / "esd").glob("fig2_*.png"))
        peak = next(m for m in summary["members"] if m["member"] == k)
        assert got["summary"]["peak_test_acc"] == pytest.approx(peak["peak_test_acc"])
        assert got["summary"]["final_test_acc"] == pytest.approx(peak["final_test_acc"])
        assert "collapse_prevented" in got["summary"]
    assert seen == {0, 1}


def test_report_without_a_logged_in_user_says_so_in_one_line(tmp_path, monkeypatch):
    from alphareg.tracking import publish_report
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    msg = publish_report("t", ["g"], local_dir="reports/x")
    assert "offline" in msg and "reports/x" in msg and "\n" not in msg
