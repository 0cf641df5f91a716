"""The modular-addition transformer of Nanda et al. (2023), paper B's second baseline.

One layer, no LayerNorm, input tokens ``a b =`` (vocabulary p + 1: the numbers 0..p-1 and "=" = p),
d_model 128, 4 heads x 32, d_mlp 512, ReLU, output logits over the p residues at the last
position::

    x_j   = E[t_j] + P[j]                                  (embedding, positional embedding)
    q     = W_Q x_2,  k_j = W_K x_j,  v_j = W_V x_j         (per head h: rows h*d_head ... )
    a_hj  = softmax_j(q_h . k_hj / sqrt(d_head))            (causal: the last position sees j = 0, 1, 2)
    r     = x_2 + W_O concat_h(sum_j a_hj v_hj)
    r     = r + W_out relu(W_in r + b_in) + b_out
    logits = W_U r                                          (p outputs)

Only the last position's output enters the loss, and with a single layer it depends on the other
positions only through their keys and values, so the population forward computes just those.
Initialisation (Nanda's code): every matrix ~ N(0, 1/d_model), W_U ~ N(0, 1/(p + 1)), biases 0.

``ModAddTransformer`` is one member built from ``nn.Embedding`` / ``nn.Linear`` modules (so
weightwatcher sees every matrix); ``PopulationTransformer`` holds K members stacked on a leading
dimension and exposes the same interface as ``alphareg.models.PopulationMLP`` (``weights``,
``layer_names()``, ``layer_biases()``, ``member(k)``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .models import StackedPopulation

#: HTSR layers in order: (name, standalone module attribute, has bias)
LAYERS = (("embed", "embed", False), ("attn_q", "W_Q", False), ("attn_k", "W_K", False),
          ("attn_v", "W_V", False), ("attn_o", "W_O", False), ("mlp_in", "mlp_in", True),
          ("mlp_out", "mlp_out", True), ("unembed", "unembed", False))
LAYER_NAMES = tuple(n for n, _, _ in LAYERS)
N_CTX = 3


def init_tensors(p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, seed: int,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Nanda's initialisation of one member, drawn on the CPU in float64 from ``seed`` (device
    and dtype independent), then cast. Keys: the standalone model's state_dict keys."""
    g = torch.Generator().manual_seed(seed)
    hd = n_heads * d_head

    def normal(*shape, fan):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) / math.sqrt(fan)).to(dtype)

    return {"embed.weight": normal(p + 1, d_model, fan=d_model),
            "pos_embed.weight": normal(N_CTX, d_model, fan=d_model),
            "W_Q.weight": normal(hd, d_model, fan=d_model),
            "W_K.weight": normal(hd, d_model, fan=d_model),
            "W_V.weight": normal(hd, d_model, fan=d_model),
            "W_O.weight": normal(d_model, hd, fan=d_model),
            "mlp_in.weight": normal(d_mlp, d_model, fan=d_model),
            "mlp_in.bias": torch.zeros(d_mlp, dtype=dtype),
            "mlp_out.weight": normal(d_model, d_mlp, fan=d_model),
            "mlp_out.bias": torch.zeros(d_model, dtype=dtype),
            "unembed.weight": normal(p, d_model, fan=p + 1)}


