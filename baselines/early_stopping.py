"""Early stopping on a validation split (never the test set).

At every log point member m's validation accuracy v_m (``val_acc``, from ``--val-per-class``
images per class drawn from the MNIST training images *not* in the training sample) is compared
with its best so far: if ``v_m > best_m + min_delta`` the best, its step s*_m and a copy of the
member's parameters are kept. The patience is in log-time, like the log-spaced schedule it is read
on: member m is stopped at the first log point with

    step >= patience * s*_m   and   step >= min_steps

(patience 1.5: no improvement while the step count grew by half since the best; the same rule at
any learning rate, where a fixed number of log points or steps would not be). A stopped member's
best parameters are restored and its lr and wd are held at 0 from then on (it stays frozen while
the rest of the population trains). Logged: ``stopped`` (0/1), ``best_val_acc``, ``best_step``.
"""
from __future__ import annotations

import torch

from alphareg.hooks import TrainingHook, stacked_params


class EarlyStopping(TrainingHook):
    name = "early_stop"

    def __init__(self, patience: float = 1.5, min_delta: float = 0.0, min_steps: int = 1000):
        if not patience >= 1:
            raise ValueError(f"patience must be >= 1 (a factor on the best step), got {patience}")
        if not min_steps >= 0:
            raise ValueError(f"min_steps must be >= 0, got {min_steps}")
        self.patience, self.min_delta, self.min_steps = float(patience), float(min_delta), int(min_steps)
        self.best: list[float] | None = None
        self.best_step: list[int] = []
        self.stopped: list[bool] = []
        self.saved: list[list[torch.Tensor] | None] = []

    def _freeze(self, trainer) -> None:
        for k, s in enumerate(self.stopped):
            if s:
                for v in (*trainer.opt.lr, *trainer.opt.wd):
                    v[k] = 0.0

    def after_backward(self, trainer) -> None:
        if self.stopped and any(self.stopped):
            self._freeze(trainer)   # also after a controller has set this step's lr / wd

    @torch.no_grad()
    def at_log_point(self, trainer, rows):
        if "val_acc" not in rows[0]:
            raise RuntimeError("early stopping needs a validation split: --val-per-class > 0")
        K = len(rows)
        if self.best is None:
            self.best, self.best_step = [-1.0] * K, [0] * K
            self.stopped, self.saved = [False] * K, [None] * K
        params = stacked_params(trainer)
        for k, row in enumerate(rows):
            if self.stopped[k]:
                continue
            v = float(row["val_acc"])
            if v > self.best[k] + self.min_delta:
                self.best[k], self.best_step[k] = v, trainer.step
                self.saved[k] = [p[k].detach().cpu().clone() for p in params]
            else:
                step = trainer.step
                if step >= self.patience * self.best_step[k] and step >= self.min_steps:
                    for p, s in zip(params, self.saved[k]):
                        p[k].copy_(s.to(p.device))
                    self.stopped[k] = True
        self._freeze(trainer)
        return {"stopped": [float(s) for s in self.stopped], "best_val_acc": list(self.best),
                "best_step": [float(s) for s in self.best_step]}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "stopped": self.stopped,
                "saved": self.saved}

    def load_state_dict(self, sd: dict) -> None:
        self.best, self.best_step = sd["best"], sd["best_step"]
        self.stopped, self.saved = sd["stopped"], sd["saved"]
