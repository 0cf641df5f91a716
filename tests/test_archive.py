"""Run archives (alphareg.archive, experiments.evidence --archive): a run saved, restored on a
fresh "clone" and resumed continues exactly as a run that was never stopped (checked with
experiments.compare); archives are never replaced by older runs and never overwrite a run
directory."""
import csv
import fcntl
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from alphareg import archive
from alphareg.rundir import compare_metrics, last_step

FAST = ("--lr", "5e-3", "--wd", "0", "--esd-per-decade", "0", "--ww-per-decade", "0", "--no-progress")


def train(runs_dir, name, steps):
    r = subprocess.run([sys.executable, "-m", "experiments.baseline", *FAST, "--seeds", "0,1",
                        "--steps", str(steps), "--name", name, "--runs-dir", str(runs_dir)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


def compare_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.compare", *map(str, args)],
                          capture_output=True, text=True)


def same(a, b, skip=("wall_time",)) -> bool:
    """Recursive equality of two checkpoints (tensors bit for bit), ignoring ``skip`` keys."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same(a[k], b[k], skip) for k in a if k not in skip)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y, skip) for x, y in zip(a, b))
    return a == b


def checkpoint(run):
    return torch.load(run / "checkpoint.pt", weights_only=False)


def test_a_restored_archive_resumes_exactly_like_a_run_never_stopped(tmp_path):
    first, fresh, straight = tmp_path / "first", tmp_path / "fresh_clone", tmp_path / "straight"
    train(first, "r", 30)
    dest, written, note = archive.save(first / "r", tmp_path / "archive")
    assert written and dest == tmp_path / "archive" / "r.tar.gz" and "step 30" in note
    names = tarfile.open(dest).getnames()
    assert names[:2] == ["metrics.csv", "summary.json"] and "checkpoint.pt" in names
    assert not any(n.startswith("plots") or n == ".lock" for n in names)
    # every snapshot has its HTSR rows (the run ended normally): none is archived
    assert not any(n.startswith("snapshots/") for n in names) and "htsr.csv" in names
    assert archive.archived_step(dest) == 30

    restored, note = archive.restore("r", fresh, tmp_path / "archive")
    assert restored and "step 30" in note
    assert same(checkpoint(first / "r"), checkpoint(fresh / "r"), skip=())

    assert "resumed at step 30" in train(fresh, "r", 60)
    train(straight, "r", 60)
    # the same rows, bit for bit, plus the one the first chunk logged at its last step (30)
    resumed, never_stopped = metrics(fresh / "r"), metrics(straight / "r")
    assert [r for r in resumed if r["step"] != "30"] == never_stopped and len(never_stopped) > 20
    assert any(int(r["step"]) > 30 for r in never_stopped)
    c = compare_metrics(fresh / "r", straight / "r")
    assert (c["common"], c["identical"], c["columns"], c["first_difference"]) == \
        (len(never_stopped), len(never_stopped), {}, None) and c["last_common_step"] == 60
    assert compare_cli(fresh / "r", straight / "r").returncode == 0
    # one value changed by hand in a copy: found, counted, its relative difference exact
    tampered = tmp_path / "tampered"
    shutil.copytree(straight / "r", tampered)
    rows = list(csv.reader(open(tampered / "metrics.csv")))
    col = rows[0].index("test_loss")
    old = float(rows[5][col])
    rows[5][col] = repr(old * 1.5)
    with open(tampered / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    c = compare_metrics(tampered, straight / "r")
    assert c["identical"] == c["common"] - 1 and set(c["columns"]) == {"test_loss"}
    assert c["columns"]["test_loss"][0] == 1 and abs(c["columns"]["test_loss"][1] - 0.5) < 1e-12
    assert c["first_difference"][:3] == (int(rows[5][0]), int(rows[5][1]), "test_loss")
    r = compare_cli(tampered, straight / "r")
    assert r.returncode == 1 and "test_loss: differs in 1 rows, max relative difference 0.5" in r.stdout
    assert compare_cli(tampered, straight / "r", "--rtol", "0.6").returncode == 0
    r = compare_cli(tmp_path / "nothing", straight / "r")
    assert r.returncode == 2 and "run_a" in r.stderr and "metrics.csv" in r.stderr
    assert same(checkpoint(fresh / "r"), checkpoint(straight / "r"))

    # the resumed run is ahead: it replaces the archive; the older one never does
    assert archive.save(fresh / "r", tmp_path / "archive")[1] and archive.archived_step(dest) == 60
    written, note = archive.save(first / "r", tmp_path / "archive")[1:]
    assert not written and "archive at step 60, run at 30" in note and archive.archived_step(dest) == 60
    # an existing run directory is never overwritten; one behind its archive is reported
    restored, note = archive.restore("r", first, tmp_path / "archive")
    assert not restored and "at step 30 but its archive" in note and last_step(first / "r") == 30
    assert archive.restore("r", straight, tmp_path / "archive") == (False, "")
    assert archive.restore("other", fresh, tmp_path / "archive") == (False, "")


def test_unanalysed_snapshots_are_archived_and_runs_in_use_are_not(tmp_path):
    train(tmp_path, "r", 10)
    run = tmp_path / "r"
    pending = run / "snapshots" / "step_000000999.pt"      # a snapshot the monitor never analysed
    pending.write_bytes(b"weights")
    (run / "plots" / "x.png").write_bytes(b"png")
    rel = [str(p) for p in archive.members(run)]
    assert "snapshots/step_000000999.pt" in rel and not any(p.startswith("plots") for p in rel)
    assert sum(p.startswith("snapshots/") for p in rel) == 1
    with open(run / ".lock", "a+") as f:                  # what RunDir.lock holds while training
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert archive.in_use(run)
        written, note = archive.save(run, tmp_path / "a")[1:]
        assert not written and "another process" in note and not (tmp_path / "a" / "r.tar.gz").exists()
    assert not archive.in_use(run) and archive.save(run, tmp_path / "a")[1]
    assert not archive.save(tmp_path / "never", tmp_path / "a")[1]


def test_study_databases_are_copied_both_ways(tmp_path):
    db = tmp_path / "studies" / "s.db"
    db.parent.mkdir()
    db.write_bytes(b"v1")
    assert archive.save_file(db, tmp_path / "a") and not archive.save_file(db, tmp_path / "a")
    db.write_bytes(b"v2")
    assert archive.save_file(db, tmp_path / "a") and (tmp_path / "a" / "s.db").read_bytes() == b"v2"
    assert not archive.restore_file(db, tmp_path / "a")              # exists: untouched
    other = tmp_path / "clone" / "studies" / "s.db"
    assert archive.restore_file(other, tmp_path / "a") and other.read_bytes() == b"v2"


def test_an_unreadable_archive_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "archive" / "fast_lr5e-3_wd0.01_s012.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a tar file")
    with pytest.raises(archive.ArchiveError, match="fast_lr5e-3_wd0.01_s012.tar.gz is unreadable"):
        archive.restore("fast_lr5e-3_wd0.01_s012", tmp_path / "runs", tmp_path / "archive")
    assert not (tmp_path / "runs" / "fast_lr5e-3_wd0.01_s012").exists()
    r = subprocess.run([sys.executable, "-m", "experiments.evidence", "fast", "--methods", "wd0.01", "--hours", "0",
                        "--runs-dir", str(tmp_path / "runs"), "--archive", str(tmp_path / "archive")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--archive" in r.stderr and "git checkout --" in r.stderr


def test_evidence_cli_restores_from_and_saves_to_the_archive(tmp_path):
    name = "fast_lr5e-3_wd0.01_s012"
    train(tmp_path / "elsewhere", name, 20)
    archive.save(tmp_path / "elsewhere" / name, tmp_path / "archive")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "experiments.evidence", "fast", "--methods", "wd0.01",
                               "--runs-dir", str(tmp_path / "runs"), *args], capture_output=True, text=True)
    r = cli("--hours", "0", "--archive", str(tmp_path / "archive"))
    assert r.returncode == 0, r.stderr
    assert "restored at step 20" in r.stderr and f"| {name} | wd0.01 | 0,1,2 | 20 |" in r.stdout
    assert last_step(tmp_path / "runs" / name) == 20
    # --list never touches the archive or the runs
    r = cli("--list", "--archive", str(tmp_path / "archive"), "--runs-dir", str(tmp_path / "other"))
    assert r.returncode == 0 and "| 0 |" in r.stdout and not (tmp_path / "other").exists()
    (tmp_path / "afile").write_text("x")
    r = cli("--hours", "0", "--archive", str(tmp_path / "afile"))
    assert r.returncode == 2 and "--archive" in r.stderr and "is a file" in r.stderr


def test_git_commit_is_the_environment_s_where_set_else_git_s(monkeypatch):
    """On the device machine the tree may carry a stale .git: the caller's commit wins."""
    from alphareg import rundir

    monkeypatch.setenv("ALPHAREG_GIT_COMMIT", "abc1234")
    assert rundir.git_commit() == "abc1234"
    monkeypatch.delenv("ALPHAREG_GIT_COMMIT")
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(rundir.__file__).parent)
    if here.returncode == 0:
        assert rundir.git_commit().split("-")[0] == here.stdout.strip()

    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    assert rundir.git_commit() == "unknown"
