"""Optuna studies: objective by hand, search-space overrides, 2-worker studies on SQLite,
JournalStorage and a real PostgreSQL, failed trials, Ctrl-C and resume."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from alphareg.config import ConfigError
from alphareg.rundir import read_metrics
from alphareg.tuning import LatePruner, default_space, late_window_objective, parse_space_override

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "20", "--n-per-class", "10", "--batch-size", "50", "--no-htsr", "--no-snapshots",
        "--log-per-decade", "2", "--late-from", "10", "--val-per-class", "5", "--plot-minutes", "1000"]


def tune(cwd, *args, timeout=900, **popen):
    env = dict(os.environ, ALPHAREG_NO_DOWNLOAD="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "experiments.tune", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_late_window_objective_by_hand():
    rows = [{"member": 0, "step": s, "val_acc": v} for s, v in
            [(0, 0.1), (10, 0.8), (100, 0.9), (1000, 0.85), (10000, 0.7)]]
    assert late_window_objective(rows, 0, 1000) == (0.7, True, True)      # min of 0.85, 0.7
    assert late_window_objective(rows, 0, 100, collapse_drop=0.3) == (0.7, False, True)
    assert late_window_objective(rows, 0, 10**6) == (0.7, True, False)    # window never reached
    with pytest.raises(ValueError, match="validation"):
        late_window_objective([{"member": 0, "step": 0, "test_acc": 1}], 0, 1)


def test_search_spaces_and_overrides():
    assert set(default_space("penalty")) == {"penalty_beta", "target_alpha", "penalty_sharpness"}
    assert "wd_ref" in default_space("penalty+wd_controller")
    assert parse_space_override("penalty_beta=log:1e-3:1e-1") == ("penalty_beta", ("log", 1e-3, 1e-1))
    assert parse_space_override("target_alpha=fixed:2.0") == ("target_alpha", ("fixed", 2.0))
    assert parse_space_override("lr_rule=cat:anchored,tempbalance")[1] == ("cat", "anchored", "tempbalance")
    for bad, msg in [("beta", "name=kind"), ("nope=log:1:2", "not a config field"),
                     ("penalty_beta=log:0:1", "bad bounds"), ("penalty_beta=normal:0:1", "unknown")]:
        with pytest.raises(ConfigError, match=msg):
            parse_space_override(bad)


def test_late_pruner_never_prunes_before_the_late_window():
    study = optuna.create_study(direction="maximize", pruner=LatePruner(1000, n_startup_trials=1))
    for v in (0.9, 0.9):
        t = study.ask()
        t.report(v, 999)
        t.report(v, 1000)
        study.tell(t, v)
    t = study.ask()
    t.report(0.01, 999)
    assert not t.should_prune()          # far below the median, but before step 1000
    t.report(0.01, 1000)
    assert t.should_prune()


# ---------------------------------------------------------------------------------------------
def _pg_bindir():
    found = shutil.which("initdb")
    cands = [os.path.dirname(os.path.realpath(found))] if found else []
    for d in cands + sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        if all(os.path.isfile(os.path.join(d, b)) for b in ("initdb", "pg_ctl", "createdb")):
            return d
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL on 127.0.0.1 in a temporary cluster (or $ALPHAREG_TEST_POSTGRES_URL)."""
    if os.environ.get("ALPHAREG_TEST_POSTGRES_URL"):
        yield os.environ["ALPHAREG_TEST_POSTGRES_URL"]
        return
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("ALPHAREG_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL binaries missing although ALPHAREG_REQUIRE_POSTGRES is set (.ci/run)")
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine; install the OS package "
                    "postgresql to run the PostgreSQL study test")
    d = Path(tempfile.mkdtemp(prefix="alphareg-pg-", dir="/tmp"))
    prefix = []
    if os.geteuid() == 0:            # initdb refuses to run as root: use the postgres account
        shutil.chown(d, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*prefix, *a], check=True, capture_output=True, text=True)  # noqa: E731
    run(f"{bindir}/initdb", "-D", str(d / "data"), "-U", "alphareg", "--auth=trust", "-E", "UTF8")
    run(f"{bindir}/pg_ctl", "-D", str(d / "data"), "-l", str(d / "log"), "-w", "-o",
        f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "start")
    try:
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "alphareg", "optuna_test")
        yield f"postgresql://alphareg@127.0.0.1:{port}/optuna_test"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(d / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite", "journal", "postgresql"])
def test_two_worker_study_records_six_trials_with_objectives_from_their_runs(tmp_path, backend, request):
    url = {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal://{tmp_path}/s.log"}.get(backend)
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
    study_name = f"tiny-{backend}-{os.getpid()}"
    r = tune(tmp_path, *TINY, "--n-trials", "6", "--workers", "2", "--storage", url, "--study", study_name)
    assert r.returncode == 0, r.stderr[-3000:]
    from alphareg.tuning import make_storage
    study = optuna.load_study(study_name=study_name, storage=make_storage(url))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 6 and all(t.state.is_finished() for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)   # workers differ
    for t in done:
        run = tmp_path / t.user_attrs["run_dir"]
        value, collapsed, reached = late_window_objective(read_metrics(run), 0, 10)
        assert t.value == value and t.user_attrs["collapsed"] == collapsed and reached
        assert t.intermediate_values                       # reported at log points
    assert "best trial" in r.stdout


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    r = tune(tmp_path, *TINY, "--n-trials", "3", "--space", "penalty_beta=fixed:-1",
             "--storage", f"sqlite:///{tmp_path}/f.db", "--study", "fails")
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{tmp_path}/f.db")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3


@pytest.mark.parametrize("population", [1, 2])
def test_ctrl_c_leaves_the_storage_consistent_and_the_study_retries_the_interrupted(tmp_path, population):
    args = [*TINY[:1], "3000", *TINY[2:], "--n-trials", "2", "--storage", f"sqlite:///{tmp_path}/c.db",
            "--study", "ctrlc", "--population", str(population)]
    p = tune(tmp_path, *args, popen=True)
    run = "ctrlc-trial0000" if population == 1 else "ctrlc-pop0000-0001"
    metrics = tmp_path / "studies" / "ctrlc" / run / "metrics.csv"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    study = optuna.load_study(study_name="ctrlc", storage=f"sqlite:///{tmp_path}/c.db")
    cut = study.trials
    assert [t.state.name for t in cut] == ["FAIL"] * population     # not left RUNNING
    assert all(t.user_attrs["interrupted"] for t in cut)
    r = tune(tmp_path, *[a if a != "3000" else "20" for a in args])
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="ctrlc", storage=f"sqlite:///{tmp_path}/c.db")
    # the interrupted trials do not count towards --n-trials: two complete ones, the first
    # `population` of them retrying the interrupted parameters
    assert [t.state.name for t in study.trials] == ["FAIL"] * population + ["COMPLETE"] * 2
    for t in cut:
        retry = study.trials[population + t.number]
        assert retry.user_attrs["retry_of"] == t.number and retry.params == t.params


def test_study_report_has_importances_history_and_every_trial(tmp_path):
    import random
    rng = random.Random(0)
    study = optuna.create_study(study_name="toy", direction="maximize",
                                storage=f"sqlite:///{tmp_path}/toy.db",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):   # objective depends on beta only: its importance must dominate
        t = study.ask()
        b = t.suggest_float("penalty_beta", 1e-4, 1e-1, log=True)
        t.suggest_float("target_alpha", 1.5, 3.0)
        t.set_user_attr("collapsed", b < 1e-2)
        study.tell(t, __import__("math").log10(b) + rng.random() * 1e-3)
    r = subprocess.run([sys.executable, "-m", "experiments.report", "--study", "toy", "--storage",
                        f"sqlite:///{tmp_path}/toy.db", "--out", str(tmp_path / "rep")],
                       cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"))
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "rep" / "study.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| penalty_beta") or l.startswith("| target_alpha")]
    assert rows[0].startswith("| penalty_beta")            # the important one first
    assert md.count("| COMPLETE |") == 20
    for png in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5_000