class ModAddTransformer(nn.Module):
    """One member, written out in full (all positions, causal mask) as the readable reference."""

    def __init__(self, p: int = 113, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                 d_mlp: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.p, self.n_heads, self.d_head = p, n_heads, d_head
        hd = n_heads * d_head
        self.embed = nn.Embedding(p + 1, d_model, dtype=dtype)
        self.pos_embed = nn.Embedding(N_CTX, d_model, dtype=dtype)
        self.W_Q = nn.Linear(d_model, hd, bias=False, dtype=dtype)
        self.W_K = nn.Linear(d_model, hd, bias=False, dtype=dtype)
        self.W_V = nn.Linear(d_model, hd, bias=False, dtype=dtype)
        self.W_O = nn.Linear(hd, d_model, bias=False, dtype=dtype)
        self.mlp_in = nn.Linear(d_model, d_mlp, dtype=dtype)
        self.mlp_out = nn.Linear(d_mlp, d_model, dtype=dtype)
        self.unembed = nn.Linear(d_model, p, bias=False, dtype=dtype)
        self.load_state_dict(init_tensors(p, d_model, n_heads, d_head, d_mlp, seed, dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, 3) int64 -> logits (N, p) at the last position."""
        N, T = tokens.shape
        x = self.embed(tokens) + self.pos_embed.weight[:T]
        H, dh = self.n_heads, self.d_head
        q = self.W_Q(x).view(N, T, H, dh)
        k = self.W_K(x).view(N, T, H, dh)
        v = self.W_V(x).view(N, T, H, dh)
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dh)
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("nhqk,nkhd->nqhd", attn, v).reshape(N, T, H * dh)
        x = x + self.W_O(z)
        x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
        return self.unembed(x[:, -1])


class PopulationTransformer(StackedPopulation):
    """K transformers with stacked parameters: ``weights[l]`` (K, out, in) in ``LAYERS`` order
    (the embedding as (K, p + 1, d_model), like ``nn.Embedding.weight``), ``biases`` = the MLP
    biases, ``pos_embed`` (K, 3, d_model). Member k equals ``ModAddTransformer(seed=seeds[k])``."""

    def __init__(self, p: int, seeds: Sequence[int], d_model: int = 128, n_heads: int = 4,
                 d_head: int = 32, d_mlp: int = 512, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.p, self.seeds = p, list(seeds)
        self.dims = dict(d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp)
        inits = [init_tensors(p, d_model, n_heads, d_head, d_mlp, s, dtype) for s in seeds]

        def stack(key):
            return nn.Parameter(torch.stack([t[key] for t in inits]))

        self.weights = nn.ParameterList(stack(f"{attr}.weight") for _, attr, _ in LAYERS)
        self.biases = nn.ParameterList(stack(f"{attr}.bias") for _, attr, b in LAYERS if b)
        self.pos_embed = stack("pos_embed.weight")

    def layer_names(self) -> list[str]:
        return list(LAYER_NAMES)

    def spec(self) -> dict:
        """Constructor arguments (stored in snapshots; see ``models.population_from_snapshot``)."""
        return {"kind": "modadd", "p": self.p, "dims": dict(self.dims)}

    def extra_params(self) -> dict[str, nn.Parameter]:
        """Parameters outside ``weights`` / ``biases`` (saved in snapshots)."""
        return {"pos_embed": self.pos_embed}

    def layer_biases(self) -> list[nn.Parameter | None]:
        """The bias of each HTSR layer (None where the layer has none)."""
        it = iter(self.biases)
        return [next(it) if b else None for _, _, b in LAYERS]

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False):
        """tokens (N, 3) shared by all members -> logits (K, N, p).

        Queries, keys and values are linear in the embeddings, so they are computed once per
        vocabulary entry and position, ``k_j = (E W_K^T)[t_j] + (P W_K^T)[j]``, and gathered
        (V + T rows instead of N T). With ``return_hidden``
        also returns ``[relu(W_in r + b_in)]`` (K, N, d_mlp)."""
        E, Wq, Wk, Wv, Wo, Win, Wout, Wu = self.weights
        b_in, b_out = self.biases
        P = self.pos_embed
        K, N = self.K, tokens.shape[0]
        H, dh = self.dims["n_heads"], self.dims["d_head"]
        T = tokens.shape[1]
        Wqkv = torch.cat([Wq, Wk, Wv], dim=1).transpose(1, 2)            # (K, d, 3HD)
        per_token = torch.bmm(E, Wqkv)                                    # (K, V, 3HD)
        per_pos = torch.bmm(P[:, :T], Wqkv)                               # (K, T, 3HD)
        qkv = per_token[:, tokens] + per_pos.unsqueeze(1)                 # (K, N, T, 3HD)
        q, k, v = qkv.view(K, N, T, 3, H, dh).unbind(3)
        q = q[:, :, T - 1]                                                # (K, N, H, dh)
        x_last = E[:, tokens[:, T - 1]] + P[:, T - 1].unsqueeze(1)         # (K, N, d)
        scores = torch.einsum("knhd,knthd->knht", q, k) / math.sqrt(dh)
        z = torch.einsum("knht,knthd->knhd", scores.softmax(-1), v).reshape(K, N, H * dh)
        r = torch.baddbmm(x_last, z, Wo.transpose(1, 2))     # (K, N, d)
        h = torch.relu(torch.baddbmm(b_in.unsqueeze(1), r, Win.transpose(1, 2)))
        r = r + torch.baddbmm(b_out.unsqueeze(1), h, Wout.transpose(1, 2))
        logits = torch.bmm(r, Wu.transpose(1, 2))
        return (logits, [h]) if return_hidden else logits

    def member(self, k: int) -> ModAddTransformer:
        """A standalone ``ModAddTransformer`` copy of member k (e.g. for weightwatcher)."""
        m = ModAddTransformer(self.p, seed=0, dtype=self.weights[0].dtype, **self.dims)
        sd = {f"{attr}.weight": w[k] for (_, attr, _), w in zip(LAYERS, self.weights)}
        sd.update({f"{attr}.bias": b[k] for (_, attr, _), b in zip(
            [l for l in LAYERS if l[2]], self.biases)})
        sd["pos_embed.weight"] = self.pos_embed[k]
        m.load_state_dict({key: v.detach().cpu() for key, v in sd.items()})
        return m.to(self.weights[0].device)
