"""Generation runs each decoder one token at a time; every step gives the logits of the
teacher-forced pass, and the Transformer's cache gives the outputs of re-running the prefix."""

import pytest
import torch

from cmar.models import DECODERS

VOCAB, D = 40, 32


def decoder_of(kind: str, n_layers: int = 1, max_len: int = 12, copy: bool = False):
    torch.manual_seed(0)
    return DECODERS.build(kind, vocab_size=VOCAB, d_model=D, n_heads=4, n_layers=n_layers,
                          dropout=0.0, max_len=max_len, copy=copy).eval()


def ids_of(b: int = 3, m: int = 7):
    """Token ids of the memory entries: some copyable, [PAD] (0) for the others; the third
    window has none to copy."""
    ids = torch.randint(4, VOCAB, (b, m), generator=torch.Generator().manual_seed(3))
    ids[:, :2] = 0
    ids[2:] = 0
    return ids


def memory_of(b: int = 3, m: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(m) < torch.tensor([[m], [3], [1]])[:b]
    return torch.randn(b, m, D, generator=g), mask


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("kind", list(DECODERS))
def test_step_by_step_logits_equal_the_teacher_forced_pass(kind, n_layers, copy):
    decoder = decoder_of(kind, n_layers, copy=copy)
    memory, mask = memory_of()
    extra = {"memory_ids": ids_of()} if copy else {}
    tokens = torch.randint(4, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    forced = decoder(tokens, memory, mask, **extra)  # (B, L, V)
    state = decoder.init_state(memory, mask, **extra)
    for i in range(tokens.shape[1]):
        logits, state = decoder.step(tokens[:, i], state)
        assert torch.allclose(logits, forced[:, i], atol=1e-5), (kind, i)


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_the_transformer_cache_gives_the_outputs_of_rerunning_the_prefix(n_layers, copy):
    decoder = decoder_of("transformer", n_layers, copy=copy)
    memory, mask = memory_of()
    extra = {"memory_ids": ids_of()} if copy else {}
    outputs = {}
    for use_cache in (True, False):
        decoder.use_cache = use_cache
        outputs[use_cache] = [
            decoder.generate(memory, mask, "greedy", max_len=20, **extra),
            decoder.generate(memory, mask, "beam", max_len=20, beam_size=3, **extra)]
    for cached, rerun in zip(outputs[True], outputs[False], strict=True):
        assert torch.equal(cached, rerun)
    assert outputs[True][0].shape[1] > 5  # random weights: long captions, many cached steps


def test_the_cache_holds_one_key_per_token_and_the_memory_is_projected_once():
    decoder = decoder_of("transformer", n_layers=2)
    memory, mask = memory_of()
    state = decoder.init_state(memory, mask)
    assert state["memory_keys.1"].shape == (3, 4, 7, D // 4)
    for _ in range(5):
        _, state = decoder.step(torch.full((3,), 5), state)
    assert state["keys.0"].shape == state["values.1"].shape == (3, 4, 5, D // 4)
    assert "memory" not in state  # only its projections are kept


def test_captions_longer_than_the_configured_length_still_decode():
    decoder = decoder_of("transformer", max_len=8)
    memory, mask = memory_of()
    tokens = torch.randint(4, VOCAB, (3, 30), generator=torch.Generator().manual_seed(2))
    assert decoder(tokens, memory, mask).shape == (3, 30, VOCAB)
    ids = decoder.generate(memory, mask, "greedy", max_len=25)
    assert ids.shape[1] <= 25
