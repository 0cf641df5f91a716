"""Per-member minibatch order: every member reshuffles the training set each epoch.

Member k owns a CPU ``torch.Generator`` seeded with its seed; at the start of each epoch it
draws ``torch.randperm(n, generator=G_k)`` and then serves batches
``perm[j*B:(j+1)*B]`` for j = 0 .. n//B - 1 (a remainder smaller than B is dropped; with the
paper's 1,000 points and B = 200 there is none). A standalone run of seed s therefore sees
exactly the batches member k = s sees in a population.
"""
from __future__ import annotations

from typing import Sequence

import torch


class EpochSampler:
    def __init__(self, n: int, batch_size: int, seeds: Sequence[int]):
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size {batch_size} must be in 1..{n}")
        self.n, self.batch_size = n, batch_size
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.batches_per_epoch = n // batch_size
        self.perm: torch.Tensor | None = None   # (K, n) current epoch's order
        self.pos = self.batches_per_epoch      # next batch index within the epoch

    def next(self) -> torch.Tensor:
        """(K, B) int64 indices of the next batch of every member."""
        if self.pos >= self.batches_per_epoch:
            self.perm = torch.stack([torch.randperm(self.n, generator=g) for g in self.gens])
            self.pos = 0
        b = self.batch_size
        idx = self.perm[:, self.pos * b:(self.pos + 1) * b]
        self.pos += 1
        return idx

    def state_dict(self) -> dict:
        return {"gens": [g.get_state() for g in self.gens], "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        if len(sd["gens"]) != len(self.gens):
            raise ValueError(f"sampler state has {len(sd['gens'])} members, expected {len(self.gens)}")
        for g, s in zip(self.gens, sd["gens"]):
            g.set_state(s)
        self.perm, self.pos = sd["perm"], int(sd["pos"])
