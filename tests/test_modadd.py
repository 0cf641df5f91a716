"""Modular-addition transformer: shapes, dataset, losses, population == standalone loop, CLI."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from alphareg.cli import run_main
from alphareg.config import RunConfig
from alphareg.engine import make_trainer
from alphareg.htsr import ww_reference
from alphareg.modadd import modadd_data, modadd_losses, modadd_pairs, modadd_split, stablemax_log_probs
from alphareg.rundir import read_metrics
from alphareg.transformer import LAYER_NAMES, LAYERS, ModAddTransformer, PopulationTransformer


def test_shapes_and_weightwatcher_sees_every_matrix():
    p, K = 113, 2
    pop = PopulationTransformer(p, [0, 1])
    tokens, _ = modadd_pairs(p)
    logits, (hidden,) = pop(tokens[:50], return_hidden=True)
    assert logits.shape == (K, 50, p) and hidden.shape == (K, 50, 512)
    shapes = [tuple(w.shape) for w in pop.weights]
    assert shapes == [(K, 114, 128), (K, 128, 128), (K, 128, 128), (K, 128, 128), (K, 128, 128),
                      (K, 512, 128), (K, 128, 512), (K, 113, 128)]
    assert [None if b is None else tuple(b.shape) for b in pop.layer_biases()] == \
        [None] * 5 + [(K, 512), (K, 128), None]
    assert tuple(pop.pos_embed.shape) == (K, 3, 128)
    member = pop.member(1)
    assert member(tokens[:50]).shape == (50, p)
    # weightwatcher analyses exactly our 8 matrices (pos_embed has 3 eigenvalues: skipped)
    rows = ww_reference(member)
    assert [r["name"] for r in rows] == ["embed", "W_Q", "W_K", "W_V", "W_O", "mlp_in", "mlp_out", "unembed"]
    assert len(LAYER_NAMES) == len(rows)


def test_nanda_initialisation_scales():
    m = ModAddTransformer(113, seed=0, dtype=torch.float64)
    assert m.embed.weight.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.02)
    assert m.mlp_in.weight.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.02)
    assert m.unembed.weight.std().item() == pytest.approx(1 / math.sqrt(114), rel=0.03)
    assert torch.count_nonzero(m.mlp_in.bias) == 0 and torch.count_nonzero(m.mlp_out.bias) == 0
    assert not torch.equal(m.W_Q.weight, ModAddTransformer(113, seed=1, dtype=torch.float64).W_Q.weight)


def test_population_equals_standalone_members_forward_and_gradient():
    p = 23
    tokens, labels = modadd_pairs(p)
    pop = PopulationTransformer(p, [3, 7], dtype=torch.float64)
    out = pop(tokens)
    modadd_losses(out, labels).sum().backward()
    for k, seed in enumerate([3, 7]):
        ref = ModAddTransformer(p, seed=seed, dtype=torch.float64)   # full causal attention
        ref_out = ref(tokens)
        assert torch.allclose(out[k], ref_out, atol=1e-12, rtol=0)
        F.cross_entropy(ref_out, labels).backward()
        grads = dict(ref.named_parameters())
        for (_, attr, _), w in zip(LAYERS, pop.weights):
            assert torch.allclose(w.grad[k], grads[f"{attr}.weight"].grad, atol=1e-12, rtol=0), attr
        assert torch.allclose(pop.pos_embed.grad[k], ref.pos_embed.weight.grad, atol=1e-12, rtol=0)
        assert torch.allclose(pop.biases[0].grad[k], ref.mlp_in.bias.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("p,frac,seed", [(23, 0.3, 0), (113, 0.3, 0), (7, 0.5, 3)])
def test_dataset_covers_every_pair_exactly_once(p, frac, seed):
    tr, te, info = modadd_data(p, frac, seed)
    tokens = torch.cat([tr.x, te.x])
    labels = torch.cat([tr.y, te.y])
    assert len(tr.y) == round(frac * p * p) == info["n_train"] and len(tokens) == p * p
    pairs = {(int(a), int(b)) for a, b, _ in tokens.tolist()}
    assert pairs == {(a, b) for a in range(p) for b in range(p)}       # all p^2, none twice
    assert torch.all(tokens[:, 2] == p)                                 # the "=" token
    assert torch.equal(labels, (tokens[:, 0] + tokens[:, 1]) % p)
    # seeded: the same seed gives the same split, another seed another one
    assert torch.equal(modadd_split(p, frac, seed)[0], modadd_split(p, frac, seed)[0])
    assert not torch.equal(modadd_split(p, frac, seed)[0], modadd_split(p, frac, seed + 1)[0])


def test_losses_in_float64_against_hand_computed_values():
    z = torch.tensor([[[2.0, -1.0, 0.0]], [[0.5, 0.5, -3.0]]], dtype=torch.float32)   # (K=2, N=1, 3)
    y = torch.tensor([0])
    ce = modadd_losses(z, y, "ce")
    assert ce.dtype == torch.float64
    assert torch.allclose(ce, -torch.log_softmax(z.double(), -1)[:, 0, 0], atol=1e-15)
    # StableMax: s(2) = 3, s(-1) = 1/2, s(0) = 1 -> -log(3 / 4.5); s(.5)=1.5, s(-3)=1/4 -> -log(1.5/3.25)
    sm = modadd_losses(z, y, "stablemax")
    assert torch.allclose(sm, torch.tensor([-math.log(3 / 4.5), -math.log(1.5 / 3.25)],
                                           dtype=torch.float64), atol=1e-15)
    big = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.float64, requires_grad=True)
    lp = stablemax_log_probs(big)
    lp[0, 1].backward()
    assert torch.isfinite(lp).all() and torch.isfinite(big.grad).all()


def _plain_loop(p, seed, steps, lr, wd, frac=0.3, warmup=10):
    """The reference: one standalone nn.Module, torch.optim.AdamW, LambdaLR warm-up (Nanda)."""
    tr, _, _ = modadd_data(p, frac, 0)
    model = ModAddTransformer(p, seed=seed, dtype=torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warmup, 1))
    for _ in range(steps):
        loss = F.cross_entropy(model(tr.x).double(), tr.y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model


def test_population_training_equals_plain_loop_with_warmup():
    cfg = RunConfig.for_task("modadd", modulus=11, seeds=(0, 1), lr=(1e-3, 3e-3), wd=(1.0, 0.5),
                             dtype="float64", steps=25, progress=False)
    tr = make_trainer(cfg)
    tr.train_steps(25)
    for k in range(2):
        ref = _plain_loop(11, k, 25, cfg.member_lrs()[k], cfg.member_wds()[k])
        got = tr.model.member(k)
        for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-10, rtol=0), name


def test_small_p_reaches_full_train_accuracy():
    cfg = RunConfig.for_task("modadd", modulus=23, seeds=(0,), progress=False)
    tr = make_trainer(cfg)
    for _ in range(20):
        tr.train_steps(25)
        if tr.evaluate()[0]["train_acc"] == 1.0:
            break
    assert tr.evaluate()[0]["train_acc"] == 1.0, f"train accuracy below 100 % after {tr.step} steps"


def test_resume_is_exact_with_controller_and_penalty():
    cfg = RunConfig.for_task("modadd", modulus=13, seeds=(0, 1), steps=30, progress=False,
                             method="penalty+lr_controller", control_every=4, refit_every=5,
                             penalty_grad_every=2, target_alpha=8.0)
    straight = make_trainer(cfg)
    straight.train_steps(30)
    first = make_trainer(cfg)
    first.train_steps(13)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make_trainer(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    resumed.train_steps(17)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    # the controller set a per-layer lr on the weights and the MLP biases; pos_embed keeps its base
    lrs = straight.layer_lr_wd()
    assert any(v != cfg.member_lrs()[0] for n in LAYER_NAMES for v in lrs[f"lr_{n}"])
    pos = [i for i, p in enumerate(straight.opt.params) if p is straight.model.pos_embed][0]
    assert straight.opt.lr[pos].tolist() == pytest.approx(cfg.member_lrs(), rel=1e-7)   # float32


def test_cli_end_to_end_run_directory(tmp_path, capsys):
    argv = ["--task", "modadd", "--p", "11", "--steps", "40", "--runs-dir", str(tmp_path),
            "--name", "m", "--no-progress", "--ww-per-decade", "1", "--esd-per-decade", "0"]
    assert run_main("experiments.baseline", "", argv) == 0
    run = tmp_path / "m"
    rows = read_metrics(run)
    assert int(rows[-1]["step"]) == 40 and "l2_attn_q" in rows[0] and "sparsity_h1" in rows[0]
    import csv
    with open(run / "htsr.csv") as f:
        h = list(csv.DictReader(f))
    assert {r["layer"] for r in h} == set(LAYER_NAMES)
    last = [r for r in h if int(r["step"]) == 40]
    ww = [r for r in h if r["ww_alpha"] not in ("", "nan")]
    assert len(last) == 8 and ww, "weightwatcher reference columns missing"
    for r in ww:   # our alpha == weightwatcher's on the transformer's layers (float32 weights)
        assert float(r["alpha"]) == pytest.approx(float(r["ww_alpha"]), rel=1e-4), r["layer"]
    assert (run / "plots" / "fig1_accuracy.png").exists()
    # re-running with more steps resumes the same run
    assert run_main("experiments.baseline", "", argv[:4] + ["--steps", "60"] + argv[6:]) == 0
    assert int(read_metrics(run)[-1]["step"]) == 60


@pytest.mark.parametrize("argv,needle", [
    (["--task", "modadd", "--train-frac", "1.5"], "--train-frac 1.5"),
    (["--task", "modadd", "--loss", "mse"], "--loss mse"),
    (["--task", "modadd", "--p", "1"], "--modulus 1"),
    (["--task", "mnist", "--loss", "stablemax"], "--loss stablemax"),
    (["--task", "modadd", "--penalty-layers", "fc1"], "--penalty-layers fc1"),
    (["--task", "modadd", "--warmup-steps", "-1"], "--warmup-steps -1"),
    (["--task", "vision"], "--task"),
])
def test_cli_errors_name_the_flag(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) if argv[1] == "vision" else _nothing():
        code = run_main("experiments.baseline", "", argv + ["--runs-dir", str(tmp_path)])
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
