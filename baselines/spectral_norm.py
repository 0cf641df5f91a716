"""Spectral-norm regularisation (Yoshida & Miyato 2017): for every weight matrix W

    P = (β/2) Σ_l σ_max(W_l)²,        ∇_W P = β σ_max u vᵀ

with σ_max, u, v from one power iteration per step on a persistent left vector u
(``v = Wᵀu/‖Wᵀu‖, u = Wv/‖Wv‖, σ = uᵀWv``), as in the paper. Population members (stacked
weights) each have their own u. Conv weights are reshaped to (out, in·kernel) as in the paper.
"""
from __future__ import annotations

import torch
from torch import nn

from alphareg.hooks import TrainingHook
from alphareg.regularizers import spectral_layers


def _as_stack(W: torch.Tensor, stacked: bool) -> torch.Tensor:
    if stacked:
        return W.reshape(W.shape[0], W.shape[1], -1)
    return W.reshape(1, W.shape[0], -1)


class SpectralNormPenalty(TrainingHook):
    name = "spectral_norm"

    def __init__(self, beta: float = 0.01, seed: int = 0):
        if not beta >= 0:
            raise ValueError(f"spectral-norm beta must be >= 0, got {beta}")
        self.beta, self.seed = float(beta), int(seed)
        self.u: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def power_iteration(self, name: str, W: torch.Tensor):
        """One step for a stack W (B, N, M): returns σ (B,), u (B, N), v (B, M)."""
        u = self.u.get(name)
        if u is None or u.shape != W.shape[:2]:
            g = torch.Generator().manual_seed(self.seed)
            u = torch.randn(W.shape[:2], generator=g, dtype=W.dtype).to(W.device)
        u = u.to(W.device, W.dtype)
        v = torch.nn.functional.normalize(torch.einsum("bnm,bn->bm", W, u), dim=1)
        u = torch.nn.functional.normalize(torch.einsum("bnm,bm->bn", W, v), dim=1)
        self.u[name] = u
        sigma = torch.einsum("bn,bnm,bm->b", u, W, v)
        return sigma, u, v

    def _layers(self, model: nn.Module):
        for layer in spectral_layers(model):
            yield layer, layer.param.dim() == 3 and not layer.pooled

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Differentiable (β/2) Σ σ² for any module (σ = uᵀWv with u, v held fixed)."""
        total = 0.0
        for layer, stacked in self._layers(model):
            W = _as_stack(layer.param, stacked)
            _, u, v = self.power_iteration(layer.name, W.detach())
            total = total + (torch.einsum("bn,bnm,bm->b", u, W, v) ** 2).sum()
        return 0.5 * self.beta * total

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.penalty(model)

    @torch.no_grad()
    def after_backward(self, trainer) -> None:
        for layer, stacked in self._layers(trainer.model):
            W = _as_stack(layer.param, stacked)
            sigma, u, v = self.power_iteration(layer.name, W)
            grad = self.beta * sigma[:, None, None] * u[:, :, None] * v[:, None, :]
            layer.param.grad.add_(grad.reshape(layer.param.shape))

    @torch.no_grad()
    def at_log_point(self, trainer, rows):
        """The exact largest singular value of every layer and member (``sigma_max_<layer>``)."""
        return {f"sigma_max_{layer.name}": torch.linalg.matrix_norm(
                    _as_stack(layer.param, stacked), ord=2).cpu().tolist()
                for layer, stacked in self._layers(trainer.model)}

    def state_dict(self) -> dict:
        return {"u": {n: u.cpu() for n, u in self.u.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.u = {n: u.clone() for n, u in sd["u"].items()}
