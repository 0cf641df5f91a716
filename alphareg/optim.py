"""AdamW on population-stacked parameters, with a learning rate and weight decay per member.

For each parameter p of shape (K, ...) with gradient g, at step t (Loshchilov & Hutter 2019,
exactly the update of ``torch.optim.AdamW``):

    p   <- p * (1 - lr_k * wd_k)
    m   <- beta1 m + (1 - beta1) g
    v   <- beta2 v + (1 - beta2) g^2
    p   <- p - (lr_k / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``lr`` and ``wd`` are (K,) tensors broadcast over each member's slice; they may be changed
between steps (controllers), and may be given per parameter (``set_lr(param_index, lrs)``).
AdamW is element-wise, so stacking members never mixes them (unlike Lamb/LARS-style norms).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class StackedAdamW:
    def __init__(self, params: Sequence[torch.nn.Parameter], lr: Sequence[float],
                 wd: Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        K = self.params[0].shape[0]
        dev, dt = self.params[0].device, self.params[0].dtype
        lr_t = torch.as_tensor(list(lr), dtype=dt, device=dev)
        wd_t = torch.as_tensor(list(wd), dtype=dt, device=dev)
        if lr_t.shape != (K,) or wd_t.shape != (K,):
            raise ValueError(f"lr and wd need one value per member ({K})")
        # per-parameter copies so that per-layer control is possible later
        self.lr = [lr_t.clone() for _ in self.params]
        self.wd = [wd_t.clone() for _ in self.params]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def _view(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = math.sqrt(1 - b2 ** self.t)
        for p, m, v, lr, wd in zip(self.params, self.exp_avg, self.exp_avg_sq, self.lr, self.wd):
            g = p.grad
            lr_v = self._view(lr, p)
            p.mul_(1 - lr_v * self._view(wd, p))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((lr_v / bc1) * (m / denom))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"t": self.t, "exp_avg": [m.cpu() for m in self.exp_avg],
                "exp_avg_sq": [v.cpu() for v in self.exp_avg_sq],
                "lr": [x.cpu() for x in self.lr], "wd": [x.cpu() for x in self.wd],
                "betas": (self.beta1, self.beta2), "eps": self.eps}

    def load_state_dict(self, sd: dict) -> None:
        dev = self.params[0].device
        self.t = int(sd["t"])
        for dst, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq"),
                         (self.lr, "lr"), (self.wd, "wd")):
            if len(sd[key]) != len(dst):
                raise ValueError(f"optimizer state has {len(sd[key])} '{key}' tensors, expected {len(dst)}")
            for i, src in enumerate(sd[key]):
                if src.shape != dst[i].shape:
                    raise ValueError(f"optimizer '{key}'[{i}] has shape {tuple(src.shape)}, "
                                     f"expected {tuple(dst[i].shape)}")
                dst[i] = src.to(device=dev, dtype=dst[i].dtype).clone()
