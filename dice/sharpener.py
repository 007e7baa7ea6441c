"""The DICE sharpener (paper A.1): two linear layers around one cross-attention block.

``fc1`` (shared by both inputs) -> ReLU -> multi-head cross-attention (query from the prompt
embedding ``c``, key/value from the unconditional/negative embedding ``u``) -> ReLU -> ``fc2``.
The module returns the *residual*; :func:`dice.methods.dice.apply_sharpener` adds it (the paper's rule).
A plain ``nn.Module``: files and the Hub are :class:`dice.checkpoint.TrainedSharpener`'s business.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .paper import SHARPENER_HEADS, SHARPENER_INNER_DIM


class Sharpener(nn.Module):
    """The DICE sharpener ``f(c, u)`` for text embeddings ``dim`` wide (paper A.1)."""

    def __init__(self, dim: int, inner_dim: int = SHARPENER_INNER_DIM, num_heads: int = SHARPENER_HEADS):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner_dim {inner_dim} must be divisible by num_heads {num_heads}")
        self.dim, self.inner_dim, self.num_heads = dim, inner_dim, num_heads
        self.fc1 = nn.Linear(dim, inner_dim)
        self.to_q = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, inner_dim)
        self.fc2 = nn.Linear(inner_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, -1).transpose(1, 2)

    def forward(self, c: torch.Tensor, u: torch.Tensor, u_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Residual for prompt embedding ``c`` [B, T, dim] given context ``u`` [B, T', dim], or one context
        [1, T', dim] for the whole batch: projected once, it gives the same residuals for less work.

        ``u_mask`` [B or 1, T'] (1 = keep) hides padded context tokens (PixArt's T5 mask option).
        """
        batch, tokens = c.shape[:2]
        hc, hu = F.relu(self.fc1(c)), F.relu(self.fc1(u))
        q, k, v = self._heads(self.to_q(hc)), self._heads(self.to_k(hu)), self._heads(self.to_v(hu))
        one_context = len(u) == 1 < batch
        if one_context:  # every prompt's queries in one sequence against the one context: [1, heads, B*T, head dim]
            q = q.transpose(0, 1).reshape(1, self.num_heads, batch * tokens, -1)
        attn_mask = None if u_mask is None else u_mask.bool()[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if one_context:
            h = h.view(self.num_heads, batch, tokens, -1).transpose(0, 1)
        h = h.transpose(1, 2).reshape(batch, tokens, self.inner_dim)
        return self.fc2(F.relu(self.to_out(h)))
