"""Differentiable soft-α penalty (HTSR power-law exponent of each layer's weight spectrum).

For a weight matrix W (N x M) with singular values σ = ``torch.linalg.svdvals(W)`` let
ℓ_1 >= ... >= ℓ_n be ``ln σ² = ln λ`` sorted descending. At a *refit* (every ``refit_every``
evaluations) the tail size k is chosen without gradient by weightwatcher's KS scan
(``alphareg.htsr.fit_alpha``: k = ``num_pl_spikes``; small spectra, n < 20 eigenvalues, use its
bias-corrected estimator). Between refits k is held fixed and

    α̂(W) = 1 + k' / Σ_{i<=k} (ℓ_i − ℓ_k),        k' = k  (k − 1 for the small-N estimator)

is a smooth function of W (``alphareg.htsr.alpha_from_tail``); at refit time it equals the
monitor's (and weightwatcher's) alpha. Note α̂(cW) = α̂(W) and ∇α̂ ∝ 1/‖W‖.

Penalty, summed over the selected layers l and population members m, with d = target − α̂:

    P = β Σ_{l,m} H_s(d)              one-sided (default): H_s(d) = 0 for d <= 0,
                                         s d²/2 for 0 < d < 1/s, d − 1/(2s) for d >= 1/s
                                       two-sided: H_s(|d|) (a Huber loss around the target)

H_s is a C¹ "smooth hinge" with sharpness s: exactly zero when every alpha is above the target
(one-sided), quadratic near the target, linear (slope 1) far from it. A one-sided penalty only
pushes alpha *up* and so never manufactures spikes.

Pulling alpha *down* (two-sided, alpha above the target) needs ``gradient="zipf"``. With the
default ``"hill"`` the gradient is that of α̂ above: Σ_{i<=k}(ℓ_i − ℓ_k) depends on ℓ_k with weight
−(k − 1) and on each other tail log-eigenvalue with +1, so descent mostly pushes the tail's smallest
eigenvalues down and out of the tail; the next KS refit drops them and can choose a tail with a
*higher* alpha (``tests/test_regularizers.py``: weightwatcher's alpha of a layer at 3 rises under
it). ``gradient="zipf"`` keeps the value α̂ (so the hinge, the logs and the refit agreement are
unchanged) and takes the gradient of the rank-size exponent of the same tail
(``alphareg.htsr.zipf_alpha_from_tail``, straight through: stopgrad(α̂) + α_Z − stopgrad(α_Z)), which
stretches the whole tail about its mean: the same test lowers weightwatcher's alpha with it.

Layers: any module's ``nn.Linear`` / ``nn.Embedding`` weights (one matrix), ``nn.Conv1d/2d/3d``
weights (the (out, in) slice of every kernel position, their eigenvalues pooled into one ESD as
weightwatcher does for Conv2d), and population-stacked weights (``alphareg.models.PopulationMLP``:
one α̂ per member). Usage outside the engine::

    penalty = SoftAlphaPenalty(target=2.0, beta=0.1)
    loss = task_loss + penalty(model)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import PENALTY_GRADIENTS as GRADIENTS
from .hooks import TrainingHook
from .htsr import alpha_from_tail, fit_alpha_evals, zipf_alpha_from_tail

#: eigenvalues are clamped to this before the log (zero eigenvalues never enter the tail, but
#: log(0) would poison the gradient of the masked entries)
TINY = 1e-300


@dataclass
class SpectralLayer:
    """One layer as a stack of matrices: ``matrices()`` -> (B, N, M).

    ``pooled``: the B matrices form ONE spectrum (conv kernel positions), else B independent
    spectra (population members, B = K). ``param`` is the tensor the matrices are a view of.
    """
    name: str
    param: Tensor
    pooled: bool

    def matrices(self) -> Tensor:
        W = self.param
        if W.dim() == 2:
            return W.unsqueeze(0)
        if self.pooled:   # conv (out, in, *kernel) -> (positions, out, in)
            return W.reshape(W.shape[0], W.shape[1], -1).permute(2, 0, 1)
        return W           # population stack (K, out, in)

    @property
    def members(self) -> int:
        return 1 if self.pooled or self.param.dim() == 2 else self.param.shape[0]


def spectral_layers(model: nn.Module, layers: Sequence[str] | None = None) -> list[SpectralLayer]:
    """The weight matrices an HTSR penalty can act on, named like ``model.layer_names()`` for a
    population model and by module path otherwise. ``layers`` selects by name (None = all)."""
    if hasattr(model, "weights") and hasattr(model, "layer_names"):   # PopulationMLP
        found = [SpectralLayer(n, w, False) for n, w in zip(model.layer_names(), model.weights)]
    else:
        found = []
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                found.append(SpectralLayer(name, mod.weight, False))
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                found.append(SpectralLayer(name, mod.weight, True))
    if layers is not None:
        names = [l.name for l in found]
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}; this model has {names}")
        found = [l for l in found if l.name in layers]
    return found


def host_layers(model: nn.Module, layers: Sequence[str] | None = None) -> list[SpectralLayer]:
    """``spectral_layers`` with every weight as a detached copy in host (CPU) memory.

    The engine's hooks do their spectral work (``svdvals``, ``eigvalsh``, the KS tail scan) here:
    on these small matrices it is latency-bound on a GPU — on an H200 each piece took 2x its
    host time and a penalty refresh over 200 host-device synchronisations, which stall behind
    any other process sharing the GPU (``reports/benchmarks/penalty_gpu_h200_7d99770.log``). On a CPU
    run the tensors share the weights' storage (no copy), so CPU runs are unchanged bit for bit.
    """
    return [SpectralLayer(l.name, l.param.detach().cpu(), l.pooled)
            for l in spectral_layers(model, layers)]


def spectrum(layer: SpectralLayer) -> Tensor:
    """(members, n) eigenvalues ``σ²`` of W in float64, ascending, differentiable."""
    W = layer.matrices().to(torch.float64)
    if W.shape[-2] < W.shape[-1]:
        W = W.mT
    sv = torch.linalg.svdvals(W)                        # (B, m) descending
    lam = sv * sv
    if layer.pooled:
        lam = lam.reshape(1, -1)
    return torch.sort(lam, dim=-1).values


def gram_spectrum(layer: SpectralLayer) -> Tensor:
    """The same eigenvalues as ``spectrum`` from ``eigvalsh`` of the smaller Gram matrix W Wᵀ
    (or WᵀW): about 2x cheaper than ``svdvals`` with its backward on these shapes, with an
    equally stable gradient (``U diag(g) Uᵀ``, no eigenvalue gaps). Its absolute error is
    ~eps·λ_max, so tiny eigenvalues lose relative precision; the tail that α̂ uses does not."""
    W = layer.matrices().to(torch.float64)
    G = W @ W.mT if W.shape[-2] <= W.shape[-1] else W.mT @ W
    lam = torch.linalg.eigvalsh(G)                     # ascending
    if layer.pooled:
        lam = torch.sort(lam.reshape(1, -1), dim=-1).values
    return lam


def log_spectrum(layer: SpectralLayer, gram: bool = False) -> Tensor:
    """(members, n) log-eigenvalues ``ln σ²``, ascending, differentiable (zeros clamped);
    from ``svdvals`` (default) or the Gram matrix's ``eigvalsh`` (``gram=True``)."""
    return log_of(gram_spectrum(layer) if gram else spectrum(layer))


