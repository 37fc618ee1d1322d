"""Caption decoders: LSTM, GRU and Transformer behind one interface.

Contract of every decoder (register yours in ``DECODERS``)::

    decoder(target_in, memory, memory_mask, memory_ids=None) -> logits    teacher forcing
        target_in (B, L) ids starting with [BOS]; memory (B, M, d); mask (B, M) True = real
        logits (B, L, V): position i predicts target_out[:, i]
    decoder.init_state(memory, memory_mask, memory_ids=None) -> state     for generation
    decoder.step(tokens (N,), state) -> logits (N, V), state
        state: a :class:`cmar.models.decoding.State` of batch-first tensors; the entries in
        ``state.shared`` (the memory and what is computed from it once) are the same for
        every beam of a window (beam search never reorders them), the others follow the beams

Greedy, beam and nucleus decoding come from :class:`cmar.models.decoding.Decoding`.
With ``copy=True`` (``model.copy_tokens``) and ``memory_ids`` (B, M), the token id held by each
memory entry ([PAD] for entries that hold none), the output is a pointer-generator mixture
(:class:`CopyHead`) and the "logits" are its log-probabilities: softmax and cross-entropy
leave them unchanged.
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


class CopyHead(nn.Module):
    """Pointer-generator output (See et al., 2017): a caption word is generated from the
    vocabulary or copied from the memory entries that hold it::

        p(w) = g * softmax(logits)(w) + (1 - g) * sum of a(m) over entries m holding w
        a = softmax over copyable entries of (Q h) . (K memory) / sqrt(d),  g = sigmoid(G h)

    Names exist only in the context captions, so a decoder that can copy them need not learn
    every name as a word of its own."""

    def __init__(self, d_model: int, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, keys: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, d), logits (B, L, V), keys (B, M, d) = ``self.key(memory)``, ids (B, M)
        -> log-probabilities (B, L, V). A window without any copyable entry only generates."""
        copyable = ids != self.pad_id  # (B, M)
        scores = self.query(hidden) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5  # (B, L, M)
        scores = scores.float().masked_fill(~copyable[:, None], float("-inf"))
        attention = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all -inf rows: 0
        copied = torch.zeros(logits.shape, dtype=torch.float, device=logits.device)
        copied.scatter_add_(2, ids[:, None].expand(-1, hidden.shape[1], -1), attention)
        gate = torch.sigmoid(self.gate(hidden).float())  # (B, L, 1)
        gate = torch.where(copyable.any(-1)[:, None, None], gate, torch.ones_like(gate))
        mixed = gate * torch.softmax(logits.float(), dim=-1) + (1 - gate) * copied
        return torch.log(mixed.clamp_min(1e-12))


