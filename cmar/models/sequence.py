"""Sequence encoders shared by the text encoder (over words) and story encoder (over frames).

Contract (register yours in ``SEQUENCE_ENCODERS``)::

    encoder(x, mask)    x (N, L, d), mask (N, L) bool, True on real positions
      -> states (N, L, d)

The RNNs are unidirectional and padding sits at the end, so states at real positions never
depend on padding: a window encodes the same alone or in a padded batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmar.models.registry import SEQUENCE_ENCODERS


class _RNNEncoder(nn.Module):
    rnn_class: type[nn.RNNBase] = nn.GRU

    def __init__(self, d_model: int, n_layers: int = 1, dropout: float = 0.1, **_):
        super().__init__()
        self.rnn = self.rnn_class(d_model, d_model, n_layers, batch_first=True,
                                  dropout=dropout if n_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(x)  # (N, L, d)
        return self.norm(states + x)


@SEQUENCE_ENCODERS.register("gru")
class GRUEncoder(_RNNEncoder):
    rnn_class = nn.GRU


@SEQUENCE_ENCODERS.register("lstm")
class LSTMEncoder(_RNNEncoder):
    rnn_class = nn.LSTM


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) fixed sine/cosine position codes (Vaswani et al., 2017)."""
    position = torch.arange(length).unsqueeze(1)
    scale = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    codes = torch.zeros(length, d_model)
    codes[:, 0::2] = torch.sin(position * scale)
    codes[:, 1::2] = torch.cos(position * scale)[:, : d_model // 2]
    return codes


class SinusoidalPositions(nn.Module):
    """Position codes for any length: ``positions(length, start=0)`` -> (length, d_model),
    the codes of positions start .. start + length - 1. The table starts at ``max_len`` rows
    and grows when a longer sequence comes (the codes of a position never change), so no
    caption is too long for it."""

    def __init__(self, d_model: int, max_len: int = 128):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_positions(max_len, d_model), persistent=False)

    def forward(self, length: int, start: int = 0) -> torch.Tensor:
        end = start + length
        if end > self.table.shape[0]:
            grown = sinusoidal_positions(max(end, 2 * self.table.shape[0]), self.d_model)
            self.table = grown.to(self.table)
        return self.table[start:end]


@SEQUENCE_ENCODERS.register("transformer")
class TransformerEncoder(nn.Module):
    """Pre-norm Transformer encoder with sinusoidal positions and a key padding mask."""

    def __init__(self, d_model: int, n_layers: int = 1, dropout: float = 0.1, n_heads: int = 4,
                 max_len: int = 512):
        super().__init__()
        self.positions = SinusoidalPositions(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.positions(x.shape[1])
        return self.norm(self.layers(x, src_key_padding_mask=~mask))  # (N, L, d)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions: (N, L, d), (N, L) -> (N, d)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """Context captions -> token states (N, L, d) and a pooled vector (N, d).

    Embeddings (padding id 0 stays zero) followed by one sequence encoder.
    """

    def __init__(self, vocab_size: int, d_model: int, kind: str = "gru", n_layers: int = 1,
                 dropout: float = 0.1, n_heads: int = 4, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.encoder = SEQUENCE_ENCODERS.build(kind, d_model=d_model, n_layers=n_layers,
                                               dropout=dropout, n_heads=n_heads)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        states = self.encoder(self.dropout(self.embed(tokens)), mask)  # (N, L, d)
        return states, masked_mean(states, mask)


class StoryEncoder(nn.Module):
    """The k fused frames (B, k, d) -> memory (B, k, d) and a summary (B, d) (the last state,
    which has read every frame in order)."""

    def __init__(self, d_model: int, kind: str = "gru", n_layers: int = 1, dropout: float = 0.1,
                 n_heads: int = 4):
        super().__init__()
        self.encoder = SEQUENCE_ENCODERS.build(kind, d_model=d_model, n_layers=n_layers,
                                               dropout=dropout, n_heads=n_heads)

    def forward(self, frames: torch.Tensor):
        mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        memory = self.encoder(frames, mask)  # (B, k, d)
        return memory, memory[:, -1]
