"""One run = one directory ``<runs_dir>/<name>/``:

    config.json      the full RunConfig plus data source, versions, git commit, host
    metrics.csv      one row per (logged step, member)
    checkpoint.pt    the latest checkpoint (atomic), resumed automatically
    summary.json     peak / final accuracies per member, wall time, steps/s
    segments.csv     one row per training process: steps from / to, its wall time, device,
                     accelerator, host, commit, start / end time, finished, interrupted or
                     running (its last checkpoint; a killed process stays so)
    plots/           fig1_accuracy.png, fig5_progress_measures.png
    snapshots/       step_000001000.pt: every member's weights and biases at each log point
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from .checkpoint import config_mismatch
from .config import ConfigError, RunConfig

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
SEGMENTS = "segments.csv"
SEGMENT_FIELDS = ("start_step", "end_step", "wall_time_s", "device", "accelerator", "host", "git_commit",
                  "started", "ended", "outcome")
PLOTS = "plots"
SNAPSHOTS = "snapshots"
LOCK = ".lock"      # held (flock) by the training process for the life of the run


def git_commit() -> str:
    """``ALPHAREG_GIT_COMMIT`` when set (the device machine: its copy of the tree may carry a
    stale ``.git``, so the caller names the commit), else the short hash of the checkout
    (``-dirty`` with uncommitted changes to tracked files), else ``unknown``."""
    if os.environ.get("ALPHAREG_GIT_COMMIT"):
        return os.environ["ALPHAREG_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    import torch
    return {"git_commit": git_commit(), "host": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def check_writable(path: Path) -> None:
    """Raise ConfigError unless ``path`` can be created and written (nothing is left behind)."""
    probe_root = path
    while not probe_root.exists():
        probe_root = probe_root.parent
    if not probe_root.is_dir():
        raise ConfigError(f"--runs-dir {path.parent} is not writable: {probe_root} is a file, "
                          "not a folder; choose another --runs-dir")
    if not os.access(probe_root, os.W_OK | os.X_OK):
        raise ConfigError(f"--runs-dir {path.parent} is not writable ({probe_root} denies write "
                          "access); choose another --runs-dir")


class RunDir:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.path = Path(cfg.runs_dir) / cfg.run_name()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def check(self, resume: bool = False, restart: bool = False) -> None:
        """Validate before anything is written: writable, same config, resume possible."""
        check_writable(self.path)
        cfg_file = self.path / CONFIG
        if restart or not cfg_file.is_file():
            if resume and not restart:
                raise ConfigError(f"--resume given but {self.path} holds no run to resume; "
                                  "drop --resume to start a new run")
            return
        try:
            saved = RunConfig.from_dict(json.loads(cfg_file.read_text())["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{cfg_file} is unreadable ({e}); use --restart to start over") from None
        diff = config_mismatch(saved.trajectory_dict(), self.cfg.trajectory_dict())
        if diff:
            raise ConfigError(f"{self.path} holds a run with another configuration ({'; '.join(diff)}); "
                              "pass --name NEW for a new run, or --restart to overwrite it")
        if resume and not self.has_checkpoint:
            raise ConfigError(f"--resume given but {self.path} has no {CHECKPOINT}; "
                              "drop --resume to start from step 0")

    def create(self, data_info: dict, restart: bool = False) -> None:
        if restart and self.path.exists():
            for name in (CHECKPOINT, METRICS, SUMMARY, CONFIG, SEGMENTS):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / PLOTS, ignore_errors=True)
            shutil.rmtree(self.path / SNAPSHOTS, ignore_errors=True)
        try:
            (self.path / PLOTS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--runs-dir {self.cfg.runs_dir} is not writable ({e.strerror})") from None
        if not (self.path / CONFIG).is_file():
            write_json_atomic(self.path / CONFIG, {"config": self.cfg.to_dict(), "data": data_info,
                                                    "provenance": provenance()})

    @contextmanager
    def lock(self):
        """Exclusive lock on the run directory for the life of a training process, so two
        processes never write the same run (the second gets a ConfigError naming the first)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK, "a+")
        except OSError as e:
            raise ConfigError(f"--runs-dir {self.cfg.runs_dir} is not writable ({e.strerror})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(f"{self.path} is in use by another process (pid {holder}); wait for "
                              "it to finish or stop it, or pass --name NEW") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def snapshot_path(self, step: int) -> Path:
        return snapshot_file(self.path, step)

    def drop_after(self, last_step: int) -> None:
        """Forget derived files of steps after ``last_step`` (a resume replays those steps)."""
        from .monitor import HTSRTable
        for s in self.snapshot_steps():
            if s > last_step:
                self.snapshot_path(s).unlink(missing_ok=True)
        HTSRTable(self.path).truncate(last_step)
        segs = read_segments(self.path)
        if any(int(r["end_step"]) > last_step for r in segs):   # those steps are trained again
            self._write_segments([dict(r, end_step=min(int(r["end_step"]), last_step)) for r in segs
                                  if int(r["start_step"]) < last_step])

    def put_segment(self, row: dict) -> None:
        """Record one training process (``SEGMENT_FIELDS``) in ``segments.csv``: which device
        trained which steps, so a run resumed on other machines says where its wall time went. A row
        with the same ``start_step`` and ``started`` as the last one replaces it (the process
        updates its row at every checkpoint, so a killed process leaves its row at the step its run
        resumes from); otherwise it is appended. Written atomically."""
        rows = read_segments(self.path)
        if rows and (rows[-1]["start_step"], rows[-1]["started"]) == (str(row["start_step"]), row["started"]):
            rows.pop()
        self._write_segments(rows + [row])

    def _write_segments(self, rows: list[dict]) -> None:
        tmp = self.path / (SEGMENTS + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SEGMENT_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path / SEGMENTS)

    def snapshot_steps(self) -> list[int]:
        return snapshot_steps(self.path)

    # ------------------------------------------------------------------ metrics table
    def append_metrics(self, rows: Iterable[dict]) -> None:
        """Append rows; when they carry columns the table lacks (a run written by an older
        version, resumed by a newer one) the table is first rewritten with those columns added
        (empty in the old rows), so every line keeps the header's number of fields."""
        rows = list(rows)
        path = self.path / METRICS
        new = not path.is_file()
        fields = list(rows[0])
        if not new:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            missing = [c for c in fields if c not in header]
            if missing:
                rewrite_csv(path, header + missing)
            fields = header + missing if header else fields
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            if new:
                w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after ``last_step`` (written after the checkpoint a resume uses)."""
        truncate_csv(self.path / METRICS, last_step)


def truncate_csv(path: Path, last_step: int) -> None:
    """Rewrite a table with a ``step`` column keeping the rows with step <= last_step (atomic)."""
    if path.is_file():
        rewrite_csv(path, keep=lambda r: int(r["step"]) <= last_step)


def rewrite_csv(path: Path, fields: list[str] | None = None, keep=None) -> None:
    """Atomically rewrite a table: with header ``fields`` (default: its own; cells of new
    columns empty) and only the rows for which ``keep(row)`` is true (default: all)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = fields or reader.fieldnames
        rows = [r for r in reader if keep is None or keep(r)]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def snapshot_file(run_path: str | os.PathLike, step: int) -> Path:
    return Path(run_path) / SNAPSHOTS / f"step_{step:09d}.pt"


