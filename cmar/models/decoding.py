"""Decoding written once for every decoder: greedy, batched beam search, nucleus sampling.

A decoder only supplies (see :class:`CaptionDecoder` in ``decoders.py``)::

    init_state(memory, memory_mask) -> state      dict of batch-first tensors
    step(tokens, state) -> logits, state          tokens (N,), logits (N, V)

Beam search runs all windows and all beams as one batch of N = B * beam rows; reordering
beams is one ``index_select`` on every state tensor that changes (the memory never does).
Every strategy returns token ids (B, T), T <= max_len, ending with [EOS] (unless cut at
max_len) and padded after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

State = dict[str, torch.Tensor]


# Beam reordering only permutes the beams of one window, and these entries are the same for
# every beam of a window, so they are expanded once and never copied again.
STATIC = ("memory", "memory_mask", "keys", "values")


def reorder(state: State, index: torch.Tensor, static: tuple[str, ...] = ()) -> State:
    """Pick rows ``index`` of every state tensor (all are batch-first), except ``static``."""
    return {key: value if key in static else value.index_select(0, index)
            for key, value in state.items()}


class Decoding:
    """Mixin: ``generate`` over ``init_state`` / ``step``. Needs ``pad_id``, ``bos_id``,
    ``eos_id`` and ``unk_id`` attributes."""

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities with [PAD], [BOS] and [UNK] never generated."""
        logits = logits.float()
        logits[:, [self.pad_id, self.bos_id, self.unk_id]] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 strategy: str = "greedy", max_len: int = 40, beam_size: int = 5,
                 length_penalty: float = 0.6, top_p: float = 0.9, temperature: float = 1.0,
                 repetition_penalty: float = 1.0, generator: torch.Generator | None = None):
        """Token ids (B, T) for memory (B, M, d) / mask (B, M)."""
        state = self.init_state(memory, memory_mask)
        if strategy == "greedy":
            return self._greedy(state, memory.shape[0], max_len)
        if strategy == "beam":
            return self._beam(state, memory.shape[0], max_len, beam_size, length_penalty)
        if strategy == "sample":
            return self._sample(state, memory.shape[0], max_len, top_p, temperature,
                                repetition_penalty, generator)
        raise ValueError(f"strategy must be greedy, beam or sample, got {strategy!r}")

    def _loop(self, state: State, batch: int, max_len: int, choose) -> torch.Tensor:
        """Shared loop of greedy and sampling: ``choose(scores, history)`` picks (B,) ids."""
        device = next(iter(state.values())).device
        tokens = torch.full((batch,), self.bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        history = torch.empty(batch, 0, dtype=torch.long, device=device)
        for _ in range(max_len):
            logits, state = self.step(tokens, state)
            tokens = choose(self._scores(logits), history)
            tokens = tokens.masked_fill(finished, self.pad_id)
            history = torch.cat([history, tokens[:, None]], dim=1)
            finished |= tokens == self.eos_id
            if finished.all():
                break
        return history

    def _greedy(self, state: State, batch: int, max_len: int) -> torch.Tensor:
        return self._loop(state, batch, max_len, lambda scores, _: scores.argmax(-1))

    def _sample(self, state, batch, max_len, top_p, temperature, repetition_penalty, generator):
        def choose(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            logits = scores / max(temperature, 1e-5)
            if repetition_penalty != 1.0 and history.numel():
                seen = logits.gather(1, history)  # penalise words already said (CTRL-style)
                seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
                logits = logits.scatter(1, history, seen)
            probs = logits.softmax(-1)
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the nucleus only
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1)
            return order.gather(1, pick).squeeze(1)

        return self._loop(state, batch, max_len, choose)

    def _beam(self, state: State, batch: int, max_len: int, beam: int, alpha: float):
        device = next(iter(state.values())).device
        rows = torch.arange(batch, device=device)
        state = reorder(state, rows.repeat_interleave(beam))  # (B * beam, ...)
        tokens = torch.full((batch * beam,), self.bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(batch, beam, device=device)
        scores[:, 1:] = float("-inf")  # all beams start identical: keep one
        finished = torch.zeros(batch * beam, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch * beam, device=device)
        history = torch.empty(batch * beam, 0, dtype=torch.long, device=device)
        for _ in range(max_len):
            logits, state = self.step(tokens, state)
            logp = self._scores(logits)  # (B * beam, V)
            vocab = logp.shape[-1]
            logp[finished] = float("-inf")  # a finished beam only continues with [PAD] ...
            logp[finished, self.pad_id] = 0.0  # ... at no cost
            total = (scores.view(-1, 1) + logp).view(batch, beam * vocab)
            scores, best = total.topk(beam, dim=1)  # (B, beam)
            source = (rows[:, None] * beam + best // vocab).view(-1)
            tokens = (best % vocab).view(-1)
            state = reorder(state, source, STATIC)
            history = torch.cat([history[source], tokens[:, None]], dim=1)
            finished, lengths = finished[source], lengths[source]
            lengths += (~finished).float()
            finished |= tokens == self.eos_id
            if finished.all():
                break
        penalty = ((5.0 + lengths) / 6.0) ** alpha  # GNMT length penalty
        pick = (scores.view(-1) / penalty).view(batch, beam).argmax(1)
        return history.view(batch, beam, -1)[rows, pick]
