import math

import pytest
import torch

from alphareg import measures as M
from alphareg.models import PopulationMLP
from alphareg.schedule import log_points


def test_l2_norms_hand_computed():
    w1 = torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]]])        # K=2, (1, 2)
    w2 = torch.tensor([[[12.0]], [[0.0]]])
    per_layer, total = M.l2_norms([w1, w2])
    assert per_layer.tolist() == [[5.0, 1.0], [12.0, 0.0]]
    assert total.tolist() == [13.0, 1.0]


def test_activation_sparsity_hand_computed():
    h = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])           # K=1, N=2, units=2
    assert M.activation_sparsity([h], 0.0).item() == 0.5
    assert M.activation_sparsity([h], 1.5).item() == 0.75


def test_weight_entropy_hand_computed():
    w = torch.tensor([[[1.0, math.exp(-1.0), 0.0, -0.5]]], dtype=torch.float64)
    expected = math.exp(-1.0) + 0.5 * math.log(2.0)         # -(0 - e^-1 + 0 + 0.5 ln 0.5)
    assert M.weight_entropy([w]).item() == pytest.approx(expected, rel=1e-12)


def test_softmax_kl_hand_computed():
    p = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    q = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)   # softmax -> (1/4, 3/4)
    assert M.softmax_kl_sum(p, q).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert M.softmax_kl_sum(p, p).item() == 0.0


def test_ablation_mask_is_exact_fraction_and_seeded():
    m = M.ablation_mask((200, 784), 0.1, seed=3)
    assert m.sum().item() == 15680
    assert torch.equal(m, M.ablation_mask((200, 784), 0.1, seed=3))
    assert not torch.equal(m, M.ablation_mask((200, 784), 0.1, seed=4))


def test_circuit_complexity_matches_explicit_ablation():
    model = PopulationMLP([3, 4, 2], seeds=[0, 1], init_scale=1.0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = [w.detach().clone() for w in model.weights]
    got = M.circuit_complexity(model, x, layer=1, fraction=0.25, seed=7)
    mask = M.ablation_mask((4, 3), 0.25, 7)
    assert mask.sum().item() == 3
    for k in range(2):
        w1 = model.weights[0][k].detach().clone()
        b1, w2, b2 = model.biases[0][k], model.weights[1][k], model.biases[1][k]
        def f(w):
            return torch.relu(x @ w.T + b1) @ w2.T + b2
        p = torch.softmax(f(w1), -1)
        q = torch.softmax(f(w1.masked_fill(mask, 0.0)), -1)
        kl = (p * (p / q).log()).sum().item()
        assert got[k].item() == pytest.approx(kl, rel=1e-10)
    # the model is left untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.weights))


def test_log_points():
    assert log_points(10, 1) == [0, 1, 10]
    assert log_points(100, 2) == [0, 1, 3, 10, 32, 100]
    pts = log_points(10_000_000, 20)
    assert pts[0] == 0 and pts[-1] == 10_000_000 and pts == sorted(set(pts))
    assert 1_000_000 in pts and 100_000 in pts
    assert log_points(150, 20)[-1] == 150
