"""Controller maps on hand-set alphas, and the controller acting on a trainer's optimizer."""
import pytest
import torch

from alphareg.config import RunConfig
from alphareg.controllers import (AlphaController, anchored_multiplier, deadband,
                                  minmax_multiplier)
from alphareg.engine import Trainer
from alphareg.htsr import fit_alpha

T = torch.tensor


def f64(*v):
    return T(v, dtype=torch.float64)


def test_deadband():
    assert torch.allclose(deadband(f64(-0.5, -0.05, 0.0, 0.1, 0.3), 0.1), f64(-0.4, 0.0, 0.0, 0.0, 0.2))


def test_anchored_lr_and_wd_maps_by_hand():
    a = f64(1.5, 2.0, 2.05, 3.0)   # target 2, band 0.1, gain 1
    lr = anchored_multiplier(a, 2.0, 1.0, 0.1, 0.1, 1.0, "lr")
    assert torch.allclose(lr, f64(0.6, 1.0, 1.0, 1.0))           # 1 + (-0.4); 1 + 0.9 clipped to 1
    wd = anchored_multiplier(a, 2.0, 1.0, 0.1, 0.0, 3.0, "wd")
    assert torch.allclose(wd, f64(1.4, 1.0, 1.0, 0.1))           # 1 + 0.4; 1 - 0.9
    assert torch.allclose(anchored_multiplier(f64(9.0, 0.5), 2.0, 1.0, 0.1, 0.0, 3.0, "wd"),
                          f64(0.0, 2.4))


def test_tempbalance_and_alphadecay_minmax_maps_by_hand():
    a = f64(1.0, 2.0, 3.0).unsqueeze(1)                            # 3 layers, 1 member
    assert torch.allclose(minmax_multiplier(a, 0.5, 1.5).squeeze(1), f64(0.5, 1.0, 1.5))
    assert torch.allclose(minmax_multiplier(a, 0.666, 3.0).squeeze(1), f64(0.666, 1.833, 3.0))
    same = f64(2.0, 2.0).unsqueeze(1)
    assert torch.allclose(minmax_multiplier(same, 0.5, 1.5).squeeze(1), f64(1.0, 1.0))


def test_shuffled_ablation_permutes_the_alphas():
    ctl = AlphaController("lr", "tempbalance", shuffle=True, seed=3)
    a = f64(1.0, 2.0, 3.0, 4.0).reshape(4, 1)
    seen = set()
    for u in range(6):
        ctl.updates = u
        mu = ctl.multipliers(a).squeeze(1)
        assert sorted(mu.tolist()) == pytest.approx([0.5, 2 / 3 + 1 / 6, 7 / 6, 1.5])  # same values
        seen.add(tuple(mu.tolist()))
    assert len(seen) > 1      # ... attached to different layers


def test_bad_rule_is_refused():
    with pytest.raises(ValueError, match="rule"):
        AlphaController("lr", "alphadecay")


def test_controller_sets_each_layers_lr_and_wd_from_measured_alpha(paper_split):
    cfg = RunConfig(seeds=(0, 1), lr=(1e-3, 2e-3), steps=10, progress=False, method="lr+wd",
                    deadband=0.0, control_every=5, target_alpha=6.0, wd_ref=0.02,
                    lr_bounds=(0.0, 10.0), wd_bounds=(0.0, 10.0))
    tr = Trainer(cfg, data=paper_split)
    alphas = [fit_alpha(w.detach()).alpha for w in tr.model.weights]
    tr.train_steps(1)   # the controllers act at step 0, before the first optimizer step
    for l, a in enumerate(alphas):
        e = (a - 6.0).to(torch.float64)
        assert torch.allclose(tr.opt.lr[l], f64(1e-3, 2e-3) * torch.clamp(1 + e, 0, 10))
        assert torch.allclose(tr.opt.wd[l], 0.02 * torch.clamp(1 - e, 0, 10))
        assert torch.equal(tr.opt.lr[l], tr.opt.lr[l + 3])      # the layer's bias follows


def test_control_until_holds_the_last_dose_and_keeps_measuring(paper_split):
    """--control-until 5: the update at step 0 sets lr / wd from alpha; the one at step 5 still
    smooths alpha (the same ā as the closed-loop run, whose first 5 steps are identical) but leaves
    lr / wd where step 0 put them, while the closed-loop run moves them."""
    kw = dict(seeds=(0,), lr=(1e-2,), steps=10, progress=False, method="lr+wd", deadband=0.0,
              control_every=5, target_alpha=4.0, wd_ref=0.02, lr_bounds=(0.0, 10.0),
              wd_bounds=(0.0, 10.0))
    held = Trainer(RunConfig(**kw, control_until=5), data=paper_split)
    free = Trainer(RunConfig(**kw), data=paper_split)
    a0 = [fit_alpha(w.detach()).alpha for w in held.model.weights]
    for tr in (held, free):
        tr.train_steps(5)
    a5 = [fit_alpha(w.detach()).alpha for w in free.model.weights]
    for tr in (held, free):
        tr.train_steps(1)
    ctl_h, ctl_f = (next(h for h in tr.hooks if h.name == "lr_controller") for tr in (held, free))
    assert torch.equal(ctl_h.alpha_ema, ctl_f.alpha_ema)               # measured and smoothed alike
    for l in range(3):
        e0, e5 = ((a[l] - 4.0).to(torch.float64) for a in (a0, a5))
        assert torch.allclose(held.opt.lr[l], 1e-2 * torch.clamp(1 + e0, 0, 10))
        assert torch.allclose(held.opt.wd[l], 0.02 * torch.clamp(1 - e0, 0, 10))
        ema = 0.8 * e0 + 0.2 * e5                                       # the closed loop follows ā
        assert torch.allclose(free.opt.lr[l], 1e-2 * torch.clamp(1 + ema, 0, 10))
        assert not torch.allclose(free.opt.lr[l], held.opt.lr[l])
    assert ctl_h.holding(5) and not ctl_h.holding(4) and not ctl_f.holding(10 ** 9)


def test_control_until_zero_leaves_the_optimizers_own_lr_and_wd(paper_split):
    cfg = RunConfig(seeds=(0,), lr=(1e-3,), wd=(0.0,), steps=10, progress=False, method="wd",
                    control_every=5, target_alpha=6.0, control_until=0)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(6)
    assert all(float(w) == 0.0 for w in tr.opt.wd) and all(float(x) == 1e-3 for x in tr.opt.lr)
    assert not torch.isnan(tr.hooks[0].alpha_ema).any()               # ... while alpha is logged
