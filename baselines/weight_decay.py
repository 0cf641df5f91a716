"""Constant decoupled weight decay: the paper's WD = 0.01 control, on every layer or on some.

AdamW's ``p <- p (1 - lr wd)`` with the same wd for every member. With ``layers`` (names such as
``fc2``; ``--wd-layers``) only those layers' weights and biases get ``wd``; the other layers keep
the run's base ``--wd`` (default 0). That is the fixed-WD control of the α-scheduled WD
controller, which in the paper config decays fc3 and fc2 and leaves fc1 near 0.
"""
from __future__ import annotations

from alphareg.hooks import TrainingHook, layer_param_indices


class WeightDecay(TrainingHook):
    name = "weight_decay"
    graph_safe = True   # sets the optimizer's wd once, at attach

    def __init__(self, wd: float = 0.01, layers: list[str] | None = None):
        if not wd >= 0:
            raise ValueError(f"weight decay must be >= 0, got {wd}")
        self.wd = float(wd)
        self.layers = list(layers) if layers else None

    def attach(self, trainer) -> None:
        if self.layers is None:
            for v in trainer.opt.wd:
                v.fill_(self.wd)
            return
        names = trainer.model.layer_names()
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise ValueError(f"weight decay layers {unknown} unknown; this model has {names}")
        for (wi, bi), n in zip(layer_param_indices(trainer), names):
            if n in self.layers:
                for i in (wi, bi):
                    if i is not None:
                        trainer.opt.wd[i].fill_(self.wd)