class CaptionDecoder(Decoding, nn.Module):
    """Base: token embedding, output layer (and copy head) and the special ids decoding needs.
    ``max_len``: the longest caption (in tokens, with [BOS]) the config expects."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int = 4, n_layers: int = 1,
                 dropout: float = 0.1, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 unk_id: int | None = 3, max_len: int = 128, copy: bool = False):
        super().__init__()
        self.max_len = max_len
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)
        self.copy = CopyHead(d_model, pad_id) if copy else None

    def _copy_state(self, memory: torch.Tensor, memory_ids: torch.Tensor | None) -> State:
        """What the copy head reads at every step: its keys over the memory and the memory's
        token ids (beams of a window share them, and no step changes them). Empty without
        copy."""
        if self.copy is None or memory_ids is None:
            return {}
        return {"memory_copy_keys": self.copy.key(memory), "memory_ids": memory_ids}

    def _logits(self, hidden: torch.Tensor, state: State) -> torch.Tensor:
        """hidden (B, L, d) -> logits (B, L, V), or the copy mixture's log-probabilities."""
        logits = self.out(hidden)
        if "memory_ids" not in state:
            return logits
        return self.copy(hidden, logits, state["memory_copy_keys"], state["memory_ids"])


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

    def _run(self, tokens: torch.Tensor, carried: State, state: State) -> tuple[torch.Tensor,
                                                                              State]:
        """tokens (B, L) -> logits (B, L, V) and the carried states after them; ``state``
        holds the projected memory (``memory_keys``, ``memory_values``, ``memory_mask``)."""
        states, carried = self._recur(self.dropout(self.embed(tokens)), carried)  # (B, L, d)
        context = self.attention(states, state["memory_keys"], state["memory_values"],
                                 state["memory_mask"])  # the memory read at every step
        mixed = torch.tanh(self.combine(torch.cat([states, context], dim=-1)))
        return self._logits(self.dropout(mixed), state), carried

    def forward(self, target_in, memory, memory_mask, memory_ids=None):
        state = self.init_state(memory, memory_mask, memory_ids)
        return self._run(target_in, {name: state[name] for name in self.carried}, state)[0]

    def init_state(self, memory, memory_mask, memory_ids=None) -> State:
        keys, values = self.attention.keys_values(memory)  # once per caption
        fixed = {"memory_mask": memory_mask, "memory_keys": keys, "memory_values": values,
                 **self._copy_state(memory, memory_ids)}  # the same for every beam
        return State({**fixed, **self._initial(memory, memory_mask)}, shared=fixed)

    def step(self, tokens, state: State):
        carried = {name: state[name] for name in self.carried}
        logits, carried = self._run(tokens[:, None], carried, state)
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

    def _run(self, tokens, start, memory_kv, memory_mask, past=None, copy_state=None):
        """tokens (B, L) at positions start .. start + L - 1 -> logits (B, L, V) and every
        layer's self-attention keys and values."""
        x = self.dropout(self.embed(tokens) + self.positions(tokens.shape[1], start))
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, memory_kv[i], memory_mask, None if past is None else past[i])
            present.append(kv)
        return self._logits(self.norm(x), copy_state or {}), present

    def forward(self, target_in, memory, memory_mask, memory_ids=None):
        return self._run(target_in, 0, self._memory_kv(memory), memory_mask,
                         copy_state=self._copy_state(memory, memory_ids))[0]  # (B, L, V)

    def init_state(self, memory, memory_mask, memory_ids=None) -> State:
        b, d = memory.shape[0], memory.shape[-1]
        if not self.use_cache:
            empty = torch.empty(b, 0, dtype=torch.long, device=memory.device)
            ids = {} if memory_ids is None else {"memory_ids": memory_ids}
            fixed = {"memory": memory, "memory_mask": memory_mask, **ids}
            return State({**fixed, "tokens": empty}, shared=fixed)  # the tokens follow beams
        fixed = {"memory_mask": memory_mask, **self._copy_state(memory, memory_ids)}
        cache = {}  # each beam's own: the keys and values of the tokens it has said
        nothing = memory.new_zeros(b, self.n_heads, 0, d // self.n_heads)
        for i, (keys, values) in enumerate(self._memory_kv(memory)):
            fixed[f"memory_keys.{i}"], fixed[f"memory_values.{i}"] = keys, values
            cache[f"keys.{i}"], cache[f"values.{i}"] = nothing, nothing
        return State({**fixed, **cache}, shared=fixed)

    def step(self, tokens, state: State):
        if not self.use_cache:  # the whole prefix again, and the memory projected again
            prefix = torch.cat([state["tokens"], tokens[:, None]], dim=1)
            logits = self.forward(prefix, state["memory"], state["memory_mask"],
                                  state.get("memory_ids"))
            return logits[:, -1], {**state, "tokens": prefix}
        layers = range(len(self.blocks))
        memory_kv = [(state[f"memory_keys.{i}"], state[f"memory_values.{i}"]) for i in layers]
        past = [(state[f"keys.{i}"], state[f"values.{i}"]) for i in layers]
        logits, present = self._run(tokens[:, None], past[0][0].shape[2], memory_kv,
                                    state["memory_mask"], past, state)
        new = {}
        for i, (keys, values) in enumerate(present):
            new[f"keys.{i}"], new[f"values.{i}"] = keys, values
        return logits[:, -1], {**state, **new}
