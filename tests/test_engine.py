"""Population == standalone plain-PyTorch runs; in-process interruption and resume."""
import io
import json
import os
import signal

import pytest
import torch
from torch import nn

from alphareg import checkpoint as ckpt
from alphareg.config import RunConfig
from alphareg.engine import Interrupted, Trainer
from alphareg.models import PopulationMLP
from alphareg.rundir import RunDir


def plain_reference(train, seed, lr, wd, steps, init_scale=8.0, batch=200, make_opt=None):
    """A plain PyTorch loop written independently of alphareg's engine (nn.Sequential + AdamW,
    or ``make_opt(params, lr, wd)``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(784, 200, dtype=torch.float64), nn.ReLU(),
                              nn.Linear(200, 200, dtype=torch.float64), nn.ReLU(),
                              nn.Linear(200, 10, dtype=torch.float64))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(init_scale)
    if make_opt is None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = make_opt(model.parameters(), lr, wd)
    gen = torch.Generator().manual_seed(seed)
    n = len(train.y)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for j in range(n // batch):
            if done == steps:
                break
            idx = perm[j * batch:(j + 1) * batch]
            loss = nn.functional.mse_loss(model(train.x[idx]), train.onehot[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
    return [p.detach() for p in model.parameters()]


def deviation_from_plain_loop(tr, train, k: int, steps: int) -> float:
    """Largest relative deviation (max |a - b| / max |b| over tensors) of member k of a trained
    population from ``plain_reference`` run with that member's seed, lr and wd for ``steps``."""
    ref = plain_reference(train, tr.cfg.seeds[k], tr.cfg.member_lrs()[k], tr.cfg.member_wds()[k], steps)
    got = [p[k] for pair in zip(tr.model.weights, tr.model.biases) for p in pair]
    return max(((a.detach().cpu() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, ref))


def test_default_init_times_eight_on_weights_and_biases():
    pop = PopulationMLP([784, 200, 200, 10], seeds=[5])
    torch.manual_seed(5)
    ref = nn.Linear(784, 200, dtype=torch.float64)
    assert torch.equal(pop.weights[0][0], 8.0 * ref.weight.detach())
    assert torch.equal(pop.biases[0][0], 8.0 * ref.bias.detach())
    bound = 8.0 / 784 ** 0.5                        # kaiming-uniform(a=sqrt 5) bound x 8
    assert pop.weights[0].abs().max().item() <= bound
    assert pop.weights[0].abs().max().item() > 0.99 * bound


def test_population_member_equals_standalone_run(paper_split):
    seeds, lrs, wds = (0, 1, 2), (5e-4, 1e-3, 2e-3), (0.0, 0.01, 0.1)
    cfg = RunConfig(seeds=seeds, lr=lrs, wd=wds, steps=200, device="cpu", progress=False)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(200)
    train = paper_split[0]
    for k, (s, lr, wd) in enumerate(zip(seeds, lrs, wds)):
        ref = plain_reference(train, s, lr, wd, 200)
        got = [tr.model.weights[0][k], tr.model.biases[0][k], tr.model.weights[1][k],
               tr.model.biases[1][k], tr.model.weights[2][k], tr.model.biases[2][k]]
        err = max((a - b).abs().max().item() for a, b in zip(got, ref))
        assert err < 1e-9, f"member {k} (seed {s}) differs from its standalone run by {err:g}"
    # training really moved the weights (the comparison is not between initialisations)
    init = PopulationMLP([784, 200, 200, 10], seeds=[0])
    assert (tr.model.weights[0][0] - init.weights[0][0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_engine_paths_match_plain_loop_over_1000_steps(paper_split, engine):
    """The fast path (hand-written backward, trimmed zero pixels, fused AdamW) and the autograd
    path both follow the plain loop's trajectory to float64 round-off over 1,000 steps."""
    cfg = RunConfig(seeds=(0, 1), lr=(5e-4, 1e-3), wd=(0.0, 0.01), steps=1000, device="cpu",
                    engine=engine, progress=False)
    tr = Trainer(cfg, data=paper_split)
    assert (tr.fast_step is not None) == (engine == "fast")
    assert tr.opt.fused == (engine == "fast")
    tr.train_steps(1000)
    for k in range(2):
        rel = deviation_from_plain_loop(tr, paper_split[0], k, 1000)
        assert rel < 1e-11, f"{engine} member {k}: relative deviation {rel:g} after 1000 steps"


def test_graphed_step_function_matches_plain_loop_over_1000_steps(paper_split):
    """The GPU path's step (batched bmm forward/backward, AdamW with the step count as a tensor,
    G batches drawn ahead) run eagerly on the CPU: the plain loop's trajectory to round-off."""
    from alphareg.cudagraph import uncaptured
    cfg = RunConfig(seeds=(0, 1), lr=(5e-4, 1e-3), wd=(0.0, 0.01), steps=1000, device="cpu",
                    progress=False)
    tr = Trainer(cfg, data=paper_split)
    uncaptured(tr, steps_per_graph=40)
    assert tr.steps_per_call() == 40
    tr.train_steps(7)          # eager: 7 < 40
    tr.train_steps(993)        # 33 eager steps to step 40, then 24 graphs starting at multiples of 40
    assert tr.step == 1000 and tr.opt.t == 1000
    for k in range(2):
        rel = deviation_from_plain_loop(tr, paper_split[0], k, 1000)
        assert rel < 1e-11, f"member {k}: relative deviation {rel:g} after 1000 steps"


def test_graph_length_divides_every_hook_period():
    from alphareg.controllers import AlphaController
    from alphareg.cudagraph import graph_length
    from baselines.weight_decay import WeightDecay
    assert graph_length([]) == 50
    assert graph_length([WeightDecay(0.01)]) == 50                   # period 0: never acts per step
    assert graph_length([AlphaController("wd", every=200)]) == 50
    assert graph_length([AlphaController("lr", every=30), AlphaController("wd", every=200)]) == 10
    assert graph_length([AlphaController("wd", every=7)]) == 1


def _graphed_and_eager_runs(tmp_path, paper_split, steps, tol, **kw):
    """``Trainer.run`` of the same config twice: on the eager path, and with the GPU path's step
    function (``cudagraph.uncaptured``: the graph's kernels, run eagerly on the CPU); the
    weights must agree to ``tol`` (relative). Returns both trainers and the graph path's (step,
    length) of every graph it ran."""
    from alphareg.cudagraph import uncaptured
    kw = dict(steps=steps, lr=(5e-3, 2e-3), **kw)
    eager = _new_trainer(_cfg(tmp_path, "eager", **kw), paper_split)
    tr = _new_trainer(_cfg(tmp_path, "graphed", **kw), paper_split)
    assert eager.graphed is None and eager.steps_per_call() == 1
    uncaptured(tr)
    starts, run = [], tr.graphed.run
    tr.graphed.run = lambda n: (starts.append((tr.step, n)), run(n))[1]
    eager.run()
    tr.run()
    assert tr.step == eager.step == steps and tr.opt.t == steps
    assert all(s % tr.graphed.G == 0 and n == tr.graphed.G for s, n in starts)
    for a, b in zip(_params(tr), _params(eager)):
        assert ((a - b).abs().max() / b.abs().max()).item() < tol
    return tr, eager, starts


@pytest.mark.parametrize("method", ["wd_controller", "lr_controller"])
def test_graph_path_runs_a_controller_like_the_eager_path(tmp_path, paper_split, method):
    """The controllers are graph-safe: the graph path starts every graph at a multiple of
    G = gcd(50, control_every) = 10, calls the controller at the graph's first step, and ends where
    the eager path ends: same weights, lr / wd and smoothed alphas to round-off, over log points
    that are not multiples of G."""
    tr, eager, starts = _graphed_and_eager_runs(tmp_path, paper_split, 200, 1e-10, method=method,
                                                control_every=20, deadband=0.0, target_alpha=6.0)
    assert tr.steps_per_call() == 10
    assert len(starts) == 15           # 200 steps, log points 1, 2, 3, 6, 10, 18, 32, 56, 100, 178
    ctl, ref = tr.hooks[0], eager.hooks[0]
    assert ctl.updates == ref.updates == 10        # steps 0, 20, ..., 180
    assert torch.allclose(ctl.alpha_ema, ref.alpha_ema, rtol=1e-9, atol=0)
    values = (lambda t: t.opt.lr) if method == "lr_controller" else (lambda t: t.opt.wd)
    assert len(set(torch.cat(values(eager)).tolist())) > 2            # the controller moved them
    for a, b in zip(values(tr), values(eager)):
        assert torch.allclose(a, b, rtol=1e-9, atol=0)


def test_graph_path_adds_the_penalty_gradient_like_the_eager_path(tmp_path, paper_split):
    """The soft-α penalty is graph-safe: refreshed at graphs' first steps (every
    ``penalty_grad_every`` = 20 steps, G = 10), its held gradient added inside the graph at every
    step; with target 6 the layers with α̂ < 6 in some member are penalised, and the weights, the held gradients
    and the logged α̂ end as on the eager path. (The two paths' AdamW differ by round-off, which
    this strong penalty amplifies ~10x per 20 steps: 1e-14 at step 20, 6e-12 at 80, 6e-8 at 300.)"""
    tr, eager, starts = _graphed_and_eager_runs(tmp_path, paper_split, 100, 1e-9, method="penalty",
                                                target_alpha=6.0, penalty_grad_every=20)
    assert tr.steps_per_call() == 10 and len(starts) == 6     # 20, 40, 60, 70, 80, 90 (log point 56)
    pen, ref = tr.hooks[0], eager.hooks[0]
    assert sorted(ref.grads) == sorted(pen.grads) and "fc1" in ref.grads      # fc1, fc3 at step 80
    for n, g in ref.grads.items():
        assert (pen.grads[n] - g).abs().max() <= 1e-9 * g.abs().max()
    got, want = tr.run_dir.read_metrics(), eager.run_dir.read_metrics()
    assert [float(r["alpha_hat_fc1"]) for r in got] == pytest.approx([float(r["alpha_hat_fc1"]) for r in want], rel=1e-9)
    # against no penalty: the held gradient changed the trajectory
    plain = Trainer(RunConfig(seeds=(0, 1), lr=(5e-3, 2e-3), steps=100, progress=False), data=paper_split)
    plain.train_steps(100)
    assert max((a - b).abs().max().item() for a, b in zip(_params(tr), _params(plain))) > 1e-3


def test_fast_path_gradients_equal_autograd_with_ce_and_a_hook(paper_split):
    """Gradients of the fast path == autograd's (MSE and CE), incl. after a penalty hook added to
    them and the zero-pixel columns of dW_1 (which a hook may have touched) reset."""
    for loss in ("mse", "ce"):
        cfgs = [RunConfig(seeds=(0, 1), loss=loss, engine=e, progress=False) for e in ("fast", "autograd")]
        fast, ref = (Trainer(c, data=paper_split) for c in cfgs)
        fast.forward_backward()
        fast.model.weights[0].grad.add_(1.0)         # touch every column like a hook would
        ref.sampler.next()                           # same batch as the fast path's 2nd one
        losses_fast, losses_ref = fast.forward_backward(), ref.forward_backward()
        assert torch.allclose(losses_fast, losses_ref.detach(), rtol=1e-12, atol=0)
        for a, b in zip(fast.model.parameters(), ref.model.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12 * b.grad.abs().max().item())


def test_member_module_matches_population_forward(paper_split):
    cfg = RunConfig(seeds=(3, 4), steps=10, device="cpu", progress=False)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(10)
    x = paper_split[1].x[:64]
    out = tr.model(x)
    for k in range(2):
        assert torch.allclose(tr.model.member(k)(x), out[k], atol=1e-12, rtol=0)


def _params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


def _cfg(tmp_path, name, **kw):
    base = dict(seeds=(0, 1), steps=90, log_per_decade=4, device="cpu", progress=False,
                runs_dir=str(tmp_path), name=name, plot_minutes=1e6, htsr=False, esd_per_decade=0)
    base.update(kw)
    return RunConfig(**base)


def _new_trainer(cfg, data):
    rd = RunDir(cfg)
    rd.check()
    rd.create(data[2])
    tr = Trainer(cfg, rd, data)
    tr.resume_if_possible()
    return tr


def _rows_without_time(rd):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rd.read_metrics()]


def test_sigterm_checkpoints_mid_interval_and_resume_is_bitwise_identical(tmp_path, paper_split):
    full = _new_trainer(_cfg(tmp_path, "full"), paper_split)
    full.run()

    cfg = _cfg(tmp_path, "cut")
    tr = _new_trainer(cfg, paper_split)
    original = tr.train_steps

    def train_and_signal(n):
        original(n)
        if tr.step == 41:   # not a log point: the checkpoint is written on the signal
            os.kill(os.getpid(), signal.SIGTERM)
    tr.train_steps = train_and_signal
    with pytest.raises(Interrupted) as e:
        tr.run()
    assert e.value.step == 41

    resumed = _new_trainer(cfg, paper_split)
    assert resumed.step == 41
    resumed.run()
    assert resumed.step == full.step == 90
    for a, b in zip(_params(full), _params(resumed)):
        assert torch.equal(a, b)
    for a, b in zip(full.opt.exp_avg_sq, resumed.opt.exp_avg_sq):
        assert torch.equal(a, b)
    assert _rows_without_time(full.run_dir) == _rows_without_time(resumed.run_dir)
    # segments.csv: one row per run() call that trained, the interrupted one included
    import socket

    from alphareg.rundir import git_commit, read_segments
    segs = read_segments(resumed.run_dir.path)
    assert [(r["start_step"], r["end_step"], r["outcome"]) for r in segs] == [
        ("0", "41", "interrupted"), ("41", "90", "finished")]
    assert all(r["device"] == "cpu" and r["accelerator"] == "" and r["host"] == socket.gethostname()
               and r["git_commit"] == git_commit() and float(r["wall_time_s"]) > 0 for r in segs)
    # their wall times add up to the run's (summary.json)
    summary = json.loads((resumed.run_dir.path / "summary.json").read_text())
    assert sum(float(r["wall_time_s"]) for r in segs) == pytest.approx(summary["wall_time_s"], abs=0.02)
    assert [(r["start_step"], r["end_step"]) for r in read_segments(full.run_dir.path)] == [("0", "90")]
    resumed.run()                                        # nothing left to train: no new row
    assert len(read_segments(resumed.run_dir.path)) == 2


def test_sigterm_while_waiting_for_the_htsr_monitor_is_an_interruption_at_the_last_step(tmp_path, paper_split):
    """A SIGTERM that lands after the last step, while the run waits for its HTSR monitor (how a
    campaign's budget stop often arrives), is caught: the monitor's queue is dropped (its snapshots
    stay on disk for the resume) and the run ends interrupted at that step, with its summary and
    segment written. Was: the default handler was back, and the process died with -15."""
    before = signal.getsignal(signal.SIGTERM)

    class NeverDrains:                 # an HTSR monitor with one snapshot queued forever
        errors = []
        closed_with = None

        def submit(self, step):
            pass

        def backlog(self):
            if signal.getsignal(signal.SIGTERM) is not before:   # only while the run catches it
                os.kill(os.getpid(), signal.SIGTERM)
            return 1

        def close(self, wait=True):
            self.closed_with = wait
    cfg = _cfg(tmp_path, "wait")
    tr = _new_trainer(cfg, paper_split)
    monitor = NeverDrains()
    tr._start_monitor = lambda: monitor
    with pytest.raises(Interrupted) as e:
        tr.run()
    assert e.value.step == 90 and monitor.closed_with is False
    assert signal.getsignal(signal.SIGTERM) is before
    from alphareg.rundir import read_segments
    assert [(r["end_step"], r["outcome"]) for r in read_segments(tr.run_dir.path)] == [("90", "interrupted")]
    assert json.loads((tr.run_dir.path / "summary.json").read_text())["step"] == 90
    assert _new_trainer(cfg, paper_split).step == 90     # resumes from the last step's checkpoint


def test_ctrl_c_during_the_first_log_point_is_an_interruption_at_step_0(tmp_path, paper_split):
    """The first log point writes the first checkpoint; a SIGINT arriving while it does is caught
    like any other (was: KeyboardInterrupt inside torch.save, seen as the zip writer's error)."""
    cfg = _cfg(tmp_path, "first")
    tr = _new_trainer(cfg, paper_split)
    original = tr.save_checkpoint

    def signal_then_save():
        if tr.step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        original()
    tr.save_checkpoint = signal_then_save
    try:
        tr.run()
    except KeyboardInterrupt:       # would end the pytest session
        pytest.fail("SIGINT during the first log point escaped as KeyboardInterrupt")
    except Interrupted as e:
        assert e.step == 0
    else:
        pytest.fail("the run was not interrupted")
    assert {r["step"] for r in tr.run_dir.read_metrics()} == {"0"}
    resumed = _new_trainer(cfg, paper_split)
    assert resumed.step == 0
    resumed.run()
    full = _new_trainer(_cfg(tmp_path, "whole"), paper_split)
    full.run()
    for a, b in zip(_params(full), _params(resumed)):
        assert torch.equal(a, b)


def test_ctrl_c_inside_torch_save_raises_keyboardinterrupt_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """torch.save's zip writer, cut mid-record by KeyboardInterrupt, raises RuntimeError("unexpected
    pos") on exit; save_atomic raises the interrupt instead, leaves no temporary file, and the
    previous checkpoint stays readable."""
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"v": torch.zeros(10)}, path)

    class CutFile(io.FileIO):                 # Ctrl-C once 4 kB are written
        def write(self, b):
            if self.tell() > 4096:
                raise KeyboardInterrupt
            return super().write(b)
    with pytest.raises(RuntimeError, match="unexpected pos"):   # what torch does on its own
        with CutFile(tmp_path / "raw.pt", "wb") as f:
            torch.save({"v": torch.ones(10_000)}, f)
    (tmp_path / "raw.pt").unlink()
    monkeypatch.setattr(ckpt, "open", CutFile, raising=False)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"v": torch.ones(10_000)}, path)
    assert [q.name for q in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.equal(torch.load(path)["v"], torch.zeros(10))


def test_segments_after_the_checkpoint_a_resume_starts_from_are_cut(tmp_path):
    """Steps after the checkpoint are trained again on resume, so the segments that covered them
    end at the checkpoint's step (and those that began after it go)."""
    from alphareg.rundir import read_segments
    rd = RunDir(RunConfig(runs_dir=str(tmp_path), name="segs", progress=False))
    rd.create({"source": "test"})
    row = {"wall_time_s": 1.0, "device": "cuda:0", "accelerator": "H", "host": "h", "git_commit": "c",
           "ended": "", "outcome": "finished"}
    for a, b in ((0, 50), (50, 100), (100, 110)):
        rd.put_segment(dict(row, start_step=a, end_step=b, started=f"t{a}", outcome="running"))
    rd.put_segment(dict(row, start_step=100, end_step=120, started="t100"))   # the same process: replaced
    assert [(r["start_step"], r["end_step"], r["outcome"]) for r in read_segments(rd.path)] == [
        ("0", "50", "running"), ("50", "100", "running"), ("100", "120", "finished")]
    rd.drop_after(63)
    assert [(r["start_step"], r["end_step"]) for r in read_segments(rd.path)] == [("0", "50"), ("50", "63")]
    rd.drop_after(63)
    assert [(r["start_step"], r["end_step"]) for r in read_segments(rd.path)] == [("0", "50"), ("50", "63")]
    rd.drop_after(40)
    assert [(r["start_step"], r["end_step"], r["device"]) for r in read_segments(rd.path)] == [("0", "40", "cuda:0")]


def test_extending_steps_continues_the_same_trajectory(tmp_path, paper_split):
    long = _new_trainer(_cfg(tmp_path, "long", steps=60), paper_split)
    long.run()
    short = _new_trainer(_cfg(tmp_path, "grow", steps=30), paper_split)
    short.run()
    grown = _new_trainer(_cfg(tmp_path, "grow", steps=60), paper_split)
    assert grown.step == 30
    grown.run()
    for a, b in zip(_params(long), _params(grown)):
        assert torch.equal(a, b)


def test_metrics_table_gains_new_columns_when_an_old_run_is_resumed(tmp_path):
    """A run written before a column existed (e.g. lr_<layer>) and resumed by a newer version:
    the table is rewritten with the new columns (empty in old rows), every line parses."""
    import pandas as pd
    from alphareg.rundir import read_metrics
    cfg = RunConfig(runs_dir=str(tmp_path), name="old", progress=False)
    rd = RunDir(cfg)
    rd.create({"source": "test"})
    rd.append_metrics([{"step": 1, "member": 0, "test_acc": 0.5, "wall_time": 1.0}])
    rd.append_metrics([{"step": 2, "member": 0, "test_acc": 0.6, "lr_fc1": 5e-4, "wall_time": 2.0}])
    rd.append_metrics([{"step": 3, "member": 0, "test_acc": 0.7, "lr_fc1": 5e-4, "wall_time": 3.0}])
    rows = read_metrics(rd.path)
    assert list(rows[0]) == ["step", "member", "test_acc", "wall_time", "lr_fc1"]
    assert [r["lr_fc1"] for r in rows] == ["", "0.0005", "0.0005"]
    assert [r["wall_time"] for r in rows] == ["1.0", "2.0", "3.0"]
    df = pd.read_csv(rd.path / "metrics.csv")
    assert df.shape == (3, 5)
    rd.truncate_metrics(2)
    assert [r["step"] for r in read_metrics(rd.path)] == ["1", "2"]
