"""Constant decoupled weight decay on every parameter: the paper's WD = 0.01 control.

AdamW's ``p <- p (1 - lr wd)`` with the same wd for every layer and member.
"""
from __future__ import annotations

from alphareg.hooks import TrainingHook


class WeightDecay(TrainingHook):
    name = "weight_decay"
    graph_safe = True   # sets the optimizer's wd once, at attach

    def __init__(self, wd: float = 0.01):
        if not wd >= 0:
            raise ValueError(f"weight decay must be >= 0, got {wd}")
        self.wd = float(wd)

    def attach(self, trainer) -> None:
        for v in trainer.opt.wd:
            v.fill_(self.wd)
