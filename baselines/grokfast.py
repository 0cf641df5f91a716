"""Grokfast-EMA (Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow gradients";
ironjr/grokfast ``gradfilter_ema``): a low-pass filter of the gradient is added back to it,

    μ_t = α μ_{t-1} + (1 − α) g_t      (μ_0 = g_0),        g_t <- g_t + λ μ_t

with α = 0.98, λ = 2 as in the paper. Element-wise, so population members stay independent.
"""
from __future__ import annotations

import torch

from alphareg.hooks import TrainingHook, stacked_params


class GrokfastEMA(TrainingHook):
    name = "grokfast"

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise ValueError(f"grokfast alpha must be in [0, 1), got {alpha}")
        self.alpha, self.lamb = float(alpha), float(lamb)
        self.ema: list[torch.Tensor] | None = None

    @torch.no_grad()
    def filter(self, params) -> None:
        """Apply the filter to ``p.grad`` of every parameter in ``params`` (any nn.Module's too)."""
        params = [p for p in params if p.grad is not None]
        if self.ema is None:
            self.ema = [p.grad.detach().clone() for p in params]
        else:
            if self.ema[0].device != params[0].device:   # loaded from a checkpoint
                self.ema = [m.to(params[0].device) for m in self.ema]
            for m, p in zip(self.ema, params):
                m.mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
        for m, p in zip(self.ema, params):
            p.grad.add_(m, alpha=self.lamb)

    def after_backward(self, trainer) -> None:
        self.filter(stacked_params(trainer))

    def state_dict(self) -> dict:
        return {"ema": None if self.ema is None else [m.cpu() for m in self.ema]}

    def load_state_dict(self, sd: dict) -> None:
        self.ema = None if sd["ema"] is None else [m.clone() for m in sd["ema"]]
