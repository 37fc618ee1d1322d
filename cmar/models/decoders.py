"""Caption decoders: LSTM, GRU and Transformer behind one interface.

Contract of every decoder (register yours in ``DECODERS``)::

    decoder(target_in, memory, memory_mask) -> logits    teacher forcing
        target_in (B, L) ids starting with [BOS]; memory (B, M, d); mask (B, M) True = real
        logits (B, L, V): position i predicts target_out[:, i]
    decoder.init_state(memory, memory_mask) -> state     for generation
    decoder.step(tokens (N,), state) -> logits (N, V), state
        state: a dict of batch-first tensors; entries named ``memory...`` are the same for
        every beam of a window (beam search never copies them), the others follow the beams

Greedy, beam and nucleus decoding come from :class:`cmar.models.decoding.Decoding`.
The RNN decoders attend over the memory at every step (Luong-style: the RNN state queries the
memory, the output reads ``[h_t ; context_t]``), not only through their initial state.
"""

from __future__ import annotations

import torch
from torch import nn

from cmar.models.attention import Attention
from cmar.models.decoding import Decoding, State
from cmar.models.registry import DECODERS
from cmar.models.sequence import SinusoidalPositions, masked_mean


class CaptionDecoder(Decoding, nn.Module):
    """Base: token embedding, output layer and the special ids decoding needs. ``max_len``:
    the longest caption (in tokens, with [BOS]) the config expects."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 unk_id: int = 3, max_len: int = 128):
        super().__init__()
        self.max_len = max_len
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)


class _RNNDecoder(CaptionDecoder):
    """An RNN over the caption; at every step its output reads the memory through
    :class:`Attention` and ``[h_t ; context_t]`` gives the logits. Subclasses name the
    recurrent states they carry (``carried``) and run the RNN on them (``_recur``)."""

    rnn_class: type[nn.RNNBase]
    carried: tuple[str, ...]  # recurrent states, each (B, layers, d) in a generation state

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, **ids):
        super().__init__(vocab_size, d_model, n_heads, n_layers, dropout, **ids)
        self.n_layers = n_layers
        self.rnn = self.rnn_class(d_model, d_model, n_layers, batch_first=True,
                                  dropout=dropout if n_layers > 1 else 0.0)
        # every carried state of every layer starts from the mean of the memory
        self.init_states = nn.Linear(d_model, len(self.carried) * n_layers * d_model)
        self.attention = Attention(d_model, n_heads, dropout)
        self.combine = nn.Linear(2 * d_model, d_model)

    def _initial(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> State:
        """The carried states, each (B, layers, d), from the mean of memory (B, M, d)."""
        start = torch.tanh(self.init_states(masked_mean(memory, memory_mask)))
        parts = start.view(memory.shape[0], len(self.carried), self.n_layers, -1).unbind(1)
        return {name: part.contiguous() for name, part in zip(self.carried, parts, strict=True)}

    def _recur(self, x: torch.Tensor, carried: State) -> tuple[torch.Tensor, State]:
        """x (B, L, d) -> RNN outputs (B, L, d) and the carried states after the last step."""
        raise NotImplementedError

    def _run(self, tokens: torch.Tensor, carried: State, keys: torch.Tensor,
             values: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        """tokens (B, L) -> logits (B, L, V) and the carried states after them."""
        states, carried = self._recur(self.dropout(self.embed(tokens)), carried)  # (B, L, d)
        context = self.attention(states, keys, values, memory_mask)  # memory read every step
        mixed = torch.tanh(self.combine(torch.cat([states, context], dim=-1)))
        return self.out(self.dropout(mixed)), carried

    def forward(self, target_in, memory, memory_mask):
        keys, values = self.attention.keys_values(memory)
        return self._run(target_in, self._initial(memory, memory_mask), keys, values,
                         memory_mask)[0]

    def init_state(self, memory, memory_mask) -> State:
        keys, values = self.attention.keys_values(memory)  # once per caption
        return {"memory_mask": memory_mask, "memory_keys": keys, "memory_values": values,
                **self._initial(memory, memory_mask)}

    def step(self, tokens, state: State):
        carried = {name: state[name] for name in self.carried}
        logits, carried = self._run(tokens[:, None], carried, state["memory_keys"],
                                    state["memory_values"], state["memory_mask"])
        return logits[:, -1], {**state, **carried}


def _layers_first(state: torch.Tensor) -> torch.Tensor:
    """(B, layers, d) -> (layers, B, d), the layout ``nn.LSTM`` and ``nn.GRU`` take."""
    return state.transpose(0, 1).contiguous()


@DECODERS.register("lstm")
class LSTMDecoder(_RNNDecoder):
    rnn_class = nn.LSTM
    carried = ("hidden", "cell")

    def _recur(self, x, carried):
        states, (h, c) = self.rnn(x, (_layers_first(carried["hidden"]),
                                      _layers_first(carried["cell"])))
        return states, {"hidden": h.transpose(0, 1), "cell": c.transpose(0, 1)}


@DECODERS.register("gru")
class GRUDecoder(_RNNDecoder):
    rnn_class = nn.GRU
    carried = ("hidden",)

    def _recur(self, x, carried):
        states, h = self.rnn(x, _layers_first(carried["hidden"]))
        return states, {"hidden": h.transpose(0, 1)}


class TransformerBlock(nn.Module):
    """One pre-norm decoder layer: causal self-attention, attention over the memory, then a
    feed-forward network, each added back to its input."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.self_attention = Attention(d_model, n_heads, dropout)
        self.memory_attention = Attention(d_model, n_heads, dropout)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(),
                                          nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, L, d) -> (B, L, d), and the self-attention keys and values of every token so
        far, (B, heads, P + L, d / heads) each.

        ``past=None``: x is a whole caption, each token reads itself and those before it.
        Otherwise x is one new token (L = 1) and ``past`` the keys and values of the P tokens
        before it: the cache of incremental generation.
        """
        h = self.norms[0](x)
        keys, values = self.self_attention.keys_values(h)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        x = x + self.dropout(self.self_attention(h, keys, values, causal=past is None))
        x = x + self.dropout(self.memory_attention(self.norms[1](x), *memory_kv, memory_mask))
        x = x + self.dropout(self.feed_forward(self.norms[2](x)))
        return x, (keys, values)


@DECODERS.register("transformer")
class TransformerDecoder(CaptionDecoder):
    """Pre-norm Transformer decoder with sinusoidal positions.

    Generation is incremental: ``init_state`` projects the memory's keys and values once per
    layer, and each ``step`` runs only the new token, reading the cached keys and values of
    the tokens before it. ``use_cache = False`` re-runs the whole prefix at every step
    instead (the reference the cache is tested and benchmarked against).
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, **ids):
        super().__init__(vocab_size, d_model, n_heads, n_layers, dropout, **ids)
        self.n_heads = n_heads
        self.positions = SinusoidalPositions(d_model, self.max_len)  # grows past max_len if needed
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.use_cache = True

    def _memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [block.memory_attention.keys_values(memory) for block in self.blocks]

    def _run(self, tokens, start, memory_kv, memory_mask, past=None):
        """tokens (B, L) at positions start .. start + L - 1 -> logits (B, L, V) and every
        layer's self-attention keys and values."""
        x = self.dropout(self.embed(tokens) + self.positions(tokens.shape[1], start))
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, memory_kv[i], memory_mask, None if past is None else past[i])
            present.append(kv)
        return self.out(self.norm(x)), present

    def forward(self, target_in, memory, memory_mask):
        return self._run(target_in, 0, self._memory_kv(memory), memory_mask)[0]  # (B, L, V)

    def init_state(self, memory, memory_mask) -> State:
        b, d = memory.shape[0], memory.shape[-1]
        if not self.use_cache:
            empty = torch.empty(b, 0, dtype=torch.long, device=memory.device)
            return {"memory": memory, "memory_mask": memory_mask, "tokens": empty}
        state = {"memory_mask": memory_mask}
        nothing = memory.new_zeros(b, self.n_heads, 0, d // self.n_heads)
        for i, (keys, values) in enumerate(self._memory_kv(memory)):
            state[f"memory_keys.{i}"], state[f"memory_values.{i}"] = keys, values
            state[f"keys.{i}"], state[f"values.{i}"] = nothing, nothing
        return state

    def step(self, tokens, state: State):
        if not self.use_cache:  # the whole prefix again, and the memory projected again
            prefix = torch.cat([state["tokens"], tokens[:, None]], dim=1)
            logits = self.forward(prefix, state["memory"], state["memory_mask"])
            return logits[:, -1], {**state, "tokens": prefix}
        layers = range(len(self.blocks))
        memory_kv = [(state[f"memory_keys.{i}"], state[f"memory_values.{i}"]) for i in layers]
        past = [(state[f"keys.{i}"], state[f"values.{i}"]) for i in layers]
        logits, present = self._run(tokens[:, None], past[0][0].shape[2], memory_kv,
                                    state["memory_mask"], past)
        new = {}
        for i, (keys, values) in enumerate(present):
            new[f"keys.{i}"], new[f"values.{i}"] = keys, values
        return logits[:, -1], {**state, **new}
