"""Every --method: exact resume (hook state in the checkpoint), baselines' maths, CLI errors."""
import io

import pytest
import torch

from alphareg.config import ConfigError, RunConfig
from alphareg.engine import Trainer
from alphareg.methods import parse_method
from alphareg.rundir import RunDir, read_metrics
from baselines.grokfast import GrokfastEMA
from baselines.orthograd import orthogonal_grad
from baselines.spectral_norm import SpectralNormPenalty

FAST = dict(refit_every=7, penalty_grad_every=3, control_every=4, target_alpha=10.0, seeds=(0, 1),
            lr=(5e-3,), steps=23, progress=False)


def _state(tr):
    sd = tr.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)          # the checkpoint's serialisation round trip
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _flat(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _flat(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat(v)]
    return [torch.tensor(float(obj))] if isinstance(obj, (int, float, bool)) else []


@pytest.mark.parametrize("method", ["penalty", "lr_controller", "wd_controller", "tempbalance",
                                    "alphadecay", "penalty+lr", "grokfast", "spectral_norm",
                                    "orthograd", "weight_decay", "penalty+grokfast+wd"])
def test_resume_continues_method_state_exactly(paper_split, method):
    cfg = RunConfig(method=method, shuffle_alphas=method == "lr_controller", **FAST)
    straight = Trainer(cfg, data=paper_split)
    straight.train_steps(23)
    first = Trainer(cfg, data=paper_split)
    first.train_steps(11)                       # not a multiple of any refresh interval
    sd = _state(first)
    resumed = Trainer(cfg, data=paper_split)
    resumed.load_state_dict(sd)
    resumed.train_steps(12)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(_flat(straight.state_dict()["hooks"]), _flat(resumed.state_dict()["hooks"])):
        assert torch.equal(a, b)
    for a, b in zip(straight.opt.lr + straight.opt.wd, resumed.opt.lr + resumed.opt.wd):
        assert torch.equal(a, b)
    moved = Trainer(RunConfig(**FAST), data=paper_split)
    moved.train_steps(23)
    if method != "orthograd":   # every method changes the trajectory vs the plain run
        assert any(not torch.equal(a, b) for a, b in zip(moved.model.parameters(),
                                                          straight.model.parameters())), method


def test_penalty_is_inactive_until_an_alpha_falls_below_target(paper_split):
    cfg = RunConfig(method="penalty", target_alpha=1.0, **{k: v for k, v in FAST.items()
                                                             if k != "target_alpha"})
    pen, plain = Trainer(cfg, data=paper_split), Trainer(RunConfig(**FAST), data=paper_split)
    pen.train_steps(10)
    plain.train_steps(10)
    assert all(torch.equal(a, b) for a, b in zip(pen.model.parameters(), plain.model.parameters()))


def test_early_stopping_restores_the_best_weights_and_freezes_the_member(tmp_path, paper_split):
    cfg = RunConfig(method="early_stop", val_per_class=10, patience=1, min_delta=1.0,
                    patience_min_steps=0, seeds=(0, 1),
                    lr=(5e-3,), steps=30, log_per_decade=5, progress=False, htsr=False,
                    snapshots=False, runs_dir=str(tmp_path), name="es", plot_minutes=1e9)
    tr = Trainer(cfg, RunDir(cfg), data=paper_split)
    tr.run_dir.create(tr.data_info)
    init = [p.detach().clone() for p in tr.model.parameters()]
    tr.run()
    # min_delta 1.0: nothing after step 0 counts as an improvement -> stop at the next log point,
    # restore the step-0 weights, stay frozen to the end
    for a, b in zip(init, tr.model.parameters()):
        assert torch.equal(a, b)
    rows = read_metrics(tr.run_dir.path)
    assert {float(r["stopped"]) for r in rows if int(r["step"]) > 1} == {1.0}
    assert all(0 <= float(r["val_acc"]) <= 1 for r in rows)
    last = [r for r in rows if int(r["step"]) == 30]
    assert float(last[0]["lr_fc1"]) == 0.0


def test_early_stopping_patience_is_in_log_time():
    """Stop at the first log point with step >= patience x best step and step >= min_steps,
    restoring the weights of the best step (a fake trainer: one parameter, K = 2)."""
    from types import SimpleNamespace

    from baselines.early_stopping import EarlyStopping
    w = torch.zeros(2, 1)
    tr = SimpleNamespace(step=0, opt=SimpleNamespace(params=[w], lr=[torch.ones(2)], wd=[torch.ones(2)]))
    es = EarlyStopping(patience=1.5, min_steps=100)
    # member 0 peaks at step 40 and declines; member 1 keeps improving
    val = {0: (0.1, 0.2), 10: (0.3, 0.3), 40: (0.5, 0.4), 50: (0.4, 0.5), 59: (0.3, 0.6),
           60: (0.3, 0.7), 99: (0.3, 0.8), 100: (0.3, 0.9), 200: (0.3, 0.8), 299: (0.3, 0.8), 300: (0.3, 0.8)}
    stopped_at = {}
    for step, accs in val.items():
        tr.step = step
        for k in (0, 1):                        # training moves the weights of running members only
            if not (es.stopped and es.stopped[k]):
                w[k, 0] = float(step)           # the weights remember the step they were left at
        out = es.at_log_point(tr, [{"val_acc": a} for a in accs])
        for k in (0, 1):
            if out["stopped"][k] and k not in stopped_at:
                stopped_at[k] = step
    # member 0: best at 40; 60 >= 1.5 * 40 but < min_steps 100 -> stops at 100. Member 1: best at
    # 100 -> stops at 150 or later: the first log point at or after it is 200
    assert stopped_at == {0: 100, 1: 200}
    assert es.best_step == [40, 100] and es.best == [0.5, 0.9]
    assert w[:, 0].tolist() == [40.0, 100.0]   # restored, then frozen (lr, wd = 0)
    assert tr.opt.lr[0].tolist() == [0.0, 0.0] and tr.opt.wd[0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0.5)


def test_validation_split_is_disjoint_from_training_sample(mnist):
    from alphareg.data import stratified_indices, validation_data
    val = validation_data(100, 20, seed=0)
    assert len(val.y) == 200 and torch.bincount(val.y).tolist() == [20] * 10
    used = stratified_indices(mnist.train_y, 100, 0)
    train_rows = {mnist.train_x[i].tobytes() for i in used}
    val_rows = {(val.x[i] * 255).round().to(torch.uint8).numpy().tobytes() for i in range(200)}
    assert not train_rows & val_rows


def test_grokfast_ema_by_hand():
    p = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    gf = GrokfastEMA(alpha=0.5, lamb=2.0)
    g1, g2 = torch.full((2, 3), 1.0, dtype=torch.float64), torch.full((2, 3), 3.0, dtype=torch.float64)
    p.grad = g1.clone()
    gf.filter([p])
    assert torch.allclose(p.grad, g1 + 2 * g1)              # mu_0 = g_0
    p.grad = g2.clone()
    gf.filter([p])
    assert torch.allclose(p.grad, g2 + 2 * (0.5 * g1 + 0.5 * g2))


def test_orthograd_is_orthogonal_per_member_with_the_original_norm():
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(3, 5, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g,
                                                                                   dtype=torch.float64)
    out = orthogonal_grad(w, grad)
    for k in range(3):
        assert abs(torch.dot(out[k].flatten(), w[k].flatten()).item()) < 1e-12
        assert out[k].norm().item() == pytest.approx(grad[k].norm().item(), rel=1e-12)
        assert torch.allclose(out[k], orthogonal_grad(w[k:k + 1], grad[k:k + 1])[0])


def test_spectral_norm_gradient_equals_autograd_of_half_beta_sigma_squared():
    W = torch.randn(2, 30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sn = SpectralNormPenalty(beta=0.3)
    for _ in range(300):
        sigma, u, v = sn.power_iteration("w", W)
    exact = torch.linalg.matrix_norm(W, ord=2)
    assert torch.allclose(sigma, exact, rtol=1e-10)
    X = W.clone().requires_grad_()
    (0.5 * 0.3 * torch.linalg.matrix_norm(X, ord=2).pow(2).sum()).backward()
    ours = 0.3 * sigma[:, None, None] * u[:, :, None] * v[:, None, :]
    assert torch.allclose(ours, X.grad, atol=1e-8)


@pytest.mark.parametrize("method, msg", [("bogus", "unknown component"), ("lr+tempbalance", "twice"),
                                         ("weight_decay+wd", "both set the wd")])
def test_bad_methods_are_refused(method, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_method(method)


def test_early_stop_without_validation_split_names_the_flag():
    with pytest.raises(ConfigError, match="--val-per-class"):
        RunConfig(method="early_stop").validate()


def test_method_runs_get_their_own_directory_names():
    a, b = RunConfig(method="penalty"), RunConfig(method="penalty", penalty_beta=0.5)
    assert a.run_name() != b.run_name() != RunConfig().run_name()
    assert a.run_name() == RunConfig(method="penalty").run_name()
    assert RunConfig(method="penalty", specnorm_beta=3.0).run_name() == a.run_name()  # unused flag
    # penalty_gradient came later: at its default a penalty run keeps the name older alphareg gave it
    assert a.run_name() == "mlp_lr0.0005_wd0_s0_float64_penalty_692dfd"
    assert RunConfig(method="penalty", penalty_gradient="zipf").run_name() != a.run_name()


def test_checkpoint_from_before_a_config_field_existed_still_resumes(paper_split):
    cfg = RunConfig(**FAST)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(3)
    sd = tr.state_dict()
    for key in ("method", "optimizer"):
        del sd["config"][key]          # as written by an older alphareg
    again = Trainer(cfg, data=paper_split)
    again.load_state_dict(sd)
    assert again.step == 3
    with pytest.raises(Exception, match="another configuration"):
        Trainer(RunConfig(method="grokfast", **FAST), data=paper_split).load_state_dict(sd)


def test_settings_of_methods_a_run_does_not_use_do_not_block_its_resume(paper_split, tmp_path):
    """A grokfast checkpoint that recorded an older early-stopping default resumes; a change of
    grokfast's own setting is refused. The same for the run directory's config.json."""
    cfg = RunConfig(method="grokfast", **FAST)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(2)
    sd = tr.state_dict()
    sd["config"]["patience"] = 20                      # early stopping's old default
    again = Trainer(RunConfig(method="grokfast", specnorm_beta=3.0, **FAST), data=paper_split)
    again.load_state_dict(sd)
    assert again.step == 2
    with pytest.raises(Exception, match="grokfast_lamb"):
        Trainer(RunConfig(method="grokfast", grokfast_lamb=0.5, **FAST), data=paper_split).load_state_dict(sd)
    es = {k: v for k, v in RunConfig(method="early_stop", val_per_class=10, **FAST).trajectory_dict().items()}
    assert "patience" in es and "patience" not in cfg.trajectory_dict()


@pytest.mark.parametrize("method, field, values", [("penalty", "target_alpha", (10.0, 6.0)),
                                                    ("penalty", "penalty_beta", (0.5, 0.01)),
                                                    ("lr_controller", "lr_gain", (0.1, 0.2)),
                                                    ("wd_controller", "wd_ref", (0.05, 0.001))])
def test_members_with_their_own_method_values_equal_separate_runs(paper_split, method, field, values):
    base = {k: v for k, v in FAST.items() if k != "seeds"}
    pop = Trainer(RunConfig(method=method, seeds=(3, 3), **base,
                            member_overrides=tuple({field: v} for v in values)), data=paper_split)
    pop.train_steps(15)
    for k, v in enumerate(values):
        one = Trainer(RunConfig(method=method, seeds=(3,), **{**base, field: v}), data=paper_split)
        one.train_steps(15)
        for a, b in zip(pop.model.parameters(), one.model.parameters()):
            assert torch.allclose(a[k], b[0], rtol=0, atol=1e-12), (field, k)
    assert any(not torch.equal(p[0], p[1]) for p in pop.model.parameters())   # members differ


def test_member_overrides_only_for_per_member_fields():
    with pytest.raises(ConfigError, match="cannot differ"):
        RunConfig(seeds=(0, 1), method="penalty",
                  member_overrides=({"refit_every": 5}, {"refit_every": 7})).validate()


def test_weight_decay_on_some_layers_equals_adamw_param_groups(paper_split):
    """--method weight_decay --wd-layers fc2,fc3: a plain torch AdamW with wd_ref on fc2's and
    fc3's weights and biases and the base wd (0.001 here) on fc1's, member by member."""
    from test_engine import plain_reference
    steps, wd_ref, base = 60, 0.5, 0.001

    def groups(ps, lr, wd):
        ps = list(ps)                     # nn.Sequential order: w1 b1 w2 b2 w3 b3
        return torch.optim.AdamW([{"params": ps[:2], "weight_decay": base},
                                  {"params": ps[2:], "weight_decay": wd_ref}], lr=lr)

    cfg = RunConfig(method="weight_decay", wd_ref=wd_ref, wd_layers=("fc2", "fc3"), wd=(base,),
                    seeds=(0, 1), lr=(5e-3,), steps=steps, progress=False).validate()
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(steps)
    everywhere = Trainer(RunConfig(method="weight_decay", wd_ref=wd_ref, wd=(base,), seeds=(0, 1),
                                   lr=(5e-3,), steps=steps, progress=False), data=paper_split)
    everywhere.train_steps(steps)
    for k, seed in enumerate((0, 1)):
        ref = plain_reference(paper_split[0], seed, 5e-3, None, steps, make_opt=groups)
        ours = [p[k] for p in (*tr.model.weights, *tr.model.biases)]
        for i, j in enumerate([0, 2, 4, 1, 3, 5]):
            assert torch.allclose(ours[i], ref[j], rtol=0, atol=1e-9), (k, i)
        # fc1 kept the base wd: it differs from the all-layer run's fc1 by the extra decay
        assert not torch.allclose(ours[0], everywhere.model.weights[0][k], rtol=0, atol=1e-6)


def test_wd_layers_keep_the_older_run_names():
    """Runs made before --wd-layers existed keep their directory (resume) names."""
    import hashlib
    import json
    cfg = RunConfig(method="weight_decay", wd_ref=0.02)
    old = hashlib.sha1(json.dumps({"method": "weight_decay", "wd_ref": 0.02}, sort_keys=True)
                       .encode()).hexdigest()[:6]
    assert cfg.run_name().endswith(f"_weight_decay_{old}")
    assert RunConfig(method="weight_decay", wd_ref=0.02, wd_layers=("fc2",)).run_name() != cfg.run_name()
