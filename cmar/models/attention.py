"""Multi-head attention that owns its projections, for the decoders.

Both RNN decoders and the Transformer decoder read the story memory with it, and the
Transformer decoder also attends over its own tokens with it. Keys and values are projected
by a separate call, so a decoder projects the memory once per generated caption (and keeps
its own past keys and values) instead of at every token::

    attention = Attention(d_model=128, n_heads=4)
    keys, values = attention.keys_values(memory)        # (B, heads, M, d / heads) each
    out = attention(queries, keys, values, mask)         # queries (B, L, d) -> (B, L, d)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Scaled dot-product attention over ``n_heads`` heads, with query, key, value and output
    projections of ``d_model`` features each."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, heads, L, d / heads)."""
        b, length, d = x.shape
        return x.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S, d) -> keys, values (B, heads, S, d / heads)."""
        return self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """queries (B, L, d) over keys, values (B, heads, S, d / heads) -> (B, L, d).

        ``mask`` (B, S), True where a key may be read; ``causal``: query i reads keys 0..i
        only (for L == S, training a decoder on whole captions).
        """
        q = self.split_heads(self.query(queries))
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=attn_mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)  # (B, heads, L, d / heads)
        return self.out(out.transpose(1, 2).reshape(queries.shape))