def log_of(lam: Tensor) -> Tensor:
    """``ln λ`` of a spectrum, zeros clamped to ``TINY``."""
    return torch.log(lam.clamp_min(TINY))


def _as_list(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, (list, tuple, Tensor)) else [float(v)]


def _scalar_or_tensor(v):
    vals = _as_list(v)
    return vals[0] if not isinstance(v, (list, tuple, Tensor)) else torch.tensor(vals, dtype=torch.float64)


def _on(v, like: Tensor):
    """A float as is; a per-member tensor on ``like``'s device and dtype."""
    return v.to(like.device, like.dtype) if isinstance(v, Tensor) else v


def smooth_hinge(d: Tensor, sharpness) -> Tensor:
    """H_s(d): 0 for d <= 0, s d²/2 on (0, 1/s), d − 1/(2s) beyond (C¹, slope <= 1).
    ``sharpness``: a float or a tensor broadcastable to d (one s per member)."""
    s = sharpness
    zero = torch.zeros_like(d)
    return torch.where(d <= 0, zero, torch.where(d < 1.0 / s, 0.5 * s * d * d, d - 0.5 / s))


@dataclass
class TailFit:
    """Tail sizes held between refits: k (members,) int64, bias-corrected flags, validity."""
    k: Tensor
    small_n: Tensor
    valid: Tensor


