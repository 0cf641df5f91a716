"""α-scheduled learning-rate and weight-decay controllers (per layer, per population member).

Every ``every`` steps (first at step 0, before the optimizer step) the controller measures each
layer's alpha a_{l,m} with weightwatcher's algorithm (``alphareg.htsr.fit_alpha``, no gradient),
smooths it, ``ā ← γ ā + (1 − γ) a`` (``ema`` = γ; the first measurement initialises ā), and sets
the layer's weight *and* bias lr (or wd) of member m to ``base_m · μ_{l,m}``. Rules for μ:

anchored (ours)
    e = ā − α*, deadband δ: ẽ = sign(e) · max(|e| − δ, 0)
    lr:  μ = clip(1 + g ẽ, lo, hi)   alpha below target -> smaller steps for that layer
    wd:  μ = clip(1 − g ẽ, lo, hi)   alpha below target -> stronger decay; well above -> none
    base = the run's lr (lr controller) or ``wd_ref`` (wd controller).
tempbalance (Zhou et al. 2023, YefanZhou/TempBalance ``tb_linear_map``)
    μ = lo + (hi − lo) (ā_l − min_l ā) / (max_l ā − min_l ā) across the layers of a member
    (defaults lo, hi = 0.5, 1.5; all layers equal -> μ = (lo + hi)/2): heavier-tailed layers
    (smaller alpha) get smaller learning rates. Min-max relative, no target.
alphadecay (He et al. 2025, hed-ucas/AlphaDecay)
    the same linear min-max map onto [lo, hi] = [0.666, 3] for the weight decay: heavier-tailed
    modules get weaker decay.

``hold_from`` = H (``--control-until``) is the feedback's control: from step H on the controller
still measures and smooths alpha (logged as ``alpha_ema_*``) but no longer changes μ, so every
layer keeps the lr (or wd) it had at its last update before H — the same dose, open loop. Before
the first update the optimizer's own lr / wd stand (H = 0: a plain run that logs alpha).

``shuffle=True`` is the ablation: before the map, the smoothed alphas of all layers and members
are permuted by a seeded generator (a fresh permutation at every update), so the controller sees
the right values attached to the wrong layers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .hooks import TrainingHook, layer_param_indices
from .htsr import fit_alpha

RULES = {"lr": ("anchored", "tempbalance"), "wd": ("anchored", "alphadecay")}
DEFAULT_BOUNDS = {("lr", "anchored"): (0.1, 1.0), ("lr", "tempbalance"): (0.5, 1.5),
                  ("wd", "anchored"): (0.0, 3.0), ("wd", "alphadecay"): (0.666, 3.0)}


def deadband(e: Tensor, width: float) -> Tensor:
    """sign(e) · max(|e| − width, 0)."""
    return torch.sign(e) * torch.clamp_min(e.abs() - width, 0.0)


def anchored_multiplier(alpha: Tensor, target: float, gain: float, band: float,
                        lo: float, hi: float, kind: str) -> Tensor:
    """μ = clip(1 ± g · deadband(ā − α*), lo, hi): + for the lr, − for the wd (see module doc)."""
    sign = 1.0 if kind == "lr" else -1.0
    return torch.clamp(1.0 + sign * gain * deadband(alpha - target, band), lo, hi)


def minmax_multiplier(alpha: Tensor, lo: float, hi: float) -> Tensor:
    """TempBalance / AlphaDecay map over layers (dim 0) for each member (dim 1):
    lo + (hi − lo)(a − min a)/(max a − min a); the midpoint where all layers are equal."""
    amin = alpha.amin(0, keepdim=True)
    span = alpha.amax(0, keepdim=True) - amin
    frac = torch.where(span > 0, (alpha - amin) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.full_like(alpha, 0.5))
    return lo + (hi - lo) * frac


def _per_member(v):
    """float -> float; a sequence -> (K,) float64 tensor (broadcasts over (layers, K))."""
    if isinstance(v, (list, tuple, Tensor)):
        return torch.as_tensor([float(x) for x in v], dtype=torch.float64)
    return float(v)


class AlphaController(TrainingHook):
    """Sets per-layer lr (``kind='lr'``) or wd (``kind='wd'``) from alpha every ``every`` steps
    (before the step's forward pass; reads only weights, so CUDA graphs may run the steps between)."""

    graph_safe = True

    def __init__(self, kind: str, rule: str = "anchored", target: float = 2.0, every: int = 200,
                 ema: float = 0.8, band: float = 0.1, gain: float = 1.0,
                 bounds: tuple[float, float] | None = None, wd_ref: float = 0.01,
                 shuffle: bool = False, seed: int = 0, hold_from: int | None = None):
        if kind not in RULES:
            raise ValueError(f"kind must be 'lr' or 'wd', got {kind!r}")
        if rule not in RULES[kind]:
            raise ValueError(f"the {kind} controller's rule must be one of {RULES[kind]}, got {rule!r}")
        # target, ema, band, gain, wd_ref: a float or one value per member (Optuna populations)
        per = _per_member
        self.kind, self.rule, self.target = kind, rule, per(target)
        self.every, self.ema, self.band, self.gain = int(every), per(ema), per(band), per(gain)
        self.bounds = tuple(bounds) if bounds is not None else DEFAULT_BOUNDS[(kind, rule)]
        self.wd_ref, self.shuffle, self.seed = per(wd_ref), bool(shuffle), int(seed)
        self.hold_from = None if hold_from is None else int(hold_from)
        self.name = f"{kind}_controller"
        self.alpha_ema: Tensor | None = None        # (layers, members)
        self.mult: Tensor | None = None             # (layers, members)
        self.updates = 0
        self.base: Tensor | None = None

    # ------------------------------------------------------------------ the map
    def multipliers(self, alpha_ema: Tensor) -> Tensor:
        """μ (layers, members) from smoothed alphas; NaN alphas (unanalysed layers) give μ = 1
        for the lr and the anchored wd (wd_ref), and are left out of min-max maps."""
        a = alpha_ema
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.updates)
            flat = a.reshape(-1)
            a = flat[torch.randperm(flat.numel(), generator=g)].reshape(a.shape)
        lo, hi = self.bounds
        nan = torch.isnan(a)
        if self.rule == "anchored":
            target = torch.as_tensor(self.target, dtype=a.dtype).expand_as(a)
            mu = anchored_multiplier(torch.where(nan, target, a), target, self.gain, self.band,
                                     lo, hi, self.kind)
        else:
            filled = torch.where(nan, torch.nanmean(a, 0, keepdim=True).expand_as(a), a)
            mu = minmax_multiplier(filled, lo, hi)
        return torch.where(nan, torch.ones_like(mu), mu)

    def measure(self, trainer) -> Tensor:
        """weightwatcher alpha (layers, members) of the current weights, computed on host copies
        (latency-bound small-matrix work: ``alphareg.regularizers.host_layers``)."""
        return torch.stack([fit_alpha(w.detach().cpu()).alpha.to(torch.float64)
                            for w in trainer.model.weights])

    def holding(self, step: int) -> bool:
        """Whether μ is held at ``step`` (``hold_from`` reached)."""
        return self.hold_from is not None and step >= self.hold_from

    def update(self, trainer) -> None:
        a = self.measure(trainer)
        if self.alpha_ema is None:
            self.alpha_ema = a.clone()
        else:
            self.alpha_ema = torch.where(torch.isnan(a), self.alpha_ema,
                                         self.ema * self.alpha_ema + (1 - self.ema) * a)
        if self.holding(trainer.step):
            return          # open loop: alpha measured, lr / wd left as the last update set them
        self.mult = self.multipliers(self.alpha_ema)
        self.updates += 1
        self.apply(trainer)

    def apply(self, trainer) -> None:
        opt = trainer.opt
        values = opt.lr if self.kind == "lr" else opt.wd
        if self.base is None:
            self.base = (torch.as_tensor(trainer.cfg.member_lrs(), dtype=torch.float64)
                         if self.kind == "lr" else
                         torch.as_tensor(self.wd_ref, dtype=torch.float64).expand(trainer.model.K).clone())
        for l, (wi, bi) in enumerate(layer_param_indices(trainer)):
            new = (self.base * self.mult[l]).to(values[wi].dtype).to(values[wi].device)
            values[wi].copy_(new)
            if bi is not None:
                values[bi].copy_(new)

    # ------------------------------------------------------------------ hook
    @property
    def period(self) -> int:
        return self.every

    def before_step(self, trainer) -> None:
        if trainer.step % self.every == 0:
            self.update(trainer)

    def at_log_point(self, trainer, rows):
        K = trainer.model.K
        return {f"alpha_ema_{n}": (self.alpha_ema[l].tolist() if self.alpha_ema is not None
                                   else [float("nan")] * K)
                for l, n in enumerate(trainer.model.layer_names())}

    def state_dict(self) -> dict:
        return {"alpha_ema": self.alpha_ema, "mult": self.mult, "updates": self.updates,
                "base": self.base}

    def load_state_dict(self, sd: dict) -> None:
        self.alpha_ema, self.mult = sd["alpha_ema"], sd["mult"]
        self.updates, self.base = int(sd["updates"]), sd["base"]

