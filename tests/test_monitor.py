"""The HTSR monitor's per-snapshot analysis, its table, and the ESD figures."""
import math
from concurrent.futures import wait

import torch

from alphareg.esd_plots import esd_paths, esd_steps, plot_esd_snapshot
from alphareg.models import PopulationMLP
from alphareg.monitor import HTSRMonitor, HTSRTable, analyse_snapshot
from alphareg.rundir import snapshot_file, snapshot_steps


def _snapshot(tmp_path, step=7):
    pop = PopulationMLP([784, 200, 200, 10], seeds=[0, 1])
    with torch.no_grad():   # member 1's fc1 gets a mean shift: a spike that survives shuffling
        pop.weights[0][1] += 0.1
    path = tmp_path / f"step_{step:09d}.pt"
    torch.save({"step": step, "seeds": [0, 1], "layers": pop.layer_names(),
                "weights": [w.detach() for w in pop.weights],
                "biases": [b.detach() for b in pop.biases]}, path)
    return path


def test_snapshot_rows_carry_our_fit_and_weightwatchers_own_columns(tmp_path):
    rows = analyse_snapshot(_snapshot(tmp_path), n_shuffles=2, seed=0, with_ww=True)
    assert [(r["member"], r["layer"]) for r in rows] == [(k, l) for k in (0, 1) for l in ("fc1", "fc2", "fc3")]
    for r in rows:
        assert r["step"] == 7 and r["seed"] == r["member"]
        # weightwatcher analyses float32-rounded weights: its alpha agrees with ours to ~1e-6
        assert math.isclose(r["alpha"], r["ww_alpha"], rel_tol=1e-5), r
        for c in ("ww_alpha_weighted", "ww_log_spectral_norm", "ww_stable_rank", "ww_rand_num_spikes"):
            assert r[c] != "" and math.isfinite(float(r[c]))
    fc1 = {r["member"]: r for r in rows if r["layer"] == "fc1"}
    assert fc1[1]["traps_mean"] >= 1 > fc1[0]["traps_mean"]    # the planted mean shift is a trap
    no_ww = analyse_snapshot(_snapshot(tmp_path), n_shuffles=2, seed=0)
    assert all(r["ww_alpha"] == "" for r in no_ww)
    assert [r["alpha"] for r in no_ww] == [r["alpha"] for r in rows]


class _RunPath:
    """The two things the monitor needs of a RunDir."""
    def __init__(self, path):
        self.path = path

    def snapshot_path(self, step):
        return snapshot_file(self.path, step)

    def snapshot_steps(self):
        return snapshot_steps(self.path)


def test_interrupted_monitor_drops_its_queue_without_errors_and_catches_up(tmp_path):
    (tmp_path / "snapshots").mkdir()
    for step in range(1, 7):
        _snapshot(tmp_path / "snapshots", step=step)
    run = _RunPath(tmp_path)
    mon = HTSRMonitor(run, n_shuffles=1)
    assert mon.catch_up() == [1, 2, 3, 4, 5, 6]
    queued = list(mon.pending)
    mon.close(wait=False)          # what an interrupted run does
    wait(queued, timeout=300)      # the pool cancels the queue in its own thread
    assert any(f.cancelled() for f in queued)
    assert mon.errors == []        # a dropped snapshot is not a failure: it waits for the resume
    again = HTSRMonitor(run, n_shuffles=1, background=False)
    again.catch_up()
    assert again.missing_steps() == [] and again.table.steps() == {1, 2, 3, 4, 5, 6}


def test_htsr_table_append_read_truncate(tmp_path):
    t = HTSRTable(tmp_path)
    t.append([{"step": s, "member": 0, "layer": "fc1", "alpha": 2.0} for s in (0, 5, 10)])
    t.append([{"step": 3, "member": 0, "layer": "fc1", "alpha": 3.0}])
    assert [int(r["step"]) for r in t.read()] == [0, 3, 5, 10] and t.steps() == {0, 3, 5, 10}
    t.truncate(4)
    assert t.steps() == {0, 3}


def test_esd_figures_are_made_once_and_never_overwritten(tmp_path):
    snap = _snapshot(tmp_path, step=100)
    made = plot_esd_snapshot(tmp_path, snap, seed=0)
    f2, f3 = esd_paths(tmp_path, 100, 1)
    assert f2 in made and f3 in made and f2.stat().st_size > 20_000
    stamp = f2.stat().st_mtime_ns
    assert plot_esd_snapshot(tmp_path, snap, seed=0) == []
    assert f2.stat().st_mtime_ns == stamp


def test_esd_steps():
    snaps = [0, 1, 3, 10, 32, 100, 316, 1000, 2000]
    assert esd_steps(snaps, 2000, 1) == [0, 1, 10, 100, 1000, 2000]
    assert esd_steps(snaps, 2000, 0) == []


def test_esd_figures_survive_a_collapsed_layer(tmp_path):
    """A layer weight decay drove to ~0 (no eigenvalue above 1e-5, as W_Q under wd 1.0 on modular
    addition) gets a note instead of crashing the figure (empty log-scaled axes)."""
    pop = PopulationMLP([784, 200, 200, 10], seeds=[0])
    with torch.no_grad():
        pop.weights[1].mul_(1e-6)
    path = tmp_path / "step_000000005.pt"
    torch.save({"step": 5, "seeds": [0], "layers": pop.layer_names(),
                "weights": [w.detach() for w in pop.weights],
                "biases": [b.detach() for b in pop.biases]}, path)
    made = plot_esd_snapshot(tmp_path, path, seed=0)
    assert len(made) == 2 and all(p.is_file() for p in made)