def test_population_trials_train_together_and_each_gets_its_members_objective(tmp_path):
    r = tune(tmp_path, *TINY, "--n-trials", "5", "--population", "3", "--storage",
             f"sqlite:///{tmp_path}/p.db", "--study", "pop", "--space", "lr=log:1e-3:1e-2")
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="pop", storage=f"sqlite:///{tmp_path}/p.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    runs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(runs) == 2                                   # populations of 3 and 2 trials
    for t in study.trials:
        rows = read_metrics(tmp_path / t.user_attrs["run_dir"])
        k = t.user_attrs["member"]
        assert t.value == late_window_objective(rows, k, 10)[0]
        assert float([r for r in rows if int(r["member"]) == k][0]["lr"]) == pytest.approx(t.params["lr"])
    bad = tune(tmp_path, *TINY, "--population", "2", "--space", "refit_every=int:10:100",
               "--storage", f"sqlite:///{tmp_path}/b.db", "--study", "bad")
    assert bad.returncode == 2 and "cannot differ within a population" in bad.stderr


def test_multi_objective_study_records_validation_accuracy_and_wall_time(tmp_path):
    r = tune(tmp_path, *TINY, "--n-trials", "2", "--multi-objective", "--storage",
             f"sqlite:///{tmp_path}/m.db", "--study", "multi")
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="multi", storage=f"sqlite:///{tmp_path}/m.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in study.trials:
        acc, wall = t.values
        assert 0 <= acc <= 1 and wall == pytest.approx(t.user_attrs["wall_time_s"])
