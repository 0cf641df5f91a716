"""Training hooks: how regularisers, controllers and baselines plug into the engine.

The engine (``alphareg.engine.Trainer``) calls, for every optimizer step t = 0, 1, ...::

    for h in hooks: h.before_step(trainer)       # set lr / wd for this step (controllers)
    loss.backward()
    for h in hooks: h.after_backward(trainer)    # add penalty gradients, filter gradients
    optimizer.step()

and at every log point ``h.at_log_point(trainer, rows)``, whose returned per-member columns are
appended to the metrics rows. ``state_dict`` / ``load_state_dict`` travel in the checkpoint, so
a resumed run continues exactly. Hooks run in the order given (penalties before gradient
filters: see ``alphareg.methods``).

CUDA graphs (``alphareg.cudagraph``) replay G whole steps with no host code in between, so they
apply only when every hook is ``graph_safe``: its ``before_step`` acts only at steps t with
t % ``period`` == 0 (``period`` 0: never) and reads weights and optimizer state, not gradients;
its ``after_backward`` at most adds the same tensors to the gradients at every step from one
acting step to the next, and ``graph_grads`` names them (the graph adds them itself). The engine
picks G dividing every period and starts each graph at a multiple of G, so every acting step is a
graph's first step, where the host calls ``before_step`` as on the eager path and then reads
``graph_grads``: both paths make the same steps.
"""
from __future__ import annotations


class TrainingHook:
    """No-op base class. ``trainer`` exposes ``model``, ``opt``, ``step``, ``cfg``."""

    name = "hook"
    graph_safe = False   # True: a periodic ``before_step``, constant added gradients (module docstring)
    period = 0           # a graph-safe hook's ``before_step`` acts at steps t % period == 0 only

    def attach(self, trainer) -> None:
        """Called once when the trainer is built (before any step or resume)."""

    def before_step(self, trainer) -> None:
        """Step ``trainer.step`` is about to run: no gradients yet, weights as after the last step."""

    def graph_grads(self, trainer) -> list:
        """A graph-safe hook's constant gradient terms, (parameter, tensor of its shape) pairs, that
        its ``after_backward`` adds at every step until its next acting step (empty: none)."""
        return []

    def after_backward(self, trainer) -> None:
        """Gradients of step ``trainer.step`` are in ``p.grad``; the optimizer has not stepped."""

    def at_log_point(self, trainer, rows: list[dict]) -> dict[str, list[float]]:
        """Extra metrics columns, one value per member (may act on ``rows``, e.g. early stopping)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


def adds_gradients(hook: TrainingHook) -> bool:
    """Whether a hook overrides ``graph_grads`` (may add constant gradient terms on the graph path)."""
    return type(hook).graph_grads is not TrainingHook.graph_grads


def stacked_params(trainer) -> list:
    """The population's parameters in optimizer order (weights of every layer, then biases)."""
    return list(trainer.opt.params)


def layer_param_indices(trainer) -> list[tuple[int, int | None]]:
    """(weight index, bias index or None) in the optimizer's parameter list for every layer."""
    pos = {id(p): i for i, p in enumerate(trainer.opt.params)}
    m = trainer.model
    return [(pos[id(w)], None if b is None else pos[id(b)])
            for w, b in zip(m.weights, m.layer_biases())]
