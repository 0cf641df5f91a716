"""Hand-written forward and backward of the population MLP (the engine's fast path).

For member k with batch X (B, n_0), layers l = 1..L, h_0 = X::

    a_l = h_{l-1} W_l^T + b_l,   h_l = relu(a_l) (l < L),   out = a_L
    MSE:  L_k = mean_{n,c} (out - Y)^2          dL/dout = 2 (out - Y) / (B C)
    CE:   L_k = mean_n -log softmax(out_n)_{y_n} dL/dout = (softmax(out) - Y) / B
    back: g_L = dL/dout;  dW_l = g_l^T h_{l-1};  db_l = sum_n g_l;
          g_{l-1} = (g_l W_l) * [h_{l-1} > 0]

Input columns that are zero in every training example (MNIST's border pixels: 189 of 784 in
the paper's 1,000-image sample) contribute exact zeros to ``a_1`` and to ``dW_1``, so the layer-1
products run over the active columns only (``x[:, A] W_1[:, A]^T`` and ``dW_1[:, A] = g_1^T
x[:, A]``, ``dW_1[:, not A] = 0``): 24 % fewer layer-1 FLOPs, the same result to round-off.

This is what autograd computes for ``PopulationMLP`` (same products, same ReLU mask
``threshold_backward``), without building a graph: every intermediate lives in a buffer
allocated once, every product writes into it (``out=``), and the input gradient of layer 1 is
never formed. On CUDA each product is one ``bmm``/``baddbmm`` over the K members; on the CPU it
is one ``mm``/``addmm`` per member (measured on 2 cores, float64, 200x784 @ 784x200: 48 GF/s
for a single 2-threaded GEMM, 31 GF/s per member inside a K = 8 ``bmm``). The gradients are left in
``p.grad`` (the same buffers every step), so training hooks see them exactly as after
``loss.backward()``. The losses are returned (K,) for logging.
"""
from __future__ import annotations

import torch

from .models import PopulationMLP


class FastMLPStep:
    """Loss and gradients of one minibatch step of a ``PopulationMLP`` (``loss`` mse or ce)."""

    def __init__(self, model: PopulationMLP, x_train: torch.Tensor, batch_size: int,
                 loss: str = "mse", batched: bool | None = None):
        if loss not in ("mse", "ce"):
            raise ValueError(f"the fast path supports mse and ce, not {loss!r}")
        self.model, self.loss = model, loss
        w0 = model.weights[0]
        self.batched = w0.device.type == "cuda" if batched is None else batched
        K, B, dev, dt = model.K, batch_size, w0.device, w0.dtype
        sizes = model.sizes

        def buf(*shape):
            return torch.empty(*shape, device=dev, dtype=dt)

        active = (x_train != 0).any(0)
        self.active = active.nonzero().squeeze(1)
        self.inactive = (~active).nonzero().squeeze(1)
        self.x_active = x_train[:, self.active].contiguous()       # (N, |A|)
        n_act = len(self.active)
        self.x = buf(K * B, n_act)
        self.w1 = buf(K, sizes[1], n_act)                          # W_1[:, A]
        self.gw1 = buf(K, sizes[1], n_act)                         # dW_1[:, A]
        self.acts = [buf(K, B, n) for n in sizes[1:]]             # a_l, ReLU applied in place
        self.deltas = [buf(K, B, n) for n in sizes[1:]]           # g_l
        self.grads_w = [torch.zeros_like(w) for w in model.weights]
        self.grads_b = [torch.zeros_like(b) for b in model.biases]
        self.y = buf(K, B, sizes[-1])

    @torch.no_grad()
    def __call__(self, onehot_all: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """idx (K, B) row indices into the training set (the ``x_train`` given at construction,
        and ``onehot_all``); returns the (K,) losses."""
        m = self.model
        K, B = idx.shape
        flat = idx.reshape(-1)
        torch.index_select(self.x_active, 0, flat, out=self.x)
        torch.index_select(m.weights[0], 2, self.active, out=self.w1)
        torch.index_select(onehot_all, 0, flat, out=self.y.view(K * B, -1))
        h = self.x.view(K, B, -1)
        L = m.n_layers
        for l in range(L):
            a = self.acts[l]
            w, b = (self.w1 if l == 0 else m.weights[l]), m.biases[l]
            if self.batched:
                torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), out=a)
            else:
                for k in range(K):
                    torch.addmm(b[k], h[k], w[k].t(), out=a[k])
            if l < L - 1:
                a.relu_()
            h = a
        out, g = self.acts[-1], self.deltas[-1]
        C = out.shape[-1]
        if self.loss == "mse":
            torch.sub(out, self.y, out=g)
            losses = g.pow(2).mean(dim=(1, 2))
            g.mul_(2.0 / (B * C))
        else:
            logp = torch.log_softmax(out, -1)
            losses = -(logp * self.y).sum(-1).mean(-1)
            torch.sub(logp.exp_(), self.y, out=g)
            g.div_(B)
        for l in range(L - 1, -1, -1):
            g = self.deltas[l]
            h_prev = self.x.view(K, B, -1) if l == 0 else self.acts[l - 1]
            gw, w = (self.gw1 if l == 0 else self.grads_w[l]), m.weights[l]
            if self.batched:
                torch.bmm(g.transpose(1, 2), h_prev, out=gw)
            else:
                for k in range(K):
                    torch.mm(g[k].t(), h_prev[k], out=gw[k])
            torch.sum(g, dim=1, out=self.grads_b[l])
            if l > 0:
                g_prev = self.deltas[l - 1]
                if self.batched:
                    torch.bmm(g, w, out=g_prev)
                else:
                    for k in range(K):
                        torch.mm(g[k], w[k], out=g_prev[k])
                g_prev.mul_(h_prev > 0)
        gw1 = self.grads_w[0]
        gw1.index_copy_(2, self.active, self.gw1)
        gw1.index_fill_(2, self.inactive, 0.0)    # hooks may have written there last step
        for p, gw in zip(m.weights, self.grads_w):
            p.grad = gw
        for p, gb in zip(m.biases, self.grads_b):
            p.grad = gb
        return losses
