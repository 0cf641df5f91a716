"""The paper's MLP, as a single model and as a lockstep population of K members.

Single model (paper A Table 3): Linear 784->200, ReLU, Linear 200->200, ReLU, Linear 200->10,
PyTorch's default init, then every weight and bias multiplied by ``init_scale`` (8.0).

Population: member k's layer l is ``W[l][k]`` of shape (out, in) and ``b[l][k]`` of shape (out,),
stacked on a leading dimension, so one batched matmul
``h_{l+1}[k] = relu(h_l[k] @ W[l][k]^T + b[l][k])`` advances all members at once. Member k is
initialised exactly like a standalone model built under ``torch.manual_seed(seeds[k])``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def make_mlp(sizes: Sequence[int], seed: int, init_scale: float = 8.0,
             dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Standalone MLP: default nn.Linear init under ``manual_seed(seed)``, then scaled.

    The global RNG is left untouched (``fork_rng``); initialisation happens on the CPU so a
    run initialises identically on every device.
    """
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(init_scale)
    return model


class StackedPopulation(nn.Module):
    """Base of the population models: ``seeds`` (one member each) and ``weights`` (the HTSR
    layers' (K, out, in) stacks) define K and the number of layers."""

    @property
    def K(self) -> int:
        return len(self.seeds)

    @property
    def n_layers(self) -> int:
        return len(self.weights)


class PopulationMLP(StackedPopulation):
    """K MLPs with stacked parameters: ``weights[l]`` (K, out, in), ``biases[l]`` (K, out)."""

    def __init__(self, sizes: Sequence[int], seeds: Sequence[int], init_scale: float = 8.0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.sizes = list(sizes)
        self.seeds = list(seeds)
        members = [make_mlp(sizes, s, init_scale, dtype) for s in seeds]
        linears = [[m for m in mem if isinstance(m, nn.Linear)] for mem in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([lin[l].weight.detach() for lin in linears]))
            for l in range(len(sizes) - 1))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([lin[l].bias.detach() for lin in linears]))
            for l in range(len(sizes) - 1))

    def layer_names(self) -> list[str]:
        return [f"fc{l + 1}" for l in range(self.n_layers)]

    def layer_biases(self) -> list[nn.Parameter]:
        """The bias of each layer (same order as ``weights``)."""
        return list(self.biases)

    def spec(self) -> dict:
        """Constructor arguments (stored in snapshots; see ``population_from_snapshot``)."""
        return {"kind": "mlp", "sizes": self.sizes}

    def extra_params(self) -> dict[str, nn.Parameter]:
        """Parameters outside ``weights`` / ``biases`` (none for the MLP)."""
        return {}

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """x: (K, B, in) per-member batches, or (B, in) shared by all members -> (K, B, out).

        With ``return_hidden`` also returns the post-ReLU activations of each hidden layer.
        """
        hidden = []
        h = x
        last = self.n_layers - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:   # shared input: broadcast matmul (B, in) x (K, in, out)
                h = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if l < last:
                h = torch.relu(h)
                hidden.append(h)
        return (h, hidden) if return_hidden else h

    def member(self, k: int) -> nn.Sequential:
        """A standalone ``nn.Sequential`` copy of member k (e.g. for weightwatcher)."""
        model = make_mlp(self.sizes, 0, 1.0, self.weights[0].dtype)
        lins = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(lins, self.weights, self.biases):
                lin.weight.copy_(w[k])
                lin.bias.copy_(b[k])
        return model.to(self.weights[0].device)


def population_from_snapshot(snap: dict) -> nn.Module:
    """Rebuild the population of a weight snapshot (``Trainer.save_snapshot``): the MLP, or the
    model named by the snapshot's ``spec``; weights, biases and extra parameters copied in."""
    w = snap["weights"]
    spec = snap.get("spec", {"kind": "mlp"})   # snapshots written before the spec was stored
    if spec["kind"] == "modadd":
        from .transformer import PopulationTransformer
        pop = PopulationTransformer(spec["p"], snap["seeds"], dtype=w[0].dtype, **spec["dims"])
    else:
        sizes = [w[0].shape[2]] + [x.shape[1] for x in w]
        pop = PopulationMLP(sizes, snap["seeds"], 1.0, w[0].dtype)
    with torch.no_grad():
        for dst, src in zip(list(pop.weights) + list(pop.biases), list(w) + list(snap["biases"])):
            dst.copy_(src)
        for name, p in pop.extra_params().items():
            p.copy_(snap["extra"][name])
    return pop
