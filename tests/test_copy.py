"""The copy head (``model.copy_tokens``): a pointer-generator mixture over the vocabulary and
the memory's tokens, which lets a decoder say a word it has never learned, such as a name
that exists only in the context captions."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import random_batch, tiny_model

from cmar.models import DECODERS
from cmar.models.decoders import CopyHead

VOCAB, D, PAD, BOS, EOS = 50, 16, 0, 1, 2


def test_the_mixture_is_a_distribution_and_sums_a_repeated_token():
    torch.manual_seed(0)
    head = CopyHead(D, PAD)
    hidden, logits = torch.randn(2, 3, D), torch.randn(2, 3, VOCAB)
    keys = torch.randn(2, 4, D)  # the memory already through head.key
    ids = torch.tensor([[PAD, 7, 9, 7], [PAD, PAD, PAD, PAD]])  # window 2: nothing to copy
    logp = head(hidden, logits, keys, ids)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 3), atol=1e-5)
    assert torch.allclose(logp[1], F.log_softmax(logits[1], -1), atol=1e-5)
    with torch.no_grad():
        head.gate.bias.fill_(-1e4)  # copy only
    p = head(hidden, logits, keys, ids).exp()[0]  # (3, V)
    assert p[:, 7].add(p[:, 9]).allclose(torch.ones(3), atol=1e-5)  # all mass on 7 and 9
    attention = torch.softmax((head.query(hidden[0]) @ keys[0].T / math.sqrt(D))[:, 1:], -1)
    assert torch.allclose(p[:, 7], attention[:, 0] + attention[:, 2], atol=1e-5)


def _copy_task(b: int, g: torch.Generator, positions: torch.Tensor):
    """Memory of 5 entries marked by their position; the caption is the token of entry 0, a
    random id drawn anew for every window, so no vocabulary can learn it."""
    ids = torch.randint(4, VOCAB, (b, 5), generator=g)
    memory = positions.expand(b, -1, -1)
    target_in = torch.stack([torch.full((b,), BOS), ids[:, 0]], 1)
    target_out = torch.stack([ids[:, 0], torch.full((b,), EOS)], 1)
    return memory, torch.ones(b, 5, dtype=torch.bool), ids, target_in, target_out


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_a_decoder_that_copies_learns_words_it_cannot_generate(kind):
    losses = {}
    for copy in (False, True):
        torch.manual_seed(0)
        decoder = DECODERS.build(kind, vocab_size=VOCAB, d_model=D, n_heads=2, dropout=0.0,
                                 pad_id=PAD, bos_id=BOS, eos_id=EOS, copy=copy)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        positions = torch.randn(1, 5, D, generator=g)
        for _ in range(150):
            memory, mask, ids, target_in, target_out = _copy_task(32, g, positions)
            extra = {"memory_ids": ids} if copy else {}
            logits = decoder(target_in, memory, mask, **extra)
            loss = F.cross_entropy(logits[:, 0], target_out[:, 0])  # the copied word
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[copy] = loss.item()
        if copy:
            memory, mask, ids, *_ = _copy_task(8, g, positions)
            said = decoder.eval().generate(memory, mask, "greedy", max_len=3, memory_ids=ids)
            assert torch.equal(said[:, 0], ids[:, 0])  # free-running, it says the new word
    assert losses[True] < 0.3 < math.log(VOCAB - 4) - 0.5 < losses[False]


def test_the_story_model_copies_only_context_tokens_and_needs_them_in_memory():
    torch.manual_seed(0)
    model = tiny_model(copy_tokens=True)
    batch = random_batch()
    enc = model.encode(batch)
    k, lc = batch.context_tokens.shape[1:]
    assert torch.equal(enc.memory_ids[:, k:k + k * lc], batch.context_tokens.flatten(1))
    assert (enc.memory_ids[:, :k] == 0).all() and (enc.memory_ids[:, k + k * lc:] == 0).all()
    out = model(batch)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(out.logits.shape[:2]),
                          atol=1e-4)  # log-probabilities
    for strategy in ("greedy", "beam"):
        assert model.generate(batch, strategy, max_len=6).shape[0] == len(batch)
    with pytest.raises(ValueError, match="needs model.memory_tokens=true"):
        tiny_model(copy_tokens=True, memory_tokens=False)
