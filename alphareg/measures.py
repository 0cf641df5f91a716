"""Progress measures of paper A, appendix B (after Golechha 2024), batched over members.

All functions take population-stacked tensors (leading dimension K) and return one value per
member (shape (K,)).

* l2 norm of layer l:            ||W_l||_F = sqrt(sum_ij W_ij^2)   (weights only, no biases);
  total:                         sqrt(sum_l ||W_l||_F^2).
* activation sparsity of hidden layer l: the fraction of (input, unit) pairs whose post-ReLU
  activation is <= tau, over the whole training set. tau = 0 (default) counts exactly the
  inactive ReLU units; tau > 0 also counts nearly-inactive ones.
* absolute weight entropy of layer l:  H(W) = -sum_ij |W_ij| log |W_ij|   (0 log 0 := 0).
* approximate local circuit complexity: with a seeded random mask M zeroing a fraction f
  (default 10 %) of one layer's weights, the KL divergence between the softmax outputs of the
  intact network (p) and of the ablated one (q), summed over the training set:
      C = sum_n sum_c p_nc (log p_nc - log q_nc).
"""
from __future__ import annotations

from typing import Sequence

import torch


def l2_norms(weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer Frobenius norms (L, K) and the total norm (K,) over all weight matrices."""
    per_layer = torch.stack([w.detach().flatten(1).norm(dim=1) for w in weights])
    return per_layer, per_layer.pow(2).sum(0).sqrt()


def activation_sparsity(hidden: Sequence[torch.Tensor], tau: float = 0.0) -> torch.Tensor:
    """(H, K): fraction of activations <= tau per hidden layer; each tensor is (K, N, units)."""
    return torch.stack([(h.detach() <= tau).to(h.dtype).mean(dim=(1, 2)) for h in hidden])


def weight_entropy(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """(L, K): -sum |w| log |w| per layer (xlogy gives 0 for w = 0)."""
    return torch.stack([-torch.special.xlogy(w.detach().abs(), w.detach().abs()).flatten(1).sum(1)
                        for w in weights])


def ablation_mask(shape: Sequence[int], fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask with exactly round(fraction * numel) True entries (the weights to zero),
    positions drawn by a ``torch.Generator`` seeded with ``seed`` (CPU, device independent)."""
    n = 1
    for s in shape:
        n *= s
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=g)[: round(fraction * n)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(*shape)


def softmax_kl_sum(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """sum_n KL(softmax(p_n) || softmax(q_n)) over the second-to-last axis: (K, N, C) -> (K,)."""
    logp = torch.log_softmax(logits_p, dim=-1)
    logq = torch.log_softmax(logits_q, dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=(-1, -2))


@torch.no_grad()
def circuit_complexity(model, x: torch.Tensor, layer: int, fraction: float = 0.1,
                       seed: int = 0, logits: torch.Tensor | None = None) -> torch.Tensor:
    """(K,): summed KL between the intact and the ablated model on inputs x (layer is 1-based).

    ``model`` is a :class:`~alphareg.models.PopulationMLP`; the same mask is applied to every
    member. ``logits`` (the intact outputs on x) may be passed to save a forward pass.
    """
    w = model.weights[layer - 1]
    if logits is None:
        logits = model(x)
    mask = ablation_mask(w.shape[1:], fraction, seed).to(w.device)
    saved = w.detach().clone()
    try:
        w.data.masked_fill_(mask, 0.0)
        ablated = model(x)
    finally:
        w.data.copy_(saved)
    return softmax_kl_sum(logits, ablated)
