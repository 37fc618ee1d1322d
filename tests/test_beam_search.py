"""Beam search keeps a pool of finished captions: a caption that has ended never takes a live
beam's place, and the best of the pool under the length penalty is returned. Checked against
exhaustive search on toy language models whose best caption is known."""

import itertools

import pytest
import torch

from cmar.models.decoding import Decoding, length_penalty

PAD, BOS, EOS, UNK, A, B = range(6)
WORDS = (A, B)


class MarkovLM(Decoding):
    """A toy decoder: the next token's probabilities depend on the last token only."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, table: torch.Tensor):
        self.log_table = table.log()  # (V, V): row = last token
        self.steps = 0

    def init_state(self, memory, memory_mask):
        return {"memory": memory}

    def step(self, tokens, state):
        self.steps += 1
        return self.log_table[tokens], state


def table_of(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """(V, V) next-token probabilities; rows not given (after [PAD], [EOS], ...: only dead
    beams, at -inf, read them) are uniform over [EOS] and the words."""
    table = torch.zeros(6, 6)
    table[:, [EOS, A, B]] = 1 / 3
    for last, nxt in rows.items():
        table[last] = 0.0
        for token, p in nxt.items():
            table[last, token] = p
    return table


def exhaustive_best(table: torch.Tensor, max_len: int, alpha: float) -> tuple[float, list]:
    """The caption with the best length-normalised score, by trying every one: those ended
    by [EOS] within max_len tokens, and those cut at max_len."""
    log_table = table.log()

    def score(caption):
        tokens = [BOS, *caption]
        total = sum(log_table[a, b].item() for a, b in zip(tokens[:-1], tokens[1:], strict=True))
        return total / length_penalty(len(caption), alpha)

    captions = [[*words, EOS] for n in range(max_len) for words in
                itertools.product(WORDS, repeat=n)]
    captions += [list(words) for words in itertools.product(WORDS, repeat=max_len)]
    return max((score(c), c) for c in captions)


def beam(lm: MarkovLM, max_len: int, beam_size: int, alpha: float, windows: int = 1):
    memory = torch.zeros(windows, 1, 1)
    ids = lm.generate(memory, torch.ones(windows, 1, dtype=torch.bool), "beam",
                      max_len=max_len, beam_size=beam_size, length_penalty=alpha)
    return [[t for t in row if t != PAD] for row in ids.tolist()]


# [EOS] first is likely (0.25) but "b [EOS]" scores better under the penalty (0.6):
# log(0.25) = -1.386 against (log 0.68 + log 0.37) / (7/6)^0.6 = -1.259. The former beam
# search kept "[EOS]" in one of its 2 slots, padding it for free; the other slot followed
# "b b ...", so "b [EOS]" fell out at the second step and it returned "[EOS]".
KNOWN = table_of({BOS: {EOS: 0.25, A: 0.07, B: 0.68},
                  A: {EOS: 0.36, A: 0.63, B: 0.01},
                  B: {EOS: 0.37, A: 0.16, B: 0.47}})


def test_beam_of_two_finds_the_known_best_caption():
    best_score, best = exhaustive_best(KNOWN, 6, 0.6)
    assert best == [B, EOS]
    assert beam(MarkovLM(KNOWN), 6, 2, 0.6) == [best]
    assert exhaustive_best(KNOWN, 6, 0.6)[0] > KNOWN[BOS, EOS].log().item()  # beats "[EOS]"


def test_a_window_stops_when_no_live_beam_can_beat_its_finished_ones():
    lm = MarkovLM(KNOWN)
    assert beam(lm, 40, 2, 0.6) == [[B, EOS]]
    assert lm.steps < 10  # the live beams' best possible score fell below the pool's worst


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_a_beam_wide_enough_to_hold_every_caption_is_exhaustive(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    table = torch.zeros(6, 6)
    table[:, [EOS, A, B]] = torch.rand(6, 3, generator=g) ** 3 + 1e-3
    table /= table.sum(1, keepdim=True)
    max_len = 4  # 2 words: at most 2^4 = 16 captions alive, the beam holds them all
    best_score, _ = exhaustive_best(table, max_len, alpha)
    found = beam(MarkovLM(table), max_len, 16, alpha)[0]
    tokens = [BOS, *found]
    got = sum(table[a, b].log().item() for a, b in zip(tokens[:-1], tokens[1:], strict=True))
    assert got / length_penalty(len(found), alpha) == pytest.approx(best_score, abs=1e-5)


def test_windows_in_one_batch_do_not_change_each_other():
    other = table_of({BOS: {EOS: 0.1, A: 0.5, B: 0.4}, A: {EOS: 0.9, A: 0.05, B: 0.05},
                      B: {EOS: 0.2, A: 0.4, B: 0.4}})
    tables = torch.stack([KNOWN, other, KNOWN])

    class Batched(MarkovLM):  # window i reads tables[i]
        def init_state(self, memory, memory_mask):
            return {"memory": memory, "which": memory[:, 0, 0].long()}

        def step(self, tokens, state):
            return self.log_table[state["which"], tokens], state

    lm = Batched(tables)
    memory = torch.arange(3.0).view(3, 1, 1)
    ids = lm.generate(memory, torch.ones(3, 1, dtype=torch.bool), "beam", max_len=8,
                      beam_size=3, length_penalty=0.6)
    together = [[t for t in row if t != PAD] for row in ids.tolist()]
    alone = [beam(MarkovLM(table), 8, 3, 0.6)[0] for table in tables]
    assert together == alone and alone[0] != alone[1]
