"""HTSR monitor: analyses the weight snapshots of a run off the training loop's critical path.

At every log point the engine writes ``snapshots/step_*.pt`` and hands the path to the monitor,
which analyses it in a separate process that runs only on idle CPU time (Linux ``SCHED_IDLE``,
else ``nice 19``; one thread), so the training process never waits for it; a backlog is
drained at the end of the run. Per member and layer it computes with ``alphareg.htsr``:
alpha, xmin, xmax, D, tail size, correlation traps (mean +- sd over seeded shuffles), the
MP sigma and the KS statistic / p-value of the shuffled ESD against the fitted MP law; at the
steps of a sparser log schedule (``ww_per_decade``) it adds weightwatcher's own columns
(``ww_alpha``, ``ww_alpha_weighted``, ``ww_log_spectral_norm``, ``ww_stable_rank``,
``ww_rand_num_spikes``) from the ``weightwatcher`` package. Rows go to ``htsr.csv``
(step x member x layer).

Nothing is lost when a run is killed: snapshots stay on disk, and whatever has no rows in
``htsr.csv`` yet is analysed when the run resumes (or by ``python -m experiments.report RUN``).
"""
from __future__ import annotations

import csv
import math
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

HTSR = "htsr.csv"
WW_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "rand_num_spikes")


def ww_steps(total: int, ww_per_decade: int) -> set[int]:
    """Steps at which the weightwatcher reference columns are computed (0 = never)."""
    from .schedule import log_points
    return set(log_points(total, ww_per_decade)) if ww_per_decade > 0 else set()


def analyse_snapshot(path: str | os.PathLike, n_shuffles: int = 5, seed: int = 0,
                     with_ww: bool = False) -> list[dict]:
    """HTSR rows (one per member and layer) of one snapshot file."""
    from . import htsr
    from .models import population_from_snapshot

    snap = torch.load(path, map_location="cpu", weights_only=False)
    weights = snap["weights"]
    rows = htsr.analyze_population(weights, names=snap["layers"], n_shuffles=n_shuffles, seed=seed)
    for r in rows:
        r["seed"] = snap["seeds"][r["member"]]
    if with_ww:
        pop = population_from_snapshot(snap)
        for k in range(len(snap["seeds"])):
            ref = _by_layer(htsr.ww_reference(pop.member(k), randomize=True), weights, snap["layers"])
            for r in rows:
                if r["member"] == k and r["layer"] in ref:
                    for c in WW_COLUMNS:
                        r[f"ww_{c}"] = ref[r["layer"]].get(c, math.nan)
    out = []
    for r in rows:
        row = {"step": int(snap["step"]), "member": r["member"], "seed": r["seed"], "layer": r["layer"]}
        row.update({k: v for k, v in r.items() if k not in row})
        for c in WW_COLUMNS:
            row.setdefault(f"ww_{c}", "")
        out.append(row)
    return out


def _by_layer(ww_rows: list[dict], weights, names) -> dict[str, dict]:
    """Match weightwatcher's rows (in module order, skipped layers absent) to our layer names
    by walking both lists in order and pairing equal shapes."""
    out, i = {}, 0
    for w, name in zip(weights, names):
        shape = {int(w.shape[1]), int(w.shape[2])}
        if i < len(ww_rows) and {int(ww_rows[i]["N"]), int(ww_rows[i]["M"])} == shape:
            out[name] = ww_rows[i]
            i += 1
    return out


def _init_worker() -> None:
    """Lowest priority, one thread for torch and for numpy/scipy's BLAS (oversubscribed BLAS
    threads spinning beside the training process slow an SVD by orders of magnitude)."""
    from threadpoolctl import threadpool_limits
    try:   # run only on otherwise idle CPU time (Linux SCHED_IDLE), else at nice 19
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
    torch.set_num_threads(1)
    threadpool_limits(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """A training process killed with SIGKILL must not leave its monitor behind (holding its
    pipes open): ask Linux to kill us when the parent dies, and poll the parent as a fallback."""
    import signal
    import time
    parent = os.getppid()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class HTSRTable:
    """``htsr.csv`` of a run directory: append, read, analysed steps, truncate."""

    def __init__(self, run_path: str | os.PathLike):
        self.path = Path(run_path) / HTSR
        self._lock = threading.Lock()

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self._lock:
            new = not self.path.is_file()
            fields = list(rows[0]) if new else self._fields()
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerows(rows)

    def _fields(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f))

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return sorted(csv.DictReader(f), key=lambda r: (int(r["step"]), int(r["member"])))

    def steps(self) -> set[int]:
        return {int(r["step"]) for r in self.read()}

    def truncate(self, last_step: int) -> None:
        from .rundir import truncate_csv
        truncate_csv(self.path, last_step)


class HTSRMonitor:
    """Background analysis of snapshots in one low-priority worker process."""

    def __init__(self, run_dir, n_shuffles: int = 5, seed: int = 0, ww_at: set[int] | None = None,
                 background: bool = True):
        self.run_dir = run_dir
        self.table = HTSRTable(run_dir.path)
        self.n_shuffles, self.seed = n_shuffles, seed
        self.ww_at = ww_at or set()
        self.pending: list[Future] = []
        self.errors: list[str] = []
        self.pool = (ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker)
                     if background else None)

    def submit(self, step: int) -> None:
        args = (str(self.run_dir.snapshot_path(step)), self.n_shuffles, self.seed, step in self.ww_at)
        if self.pool is None:
            self.table.append(analyse_snapshot(*args))
            return
        fut = self.pool.submit(analyse_snapshot, *args)
        fut.add_done_callback(self._collect)
        self.pending.append(fut)

    def _collect(self, fut: Future) -> None:
        if fut.cancelled():   # dropped by close(wait=False): its snapshot is analysed on resume
            return
        try:
            self.table.append(fut.result())
        except Exception as e:  # reported at the end of the run, never silently dropped
            self.errors.append(f"{type(e).__name__}: {e}")

    def missing_steps(self) -> list[int]:
        """Snapshot steps that have no rows in ``htsr.csv`` yet."""
        return sorted(set(self.run_dir.snapshot_steps()) - self.table.steps())

    def catch_up(self) -> list[int]:
        """Submit every snapshot that has no rows yet (after a kill, or a run made without)."""
        missing = self.missing_steps()
        for s in missing:
            self.submit(s)
        return missing

    def backlog(self) -> int:
        self.pending = [f for f in self.pending if not f.done()]
        return len(self.pending)

    def close(self, wait: bool = True) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=not wait)
        self.pending = []
