"""AdamW on population-stacked parameters, with a learning rate and weight decay per member.

For each parameter p of shape (K, ...) with gradient g, at step t (Loshchilov & Hutter 2019,
exactly the update of ``torch.optim.AdamW``):

    p   <- p * (1 - lr_k * wd_k)
    m   <- beta1 m + (1 - beta1) g
    v   <- beta2 v + (1 - beta2) g^2
    p   <- p - (lr_k / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``lr`` and ``wd`` are (K,) tensors broadcast over each member's slice; they may be changed
between steps (controllers), and may be given per parameter (``lr[i]``, ``wd[i]``). ``lr_scale``
multiplies every lr of the next step (the engine's warm-up; not part of the state).
AdamW is element-wise, so stacking members never mixes them (unlike Lamb/LARS-style norms).

``fused=True`` (the engine's default where available) runs torch's single-pass fused AdamW kernel
(``torch._fused_adamw_``, the one behind ``torch.optim.AdamW(fused=True)``) on each member's
slices, with that member's lr and wd, grouping the parameters that share them into one call; the
moments stay in the same stacked tensors, so checkpoints do not depend on the choice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class StackedAdamW:
    def __init__(self, params: Sequence[torch.nn.Parameter], lr: Sequence[float],
                 wd: Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8, fused: bool = False):
        self.params = list(params)
        self.fused = fused and fused_adamw_available(self.params[0])
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
        self.lr_scale = 1.0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def _view(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        if self.fused:
            return self._fused_step()
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = math.sqrt(1 - b2 ** self.t)
        for p, m, v, lr, wd in zip(self.params, self.exp_avg, self.exp_avg_sq, self.lr, self.wd):
            g = p.grad
            lr_v = self._view(lr if self.lr_scale == 1.0 else lr * self.lr_scale, p)
            p.mul_(1 - lr_v * self._view(wd, p))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((lr_v / bc1) * (m / denom))

    def _fused_step(self) -> None:
        self.t += 1
        P, K = len(self.params), self.params[0].shape[0]
        vals = torch.stack(self.lr + self.wd).tolist()        # one host read per step
        lrs, wds = vals[:P], vals[P:]
        step = torch.tensor(float(self.t), dtype=torch.float32, device=self.params[0].device)
        for k in range(K):
            groups: dict[tuple[float, float], list[int]] = {}
            for i in range(P):
                groups.setdefault((lrs[i][k] * self.lr_scale, wds[i][k]), []).append(i)
            for (lr, wd), idx in groups.items():
                torch._fused_adamw_(
                    [self.params[i][k] for i in idx], [self.params[i].grad[k] for i in idx],
                    [self.exp_avg[i][k] for i in idx], [self.exp_avg_sq[i][k] for i in idx], [],
                    [step] * len(idx), lr=lr, beta1=self.beta1, beta2=self.beta2,
                    weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False)

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


# ---------------------------------------------------------------------------------------------
# any torch optimizer, one instance per member (for optimizers that are not element-wise)
# ---------------------------------------------------------------------------------------------
#: ``--optimizer`` choices: AdamW runs on the stacks (``StackedAdamW``), the others per member.
TORCH_OPTIMIZERS = ("adam", "sgd")
TORCH_OPTIMIZER_PKG = ("lamb", "radam", "adabelief", "yogi", "diffgrad", "novograd", "adamp",
                       "madgrad", "qhadam", "sgdw")
OPTIMIZERS = ("adamw", *TORCH_OPTIMIZERS, *TORCH_OPTIMIZER_PKG)


class PerMemberOptimizer:
    """Any ``torch.optim.Optimizer`` on a population, without mixing members.

    Per-tensor optimizers (Lamb, NovoGrad, AdamP, ...) take norms over a whole tensor, which on a
    stacked (K, ...) parameter would mix members. Here member k's parameters are storage-sharing
    views ``p[k]`` of the stacked tensors, each with its own optimizer instance (so lr and weight
    decay are per member and per parameter, like ``StackedAdamW.lr[i]``; separate instances
    because some optimizers cache per-instance values across groups, e.g. torch-optimizer's
    RAdam caches ``lr``-scaled step sizes), and before every step ``view.grad = p.grad[k]``.
    The optimizers update the views in place, i.e. the stacks.
    ``lr[i]`` / ``wd[i]``: (K,) tensors, copied into the groups before each step.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], make, lr: Sequence[float],
                 wd: Sequence[float]):
        self.params = list(params)
        K = self.params[0].shape[0]
        lr_t = torch.as_tensor(list(lr), dtype=torch.float64)
        wd_t = torch.as_tensor(list(wd), dtype=torch.float64)
        if lr_t.shape != (K,) or wd_t.shape != (K,):
            raise ValueError(f"lr and wd need one value per member ({K})")
        self.lr = [lr_t.clone() for _ in self.params]
        self.wd = [wd_t.clone() for _ in self.params]
        self.K = K
        self.lr_scale = 1.0   # multiplies every lr of the next step (warm-up)
        self.views = [[p.detach()[k] for p in self.params] for k in range(K)]
        self.inner = [make([{"params": [v], "lr": float(lr_t[k]), "weight_decay": float(wd_t[k])}])
                      for k in range(K) for v in self.views[k]]

    @torch.no_grad()
    def step(self) -> None:
        P = len(self.params)
        for k in range(self.K):
            for i, (p, v) in enumerate(zip(self.params, self.views[k])):
                group = self.inner[k * P + i].param_groups[0]
                group["lr"] = float(self.lr[i][k]) * self.lr_scale
                group["weight_decay"] = float(self.wd[i][k])
                v.grad = p.grad[k]
                self.inner[k * P + i].step()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for vs in self.views:
            for v in vs:
                v.grad = None

    def state_dict(self) -> dict:
        return {"lr": [x.clone() for x in self.lr], "wd": [x.clone() for x in self.wd],
                "inner": [o.state_dict() for o in self.inner]}

    def load_state_dict(self, sd: dict) -> None:
        for key in ("lr", "wd", "inner"):
            if key not in sd:
                raise ValueError(f"optimizer state lacks '{key}' (written by another optimizer?)")
        for dst, src in ((self.lr, sd["lr"]), (self.wd, sd["wd"])):
            if len(src) != len(dst) or any(s.shape != d.shape for s, d in zip(src, dst)):
                raise ValueError("optimizer lr/wd state does not fit this population")
            for i, s in enumerate(src):
                dst[i] = s.to(torch.float64).clone()
        if len(sd["inner"]) != len(self.inner):
            raise ValueError("optimizer state does not fit this population")
        for o, s in zip(self.inner, sd["inner"]):
            o.load_state_dict(s)
            # torch casts floating state to the parameter's dtype on load; some optimizers keep
            # float32 state for float64 parameters (torch-optimizer's NovoGrad): restore it exactly
            for p, saved in zip(o.param_groups[0]["params"], s["state"].values()):
                for key, val in saved.items():
                    if isinstance(val, torch.Tensor):
                        o.state[p][key] = val.clone().to(p.device)


