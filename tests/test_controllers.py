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