def snapshot_steps(run_path: str | os.PathLike) -> list[int]:
    """Steps of the weight snapshots kept in a run directory, ascending."""
    return sorted(int(p.stem[5:]) for p in (Path(run_path) / SNAPSHOTS).glob("step_*.pt"))


def last_step(run_path: str | os.PathLike) -> int:
    """How far a run got: the later of its last logged step (``metrics.csv``) and the step
    ``summary.json`` records (written when a run ends or is stopped); 0 when it has neither."""
    path = Path(run_path)
    last = 0
    if (path / METRICS).is_file():
        with open(path / METRICS, newline="") as f:
            for row in csv.DictReader(f):
                last = max(last, int(row["step"]))
    if (path / SUMMARY).is_file():
        try:
            last = max(last, int(json.loads((path / SUMMARY).read_text()).get("step", 0)))
        except (ValueError, TypeError):
            pass
    return last


def read_table(run_path: str | os.PathLike, name: str) -> list[dict]:
    """Rows of the table ``name`` of a run directory as dicts of strings ([] when absent)."""
    path = Path(run_path) / name
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_segments(run_path: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``segments.csv`` (empty for a run made before it was kept)."""
    return read_table(run_path, SEGMENTS)


def read_metrics(run_path: str | os.PathLike) -> list[dict]:
    """Rows of a run directory's metrics table as dicts of strings ([] when absent)."""
    return read_table(run_path, METRICS)


#: metrics columns that differ between identical trajectories (timing)
TIMING_COLUMNS = ("wall_time",)


def compare_metrics(run_a: str | os.PathLike, run_b: str | os.PathLike) -> dict:
    """Whether two runs followed the same trajectory: their ``metrics.csv`` rows at every
    (step, member) both logged, compared as the written strings (Python's float repr round-trips,
    so equal strings = equal float64 values, bit for bit) over the columns both have, timing
    columns aside. Returns ``common`` (rows both have), ``identical`` (rows equal in every
    column), ``last_common_step``, ``first_difference`` (step, member, column, value in a, value in
    b) or None, and ``columns``: per differing column (rows that differ, max |a − b| / |b|; the
    relative difference is inf where a value is not a number)."""
    rows_a = {(int(r["step"]), int(r["member"])): r for r in read_metrics(run_a)}
    rows_b = {(int(r["step"]), int(r["member"])): r for r in read_metrics(run_b)}
    common = sorted(set(rows_a) & set(rows_b))
    identical, first, columns = 0, None, {}
    for key in common:
        a, b = rows_a[key], rows_b[key]
        diffs = [c for c in a if c in b and c not in TIMING_COLUMNS and a[c] != b[c]]
        identical += not diffs
        if diffs and first is None:
            first = (*key, diffs[0], a[diffs[0]], b[diffs[0]])
        for c in diffs:
            try:
                rel = abs(float(a[c]) - float(b[c])) / abs(float(b[c])) if float(b[c]) else float("inf")
            except ValueError:
                rel = float("inf")
            n, worst = columns.get(c, (0, 0.0))
            columns[c] = (n + 1, max(worst, rel))
    return {"common": len(common), "identical": identical, "columns": columns,
            "last_common_step": common[-1][0] if common else None, "first_difference": first}


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