def fused_adamw_available(p: torch.Tensor) -> bool:
    """torch's fused AdamW kernel exists for this tensor's device and dtype."""
    if not hasattr(torch, "_fused_adamw_"):
        return False
    try:
        z = torch.zeros(1, dtype=p.dtype, device=p.device)
        torch._fused_adamw_([z.clone()], [z.clone()], [z.clone()], [z.clone()], [],
                            [torch.ones((), dtype=torch.float32, device=p.device)], lr=0.0,
                            beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                            maximize=False)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def make_optimizer(name: str, params, lr: Sequence[float], wd: Sequence[float],
                   betas=(0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
                   fused: bool = False):
    """``StackedAdamW`` for ``adamw``; ``PerMemberOptimizer`` over torch's Adam / SGD (coupled L2
    weight decay, SGD with ``momentum``) or torch-optimizer's class of that name (its defaults
    apart from lr and weight_decay)."""
    if name == "adamw":
        return StackedAdamW(params, lr, wd, betas, eps, fused)
    if name == "adam":
        def make(groups):
            return torch.optim.Adam(groups, betas=betas, eps=eps)
    elif name == "sgd":
        def make(groups):
            return torch.optim.SGD(groups, momentum=momentum)
    elif name in TORCH_OPTIMIZER_PKG:
        import torch_optimizer
        cls = torch_optimizer.get(name)

        def make(groups):
            return cls(groups)
    else:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return PerMemberOptimizer(params, make, lr, wd)
