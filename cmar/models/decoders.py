"""Caption decoders: LSTM, GRU and Transformer behind one interface.

Contract of every decoder (register yours in ``DECODERS``)::

    decoder(target_in, memory, memory_mask) -> logits    teacher forcing
        target_in (B, L) ids starting with [BOS]; memory (B, M, d); mask (B, M) True = real
        logits (B, L, V): position i predicts target_out[:, i]
    decoder.init_state(memory, memory_mask) -> state     for generation
    decoder.step(tokens (N,), state) -> logits (N, V), state

Greedy, beam and nucleus decoding come from :class:`cmar.models.decoding.Decoding`.
The RNN decoders attend over the memory at every step (Luong-style: the RNN state queries the
memory, the output reads ``[h_t ; context_t]``), not only through their initial state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmar.models.decoding import Decoding, State
from cmar.models.registry import DECODERS
from cmar.models.sequence import masked_mean, sinusoidal_positions


class CaptionDecoder(Decoding, nn.Module):
    """Base: token embedding, output layer and the special ids decoding needs."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 unk_id: int = 3):
        super().__init__()
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)


class _RNNDecoder(CaptionDecoder):
    rnn_class: type[nn.RNNBase] = nn.GRU

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, **ids):
        super().__init__(vocab_size, d_model, n_heads, n_layers, dropout, **ids)
        self.n_layers = n_layers
        self.rnn = self.rnn_class(d_model, d_model, n_layers, batch_first=True,
                                  dropout=dropout if n_layers > 1 else 0.0)
        self.init_hidden = nn.Linear(d_model, 2 * n_layers * d_model)  # h0 (and c0 for LSTM)
        self.attend = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.combine = nn.Linear(2 * d_model, d_model)

    def _initial(self, memory, memory_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """h0, c0 as (B, layers, d) from the mean of the memory."""
        start = torch.tanh(self.init_hidden(masked_mean(memory, memory_mask)))
        h0, c0 = start.view(memory.shape[0], 2, self.n_layers, -1).unbind(1)
        return h0.contiguous(), c0.contiguous()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, heads, L, d / heads)."""
        b, length, d = x.shape
        heads = self.attend.num_heads
        return x.view(b, length, heads, d // heads).transpose(1, 2)

    def _keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory projected to attention keys and values once, (B, heads, M, d/heads)
        each, instead of at every generated token."""
        d = memory.shape[-1]
        w, b = self.attend.in_proj_weight, self.attend.in_proj_bias
        return (self._heads(F.linear(memory, w[d:2 * d], b[d:2 * d])),
                self._heads(F.linear(memory, w[2 * d:], b[2 * d:])))

    def _read(self, states, keys, values, memory_mask) -> torch.Tensor:
        """Multi-head attention of states (B, L, d) over the projected memory -> (B, L, d)."""
        d = states.shape[-1]
        q = self._heads(F.linear(states, self.attend.in_proj_weight[:d],
                                 self.attend.in_proj_bias[:d]))
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=memory_mask[:, None, None, :],
            dropout_p=self.attend.dropout if self.training else 0.0)  # (B, heads, L, d/heads)
        return self.attend.out_proj(out.transpose(1, 2).reshape(states.shape))

    def _run(self, tokens, hidden, cell, keys, values, memory_mask):
        """tokens (B, L) -> logits (B, L, V), final hidden and cell (B, layers, d)."""
        x = self.dropout(self.embed(tokens))  # (B, L, d)
        h, c = hidden.transpose(0, 1).contiguous(), cell.transpose(0, 1).contiguous()
        if isinstance(self.rnn, nn.LSTM):
            states, (h, c) = self.rnn(x, (h, c))
        else:
            states, h = self.rnn(x, h)  # (B, L, d)
        context = self._read(states, keys, values, memory_mask)  # memory read at every step
        mixed = torch.tanh(self.combine(torch.cat([states, context], dim=-1)))
        return self.out(self.dropout(mixed)), h.transpose(0, 1), c.transpose(0, 1)

    def forward(self, target_in, memory, memory_mask):
        h0, c0 = self._initial(memory, memory_mask)
        return self._run(target_in, h0, c0, *self._keys_values(memory), memory_mask)[0]

    def init_state(self, memory, memory_mask) -> State:
        h0, c0 = self._initial(memory, memory_mask)
        keys, values = self._keys_values(memory)
        return {"memory_mask": memory_mask, "keys": keys, "values": values, "hidden": h0,
                "cell": c0}

    def step(self, tokens, state: State):
        logits, h, c = self._run(tokens[:, None], state["hidden"], state["cell"],
                                 state["keys"], state["values"], state["memory_mask"])
        return logits[:, -1], {**state, "hidden": h, "cell": c}


@DECODERS.register("lstm")
class LSTMDecoder(_RNNDecoder):
    rnn_class = nn.LSTM


@DECODERS.register("gru")
class GRUDecoder(_RNNDecoder):
    rnn_class = nn.GRU  # its "cell" state is carried but unused


@DECODERS.register("transformer")
class TransformerDecoder(CaptionDecoder):
    """Pre-norm Transformer decoder: causal self-attention, cross-attention to the memory."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, max_len: int = 128, **ids):
        super().__init__(vocab_size, d_model, n_heads, n_layers, dropout, **ids)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model),
                             persistent=False)
        layer = nn.TransformerDecoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, n_layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, target_in, memory, memory_mask):
        length = target_in.shape[1]
        x = self.dropout(self.embed(target_in) + self.positions[:length])  # (B, L, d)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device,
                                                                dtype=x.dtype)
        x = self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True,
                        memory_key_padding_mask=~memory_mask)
        return self.out(self.norm(x))  # (B, L, V)

    def init_state(self, memory, memory_mask) -> State:
        empty = torch.empty(memory.shape[0], 0, dtype=torch.long, device=memory.device)
        return {"memory": memory, "memory_mask": memory_mask, "tokens": empty}

    def step(self, tokens, state: State):
        # Re-runs the prefix each step: O(L^2) but captions are short (<= 40 tokens).
        prefix = torch.cat([state["tokens"], tokens[:, None]], dim=1)
        logits = self.forward(prefix, state["memory"], state["memory_mask"])
        return logits[:, -1], {**state, "tokens": prefix}
