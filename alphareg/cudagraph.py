"""Whole training steps replayed as one CUDA graph (the engine's GPU path for the paper MLP).

A graph holds G consecutive steps of every member: batch gather, the hand-written forward and
backward (``alphareg.fastmlp``, one ``bmm`` per product over the K members) and a graph-safe
AdamW on flat buffers whose bias corrections come from a step counter kept on the device
(``FlatAdamW``: ~10 element-wise kernels per step for all parameters of all members). Between replays
nothing is synchronised: the host draws the next G batches of every member with the same
per-member ``EpochSampler`` as the CPU path (so the trajectory is the CPU path's, to round-off),
copies them into the graph's static index buffer (one pinned, asynchronous copy of G x K x B
int64) and replays. Evaluation and checkpoints stay outside the graph, at log points; so do the
hooks, which is why only graph-safe ones are allowed (``alphareg.hooks``: the lr / wd controllers,
the constant WD and the soft-α penalty, whose ``before_step`` the host calls at a graph's first
step). lr / wd reach the graph through ``FlatAdamW.refresh``, the penalty's held gradient through
``refresh_extra`` (a flat buffer the graph adds to the gradient at every step), both before each
replay.

Used by ``Trainer.train_steps`` when the device is CUDA, ``--engine fast``, ``--optimizer
adamw``, no warm-up and only graph-safe hooks (``--method none``, ``penalty``, ``lr_controller``,
``wd_controller``, ``weight_decay``); otherwise (spectral norm, Grokfast, ⊥Grad, early stopping:
hooks that change the gradient from step to step or at log points) the eager path runs.
``uncaptured(trainer)`` runs the identical step function eagerly on any device (tests, CPU).
"""
from __future__ import annotations

import math

import torch

from .hooks import adds_gradients


