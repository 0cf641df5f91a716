"""Run archives: the resumable state of a run directory as one ``<archive_dir>/<name>.tar.gz``,
committed with the project, so that a long run continues on a fresh clone (``runs/`` and
``studies/`` are ignored by git, and a session may start from a clean checkout of main).

An archive holds the run directory minus what is rebuilt or already summarised:

* ``plots/`` (``experiments.report`` redraws every figure from the tables);
* weight snapshots whose HTSR rows are already in ``htsr.csv``; a snapshot the monitor has not
  analysed yet is kept, and the monitor analyses it after the restore (``HTSRMonitor.catch_up``);
* the lock file, temporary files and wandb's offline folder.

What remains is ``checkpoint.pt`` (weights, optimizer moments, sampler generators, method state:
the run resumes exactly, as if never stopped), ``config.json``, ``metrics.csv``, ``htsr.csv``,
``summary.json`` and the derived tables. 9–14 MB for a 3-member float64 MLP run (the
checkpoint: weights and two AdamW moments, 3 × 199,210 float64 each; gzip saves 4–40 %, more with weight decay).

Rules, so that no step is lost and nothing is overwritten by something older:

* ``restore`` extracts an archive only where the run directory does not exist; an existing run
  directory is never touched (when it is behind its archive the caller is told);
* ``save`` replaces an archive only with a run directory that reached a later step (``last_step``),
  writing a temporary file renamed over the old one; a run a training process holds is skipped;
* an archive that cannot be read raises :class:`ArchiveError` naming it (never a silent restart).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from .monitor import HTSRTable
from .rundir import LOCK, METRICS, PLOTS, SNAPSHOTS, SUMMARY, last_step, snapshot_file, snapshot_steps

SUFFIX = ".tar.gz"


class ArchiveError(RuntimeError):
    """An archive that cannot be read. The message names the file and what to do."""


#: top-level entries of a run directory never archived
SKIP = {PLOTS, LOCK, "wandb"}
#: read first when an archive is opened for its step (members are written in this order)
FIRST = (METRICS, SUMMARY)


def archive_path(archive_dir: str | os.PathLike, name: str) -> Path:
    return Path(archive_dir) / f"{name}{SUFFIX}"


def members(run_path: str | os.PathLike) -> list[Path]:
    """The files of a run directory that go into its archive, relative to the directory,
    ``metrics.csv`` and ``summary.json`` first."""
    run = Path(run_path)
    analysed = HTSRTable(run).steps()
    keep_snaps = {snapshot_file(run, s) for s in snapshot_steps(run) if s not in analysed}
    out = []
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run)
        if not p.is_file() or p.is_symlink() or rel.parts[0] in SKIP or ".tmp" in p.name:
            continue
        if rel.parts[0] == SNAPSHOTS and p not in keep_snaps:
            continue
        out.append(rel)
    return sorted(out, key=lambda r: (FIRST.index(str(r)) if str(r) in FIRST else len(FIRST), str(r)))


def in_use(run_path: str | os.PathLike) -> bool:
    """Whether a training process holds the run directory's lock (``RunDir.lock``)."""
    lock = Path(run_path) / LOCK
    if not lock.is_file():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def archived_step(archive: str | os.PathLike) -> int:
    """The step the archived run reached (``last_step`` of its metrics and summary); 0 if the
    archive holds neither."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for m in tar:
                    if m.name not in FIRST:
                        break       # they are written first: nothing after them is needed
                    tar.extract(m, tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise unreadable(archive, e) from None
        return last_step(tmp)


def unreadable(archive: str | os.PathLike, e: Exception) -> ArchiveError:
    return ArchiveError(f"archive {archive} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                        f"restore it from git (git checkout -- {archive}) or delete it")


def save(run_path: str | os.PathLike, archive_dir: str | os.PathLike) -> tuple[Path, bool, str]:
    """Write ``<archive_dir>/<run name>.tar.gz`` from the run directory when it is ahead of the
    archive (or no archive exists). Returns (archive, written, reason)."""
    run = Path(run_path)
    if not (run / METRICS).is_file():
        return archive_path(archive_dir, run.name), False, f"{run} has no {METRICS}: not started"
    dest = archive_path(archive_dir, run.name)
    if in_use(run):
        return dest, False, f"{run} is being trained by another process: archive it once that stops"
    here = last_step(run)
    if dest.is_file():
        there = archived_step(dest)
        if there >= here:
            return dest, False, f"archive at step {there:,}, run at {here:,}: nothing newer"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for rel in members(run):
                tar.add(run / rel, arcname=str(rel), recursive=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest, True, f"step {here:,}, {dest.stat().st_size / 1e6:.1f} MB"


def restore(name: str, runs_dir: str | os.PathLike, archive_dir: str | os.PathLike) -> tuple[bool, str]:
    """Extract the archive of run ``name`` into ``<runs_dir>/<name>/`` when that directory does
    not exist. Returns (restored, note); the note is empty when there is nothing to tell (no
    archive, or a run directory at least as far as its archive). A run directory behind its
    archive is reported, not replaced (delete it to restore the archive)."""
    src = archive_path(archive_dir, name)
    run = Path(runs_dir) / name
    if not src.is_file():
        return False, ""
    if run.exists():
        here, there = last_step(run), archived_step(src)
        if here < there:
            return False, (f"{run} is at step {here:,} but its archive {src} at {there:,}: the run "
                           f"directory is kept; delete it to continue from the archive")
        return False, ""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.restore", dir=run.parent if run.parent.is_dir() else None))
    try:
        try:
            with tarfile.open(src, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise unreadable(src, e) from None
        run.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True, f"restored at step {last_step(run):,} from {src}"


def save_file(path: str | os.PathLike, archive_dir: str | os.PathLike) -> bool:
    """Copy a small file (an Optuna study's database) into the archive when its bytes differ."""
    path, dest = Path(path), Path(archive_dir) / Path(path).name
    if not path.is_file() or (dest.is_file() and dest.read_bytes() == path.read_bytes()):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dest)
    return True


def restore_file(path: str | os.PathLike, archive_dir: str | os.PathLike) -> bool:
    """Copy ``<archive_dir>/<file name>`` to ``path`` when ``path`` does not exist."""
    path = Path(path)
    src = Path(archive_dir) / path.name
    if path.exists() or not src.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, path)
    return True
