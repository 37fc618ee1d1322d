"""Decoding written once for every decoder: greedy, batched beam search, nucleus sampling.

A decoder only supplies (see :class:`CaptionDecoder` in ``decoders.py``)::

    init_state(memory, memory_mask) -> state      a State: batch-first tensors, (B, ...) each
    step(tokens, state) -> logits, state          tokens (N,), logits (N, V)

Beam search runs all windows and all beams as one batch of N = B * beam rows; reordering
beams is one ``index_select`` on every state tensor that follows the beams. Which entries those
are, the decoder says: ``init_state`` returns a :class:`State` whose ``shared`` names the
entries that are the same for every beam of a window and that ``step`` never changes (the
memory, its mask, its projected keys and values); beam search copies them once per beam and
never reorders them again. Every other entry (a recurrent state, a cache of past tokens)
follows its beam. A plain dict shares nothing: always correct, only slower.

Each step takes the 2 x beam best continuations of every window: those ending in [EOS] among
the beam best join a pool of finished captions (:class:`FinishedPool`), the beam best that did
not end stay live, so a finished caption never takes a live beam's place. A window stops when
no live beam can beat its finished ones under the length penalty.

Every strategy returns token ids (B, T), T <= max_len, ending with [EOS] (unless cut at
max_len) and padded after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class State(dict):
    """A decoder's generation state: a dict of batch-first tensors, (N, ...) each, and
    ``shared``, the names of the entries that are the same for every beam of a window and
    that ``step`` never changes. Beam search reorders every other entry with its beams::

        State({"memory_mask": mask, "hidden": h}, shared={"memory_mask"})

    Only ``init_state``'s answer needs to be a State: beam search reads ``shared`` from it
    once, so ``step`` may return a plain dict (``{**state, "hidden": h}``)."""

    def __init__(self, entries=(), shared=()):
        super().__init__(entries)
        self.shared = frozenset(shared)


def reorder(state: dict, index: torch.Tensor, shared: frozenset[str] = frozenset()) -> dict:
    """Pick rows ``index`` (N,) of every state tensor (all are batch-first); the entries
    named in ``shared`` are left as they are (they are equal across a window's beams).
    An entry that is not a tensor but a Hugging Face cache (a pretrained decoder's
    ``past_key_values``) is reordered in place by its own ``reorder_cache``.
    """
    out = {}
    for key, value in state.items():
        if key in shared:
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value.index_select(0, index)
        else:
            value.reorder_cache(index)
            out[key] = value
    return out


def penalise_repeats(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (N, V) with the words of history (N, T), those already said, made less likely
    by the CTRL rule (Keskar et al., 2019) that Hugging Face uses: a positive logit is divided
    by ``penalty``, a negative one multiplied. With penalty 1.2, logits (log 9, 0) (p = 0.9)
    become (log 9 / 1.2, 0) (p = 0.862). For a decoder that copies, whose "logits" are
    log-probabilities (all negative), every repeat's is multiplied."""
    seen = logits.gather(1, history)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, history, seen)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016): a caption's score is
    its summed log-probability divided by this."""
    return ((5.0 + length) / 6.0) ** alpha


class FinishedPool:
    """The ``size`` best finished captions of each window, ranked by length-normalised score.

    scores (B, size) normalised, -inf for an empty place; tokens (B, size, max_len).
    """

    def __init__(self, batch: int, size: int, max_len: int, alpha: float, pad_id: int,
                 device: torch.device):
        self.size, self.max_len, self.alpha, self.pad_id = size, max_len, alpha, pad_id
        self.scores = torch.full((batch, size), float("-inf"), device=device)
        self.tokens = torch.full((batch, size, max_len), pad_id, dtype=torch.long, device=device)

    def add(self, tokens: torch.Tensor, scores: torch.Tensor, where: torch.Tensor) -> None:
        """Offer captions tokens (B, C, L) with summed log-probabilities scores (B, C); only
        those ``where`` (B, C) is True count. All have length L."""
        length = tokens.shape[-1]
        normed = (scores / length_penalty(length, self.alpha)).masked_fill(~where, float("-inf"))
        tokens = F.pad(tokens, (0, self.max_len - length), value=self.pad_id)
        scores = torch.cat([self.scores, normed], dim=1)  # old ones first: they win ties
        self.scores, keep = scores.topk(self.size, dim=1)
        self.tokens = torch.cat([self.tokens, tokens], dim=1).gather(
            1, keep[..., None].expand(-1, -1, self.max_len))

    def beyond_reach(self, live: torch.Tensor, length: int) -> torch.Tensor:
        """(B,) True where the pool is full and no live beam, scores ``live`` (B, beam) after
        ``length`` tokens, can end above its worst caption. A live score only falls as the
        caption grows, so the most it can reach normalised is at the length the penalty
        helps most: ``max_len`` when alpha > 0, the very next token otherwise."""
        best_length = self.max_len if self.alpha > 0 else min(length + 1, self.max_len)
        bound = live.max(dim=1).values / length_penalty(best_length, self.alpha)
        worst = self.scores[:, -1]
        return (worst > float("-inf")) & (bound <= worst)

    def best(self) -> torch.Tensor:
        """(B, T) the best caption of each window, T its longest length."""
        best = self.tokens[:, 0]
        width = int((best != self.pad_id).sum(1).max().clamp(min=1))
        return best[:, :width]


class Decoding:
    """Mixin: ``generate`` over ``init_state`` / ``step``. Needs ``pad_id``, ``bos_id``,
    ``eos_id`` and ``unk_id`` attributes (``unk_id``: the caption tokenizer's, never
    generated; None when it has none).

    A decoder supplies::

        init_state(memory (B, M, d), memory_mask (B, M)) -> State
        step(tokens (N,), state) -> logits (N, V), state

    ``init_state`` returns a :class:`State`: batch-first tensors, and in ``state.shared`` the
    names of the entries the same for every beam of a window that ``step`` never changes
    (the memory, its mask, projections of it). Beam search copies them once per beam and
    leaves them there; it reorders every other entry with the beams, whatever its name. An
    entry that differs between beams (a recurrent state, a cache of past tokens, a coverage
    of the memory) must not be in ``shared``; a plain dict shares nothing.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities with [PAD], [BOS] and [UNK] never generated, unless one of them
        is also [EOS] (a GPT-2 tokenizer's one ``<|endoftext|>`` is all four)."""
        logits = logits.float()
        banned = {self.pad_id, self.bos_id, self.unk_id} - {self.eos_id, None}
        logits[:, sorted(banned)] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 strategy: str = "greedy", max_len: int = 40, beam_size: int = 5,
                 length_penalty: float = 0.6, top_p: float = 0.9, temperature: float = 1.0,
                 repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                 memory_ids: torch.Tensor | None = None):
        """Token ids (B, T) for memory (B, M, d) / mask (B, M); ``memory_ids`` (B, M): the
        token each memory entry holds, for a decoder that can copy (see CopyHead)."""
        state = (self.init_state(memory, memory_mask) if memory_ids is None
                 else self.init_state(memory, memory_mask, memory_ids))
        if strategy == "greedy":
            return self._greedy(state, memory.shape[0], max_len)
        if strategy == "beam":
            return self._beam(state, memory.shape[0], max_len, beam_size, length_penalty)
        if strategy == "sample":
            return self._sample(state, memory.shape[0], max_len, top_p, temperature,
                                repetition_penalty, generator)
        raise ValueError(f"strategy must be greedy, beam or sample, got {strategy!r}")

    def _loop(self, state: dict, batch: int, max_len: int, choose) -> torch.Tensor:
        """Shared loop of greedy and sampling: ``choose(logits (B, V), history (B, T))``
        picks (B,) ids from the decoder's logits and the ids said so far."""
        device = next(iter(state.values())).device
        tokens = torch.full((batch,), self.bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        history = torch.empty(batch, 0, dtype=torch.long, device=device)
        for _ in range(max_len):
            logits, state = self.step(tokens, state)
            tokens = choose(logits, history)
            tokens = tokens.masked_fill(finished, self.pad_id)
            history = torch.cat([history, tokens[:, None]], dim=1)
            finished |= tokens == self.eos_id
            if finished.all():
                break
        return history

    def _greedy(self, state: dict, batch: int, max_len: int) -> torch.Tensor:
        return self._loop(state, batch, max_len, lambda logits, _: self._scores(logits).argmax(-1))

    def _sample(self, state, batch, max_len, top_p, temperature, repetition_penalty, generator):
        def choose(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            if repetition_penalty != 1.0 and history.numel():  # on the logits, before the
                logits = penalise_repeats(logits, history, repetition_penalty)  # temperature
            probs = self._scores(logits / max(temperature, 1e-5)).exp()
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the nucleus only
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1)
            return order.gather(1, pick).squeeze(1)

        return self._loop(state, batch, max_len, choose)

    def _beam(self, state: dict, batch: int, max_len: int, beam: int, alpha: float):
        device = next(iter(state.values())).device
        shared = state.shared if isinstance(state, State) else frozenset()
        rows = torch.arange(batch, device=device)
        state = reorder(state, rows.repeat_interleave(beam))  # (B * beam, ...)
        tokens = torch.full((batch * beam,), self.bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(batch, beam, device=device)  # summed log-probabilities, live beams
        scores[:, 1:] = float("-inf")  # all beams start identical: keep one
        history = torch.empty(batch * beam, 0, dtype=torch.long, device=device)
        pool = FinishedPool(batch, beam, max_len, alpha, self.pad_id, device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        contender = torch.arange(2 * beam, device=device) < beam  # the beam best of 2 x beam
        for length in range(1, max_len + 1):
            logits, state = self.step(tokens, state)
            logp = self._scores(logits)  # (B * beam, V)
            vocab = logp.shape[-1]
            total = (scores.view(-1, 1) + logp).view(batch, beam * vocab)
            best_scores, best = total.topk(2 * beam, dim=1)  # (B, 2 beam), best first
            source = rows[:, None] * beam + best // vocab  # the beam each one continues
            new = best % vocab
            ends = new == self.eos_id
            captions = torch.cat([history[source], new[..., None]], dim=-1)  # (B, 2 beam, L)
            pool.add(captions, best_scores, ends & contender & ~done[:, None])
            live = torch.argsort(ends.to(torch.uint8), dim=1, stable=True)[:, :beam]
            scores = best_scores.gather(1, live)  # the beam best that did not end, in order
            pick = source.gather(1, live).view(-1)
            tokens = new.gather(1, live).view(-1)
            state = reorder(state, pick, shared)
            history = torch.cat([history[pick], tokens[:, None]], dim=1)
            done |= pool.beyond_reach(scores, length)
            if done.all():
                break
        else:  # max_len reached: the live beams are cut there and compete as they are
            pool.add(history.view(batch, beam, -1), scores, ~done[:, None].expand(-1, beam))
        return pool.best()
