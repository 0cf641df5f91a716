"""⊥Grad (Prieto et al. 2025, "Grokking at the edge of numerical stability"): the gradient of
every parameter tensor w is replaced by its component orthogonal to w, rescaled to the original
norm,

    g⊥ = g − (⟨w, g⟩ / ⟨w, w⟩) w,        g <- g⊥ · ‖g‖ / ‖g⊥‖

so the optimizer cannot grow the weights along their own direction (the naive loss minimisation
that precedes softmax collapse). For a population-stacked tensor (K, ...) each member's slice is a
separate tensor.
"""
from __future__ import annotations

import torch

from alphareg.hooks import TrainingHook, stacked_params

TINY = 1e-30


def orthogonal_grad(w: torch.Tensor, g: torch.Tensor, members: bool = True) -> torch.Tensor:
    """g⊥ rescaled to ‖g‖, per leading-dim slice when ``members`` (else for the whole tensor)."""
    shape = g.shape
    W = w.reshape(shape[0], -1) if members else w.reshape(1, -1)
    G = g.reshape(W.shape)
    proj = (W * G).sum(1, keepdim=True) / ((W * W).sum(1, keepdim=True) + TINY)
    g_orth = G - proj * W
    scale = G.norm(dim=1, keepdim=True) / (g_orth.norm(dim=1, keepdim=True) + TINY)
    return (g_orth * scale).reshape(shape)


class OrthoGrad(TrainingHook):
    name = "orthograd"

    @torch.no_grad()
    def after_backward(self, trainer) -> None:
        for p in stacked_params(trainer):
            p.grad.copy_(orthogonal_grad(p, p.grad, members=True))
