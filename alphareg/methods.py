"""``--method``: which regularisers, controllers and baselines a run uses, built from the config.

A method is one component or several joined by ``+`` (e.g. ``penalty+lr_controller``); ``none``
is the paper's plain run. Components, in the order their hooks run each step:

=================  ===========================================================================
penalty            soft-α penalty (``alphareg.regularizers``)            aliases: soft_alpha
spectral_norm      spectral-norm regularisation (``baselines.spectral_norm``)
grokfast           Grokfast-EMA gradient filter (``baselines.grokfast``)
orthograd          ⊥Grad (``baselines.orthograd``)
lr_controller      α-scheduled per-layer lr, ``--lr-rule`` (``alphareg.controllers``)  alias: lr
tempbalance        = lr_controller with ``--lr-rule tempbalance``
wd_controller      α-scheduled per-layer wd, ``--wd-rule`` (``alphareg.controllers``)  alias: wd
alphadecay         = wd_controller with ``--wd-rule alphadecay``
weight_decay       constant AdamW wd = ``--wd-ref`` on ``--wd-layers`` (default all;
                   ``baselines.weight_decay``; the WD control)
early_stop         early stopping on the validation split (``baselines.early_stopping``)
=================  ===========================================================================

``--shuffle-alphas`` turns any controller into the shuffled-alpha ablation.
"""
from __future__ import annotations

from .config import ConfigError

ORDER = ("penalty", "spectral_norm", "grokfast", "orthograd", "lr_controller", "wd_controller",
         "weight_decay", "early_stop")
ALIASES = {"soft_alpha": "penalty", "lr": "lr_controller", "wd": "wd_controller",
           "tempbalance": "lr_controller", "alphadecay": "wd_controller"}
CHOICES = ("none", *ORDER, *ALIASES)
#: config fields that shape each component (they name the run directory, see RunConfig.run_name)
FIELDS = {
    "penalty": ("target_alpha", "penalty_beta", "penalty_sharpness", "penalty_two_sided",
                "penalty_gradient", "penalty_layers", "refit_every", "penalty_grad_every"),
    "lr_controller": ("target_alpha", "control_every", "control_until", "alpha_ema", "deadband", "lr_gain",
                      "lr_rule", "lr_bounds", "shuffle_alphas"),
    "wd_controller": ("target_alpha", "control_every", "control_until", "alpha_ema", "deadband", "wd_gain",
                      "wd_rule", "wd_bounds", "wd_ref", "shuffle_alphas"),
    "grokfast": ("grokfast_alpha", "grokfast_lamb"),
    "spectral_norm": ("specnorm_beta",),
    "orthograd": (),
    "weight_decay": ("wd_ref", "wd_layers"),
    "early_stop": ("patience", "patience_min_steps", "min_delta", "val_per_class"),
}


def parse_method(method: str) -> list[str]:
    """Canonical components of ``method`` in hook order; ConfigError naming ``--method``."""
    if method == "none":
        return []
    parts = [p.strip() for p in method.split("+")]
    unknown = [p for p in parts if p not in CHOICES or p == "none"]
    if unknown:
        raise ConfigError(f"--method {method!r}: unknown component(s) {', '.join(unknown)}; "
                          f"allowed: none, or {', '.join(CHOICES[1:])} joined by '+'")
    canon = [ALIASES.get(p, p) for p in parts]
    dup = {c for c in canon if canon.count(c) > 1}
    if dup:
        raise ConfigError(f"--method {method!r} names {', '.join(sorted(dup))} twice "
                          "(tempbalance is an lr controller, alphadecay a wd controller)")
    if "weight_decay" in canon and "wd_controller" in canon:
        raise ConfigError(f"--method {method!r}: weight_decay and a wd controller both set the wd")
    return [c for c in ORDER if c in canon]


def method_fields(method: str) -> set[str]:
    return {f for c in parse_method(method) for f in FIELDS[c]} | {"method"}


def build_hooks(cfg) -> list:
    """The hooks of ``cfg.method`` (see ``alphareg.hooks``), in running order."""
    parts = [p.strip() for p in cfg.method.split("+")] if cfg.method != "none" else []
    hooks = []
    for comp in parse_method(cfg.method):
        if comp == "penalty":
            from .regularizers import SoftAlphaHook, SoftAlphaPenalty
            v = cfg.method_value
            pen = SoftAlphaPenalty(v("target_alpha"), v("penalty_beta"), v("penalty_sharpness"),
                                   cfg.penalty_two_sided, list(cfg.penalty_layers) or None,
                                   cfg.refit_every, cfg.penalty_gradient)
            hooks.append(SoftAlphaHook(pen, cfg.penalty_grad_every))
        elif comp == "spectral_norm":
            from baselines.spectral_norm import SpectralNormPenalty
            hooks.append(SpectralNormPenalty(cfg.specnorm_beta))
        elif comp == "grokfast":
            from baselines.grokfast import GrokfastEMA
            hooks.append(GrokfastEMA(cfg.grokfast_alpha, cfg.grokfast_lamb))
        elif comp == "orthograd":
            from baselines.orthograd import OrthoGrad
            hooks.append(OrthoGrad())
        elif comp in ("lr_controller", "wd_controller"):
            from .controllers import AlphaController
            kind = comp[:2]
            rule = cfg.lr_rule if kind == "lr" else cfg.wd_rule
            if ("tempbalance" if kind == "lr" else "alphadecay") in parts:
                rule = "tempbalance" if kind == "lr" else "alphadecay"
            bounds = cfg.lr_bounds if kind == "lr" else cfg.wd_bounds
            v = cfg.method_value
            hooks.append(AlphaController(
                kind, rule, v("target_alpha"), cfg.control_every, v("alpha_ema"), v("deadband"),
                v("lr_gain") if kind == "lr" else v("wd_gain"), tuple(bounds) or None, v("wd_ref"),
                cfg.shuffle_alphas, cfg.seeds[0], cfg.control_until))
        elif comp == "weight_decay":
            from baselines.weight_decay import WeightDecay
            if isinstance(cfg.method_value("wd_ref"), list):
                raise ConfigError("weight_decay's wd_ref cannot differ between members: use --wd per member")
            hooks.append(WeightDecay(cfg.wd_ref, list(cfg.wd_layers) or None))
        elif comp == "early_stop":
            from baselines.early_stopping import EarlyStopping
            hooks.append(EarlyStopping(cfg.patience, cfg.min_delta, cfg.patience_min_steps))
    return hooks