class FlatAdamW:
    """``StackedAdamW``'s update (the same formula) on one flat buffer per quantity, with the
    step count a device tensor, so a step is ~10 element-wise kernels whatever the number of
    parameters and needs no host value (graph-safe)::

        t <- t + 1;  p <- p (1 - lr wd);  m <- lerp(m, g, 1 - b1);  v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    On construction the parameters, their gradients (the fast path's buffers) and the moments of
    ``opt`` are re-homed as views of flat buffers (values unchanged); lr and wd are expanded to
    one value per element by ``refresh()`` (called outside the graph, before each replay).
    """

    def __init__(self, opt, grads: list):
        self.opt = opt
        params = opt.params
        self.sizes = [p.numel() for p in params]
        self.t = torch.tensor(float(opt.t), dtype=torch.float64, device=params[0].device)

        def rehome(tensors):
            flat = torch.cat([x.detach().reshape(-1) for x in tensors])
            return flat, [v.view_as(x) for v, x in zip(flat.split(self.sizes), tensors)]

        self.p, views = rehome(params)
        for p, v in zip(params, views):
            p.data = v
        self.g, gviews = rehome(grads)
        for g, v in zip(grads, gviews):
            g.data = v
        self.m, opt.exp_avg = rehome(opt.exp_avg)
        self.v, opt.exp_avg_sq = rehome(opt.exp_avg_sq)
        self.decay = torch.empty_like(self.p)
        self.lr = torch.empty_like(self.p)
        self.refresh()

    def refresh(self) -> None:
        """Per-element lr and 1 - lr wd from ``opt.lr`` / ``opt.wd`` ((K,) per parameter)."""
        opt = self.opt
        lr = torch.cat([l.view(-1, 1).expand(-1, n // len(l)).reshape(-1)
                        for l, n in zip(opt.lr, self.sizes)])
        wd = torch.cat([w.view(-1, 1).expand(-1, n // len(w)).reshape(-1)
                        for w, n in zip(opt.wd, self.sizes)])
        self.lr.copy_(lr)
        torch.sub(1, lr * wd, out=self.decay)
        self.t.fill_(float(opt.t))

    def step(self) -> None:
        b1, b2, eps = self.opt.beta1, self.opt.beta2, self.opt.eps
        self.t.add_(1)
        bc1 = 1 - torch.pow(b1, self.t)
        bc2_sqrt = torch.sqrt(1 - torch.pow(b2, self.t))
        p, g, m, v = self.p, self.g, self.m, self.v
        p.mul_(self.decay)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt).add_(eps)
        p.sub_((self.lr / bc1) * (m / denom))


class GraphedSteps:
    """Runs training steps of a ``Trainer`` (MLP, fast path, StackedAdamW) G at a time."""

    def __init__(self, trainer, steps_per_graph: int = 50, capture: bool = True):
        self.tr = trainer
        self.G = steps_per_graph
        dev = trainer.device
        K, B = trainer.model.K, trainer.cfg.batch_size
        self.sched = torch.zeros(self.G, K, B, dtype=torch.long, device=dev)
        self.host = torch.zeros(self.G, K, B, dtype=torch.long,
                                pin_memory=dev.type == "cuda")
        self.adam = None          # FlatAdamW, built at the first run (after any resume)
        self.copied = None        # CUDA event: the last index copy has finished
        self.graph = None
        self.capture = capture and dev.type == "cuda"
        # hooks that add constant gradients (the soft-α penalty): their sum, in the flat gradient's
        # layout, is added after every backward inside the graph (``refresh_extra``)
        self.grad_hooks = [h for h in trainer.hooks if adds_gradients(h)]
        self.extra = None

    def _one_step(self, j: int) -> None:
        tr = self.tr
        tr.fast_step(tr.train_set.onehot, self.sched[j])
        if self.extra is not None:
            self.adam.g.add_(self.extra)
        self.adam.step()

    def refresh_extra(self) -> None:
        """``extra`` <- the sum of the graph-safe hooks' current constant gradient terms
        (``TrainingHook.graph_grads``; called outside the graph, before each replay)."""
        if self.extra is None:
            self.extra = torch.zeros_like(self.adam.g)
            views = self.extra.split(self.adam.sizes)
            self.extra_of = {id(p): v.view_as(p) for p, v in zip(self.tr.opt.params, views)}
        self.extra.zero_()
        for h in self.grad_hooks:
            for param, g in h.graph_grads(self.tr):
                self.extra_of[id(param)].add_(g.to(self.extra.dtype))

    def _fill(self) -> None:
        """Next G batches of every member into the static index buffer. The pinned host buffer
        is reused only once its previous asynchronous copy has completed (an event), which
        lets the host run at most about two graphs ahead of the device."""
        if self.copied is not None:
            self.copied.synchronize()
        for j in range(self.G):
            self.host[j] = self.tr.sampler.next()
        self.sched.copy_(self.host, non_blocking=True)
        if self.sched.is_cuda:
            self.copied = torch.cuda.Event()
            self.copied.record()

    def _capture(self) -> None:
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        saved = self._state()
        with torch.cuda.stream(side):          # warm-up outside the graph (allocator, kernels)
            for j in range(2):
                self._one_step(j)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):     # records the kernels, runs none of them
            for j in range(self.G):
                self._one_step(j)

    def _state(self):
        return self.adam.p.clone(), self.adam.m.clone(), self.adam.v.clone(), self.adam.t.clone()

    def _restore(self, saved) -> None:
        for dst, src in zip((self.adam.p, self.adam.m, self.adam.v, self.adam.t), saved):
            dst.copy_(src)

    @torch.no_grad()
    def run(self, n: int) -> int:
        """Advance by the largest multiple of G <= n; returns the number of steps done."""
        done = 0
        tr = self.tr
        if n < self.G:
            return 0
        if self.adam is None:   # optimizer order: weights, then biases (PopulationMLP)
            self.adam = FlatAdamW(tr.opt, tr.fast_step.grads_w + tr.fast_step.grads_b)
        self.adam.refresh()                     # lr / wd / step count may have moved (eager steps)
        if self.grad_hooks:
            self.refresh_extra()
        while n - done >= self.G:
            if self.capture and self.graph is None:
                self._capture()
            self._fill()
            if self.graph is not None:
                self.graph.replay()
            else:
                for j in range(self.G):
                    self._one_step(j)
            done += self.G
        tr.opt.t += done
        tr.step += done
        return done


def graph_length(hooks, longest: int = 50) -> int:
    """Steps per CUDA graph: the largest divisor of ``longest`` that divides every hook's period
    (``gcd``), so that a graph started at a multiple of it has no acting hook step inside."""
    return math.gcd(longest, *(h.period for h in hooks if h.period))


def uncaptured(trainer, steps_per_graph: int | None = None) -> GraphedSteps:
    """Gives ``trainer`` the graph path without capturing it: its fast step rebuilt batched (one
    ``bmm`` over the members, as on CUDA) and ``GraphedSteps(capture=False)`` of
    ``steps_per_graph`` steps (default ``graph_length`` of its hooks) attached as ``graphed``, so
    ``train_steps`` / ``run`` follow the GPU path's steps on any device (tests, bench_gpu on a CPU)."""
    from .fastmlp import FastMLPStep
    cfg = trainer.cfg
    trainer.fast_step = FastMLPStep(trainer.model, trainer.train_set.x, cfg.batch_size, cfg.loss,
                                    batched=True)
    G = steps_per_graph if steps_per_graph is not None else graph_length(trainer.hooks)
    trainer.graphed = GraphedSteps(trainer, G, capture=False)
    return trainer.graphed
