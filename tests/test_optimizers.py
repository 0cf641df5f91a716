"""Every --optimizer: population members equal standalone plain runs; checkpoints resume exactly."""
import io

import pytest
import torch
import torch_optimizer

from alphareg.config import RunConfig
from alphareg.engine import Trainer
from alphareg.optim import OPTIMIZERS, TORCH_OPTIMIZER_PKG
from test_engine import plain_reference

STEPS = 12


def reference_optimizer(name):
    if name == "adamw":
        return lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd)
    if name == "adam":
        return lambda ps, lr, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd)
    if name == "sgd":
        return lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, weight_decay=wd, momentum=0.9)
    assert name in TORCH_OPTIMIZER_PKG
    return lambda ps, lr, wd: torch_optimizer.get(name)(ps, lr=lr, weight_decay=wd)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_population_members_equal_standalone_runs_and_resume_exactly(paper_split, name):
    lrs, wds = (1e-3, 3e-3), (0.0, 0.01)
    cfg = RunConfig(seeds=(0, 1), lr=lrs, wd=wds, optimizer=name, steps=STEPS, progress=False)
    tr = Trainer(cfg, data=paper_split)
    tr.train_steps(STEPS)
    for k, (seed, lr, wd) in enumerate(zip((0, 1), lrs, wds)):
        ref = plain_reference(paper_split[0], seed, lr, wd, STEPS, make_opt=reference_optimizer(name))
        ours = [p[k] for p in (*tr.model.weights, *tr.model.biases)]
        order = [0, 2, 4, 1, 3, 5]      # nn.Sequential: w1 b1 w2 b2 w3 b3
        for i, j in enumerate(order):
            assert torch.allclose(ours[i], ref[j], rtol=0, atol=1e-9), (name, k, i)
    # checkpoint round trip half way
    half = Trainer(cfg, data=paper_split)
    half.train_steps(STEPS // 2)
    buf = io.BytesIO()
    torch.save(half.state_dict(), buf)
    buf.seek(0)
    again = Trainer(cfg, data=paper_split)
    again.load_state_dict(torch.load(buf, weights_only=False))
    again.train_steps(STEPS - STEPS // 2)
    for a, b in zip(tr.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b), name


def test_help_lists_exactly_the_tested_optimizers():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "experiments.alpha_reg", "--help"],
                         capture_output=True, text=True).stdout
    listed = " ".join(out.split()).split("--optimizer {", 1)[1].split("}", 1)[0].split(",")
    assert tuple(listed) == OPTIMIZERS
