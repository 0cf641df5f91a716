"""wandb mirror of a run directory (the directory stays the source of truth).

One wandb run per population member (``<run name>-m<k>``), grouped by ``--wandb-group`` (default:
the run directory's name; a study's name for Optuna trials), with a deterministic id so a resumed
run continues the same wandb run. Everything is logged against the custom x-axis ``train_step``
(``define_metric``), so HTSR rows that the background monitor delivers later can still be placed
at their own step:

* at every log point: every ``metrics.csv`` column of the member (test/train accuracy and loss,
  progress measures, lr/wd per layer, penalty, alpha the method sees, ...);
* HTSR rows as ``htsr/<layer>/<column>`` (alpha, traps, KS, weightwatcher's columns), synced from
  ``htsr.csv`` at log points and at the end;
* at the end: phase labels (``phase`` per logged step: 0 pre-grokking, 1 grokking, 2
  anti-grokking), the ESD figures (paper Figures 2 and 3) as images, and the summary (peak test
  acc, final test acc, collapse prevented?, warning step and lead time); with an online run the
  early warning also becomes a ``wandb.alert``.

Mode ``auto`` (default) is online when an API key is configured (``WANDB_API_KEY`` or a netrc
entry for api.wandb.ai) and offline otherwise; offline runs are written under
``<run dir>/wandb`` unless ``WANDB_DIR`` is set, and can be uploaded later with ``wandb sync``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import netrc
import os
from pathlib import Path

MODES = ("auto", "online", "offline", "disabled")
PHASE_CODES = {"pre-grokking": 0, "grokking": 1, "anti-grokking": 2}
_SKIP = {"member", "seed"}


def api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"--wandb-mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
    if mode == "auto":
        return "online" if api_key_configured() else "offline"
    return mode


def _number(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


class WandbMirror:
    """Logs a run directory's rows to wandb as they appear (see the module docstring)."""

    def __init__(self, run_path: str | os.PathLike, config: dict, seeds, project: str = "alphareg",
                 entity: str | None = None, group: str | None = None, mode: str = "auto",
                 job_type: str = "train"):
        import wandb
        self.wandb = wandb
        self.path = Path(run_path)
        self.mode = resolve_mode(mode)
        self.dir = os.environ.get("WANDB_DIR") or str(self.path)
        self.runs = []
        for k, seed in enumerate(seeds):
            run_id = hashlib.sha1(f"{self.path.resolve()}|{k}".encode()).hexdigest()[:16]
            run = wandb.init(project=project, entity=entity, group=group or self.path.name,
                             name=f"{self.path.name}-m{k}", id=run_id, resume="allow",
                             job_type=job_type, mode=self.mode, reinit="create_new", dir=self.dir,
                             config={**config, "member": k, "seed": seed, "run_dir": str(self.path)})
            run.define_metric("train_step")
            run.define_metric("*", step_metric="train_step")
            self.runs.append(run)
        self.htsr_rows_done = 0
        if self.mode == "offline":
            print(f"wandb: offline mode (no API key configured); run `wandb sync "
                  f"{self.dir}/wandb/offline-run-*` to upload", flush=True)

    # ------------------------------------------------------------------ rows
    def log_metrics(self, rows: list[dict]) -> None:
        for row in rows:
            data = {k: _number(v) for k, v in row.items() if k not in _SKIP and k != "step"}
            data = {k: v for k, v in data.items() if v is not None}
            self.runs[int(row["member"])].log({"train_step": int(row["step"]), **data})

    def sync_htsr(self) -> int:
        """Log the ``htsr.csv`` rows not logged yet; returns how many."""
        path = self.path / "htsr.csv"
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))[self.htsr_rows_done:]
        grouped: dict[tuple[int, int], dict] = {}
        for r in rows:
            key = (int(r["member"]), int(r["step"]))
            d = grouped.setdefault(key, {})
            for col, v in r.items():
                if col in ("step", "member", "seed", "layer", "layer_index"):
                    continue
                x = _number(v)
                if x is not None and x == x:
                    d[f"htsr/{r['layer']}/{col}"] = x
        for (k, step), d in sorted(grouped.items(), key=lambda t: (t[0][1], t[0][0])):
            self.runs[k].log({"train_step": step, **d})
        self.htsr_rows_done += len(rows)
        return len(rows)

    # ------------------------------------------------------------------ the end
    def finish(self, summary: dict) -> None:
        """Phases, ESD images, summary, alert; then close every member's wandb run."""
        self.sync_htsr()
        phases_csv = self.path / "phases.csv"
        if phases_csv.is_file():
            with open(phases_csv, newline="") as f:
                for r in csv.DictReader(f):
                    self.runs[int(r["member"])].log({"train_step": int(r["step"]),
                                                     "phase": PHASE_CODES.get(r["phase"], -1)})
        esd = sorted((self.path / "plots" / "esd").glob("step_*_m*_fig*.png"))
        for png in esd:
            step, member = int(png.name.split("_")[1]), int(png.name.split("_")[2][1:])
            if member < len(self.runs):
                self.runs[member].log({"train_step": step, f"esd/{png.stem.rsplit('_', 1)[1]}":
                                       self.wandb.Image(str(png))})
        by_member = {m["member"]: m for m in summary.get("members", [])}
        phases = {p["member"]: p for p in summary.get("phases", [])}
        for k, run in enumerate(self.runs):
            m, p = by_member.get(k, {}), phases.get(k, {})
            run.summary.update({
                "peak_test_acc": m.get("peak_test_acc"), "peak_step": m.get("peak_step"),
                "final_test_acc": m.get("final_test_acc"), "final_train_acc": m.get("final_train_acc"),
                "collapsed": p.get("collapsed"),
                "collapse_prevented": None if p.get("collapsed") is None else not p["collapsed"],
                "warning_step": p.get("warning_step"), "warning_lead_time": p.get("lead_time"),
                "warning_reason": p.get("warning_reason"),
                "steps": summary.get("step"), "wall_time_s": summary.get("wall_time_s")})
            if self.mode == "online" and p.get("warning_step") is not None:
                run.alert(title=f"{self.path.name} member {k}: HTSR early warning",
                          text=f"{p.get('warning_reason')} at step {p['warning_step']}"
                               f" (lead time {p.get('lead_time')} steps)")
            run.finish()

    def close(self) -> None:
        for run in self.runs:
            run.finish()


