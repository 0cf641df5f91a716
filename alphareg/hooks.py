"""Training hooks: how regularisers, controllers and baselines plug into the engine.

The engine (``alphareg.engine.Trainer``) calls, for every optimizer step t = 0, 1, ...::

    loss.backward()
    for h in hooks: h.after_backward(trainer)    # add penalty gradients, filter gradients,
                                                 # set lr / wd for this step (controllers)
    optimizer.step()

and at every log point ``h.at_log_point(trainer, rows)``, whose returned per-member columns are
appended to the metrics rows. ``state_dict`` / ``load_state_dict`` travel in the checkpoint, so
a resumed run continues exactly. Hooks run in the order given (penalties before gradient
filters: see ``alphareg.methods``).
"""
from __future__ import annotations


class TrainingHook:
    """No-op base class. ``trainer`` exposes ``model``, ``opt``, ``step``, ``cfg``."""

    name = "hook"

    def attach(self, trainer) -> None:
        """Called once when the trainer is built (before any step or resume)."""

    def after_backward(self, trainer) -> None:
        """Gradients of step ``trainer.step`` are in ``p.grad``; the optimizer has not stepped."""

    def at_log_point(self, trainer, rows: list[dict]) -> dict[str, list[float]]:
        """Extra metrics columns, one value per member (may act on ``rows``, e.g. early stopping)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


def stacked_params(trainer) -> list:
    """The population's parameters in optimizer order (weights of every layer, then biases)."""
    return list(trainer.opt.params)


def layer_param_indices(trainer) -> list[tuple[int, int | None]]:
    """(weight index, bias index or None) in the optimizer's parameter list for every layer."""
    pos = {id(p): i for i, p in enumerate(trainer.opt.params)}
    m = trainer.model
    return [(pos[id(w)], None if b is None else pos[id(b)])
            for w, b in zip(m.weights, m.layer_biases())]