class SoftAlphaPenalty:
    """β Σ H_s(target − α̂) over layers and members (see the module docstring).

    ``refit_every``: the tail size k is re-chosen by the KS scan every this many calls to
    :meth:`__call__` (1 = every call). ``layers``: names to act on (None = all). ``gradient``:
    ``"hill"`` (α̂'s own) or ``"zipf"`` (the rank-size exponent's, needed to pull alpha down).
    """

    def __init__(self, target=2.0, beta=0.1, sharpness=10.0,
                 two_sided: bool = False, layers: Sequence[str] | None = None,
                 refit_every: int = 100, gradient: str = "hill"):
        if not min(_as_list(sharpness)) > 0:
            raise ValueError(f"sharpness must be > 0, got {sharpness}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient {gradient!r} is unknown; allowed: {', '.join(GRADIENTS)}")
        if not refit_every >= 1:
            raise ValueError(f"refit_every must be >= 1, got {refit_every}")
        # a float, or one value per population member (a population of Optuna trials)
        self.target, self.beta, self.sharpness = _scalar_or_tensor(target), _scalar_or_tensor(beta), \
            _scalar_or_tensor(sharpness)
        self.two_sided, self.layers, self.refit_every = bool(two_sided), layers, int(refit_every)
        self.gradient = gradient
        self.fits: dict[str, TailFit] = {}
        self.calls = 0

    # ------------------------------------------------------------------ pieces
    def refit(self, model: nn.Module) -> None:
        """Choose every layer's tail size k by weightwatcher's KS scan (no gradient)."""
        for layer in spectral_layers(model, self.layers):
            self.refit_layer(layer)

    @torch.no_grad()
    def refit_layer(self, layer: SpectralLayer) -> Tensor:
        """New tail sizes for one layer; returns the spectrum (``spectrum``) it fitted."""
        lam = spectrum(layer)
        fit = fit_alpha_evals(lam)
        k = fit.num_pl_spikes.reshape(-1)
        self.fits[layer.name] = TailFit(k=k.clone(), small_n=fit.small_n.reshape(-1).clone(),
                                        valid=(k >= 2) & (fit.alpha.reshape(-1) > 1))
        return lam

    def alphas(self, model: nn.Module) -> dict[str, Tensor]:
        """α̂ (members,) of each selected layer with the held tail sizes (NaN where invalid)."""
        return self.alphas_of(model, self.layers)

    def alphas_of(self, model: nn.Module, names: Sequence[str] | None) -> dict[str, Tensor]:
        """α̂ of the named layers (None = all of the model's layers)."""
        return {layer.name: self.layer_alpha(layer) for layer in spectral_layers(model, names)}

    def layer_alpha(self, layer: SpectralLayer, gram: bool = False) -> Tensor:
        """α̂ (members,) of one layer with its held tail size (NaN where the fit failed);
        ``gram=True`` takes the eigenvalues from the Gram matrix (``gram_spectrum``)."""
        return self.alpha_of_logs(layer.name, log_spectrum(layer, gram=gram))

    def alpha_of_logs(self, name: str, logs: Tensor) -> Tensor:
        """α̂ (members,) of layer ``name`` from its log-spectrum (members, n), ascending."""
        fit = self.fits.get(name)
        if fit is None:
            raise RuntimeError(f"no tail fit for layer {name!r}: call refit(model) first")
        valid = fit.valid.to(logs.device)
        k = torch.where(valid, fit.k.to(logs.device), torch.full_like(fit.k, 2).to(logs.device))
        a = torch.where(fit.small_n.to(logs.device), alpha_from_tail(logs, k, bias_corrected=True),
                        alpha_from_tail(logs, k))
        if self.gradient == "zipf":     # value α̂, gradient of the rank-size exponent only
            z = zipf_alpha_from_tail(logs, k)
            a = a.detach() + (z - z.detach())
        return torch.where(valid, a, torch.full_like(a, float("nan")))

    def per_member(self, alphas: dict[str, Tensor]) -> Tensor:
        """Penalty of each member (members,), summed over layers; NaN alphas contribute 0."""
        total = None
        for a in alphas.values():
            d = _on(self.target, a) - a
            h = smooth_hinge(d.abs() if self.two_sided else d, _on(self.sharpness, a))
            h = torch.where(torch.isnan(a), torch.zeros_like(h), h)
            total = h if total is None else total + h
        return _on(self.beta, total) * total

    # ------------------------------------------------------------------ the loss term
    def __call__(self, model: nn.Module) -> Tensor:
        """Scalar penalty (differentiable); refits k every ``refit_every`` calls."""
        if self.calls % self.refit_every == 0 or not self.fits:
            self.refit(model)
        self.calls += 1
        return self.per_member(self.alphas(model)).sum()

    def state_dict(self) -> dict:
        return {"calls": self.calls,
                "fits": {n: {"k": f.k.cpu(), "small_n": f.small_n.cpu(), "valid": f.valid.cpu()}
                         for n, f in self.fits.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.calls = int(sd["calls"])
        self.fits = {n: TailFit(**f) for n, f in sd["fits"].items()}


class SoftAlphaHook(TrainingHook):
    """The soft-α penalty inside the engine, with a held gradient (cheap reuse).

    Every ``grad_every`` steps (and at step 0) the hook evaluates α̂ of every selected layer
    without gradient; only layers where some member has a non-zero penalty get a
    differentiable pass whose gradient ∇_W P is cached (a layer active at the last refresh skips
    the check). Each step adds the cached gradient to the
    task gradient (a lagged gradient of P, refreshed every ``grad_every`` steps; the
    differentiable pass takes the eigenvalues from the Gram matrix, ``gram_spectrum``), so an inactive
    one-sided penalty costs one Gram ``eigvalsh`` per layer every ``grad_every`` steps (the check;
    at a refit step it reuses the refit's ``svdvals`` spectrum instead). The tail sizes
    are refitted every ``refit_every`` steps (step-based, so a resumed run refits at the same
    steps). Logged per member: ``alpha_hat_<layer>``, ``penalty`` (the value at the log point) and,
    since the penalty is one-sided and acts between log points too, how often it acted: at
    ``penalty_refreshes_active`` of the ``penalty_refreshes`` refreshes since step
    ``penalty_counted_from`` some layer's penalty term of that member was > 0 (a count kept in the
    checkpoint; a run resumed from a checkpoint without it counts from the resume step).
    """

    name = "penalty"
    graph_safe = True     # refreshes before the step, then adds the same tensors every step

    def __init__(self, penalty: SoftAlphaPenalty, grad_every: int = 20):
        if not grad_every >= 1:
            raise ValueError(f"grad_every must be >= 1, got {grad_every}")
        self.penalty = penalty
        self.grad_every = int(grad_every)
        self.grads: dict[str, Tensor] = {}    # layer name -> cached β∇P (param shape)
        self.refreshes = 0                     # refreshes counted since step ``counted_from``
        self.active: Tensor | None = None      # (members,) of them with a penalty term > 0
        self.counted_from: int | None = None

    def _count(self, step: int, acted: list[Tensor]) -> None:
        """One refresh at ``step``; ``acted``: per layer, (members,) bool — penalty term > 0."""
        hit = torch.stack(torch.broadcast_tensors(*[a.detach().cpu() for a in acted])).any(0).long()
        self.active = hit if self.active is None else self.active + hit
        self.refreshes += 1
        if self.counted_from is None:
            self.counted_from = int(step)

    def _refresh(self, model: nn.Module, step: int) -> None:
        """New cached gradients. Layers that were active at the last refresh go straight to the
        differentiable pass (they usually still are); the others are checked without gradient
        first and only those that became active get the differentiable pass. All of it runs on
        host copies of the weights (``host_layers``); the gradients go back to the weights' device."""
        pen = self.penalty
        layers = {l.name: l for l in host_layers(model, pen.layers)}
        refit = step % pen.refit_every == 0 or not pen.fits
        spectra = {n: pen.refit_layer(layer) for n, layer in layers.items()} if refit else {}
        maybe = [n for n in layers if n in self.grads]
        with torch.no_grad():   # the check: the refit's spectrum, else the (cheaper) Gram one
            fresh = {n: pen.alpha_of_logs(n, log_of(spectra[n])) if refit else pen.layer_alpha(layers[n], gram=True)
                     for n in layers if n not in self.grads}
        checked = {n: pen.per_member({n: a}) for n, a in fresh.items()}
        maybe += [n for n, v in checked.items() if float(v.sum()) > 0]
        acted = [v > 0 for v in checked.values()]
        self.grads = {}
        if not maybe:
            self._count(step, acted)
            return
        device = {l.name: l.param.device for l in spectral_layers(model, maybe)}
        with torch.enable_grad():
            leaves = [layers[n].param.requires_grad_(True) for n in maybe]
            per_member = [pen.per_member({n: pen.layer_alpha(layers[n], gram=True)}) for n in maybe]
            per_layer = [v.sum() for v in per_member]
            grads = torch.autograd.grad(torch.stack(per_layer).sum(), leaves)
        self.grads = {n: g.detach().to(device[n]) for n, g, v in zip(maybe, grads, per_layer)
                      if float(v.detach()) > 0}
        self._count(step, acted + [v.detach() > 0 for v in per_member])

    @property
    def period(self) -> int:
        return self.grad_every

    def before_step(self, trainer) -> None:
        if trainer.step % self.grad_every == 0:     # reads only the weights (autograd.grad)
            self._refresh(trainer.model, trainer.step)

    def graph_grads(self, trainer) -> list:
        if not self.grads:
            return []
        return [(layer.param, self.grads[layer.name].to(layer.param.device))   # resumed: on the host
                for layer in spectral_layers(trainer.model, list(self.grads))]

    def after_backward(self, trainer) -> None:
        for param, g in self.graph_grads(trainer):
            param.grad.add_(g.to(param.grad.dtype))

    @torch.no_grad()
    def at_log_point(self, trainer, rows):
        pen = self.penalty
        layers = host_layers(trainer.model, pen.layers)
        if not pen.fits:
            for layer in layers:
                pen.refit_layer(layer)
        alphas = {layer.name: pen.layer_alpha(layer) for layer in layers}
        cols = {f"alpha_hat_{n}": a.cpu().tolist() for n, a in alphas.items()}
        cols["penalty"] = pen.per_member(alphas).cpu().tolist()
        if self.active is not None:
            k = len(cols["penalty"])
            cols["penalty_refreshes"] = [self.refreshes] * k
            cols["penalty_refreshes_active"] = torch.broadcast_to(self.active, (k,)).tolist()
            cols["penalty_counted_from"] = [self.counted_from] * k
        return cols

    def state_dict(self) -> dict:
        return {"penalty": self.penalty.state_dict(),
                "grads": {n: g.cpu() for n, g in self.grads.items()},
                "refreshes": self.refreshes, "active": self.active, "counted_from": self.counted_from}

    def load_state_dict(self, sd: dict) -> None:
        self.penalty.load_state_dict(sd["penalty"])
        self.grads = dict(sd["grads"])
        # a checkpoint written before the count was kept: count from the resume step
        self.refreshes, self.active, self.counted_from = (sd.get("refreshes", 0), sd.get("active"),
                                                          sd.get("counted_from"))
