"""Population training engine: K members in lockstep, log-spaced evaluation, resumable runs.

One step for all members k = 1..K (batched matmuls, see ``alphareg.models``):

    idx_k  = next batch of member k (its own epoch reshuffling, ``alphareg.sampler``)
    L_k    = mean_{n in batch, c} (f_k(x_n)_c - onehot(y_n)_c)^2          (MSE, paper default)
    grad of sum_k L_k  (members share no parameters, so each gets exactly its own gradient)
    AdamW step with member lr_k, wd_k (``alphareg.optim``)

At each log point (``alphareg.schedule``) the engine evaluates train/test loss and accuracy and
the progress measures (``alphareg.measures``), appends the rows to ``metrics.csv``, writes a
checkpoint (atomic) and redraws the plots (at most every ``plot_minutes``). Between log points a
checkpoint is also written every ``checkpoint_minutes`` of wall time and when SIGINT/SIGTERM
arrives. A resumed run continues bit-for-bit like an uninterrupted one: parameters, optimizer
moments, step counter and every member's sampler state (generator + current permutation) are
restored.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import measures
from .config import ConfigError, RunConfig
from .data import Split, paper_data
from .models import PopulationMLP
from .optim import make_optimizer
from .rundir import CHECKPOINT, SUMMARY, RunDir, git_commit, write_json_atomic
from .sampler import EpochSampler
from .schedule import log_points

#: Fault injection for tests: the process SIGKILLs itself right after this step.
KILL_ENV = "ALPHAREG_DEBUG_KILL_AT_STEP"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device cuda was asked for but CUDA is not available (torch "
                          f"{torch.__version__}); use --device cpu or --device auto")
    return torch.device(name)


def member_losses(out: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor,
                  kind: str) -> torch.Tensor:
    """(K,) mean loss of each member: out (K, N, 10) against targets (K or 1, N, ...)."""
    if kind == "mse":
        return (out - onehot).pow(2).mean(dim=(1, 2))
    K, N, C = out.shape
    ce = F.cross_entropy(out.reshape(K * N, C), labels.expand(K, N).reshape(-1), reduction="none")
    return ce.view(K, N).mean(1)


class Interrupted(Exception):
    """Raised by :meth:`Trainer.run` after a SIGINT/SIGTERM checkpoint; holds the step."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class Trainer:
    """Trains a population described by ``cfg``; with ``run_dir`` it logs and checkpoints."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None,
                 data: tuple[Split, Split, dict] | None = None):
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.train_set, self.test_set, self.data_info = data if data is not None else self.load_data()
        self.run_dir = run_dir
        self.model = self.build_model().to(self.device)
        self.opt = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.member_lrs(),
                                  cfg.member_wds(), (cfg.beta1, cfg.beta2), cfg.eps, cfg.momentum,
                                  fused=cfg.engine == "fast")
        self.val_set = None
        if cfg.val_per_class > 0:
            from .data import validation_data
            self.val_set = validation_data(cfg.n_per_class, cfg.val_per_class, cfg.data_seed,
                                           self.dtype, self.device, cfg.data_dir)
        from .methods import build_hooks
        self.hooks = build_hooks(cfg)
        for h in self.hooks:
            h.attach(self)
        self.sampler = self.build_sampler()
        self.fast_step = self.build_fast_step() if cfg.engine == "fast" else None
        self.graphed = None   # CUDA graphs of whole steps (alphareg.cudagraph), when they apply
        if (self.device.type == "cuda" and self.fast_step is not None and cfg.optimizer == "adamw"
                and cfg.warmup_steps == 0 and all(h.graph_safe for h in self.hooks)
                and os.environ.get("ALPHAREG_CUDA_GRAPHS", "1") != "0"):
            from .cudagraph import GraphedSteps, graph_length
            self.graphed = GraphedSteps(self, graph_length(self.hooks))
        self.step = 0
        self.wall_time = 0.0          # seconds spent in this run, summed over resumes
        self.tracker = None           # wandb mirror during run() (alphareg.tracking)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ the task (MNIST MLP)
    # ``alphareg.modadd.ModAddTrainer`` overrides these for the modular-addition transformer
    def load_data(self) -> tuple[Split, Split, dict]:
        c = self.cfg
        return paper_data(c.n_per_class, c.data_seed, self.dtype, self.device, c.data_dir)

    def build_model(self):
        return PopulationMLP(self.cfg.layer_sizes(), self.cfg.seeds, self.cfg.init_scale, self.dtype)

    def build_sampler(self):
        return EpochSampler(len(self.train_set.y), self.cfg.batch_size, self.cfg.seeds)

    def build_fast_step(self):
        """The hand-written forward/backward (``alphareg.fastmlp``), or None for autograd."""
        from .fastmlp import FastMLPStep
        return FastMLPStep(self.model, self.train_set.x, self.cfg.batch_size, self.cfg.loss)

    def forward_backward(self) -> torch.Tensor:
        """(K,) losses of the next batch, gradients left in ``p.grad``."""
        if self.fast_step is not None:
            tr = self.train_set
            idx = self.sampler.next().to(self.device, non_blocking=True)
            return self.fast_step(tr.onehot, idx)
        losses = self.batch_losses()
        losses.sum().backward()
        return losses

    def batch_losses(self) -> torch.Tensor:
        """(K,) loss of every member on its next minibatch."""
        tr = self.train_set
        idx = self.sampler.next().to(self.device, non_blocking=True)
        return member_losses(self.model(tr.x[idx]), tr.onehot[idx], tr.y[idx], self.cfg.loss)

    @torch.no_grad()
    def task_metrics(self) -> tuple[dict, list, torch.Tensor]:
        """Train/test loss and accuracy (K,) columns, the hidden activations on the training
        set and the training-set logits (for the progress measures)."""
        cfg, model = self.cfg, self.model
        tr, te = self.train_set, self.test_set
        logits_tr, hidden = model(tr.x, return_hidden=True)
        train_loss = member_losses(logits_tr, tr.onehot.unsqueeze(0), tr.y, cfg.loss)
        train_acc = (logits_tr.argmax(-1) == tr.y).to(self.dtype).mean(1)
        test_loss = torch.zeros(model.K, dtype=self.dtype, device=self.device)
        test_correct = torch.zeros_like(test_loss)
        for s in range(0, len(te.y), 2500):  # chunks bound memory for large K
            out = model(te.x[s:s + 2500])
            n = out.shape[1]
            test_loss += member_losses(out, te.onehot[s:s + 2500].unsqueeze(0), te.y[s:s + 2500],
                                       cfg.loss) * n
            test_correct += (out.argmax(-1) == te.y[s:s + 2500]).to(self.dtype).sum(1)
        cols = {"train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss / len(te.y), "test_acc": test_correct / len(te.y)}
        if self.val_set is not None:
            va = self.val_set
            out = model(va.x)
            cols["val_loss"] = member_losses(out, va.onehot.unsqueeze(0), va.y, cfg.loss)
            cols["val_acc"] = (out.argmax(-1) == va.y).to(self.dtype).mean(1)
        return cols, hidden, logits_tr

    # ------------------------------------------------------------------ the hot loop
    def warmup_factor(self, step: int) -> float:
        """Linear lr warm-up, ``min(step / warmup_steps, 1)`` at 0-based step ``step`` (Nanda's
        ``LambdaLR``: the first step has factor 0); 1 without warm-up."""
        w = self.cfg.warmup_steps
        return 1.0 if w <= 0 else min(step / w, 1.0)

    def steps_per_call(self) -> int:
        """Steps the run loop hands to ``train_steps`` at once (a CUDA graph's length, else 1);
        the loop ends each call at a multiple of it, so that graphs start at multiples of G."""
        return self.graphed.G if self.graphed is not None else 1

    def train_steps(self, n: int) -> None:
        """Advance every member by n optimizer steps (no logging, no checkpoints). With CUDA
        graphs, a step at a multiple of G with G steps to go runs as one graph of G steps (every
        hook is graph-safe and its period a multiple of G: ``alphareg.hooks``), the others eagerly."""
        G = self.graphed.G if self.graphed is not None else 0
        while n > 0:
            for h in self.hooks:
                h.before_step(self)
            if G and n >= G and self.step % G == 0:
                self.graphed.run(G)
                n -= G
                continue
            self.forward_backward()
            for h in self.hooks:
                h.after_backward(self)
            self.opt.lr_scale = self.warmup_factor(self.step)
            self.opt.step()
            self.opt.zero_grad()
            self.step += 1
            n -= 1

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        """One row per member: losses, accuracies and progress measures at the current step."""
        cfg, model = self.cfg, self.model
        cols, hidden, logits_tr = self.task_metrics()
        l2_layers, l2_total = measures.l2_norms(model.weights)
        sparsity = measures.activation_sparsity(hidden, cfg.sparsity_tau)
        entropy = measures.weight_entropy(model.weights)
        complexity = measures.circuit_complexity(model, self.train_set.x, cfg.complexity_layer,
                                                 cfg.complexity_fraction, cfg.complexity_seed,
                                                 logits=logits_tr)
        names = model.layer_names()
        cols["l2_total"] = l2_total
        cols.update({f"l2_{n}": l2_layers[i] for i, n in enumerate(names)})
        cols.update({f"sparsity_h{i + 1}": sparsity[i] for i in range(len(hidden))})
        cols.update({f"entropy_{n}": entropy[i] for i, n in enumerate(names)})
        cols["circuit_complexity"] = complexity
        cols = {k: v.cpu().tolist() for k, v in cols.items()}
        cols.update(self.layer_lr_wd())
        lrs, wds = self.opt.lr[0].cpu().tolist(), self.opt.wd[0].cpu().tolist()
        rows = []
        for k, seed in enumerate(cfg.seeds):
            row = {"step": self.step, "member": k, "seed": seed, "lr": lrs[k], "wd": wds[k]}
            row.update({c: v[k] for c, v in cols.items()})
            row["wall_time"] = round(self.wall_time, 3)
            rows.append(row)
        return rows

    def layer_lr_wd(self) -> dict[str, list[float]]:
        """lr_<layer>, wd_<layer> per member (a layer's weight; its bias gets the same values)."""
        from .hooks import layer_param_indices
        cols = {}
        for (wi, _), n in zip(layer_param_indices(self), self.model.layer_names()):
            cols[f"lr_{n}"] = self.opt.lr[wi].cpu().tolist()
            cols[f"wd_{n}"] = self.opt.wd[wi].cpu().tolist()
        return cols

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": ckpt.FORMAT_VERSION, "step": self.step, "wall_time": self.wall_time,
                "config": self.cfg.trajectory_dict(), "data": self.data_info,
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict() if self.sampler else None,
                "hooks": {h.name: h.state_dict() for h in self.hooks},
                "torch": torch.__version__}

    def load_state_dict(self, sd: dict, source: str = "checkpoint") -> None:
        # fields added after the checkpoint was written take their defaults (= old behaviour);
        # the saved values go through RunConfig so the same fields are compared on both sides
        known = {f.name for f in dataclasses.fields(RunConfig)}
        saved_cfg = RunConfig.from_dict({k: v for k, v in sd["config"].items() if k in known})
        diff = ckpt.config_mismatch(saved_cfg.trajectory_dict(), self.cfg.trajectory_dict())
        if diff:
            raise ckpt.CheckpointError(f"{source} belongs to another configuration ({'; '.join(diff)}); "
                                       "use --name NEW or --restart")
        if sd["data"].get("train_indices_sha") != self.data_info.get("train_indices_sha"):
            raise ckpt.CheckpointError(f"{source} was trained on other data (fingerprint "
                                       f"{sd['data'].get('train_indices_sha')} vs "
                                       f"{self.data_info.get('train_indices_sha')}); use --restart")
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in sd["model"].items()})
            self.opt.load_state_dict(sd["optimizer"])
            if self.sampler is not None:
                self.sampler.load_state_dict(sd["sampler"])
            for h in self.hooks:
                h.load_state_dict(sd.get("hooks", {})[h.name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ckpt.CheckpointError(f"{source} does not fit this model ({e}); use --restart") from None
        self.step, self.wall_time = int(sd["step"]), float(sd["wall_time"])

    def save_checkpoint(self) -> None:
        ckpt.save_atomic(self.state_dict(), self.run_dir / CHECKPOINT)
        self._record_segment("running")

    def resume_if_possible(self) -> bool:
        """Load the run directory's checkpoint if there is one; drop metrics rows after it."""
        if self.run_dir is None or not self.run_dir.has_checkpoint:
            return False
        path = self.run_dir / CHECKPOINT
        self.load_state_dict(ckpt.load(path), source=str(path))
        self.run_dir.truncate_metrics(self.step)
        self.run_dir.drop_after(self.step)
        return True

    # ------------------------------------------------------------------ the run loop
    @contextmanager
    def _catch_signals(self):
        """SIGINT / SIGTERM set a flag; the loop checkpoints at the next step boundary."""
        def handler(signum, frame):
            self._stop_signal = signum
        self._stop_signal = None    # a signal of an earlier run() does not stop this one
        installed = {}
        if hasattr(signal, "SIGTERM"):
            try:
                for s in (signal.SIGINT, signal.SIGTERM):
                    installed[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            yield
        finally:
            for s, old in installed.items():
                signal.signal(s, old)

    def save_snapshot(self) -> None:
        """Weights and biases of every member at this step (read by the HTSR monitor)."""
        path = self.run_dir.snapshot_path(self.step)
        path.parent.mkdir(exist_ok=True)
        ckpt.save_atomic({"step": self.step, "seeds": list(self.cfg.seeds),
                          "layers": self.model.layer_names(), "spec": self.model.spec(),
                          "weights": [w.detach().cpu() for w in self.model.weights],
                          "biases": [b.detach().cpu() for b in self.model.biases],
                          "extra": {n: p.detach().cpu() for n, p in self.model.extra_params().items()}},
                         path)

    def _log_point(self, monitor=None) -> list[dict]:
        rows = self.evaluate()
        for h in self.hooks:
            for col, vals in h.at_log_point(self, rows).items():
                for row, v in zip(rows, vals):
                    row[col] = v
        if self.cfg.snapshots:
            self.save_snapshot()
        self.run_dir.append_metrics(rows)   # metrics first, then the checkpoint (see truncate)
        self.save_checkpoint()
        if self.tracker is not None:
            self.tracker.log_metrics(rows)
            self.tracker.sync_htsr()
        if monitor is not None:
            monitor.submit(self.step)
        return rows

    def run(self, until: int | None = None) -> dict:
        """Train to ``cfg.steps`` (or ``until``), logging and checkpointing into ``run_dir``.

        Returns the summary. Raises :class:`Interrupted` after checkpointing on SIGINT/SIGTERM.
        """
        from .plots import plot_run  # matplotlib is imported only when a run is made
        from .progress import ProgressBar

        assert self.run_dir is not None, "run() needs a run directory"
        cfg = self.cfg
        target = min(cfg.steps, until) if until is not None else cfg.steps
        kill_at = int(os.environ.get(KILL_ENV, "-1"))
        points = [p for p in log_points(cfg.steps, cfg.log_per_decade) if p > self.step and p <= target]
        last_ckpt = last_plot = time.monotonic()
        self._segment = {"start_step": self.step, "wall0": self.wall_time, "commit": git_commit(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.tracker = self._start_tracker()
        monitor = self._start_monitor()
        bar = ProgressBar(target, self.step, cfg.run_name(), enabled=cfg.progress)
        finished = stopped_while_waiting = False
        try:
            # signals are caught from the first log point on: a Ctrl-C inside torch.save would
            # otherwise surface as the zip writer's RuntimeError, not as an interruption
            with self._catch_signals():
                if self.step == 0 and not self.run_dir.read_metrics():
                    rows = self._log_point(monitor)
                else:
                    rows = [r for r in self.run_dir.read_metrics() if int(r["step"]) == self.step]
                bar.show_metrics(rows)
                for p in points:
                    if self._stop_signal is not None:   # arrived during a log point
                        raise Interrupted(self.step)     # whose checkpoint is this step's
                    chunk = self.steps_per_call()
                    while self.step < p:
                        t = time.perf_counter()
                        self.train_steps(min(chunk - self.step % chunk, p - self.step))
                        self.wall_time += time.perf_counter() - t
                        bar.update(self.step)
                        if self.step == kill_at:
                            os.kill(os.getpid(), signal.SIGKILL)
                        if self._stop_signal is not None:
                            self.save_checkpoint()
                            raise Interrupted(self.step)
                        if time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
                            self.save_checkpoint()
                            last_ckpt = time.monotonic()
                    t = time.perf_counter()
                    rows = self._log_point(monitor)
                    self.wall_time += time.perf_counter() - t
                    last_ckpt = time.monotonic()
                    bar.show_metrics(rows)
                    if time.monotonic() - last_plot >= 60 * cfg.plot_minutes:
                        plot_run(self.run_dir.path)
                        last_plot = time.monotonic()
            finished = True
        finally:
            bar.close()
            if monitor is not None:
                if finished and monitor.backlog():
                    print(f"waiting for the HTSR monitor ({monitor.backlog()} snapshots queued) ...",
                          file=sys.stderr)
                    finished = self._drain_monitor(monitor)
                    stopped_while_waiting = not finished
                monitor.close(wait=finished)   # on interruption the queue is dropped: its
                # snapshots stay on disk and are analysed when the run resumes
                self.monitor_errors = monitor.errors
            if not finished:
                plot_run(self.run_dir.path)
            if not finished and self.tracker is not None:
                self.tracker.close()
            write_json_atomic(self.run_dir / SUMMARY, self.summary())   # interrupted runs too
            self._record_segment("finished" if finished else "interrupted")
            self._segment = None
        if stopped_while_waiting:       # every step trained; this step's checkpoint is on disk
            raise Interrupted(self.step)
        from .report import finalize_run
        summary = finalize_run(self.run_dir.path)
        if self.tracker is not None:
            self.tracker.finish(summary)
        return summary

    def _drain_monitor(self, monitor) -> bool:
        """Wait for the HTSR monitor's queued snapshots with SIGINT / SIGTERM still caught (a
        budget stop that lands after the last step, e.g. from ``alphareg.campaign``, must not kill
        the process uncleanly). True when the queue emptied, False when a signal came first."""
        with self._catch_signals():
            while monitor.backlog() and self._stop_signal is None:
                time.sleep(0.2)
            return self._stop_signal is None

    def _start_tracker(self):
        if not self.cfg.wandb:
            return None
        from .tracking import WandbMirror
        cfg = self.cfg
        return WandbMirror(self.run_dir.path, cfg.to_dict(), cfg.seeds, cfg.wandb_project,
                           cfg.wandb_entity, cfg.wandb_group, cfg.wandb_mode)

    def _start_monitor(self):
        if not self.cfg.htsr:
            return None
        from .monitor import HTSRMonitor, ww_steps
        monitor = HTSRMonitor(self.run_dir, self.cfg.htsr_shuffles, self.cfg.htsr_seed,
                              ww_steps(self.cfg.steps, self.cfg.ww_per_decade))
        monitor.catch_up()
        return monitor

    def _record_segment(self, outcome: str) -> None:
        """This ``run()`` call's ``segments.csv`` row (``RunDir.put_segment``), written at every
        checkpoint ("running") and at its end; nothing outside ``run()`` or before its first step."""
        seg = getattr(self, "_segment", None)
        if seg is None or self.run_dir is None or self.step <= seg["start_step"]:
            return
        self.run_dir.put_segment({
            "start_step": seg["start_step"], "end_step": self.step,
            "wall_time_s": round(self.wall_time - seg["wall0"], 2), "device": str(self.device),
            "accelerator": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "",
            "host": socket.gethostname(), "git_commit": seg["commit"],
            "started": seg["started"], "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "outcome": outcome})

    def summary(self) -> dict:
        """Training figures for summary.json (``report.finalize_run`` adds accuracies, phases)."""
        out = {"monitor_errors": getattr(self, "monitor_errors", [])}
        out.update({"step": self.step, "steps_target": self.cfg.steps, "K": self.model.K,
                    "device": str(self.device), "dtype": self.cfg.dtype,
                    "wall_time_s": round(self.wall_time, 2),
                    "member_steps_per_s": round(self.step * self.model.K / max(self.wall_time, 1e-9), 1),
                    "data_source": self.data_info.get("source")})
        return out


def make_trainer(cfg: RunConfig, run_dir: RunDir | None = None, data=None) -> Trainer:
    """The trainer of ``cfg.task``: ``Trainer`` (MNIST MLP) or ``ModAddTrainer`` (transformer)."""
    if cfg.task == "modadd":
        from .modadd import ModAddTrainer
        return ModAddTrainer(cfg, run_dir, data)
    return Trainer(cfg, run_dir, data)
