"""Run configuration: the paper's baseline (Prakash & Martin 2025, Table 3) as defaults.

Every field is a CLI flag of ``python -m experiments.baseline`` (see ``alphareg.cli``).
``validate()`` raises :class:`ConfigError` with a one-line message that names the flag,
the value and what is allowed; the CLI turns it into exit code 2 before anything is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

DTYPES = ("float64", "float32")
#: the gradient of the soft-α penalty's alpha (alphareg/regularizers.py): Hill's own or rank-size
PENALTY_GRADIENTS = ("hill", "zipf")
ENGINES = ("fast", "autograd")
DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("mse", "ce", "stablemax")
TASKS = ("mnist", "modadd")

#: Defaults that differ for the modular-addition transformer (Nanda et al. 2023: full batch,
#: AdamW lr 1e-3, wd 1.0, betas (0.9, 0.98), 10-step linear warm-up, float32 model with the
#: cross-entropy in float64; 40,000 steps as in Nanda's run). ``--wd 0`` is the anti-grokking study.
TASK_DEFAULTS = {
    "mnist": {},
    "modadd": {"loss": "ce", "lr": (1e-3,), "wd": (1.0,), "beta2": 0.98, "warmup_steps": 10,
               "steps": 40_000, "dtype": "float32"},
}

#: Fields that do not change the training trajectory: they may differ between the run that
#: wrote a checkpoint and the run that resumes it (e.g. extend ``steps``, move CPU -> GPU).
NON_TRAJECTORY_FIELDS = frozenset(
    {"steps", "device", "checkpoint_minutes", "plot_minutes", "data_dir", "runs_dir", "name",
     "progress", "log_per_decade", "snapshots", "htsr", "htsr_shuffles", "htsr_seed",
     "ww_per_decade", "esd_per_decade", "wandb", "wandb_project", "wandb_entity", "wandb_group",
     "wandb_mode", "engine"}
)


#: method fields that may differ between the members of one population (see ``method_value``)
PER_MEMBER_FIELDS = ("target_alpha", "penalty_beta", "penalty_sharpness", "alpha_ema", "deadband",
                     "lr_gain", "wd_gain", "wd_ref")


class ConfigError(ValueError):
    """Bad user input. ``str(err)`` is a one-line message naming the flag and what is allowed."""


@dataclass
class RunConfig:
    """All values of a run. Defaults = paper A Table 3 (MLP on 1k MNIST, no weight decay);
    ``RunConfig.for_task("modadd", ...)`` = Nanda's modular-addition transformer."""

    task: str = "mnist"             # mnist (paper A's MLP) | modadd (paper B's transformer)

    # data
    n_per_class: int = 100          # training points per digit class (stratified sample)
    data_seed: int = 0              # seed of the stratified sample (shared by all members)
    data_dir: str | None = None     # local MNIST folder (torchvision layout); see alphareg.data
    # model
    hidden: tuple[int, ...] = (200, 200)  # 784 -> 200 -> 200 -> 10, ReLU
    init_scale: float = 8.0         # every weight and bias multiplied after default init
    # loss and optimiser (AdamW)
    loss: str = "mse"               # MSE (mean) against one-hot targets; "ce" = cross-entropy
    lr: tuple[float, ...] = (5e-4,)     # one value, or one per member
    wd: tuple[float, ...] = (0.0,)      # one value, or one per member (paper control: 0.01)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    batch_size: int = 200           # reshuffled every epoch (5 steps per epoch on 1k points)
    steps: int = 10_000_000
    dtype: str = "float64"
    device: str = "auto"
    engine: str = "fast"            # fast = hand-written MLP backward + fused AdamW; autograd = reference
    seeds: tuple[int, ...] = (0,)   # one population member per seed (K = len(seeds))
    # logging, measures, checkpoints
    log_per_decade: int = 20        # log points per decade of steps (log-spaced schedule)
    checkpoint_minutes: float = 10.0  # wall-clock checkpoint interval between log points
    plot_minutes: float = 0.5       # plots are redrawn at a log point at most this often
    sparsity_tau: float = 0.0       # a hidden unit is inactive on an input when its ReLU output <= tau
    complexity_layer: int = 1       # layer (1-based) whose weights are ablated for circuit complexity
    complexity_fraction: float = 0.1  # fraction of that layer's weights zeroed
    complexity_seed: int = 0        # seed of the ablation mask (the same mask at every log point)
    snapshots: bool = True          # keep every member's weights at every log point (HTSR, ESD plots)
    htsr: bool = True               # HTSR monitor on the snapshots (background process)
    htsr_shuffles: int = 5          # seeded element-wise shuffles per layer for correlation traps
    htsr_seed: int = 0              # seed of those shuffles
    ww_per_decade: int = 5          # weightwatcher reference columns this many times per decade (0 = never)
    esd_per_decade: int = 1         # ESD figures (paper Figures 2, 3) this many times per decade + last step
    # modular addition (--task modadd): dataset and transformer
    modulus: int = 113              # p: task (a + b) mod p, vocabulary p + 1 (numbers and "=")
    train_frac: float = 0.3         # fraction of the p^2 pairs in the (full-batch) training set
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    warmup_steps: int = 0           # linear lr warm-up min(step / w, 1) (modadd default 10)
    runs_dir: str = "runs"
    name: str | None = None         # run directory name; derived from the config when None
    progress: bool = True
    # optimizer and validation split
    optimizer: str = "adamw"        # see alphareg.optim.OPTIMIZERS; adamw runs on the stacks
    momentum: float = 0.9           # --optimizer sgd only
    val_per_class: int = 0          # validation images per class from MNIST train minus the sample
    # alpha-guided training and baselines (alphareg.methods); "none" = the paper's plain run
    method: str = "none"            # components joined by "+", e.g. penalty+lr_controller
    target_alpha: float = 2.0       # alpha* of the penalty and the anchored controllers
    penalty_beta: float = 0.01      # strength of the soft-alpha penalty
    penalty_sharpness: float = 10.0  # smooth-hinge sharpness s (quadratic within 1/s of target)
    penalty_two_sided: bool = False  # penalise alpha above the target too
    penalty_gradient: str = "hill"  # gradient of alpha-hat: hill (its own) or zipf (rank-size; pulls down)
    penalty_layers: tuple[str, ...] = ()  # layer names (fc1, ...); empty = all
    refit_every: int = 100          # steps between KS refits of the tail size k
    penalty_grad_every: int = 20    # steps between fresh penalty gradients (held in between)
    control_every: int = 200        # steps between controller updates
    control_until: int | None = None  # from this step on the controllers hold lr / wd (None: never)
    alpha_ema: float = 0.8          # EMA factor of the controllers' alpha
    deadband: float = 0.1           # no correction while |alpha - target| <= deadband
    lr_gain: float = 1.0
    wd_gain: float = 1.0
    lr_rule: str = "anchored"       # anchored | tempbalance
    wd_rule: str = "anchored"       # anchored | alphadecay
    lr_bounds: tuple[float, ...] = ()   # (lo, hi) multiplier bounds; empty = the rule's default
    wd_bounds: tuple[float, ...] = ()
    wd_ref: float = 0.01            # wd controllers: wd = wd_ref * multiplier; weight_decay baseline's wd
    wd_layers: tuple[str, ...] = ()  # weight_decay baseline: layers given wd_ref (others keep wd); empty = all
    shuffle_alphas: bool = False    # ablation: controllers see permuted alphas
    grokfast_alpha: float = 0.98
    grokfast_lamb: float = 2.0
    specnorm_beta: float = 0.01
    patience: float = 1.5           # early stopping: stop once step >= patience x the best step
    patience_min_steps: int = 1000  # early stopping: never stop before this step
    min_delta: float = 0.0
    # per-member values of method fields (one dict per member; a population of Optuna trials)
    member_overrides: tuple[dict, ...] = ()
    # wandb mirror (alphareg.tracking); the run directory stays the source of truth
    wandb: bool = False
    wandb_project: str = "alphareg"
    wandb_entity: str | None = None
    wandb_group: str | None = None  # default: the run directory's name
    wandb_mode: str = "auto"        # auto = online with an API key, else offline

    @classmethod
    def for_task(cls, task: str = "mnist", **kw) -> "RunConfig":
        """The task's defaults (``TASK_DEFAULTS``) overridden by ``kw``."""
        if task not in TASKS:
            raise ConfigError(f"--task {task!r} is unknown; allowed: {', '.join(TASKS)}")
        return cls(task=task, **{**TASK_DEFAULTS[task], **kw})

    # ------------------------------------------------------------------ derived values
    def layer_names(self) -> list[str]:
        """Names of the weight matrices HTSR, the penalty and the controllers act on."""
        if self.task == "modadd":
            from .transformer import LAYER_NAMES
            return list(LAYER_NAMES)
        return [f"fc{i + 1}" for i in range(len(self.hidden) + 1)]

    @property
    def K(self) -> int:
        """Population size."""
        return len(self.seeds)

    def member_lrs(self) -> list[float]:
        return _broadcast(self.lr, self.K)

    def member_wds(self) -> list[float]:
        return _broadcast(self.wd, self.K)

    def method_value(self, name: str):
        """A method field's value: the scalar, or one value per member when any member
        overrides it (``member_overrides``)."""
        base = getattr(self, name)
        if not any(name in o for o in self.member_overrides):
            return base
        return [o.get(name, base) for o in self.member_overrides]

    def member_method_value(self, name: str, k: int):
        """Member ``k``'s value of a method field: its override, else the run's value."""
        base = getattr(self, name)
        return self.member_overrides[k].get(name, base) if self.member_overrides else base

    def layer_sizes(self) -> list[int]:
        return [784, *self.hidden, 10]

    def run_name(self) -> str:
        """Deterministic default name, so re-running the same command resumes the same run."""
        if self.name:
            return self.name
        def fmt(vals):
            return "-".join(f"{v:g}" for v in vals)
        seeds = fmt(self.seeds) if self.K <= 4 else f"{self.seeds[0]}..{self.seeds[-1]}x{self.K}"
        model = "mlp" if self.task == "mnist" else f"modadd_p{self.modulus}"
        name = f"{model}_lr{fmt(self.lr)}_wd{fmt(self.wd)}_s{seeds}_{self.dtype}"
        if self.optimizer != "adamw":
            name += f"_{self.optimizer}"
        if self.method != "none":
            from .methods import method_fields
            extra = {k: v for k, v in self.to_dict().items() if k in method_fields(self.method)}
            if extra.get("penalty_gradient") == "hill":   # added later: older runs keep their names
                del extra["penalty_gradient"]
            if extra.get("wd_layers") == []:               # likewise
                del extra["wd_layers"]
            if "control_until" in extra and extra["control_until"] is None:   # likewise
                del extra["control_until"]
            digest = hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:6]
            name += f"_{self.method}_{digest}"
        return name

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; allowed: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "member_overrides" in kw:
            kw["member_overrides"] = tuple(dict(o) for o in kw["member_overrides"])
        return cls(**kw)

    def trajectory_dict(self) -> dict[str, Any]:
        """The values that determine the training trajectory (compared on resume): every field
        except ``NON_TRAJECTORY_FIELDS`` and the settings of method components the run does not
        use (``methods.FIELDS``; e.g. early stopping's patience in a plain run)."""
        from .methods import FIELDS, parse_method
        used = {f for c in parse_method(self.method) for f in FIELDS[c]}
        unused = {f for fields in FIELDS.values() for f in fields} - used
        return {k: v for k, v in self.to_dict().items() if k not in NON_TRAJECTORY_FIELDS | unused}

    # ------------------------------------------------------------------ validation
    def validate(self) -> "RunConfig":
        """Check every value; raise ConfigError naming the flag. Returns self."""
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r} is unknown; allowed: {', '.join(TASKS)}")
        _positive_int("--steps", self.steps)
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--n-per-class", self.n_per_class)
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ConfigError(f"--warmup-steps {self.warmup_steps} is not allowed; must be an integer >= 0")
        if self.task == "modadd":
            self._validate_modadd()
        n_train = 10 * self.n_per_class
        if self.task == "mnist" and self.batch_size > n_train:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than the training set "
                f"({n_train} = 10 classes x --n-per-class {self.n_per_class}); allowed: 1..{n_train}")
        if self.n_per_class > 5421:  # the rarest digit (5) has 5,421 training images
            raise ConfigError(f"--n-per-class {self.n_per_class} exceeds 5421, the size of the "
                              "smallest MNIST class; allowed: 1..5421")
        if not self.seeds:
            raise ConfigError("--seeds is empty; give one or more integers, e.g. --seeds 0,1,2")
        if len(set(self.seeds)) != len(self.seeds) and not self.member_overrides:
            raise ConfigError(f"--seeds {_fmt(self.seeds)} repeats a seed; members must differ")
        for flag, vals in (("--lr", self.lr), ("--wd", self.wd)):
            if len(vals) not in (1, self.K):
                raise ConfigError(f"{flag} {_fmt(vals)} has {len(vals)} values; give 1 or one per "
                                  f"seed ({self.K})")
        for v in self.lr:
            if not v > 0:
                raise ConfigError(f"--lr {v:g} is not allowed; the learning rate must be > 0")
        for v in self.wd:
            if not v >= 0:
                raise ConfigError(f"--wd {v:g} is not allowed; weight decay must be >= 0")
        for flag, v in (("--beta1", self.beta1), ("--beta2", self.beta2)):
            if not 0 <= v < 1:
                raise ConfigError(f"{flag} {v:g} is not allowed; must be in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"--eps {self.eps:g} is not allowed; must be > 0")
        if not self.init_scale > 0:
            raise ConfigError(f"--init-scale {self.init_scale:g} is not allowed; must be > 0")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"--hidden {_fmt(self.hidden)} is not allowed; give positive widths, "
                              "e.g. 200,200")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r} is unknown; allowed: {', '.join(ENGINES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r} is unknown; allowed: {', '.join(DEVICES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss!r} is unknown; allowed: {', '.join(LOSSES)}")
        if self.task == "mnist" and self.loss == "stablemax":
            raise ConfigError("--loss stablemax is for --task modadd; the MLP allows mse, ce")
        if self.task == "modadd" and self.loss == "mse":
            raise ConfigError("--loss mse is for --task mnist; --task modadd allows ce, stablemax")
        _positive_int("--log-per-decade", self.log_per_decade)
        if not self.checkpoint_minutes > 0:
            raise ConfigError(f"--checkpoint-minutes {self.checkpoint_minutes:g} is not allowed; "
                              "must be > 0")
        if not self.plot_minutes >= 0:
            raise ConfigError(f"--plot-minutes {self.plot_minutes:g} is not allowed; must be >= 0")
        n_layers = len(self.layer_names())
        if not 1 <= self.complexity_layer <= n_layers:
            raise ConfigError(f"--complexity-layer {self.complexity_layer} is not allowed; "
                              f"allowed: 1..{n_layers}")
        if not 0 < self.complexity_fraction < 1:
            raise ConfigError(f"--complexity-fraction {self.complexity_fraction:g} is not allowed; "
                              "must be in (0, 1)")
        _positive_int("--htsr-shuffles", self.htsr_shuffles)
        for flag, v in (("--ww-per-decade", self.ww_per_decade), ("--esd-per-decade", self.esd_per_decade)):
            if not (isinstance(v, int) and v >= 0):
                raise ConfigError(f"{flag} {v} is not allowed; must be an integer >= 0 (0 = never)")
        if self.htsr and not self.snapshots:
            raise ConfigError("--no-snapshots needs --no-htsr: the HTSR monitor reads the snapshots")
        self._validate_methods()
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9._=+-]+", self.name):
            raise ConfigError(f"--name {self.name!r} is not allowed; use letters, digits and . _ - + =")
        return self


    def _validate_modadd(self) -> None:
        if not (isinstance(self.modulus, int) and self.modulus >= 2):
            raise ConfigError(f"--modulus {self.modulus} is not allowed; must be an integer >= 2")
        if not 0 < self.train_frac < 1 or round(self.train_frac * self.modulus ** 2) < 1 \
                or round(self.train_frac * self.modulus ** 2) >= self.modulus ** 2:
            raise ConfigError(f"--train-frac {self.train_frac:g} is not allowed; must be in (0, 1) and "
                              f"leave at least one of the {self.modulus ** 2} pairs on each side")
        for flag, v in (("--d-model", self.d_model), ("--n-heads", self.n_heads),
                        ("--d-head", self.d_head), ("--d-mlp", self.d_mlp)):
            _positive_int(flag, v)
        if self.val_per_class:
            raise ConfigError("--val-per-class is for --task mnist (a validation split of MNIST "
                              "train); --task modadd has none")

    def _validate_methods(self) -> None:
        from .methods import parse_method
        from .optim import OPTIMIZERS
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        if not self.val_per_class >= 0 or self.n_per_class + self.val_per_class > 5421:
            raise ConfigError(f"--val-per-class {self.val_per_class} is not allowed; must be >= 0 "
                              f"and with --n-per-class at most 5421 per class")
        comps = parse_method(self.method)   # raises ConfigError
        if self.member_overrides:
            if len(self.member_overrides) != self.K:
                raise ConfigError(f"member_overrides has {len(self.member_overrides)} entries for "
                                  f"{self.K} members")
            bad = {k for o in self.member_overrides for k in o} - set(PER_MEMBER_FIELDS)
            if bad:
                raise ConfigError(f"{sorted(bad)} cannot differ between population members; "
                                  f"per-member fields: {', '.join(PER_MEMBER_FIELDS)}")
        from .tracking import MODES
        if self.wandb_mode not in MODES:
            raise ConfigError(f"--wandb-mode {self.wandb_mode!r} is unknown; allowed: {', '.join(MODES)}")
        for flag, v in (("--refit-every", self.refit_every), ("--penalty-grad-every", self.penalty_grad_every),
                        ("--control-every", self.control_every)):
            _positive_int(flag, v)
        if self.control_until is not None and not (isinstance(self.control_until, int)
                                                   and self.control_until >= 0):
            raise ConfigError(f"--control-until {self.control_until} is not allowed; must be an "
                              "integer step >= 0 (or left out: the controllers never hold)")
        if not (isinstance(self.patience, (int, float)) and self.patience >= 1):
            raise ConfigError(f"--patience {self.patience} is not allowed; must be >= 1 (a factor on the "
                              "step of the best validation accuracy)")
        if not (isinstance(self.patience_min_steps, int) and self.patience_min_steps >= 0):
            raise ConfigError(f"--patience-min-steps {self.patience_min_steps} is not allowed; "
                              "must be an integer >= 0")
        for flag, v in (("--target", self.target_alpha), ("--penalty-sharpness", self.penalty_sharpness)):
            if not v > 0:
                raise ConfigError(f"{flag} {v:g} is not allowed; must be > 0")
        for flag, v in (("--penalty-beta", self.penalty_beta), ("--deadband", self.deadband),
                        ("--lr-gain", self.lr_gain), ("--wd-gain", self.wd_gain), ("--wd-ref", self.wd_ref),
                        ("--specnorm-beta", self.specnorm_beta), ("--min-delta", self.min_delta)):
            if not v >= 0:
                raise ConfigError(f"{flag} {v:g} is not allowed; must be >= 0")
        for flag, v in (("--alpha-ema", self.alpha_ema), ("--grokfast-alpha", self.grokfast_alpha)):
            if not 0 <= v < 1:
                raise ConfigError(f"{flag} {v:g} is not allowed; must be in [0, 1)")
        for flag, b in (("--lr-bounds", self.lr_bounds), ("--wd-bounds", self.wd_bounds)):
            if b and not (len(b) == 2 and 0 <= b[0] <= b[1]):
                raise ConfigError(f"{flag} {_fmt(b)} is not allowed; give lo,hi with 0 <= lo <= hi")
        if self.penalty_gradient not in PENALTY_GRADIENTS:
            raise ConfigError(f"--penalty-gradient {self.penalty_gradient!r} is unknown; allowed: "
                              f"{', '.join(PENALTY_GRADIENTS)}")
        if self.lr_rule not in ("anchored", "tempbalance"):
            raise ConfigError(f"--lr-rule {self.lr_rule!r} is unknown; allowed: anchored, tempbalance")
        if self.wd_rule not in ("anchored", "alphadecay"):
            raise ConfigError(f"--wd-rule {self.wd_rule!r} is unknown; allowed: anchored, alphadecay")
        names = self.layer_names()
        for flag, layers in (("--penalty-layers", self.penalty_layers), ("--wd-layers", self.wd_layers)):
            bad = [n for n in layers if n not in names]
            if bad:
                raise ConfigError(f"{flag} {_fmt(bad)} unknown; this model has {', '.join(names)}")
        if self.wd_layers and "weight_decay" not in comps:
            raise ConfigError(f"--wd-layers {_fmt(self.wd_layers)} needs --method weight_decay (it names the "
                              f"layers that get the constant --wd-ref); this run's method is {self.method!r}")
        if self.control_until is not None and not {"lr_controller", "wd_controller"} & set(comps):
            raise ConfigError(f"--control-until {self.control_until} needs an lr or wd controller in "
                              f"--method (it holds what they set); this run's method is {self.method!r}")
        if "early_stop" in comps and self.task != "mnist":
            raise ConfigError(f"--method early_stop needs a validation split, which --task {self.task} "
                              "does not have (only --task mnist: --val-per-class)")
        if "early_stop" in comps and self.val_per_class == 0:
            raise ConfigError("--method early_stop needs a validation split: give --val-per-class N "
                              "(e.g. 100; drawn from MNIST train, never the test set)")


def _broadcast(vals: tuple, k: int) -> list:
    return list(vals) * k if len(vals) == 1 else list(vals)


def _fmt(vals) -> str:
    return ",".join(str(v) for v in vals)


def _positive_int(flag: str, v: int) -> None:
    if not (isinstance(v, int) and v > 0):
        raise ConfigError(f"{flag} {v} is not allowed; must be a positive integer")