def read_offline_run(run_dir: str | os.PathLike) -> dict:
    """What an offline wandb run holds, read back from wandb's own ``.wandb`` file with
    ``wandb leet inspect``: ``{"config", "summary", "history": [records]}``."""
    import subprocess
    import sys
    wandb_cli = [sys.executable, "-m", "wandb", "leet", "inspect"]
    summ = subprocess.run([*wandb_cli, "--summary", "--json", str(run_dir)],
                          capture_output=True, text=True, check=True).stdout
    hist = subprocess.run([*wandb_cli, "--json", str(run_dir)], capture_output=True, text=True,
                          check=True).stdout
    info = json.loads(summ)
    history = []
    for line in hist.splitlines():
        rec = json.loads(line)
        if rec.get("type") == "history":
            history.append(rec["history"]["item"])
    return {"config": info.get("config", {}), "summary": info.get("summary", {}),
            "name": info.get("name"), "history": history}


def publish_report(title: str, groups: list[str], project: str = "alphareg",
                   entity: str | None = None, local_dir: str = "") -> str:
    """Create a wandb Report (line plots of test accuracy and fc1 alpha for the given groups)
    when a user is logged in; otherwise return the one-line reason why not."""
    if resolve_mode("auto") != "online":
        return (f"wandb: no API key configured (offline): no wandb Report created; the local "
                f"report is in {local_dir}")
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        return "wandb: pip install wandb-workspaces to create wandb Reports; the local report is in " + local_dir
    import wandb
    entity = entity or wandb.Api().default_entity
    runsets = [wr.Runset(entity=entity, project=project, name=g, filters=f"Group = '{g}'") for g in groups]
    report = wr.Report(entity=entity, project=project, title=title, blocks=[
        wr.H1(title),
        wr.PanelGrid(runsets=runsets, panels=[
            wr.LinePlot(x="train_step", y=["test_acc"], log_x=True, title="test accuracy"),
            wr.LinePlot(x="train_step", y=["htsr/fc1/alpha"], log_x=True, title="alpha fc1"),
            wr.LinePlot(x="train_step", y=["penalty"], log_x=True, title="penalty")])])
    report.save()
    return f"wandb: report created at {report.url}"
