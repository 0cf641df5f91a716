"""Early stopping on a validation split (never the test set).

At every log point member m's validation accuracy v_m (``val_acc``, from ``--val-per-class``
images per class drawn from the MNIST training images *not* in the training sample) is compared
with its best so far: if ``v_m > best_m + min_delta`` the best and a copy of the member's
parameters are kept; once ``patience`` log points pass without improvement the member is stopped:
its best parameters are restored and its lr and wd are held at 0 from then on (it stays frozen
while the rest of the population trains). Logged: ``stopped`` (0/1), ``best_val_acc``,
``best_step``.
"""
from __future__ import annotations

import torch

from alphareg.hooks import TrainingHook, stacked_params


class EarlyStopping(TrainingHook):
    name = "early_stop"

    def __init__(self, patience: int = 20, min_delta: float = 0.0):
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience must be a positive integer, got {patience}")
        self.patience, self.min_delta = patience, float(min_delta)
        self.best: list[float] | None = None
        self.best_step: list[int] = []
        self.since: list[int] = []
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
            self.since, self.stopped, self.saved = [0] * K, [False] * K, [None] * K
        params = stacked_params(trainer)
        for k, row in enumerate(rows):
            if self.stopped[k]:
                continue
            v = float(row["val_acc"])
            if v > self.best[k] + self.min_delta:
                self.best[k], self.best_step[k], self.since[k] = v, trainer.step, 0
                self.saved[k] = [p[k].detach().cpu().clone() for p in params]
            else:
                self.since[k] += 1
                if self.since[k] >= self.patience:
                    for p, s in zip(params, self.saved[k]):
                        p[k].copy_(s.to(p.device))
                    self.stopped[k] = True
        self._freeze(trainer)
        return {"stopped": [float(s) for s in self.stopped], "best_val_acc": list(self.best),
                "best_step": [float(s) for s in self.best_step]}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since": self.since,
                "stopped": self.stopped, "saved": self.saved}

    def load_state_dict(self, sd: dict) -> None:
        self.best, self.best_step, self.since = sd["best"], sd["best_step"], sd["since"]
        self.stopped, self.saved = sd["stopped"], sd["saved"]
