"""Modular addition (a + b) mod p: the dataset, the losses and the trainer (paper B, Nanda et al.).

Dataset: all p^2 pairs (a, b), tokens ``[a, b, p]`` ("=" is token p), label (a + b) mod p. A
``torch.Generator`` seeded with ``data_seed`` permutes the p^2 pairs; the first
round(train_frac * p^2) are the training set, the rest the test set (shared by all members).
Training is full batch.

Losses, per member, always in float64 whatever the model's dtype (Nanda's
``cross_entropy_high_precision``):

* ``ce``:        L = -mean_n log softmax(z_n)_{y_n}
* ``stablemax``: L = -mean_n log( s(z_{n,y_n}) / sum_c s(z_{n,c}) ),  s(x) = x + 1 for x >= 0,
  1 / (1 - x) for x < 0  (Prieto et al. 2025, "Grokking at the edge of numerical stability").

The trainer is ``alphareg.engine.Trainer`` with this data, ``alphareg.transformer.PopulationTransformer``
and full-batch steps; the run directory, monitor, checkpoints, plots, penalty, controllers and
baselines are the engine's.
"""
from __future__ import annotations

import hashlib

import torch

from .data import Split
from .engine import Trainer
from .transformer import PopulationTransformer


def modadd_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All p^2 inputs as tokens (p^2, 3) = [a, b, p] in row-major (a, b) order, labels (p^2,)."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return tokens, (a + b) % p


def modadd_split(p: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into ``modadd_pairs``) of the training and test pairs: a seeded permutation cut
    at round(train_frac * p^2)."""
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(train_frac * p * p)
    return perm[:n_train], perm[n_train:]


def modadd_data(p: int = 113, train_frac: float = 0.3, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[Split, Split, dict]:
    """(train, test, info) Splits; ``x`` holds the tokens, ``onehot`` is unused (empty)."""
    tokens, labels = modadd_pairs(p)
    tr, te = modadd_split(p, train_frac, seed)
    sha = hashlib.sha256(tr.numpy().tobytes() + str(p).encode()).hexdigest()[:16]
    info = {"source": f"modular addition p={p}", "p": p, "train_frac": train_frac,
            "n_train": len(tr), "n_test": len(te), "train_indices_sha": sha}

    def split(idx):
        return Split(tokens[idx].to(device), labels[idx].to(device),
                     torch.empty(0, device=device))
    return split(tr), split(te), info


def stablemax_log_probs(z: torch.Tensor) -> torch.Tensor:
    """log StableMax(z) over the last axis: log s(z_i) - log sum_j s(z_j)."""
    s = torch.where(z >= 0, z + 1, 1 / (1 - torch.clamp(z, max=0)))
    return s.log() - s.sum(-1, keepdim=True).log()


def modadd_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """(K,) mean loss per member, computed in float64: logits (K, N, p), labels (N,)."""
    z = logits.to(torch.float64)
    logp = stablemax_log_probs(z) if kind == "stablemax" else z.log_softmax(-1)
    picked = logp.gather(-1, labels.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    return -picked.mean(-1)


class ModAddTrainer(Trainer):
    """Full-batch training of a ``PopulationTransformer`` on modular addition."""

    def load_data(self):
        c = self.cfg
        return modadd_data(c.modulus, c.train_frac, c.data_seed, self.device)

    def build_model(self):
        c = self.cfg
        return PopulationTransformer(c.modulus, c.seeds, c.d_model, c.n_heads, c.d_head, c.d_mlp,
                                     self.dtype)

    def build_sampler(self):
        return None   # full batch: every step sees the whole training set

    def build_fast_step(self):
        return None   # autograd (the fast path is the MLP's); AdamW is still the fused kernel

    def batch_losses(self) -> torch.Tensor:
        tr = self.train_set
        return modadd_losses(self.model(tr.x), tr.y, self.cfg.loss)

    @torch.no_grad()
    def task_metrics(self) -> tuple[dict, list, torch.Tensor]:
        tr, te, kind = self.train_set, self.test_set, self.cfg.loss
        logits_tr, hidden = self.model(tr.x, return_hidden=True)
        logits_te = self.model(te.x)
        cols = {"train_loss": modadd_losses(logits_tr, tr.y, kind),
                "train_acc": (logits_tr.argmax(-1) == tr.y).to(self.dtype).mean(1),
                "test_loss": modadd_losses(logits_te, te.y, kind),
                "test_acc": (logits_te.argmax(-1) == te.y).to(self.dtype).mean(1)}
        return cols, hidden, logits_tr
