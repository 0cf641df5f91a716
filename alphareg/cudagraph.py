"""Whole training steps replayed as one CUDA graph (the engine's GPU path for the paper MLP).

A graph holds G consecutive steps of every member: batch gather, the hand-written forward and
backward (``alphareg.fastmlp``, one ``bmm`` per product over the K members) and a graph-safe
AdamW whose bias corrections come from a step counter kept on the device. Between replays
nothing is synchronised: the host draws the next G batches of every member with the same
per-member ``EpochSampler`` as the CPU path (so the trajectory is the CPU path's, to round-off),
copies them into the graph's static index buffer (one pinned, asynchronous copy of G x K x B
int64) and replays. Evaluation, checkpoints and hooks stay outside the graph, at log points.

Used by ``Trainer.train_steps`` when the device is CUDA, ``--engine fast``, ``--optimizer
adamw``, no training hooks (``--method none``) and no warm-up; otherwise the eager path runs.
``GraphedSteps(..., capture=False)`` runs the identical step function eagerly (tests, CPU).
"""
from __future__ import annotations

import torch


def adamw_tensor_step(opt, t: torch.Tensor) -> None:
    """One step of ``StackedAdamW``'s update (the same formula) with the step count ``t`` a
    device tensor, so that bias corrections need no host value: t <- t + 1,
    p <- p (1 - lr wd); m <- lerp(m, g, 1 - b1); v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    t.add_(1)
    b1, b2 = opt.beta1, opt.beta2
    bc1 = 1 - torch.pow(b1, t)
    bc2_sqrt = torch.sqrt(1 - torch.pow(b2, t))
    for p, m, v, lr, wd in zip(opt.params, opt.exp_avg, opt.exp_avg_sq, opt.lr, opt.wd):
        g = p.grad
        shape = (-1,) + (1,) * (p.dim() - 1)
        lr_v = lr.view(shape)
        p.mul_(1 - lr_v * wd.view(shape))
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt).add_(opt.eps)
        p.sub_((lr_v / bc1) * (m / denom))


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
        self.t = torch.tensor(float(trainer.opt.t), dtype=torch.float64, device=dev)
        self.graph = None
        self.capture = capture and dev.type == "cuda"

    def _one_step(self, j: int) -> None:
        tr = self.tr
        tr.fast_step(tr.train_set.onehot, self.sched[j])
        adamw_tensor_step(tr.opt, self.t)

    def _fill(self) -> None:
        for j in range(self.G):
            self.host[j] = self.tr.sampler.next()
        self.sched.copy_(self.host, non_blocking=True)

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
        with torch.cuda.graph(self.graph):
            for j in range(self.G):
                self._one_step(j)
        self._restore(saved)                   # capture ran the kernels once: undo them

    def _state(self):
        opt = self.tr.opt
        return ([p.detach().clone() for p in opt.params], [m.clone() for m in opt.exp_avg],
                [v.clone() for v in opt.exp_avg_sq], self.t.clone())

    def _restore(self, saved) -> None:
        params, ms, vs, t = saved
        opt = self.tr.opt
        with torch.no_grad():
            for dst, src in zip(opt.params, params):
                dst.copy_(src)
            for dst, src in zip(opt.exp_avg + opt.exp_avg_sq, ms + vs):
                dst.copy_(src)
            self.t.copy_(t)

    @torch.no_grad()
    def run(self, n: int) -> int:
        """Advance by the largest multiple of G <= n; returns the number of steps done."""
        done = 0
        tr = self.tr
        self.t.fill_(float(tr.opt.t))           # the host count may have moved (eager steps)
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
