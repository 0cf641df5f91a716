"""A committed verdict folder gains runs without touching the ones it holds.

A verdict folder (``write_verdict(..., copy_runs=True)``) keeps the tables of every run it was
built from in ``<folder>/runs/<run>/``. When a method reaches the folder's horizon later, the
folder is rebuilt from those copies — never from the live run directories, which may since have
been re-run or resumed by another engine — plus the new runs' tables, cut at the same horizon:

    rows(new folder) = rows(held copies) ∪ rows(new runs)

and refused, with nothing written, unless every row of the old ``verdict.csv`` and ``methods.csv``
is in the new one with the same cell in every column the old file has (the held rows are
recomputed by the current code: the check also catches a change of the verdict's own rules since
the folder was built; a column the current code adds is not a change). ``rebuild`` rewrites a folder
from its held copies alone under the same check — a folder written before a column was added
gains it.

    python -m experiments.evidence fast --methods wd0,penalty_t2 --hours 0 \\
        --verdict reports/verdict/fast_preset_h8e5 --add
    python -m experiments.overview reports/verdict/fast_preset_h* --out reports/verdict --rebuild
"""
from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

from .monitor import HTSR
from .rundir import METRICS, last_step
from .verdict import copy_run_files, folder_horizon, write_verdict


class VerdictWouldChange(ValueError):
    """Adding runs would change rows the folder already holds."""


def drop_partial_last_line(table: Path) -> bool:
    """Remove a last line without its newline (a table read while its run is still writing it);
    True when one was removed."""
    if not table.is_file():
        return False
    data = table.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    table.write_bytes(data[:data.rfind(b"\n") + 1])
    return True


def add_runs(folder: str | Path, runs, horizon: int | None = None) -> list[str]:
    """Rebuild the verdict ``folder`` from the run copies it holds plus ``runs`` it does not hold.

    ``runs`` — run directories in the order the rebuilt tables should list them; one whose name is
    already in ``folder/runs/`` is taken from that copy, not from the path given; copies the folder
    holds that ``runs`` does not name are kept too (after the others). ``horizon`` — default: the
    folder's own; another one is refused. Returns the names of the runs added. Raises
    ``VerdictWouldChange`` (folder untouched) when an old row of verdict.csv / methods.csv is missing
    from the rebuilt one (``missing_rows``); ``ValueError`` when there is nothing to add or a new run is short of the
    horizon; ``FileNotFoundError`` when the folder is not a verdict folder with run copies."""
    folder = Path(folder)
    own = folder_horizon(folder)                     # also: is it a verdict folder at all
    if not (folder / "runs").is_dir():
        raise FileNotFoundError(f"{folder}: no runs/ — a verdict folder without its run copies "
                                "(write one with experiments.evidence --verdict DIR)")
    if horizon is None:
        horizon = own
    elif horizon != own:
        raise ValueError(f"{folder} is cut at step {own}, not {horizon}: its rows would change")
    held = {d.name: d for d in sorted((folder / "runs").iterdir()) if d.is_dir()}
    runs = [Path(r) for r in runs]
    new = [r for r in runs if r.name not in held]
    if not new:
        raise ValueError(f"nothing to add: {folder}/runs/ already holds every run given "
                         f"({', '.join(r.name for r in runs) or 'none'})")
    short = [f"{r.name} (step {last_step(r):,})" for r in new if horizon is not None and last_step(r) < horizon]
    if short:
        raise ValueError(f"short of the folder's horizon {horizon:,}: {', '.join(short)} — a run is added once it "
                         "has reached it (its members would stay undecided in this folder otherwise)")
    order = [held.get(r.name, r) for r in runs] + [d for n, d in held.items() if n not in {r.name for r in runs}]
    _rewrite(folder, order, new, horizon)
    return [r.name for r in new]


def rebuild(folder: str | Path) -> None:
    """Rewrite the verdict ``folder`` from the run copies it holds, by the current code, at its own
    horizon; refused (``VerdictWouldChange``, folder untouched) as ``add_runs`` is."""
    folder = Path(folder)
    horizon = folder_horizon(folder)
    if not (folder / "runs").is_dir():
        raise FileNotFoundError(f"{folder}: no runs/ — a verdict folder without its run copies cannot be rebuilt")
    with open(folder / "verdict.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    held = {d.name: d for d in (folder / "runs").iterdir() if d.is_dir()}
    order = [held[n] for n in dict.fromkeys(r["run"] for r in rows) if n in held]
    order += [d for n, d in sorted(held.items()) if d not in order]
    _rewrite(folder, order, [], horizon)


def missing_rows(old: Path, new: Path) -> list[str]:
    """The rows of the CSV ``old`` that ``new`` lacks, comparing only ``old``'s columns (a column
    ``new`` adds is ignored; one it drops makes every row missing). Returned as "col=value, ..." text."""
    with open(old, newline="") as f:
        old_rows = list(csv.DictReader(f))
    with open(new, newline="") as f:
        reader = csv.DictReader(f)
        cols = list(old_rows[0]) if old_rows else []
        gone = [c for c in cols if c not in (reader.fieldnames or [])]
        kept = {tuple(r.get(c) for c in cols) for r in reader}
    if gone:
        return [f"(column {', '.join(gone)} is gone) " + ", ".join(f"{c}={v}" for c, v in r.items()) for r in old_rows]
    return [", ".join(f"{c}={v}" for c, v in r.items()) for r in old_rows if tuple(r[c] for c in cols) not in kept]


def _rewrite(folder: Path, order: list[Path], new: list[Path], horizon: int | None) -> None:
    """Write the verdict of the runs ``order`` (held copies and the ``new`` runs) into ``folder``
    unless a row of its old verdict.csv / methods.csv would change."""
    with tempfile.TemporaryDirectory(prefix="alphareg-compose-") as tmp:
        stage, out = Path(tmp) / "runs", Path(tmp) / "out"
        copy_run_files(order, stage)
        for r in new:
            for table in (METRICS, HTSR):
                drop_partial_last_line(stage / r.name / table)
        write_verdict([stage / r.name for r in order], out, horizon=horizon, copy_runs=True)
        for name in ("verdict.csv", "methods.csv"):
            missing = missing_rows(folder / name, out / name)
            if missing:
                raise VerdictWouldChange(
                    f"{folder}/{name}: {len(missing)} row(s) would change, nothing written; first: {missing[0][:300]}")
        shutil.copytree(out, folder, dirs_exist_ok=True)
