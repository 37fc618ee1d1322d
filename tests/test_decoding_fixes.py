"""Three decoding rules: the repetition penalty acts on the logits before the temperature (as
in Hugging Face), the banned [UNK] is the tokenizer's, and beam search copies a state entry
per beam because the decoder declares it so, whatever the entry's name."""

import itertools
import math

import pytest
import torch
from model_helpers import BOS, EOS, PAD, VOCAB, random_batch, tiny_model

from cmar.models import DECODERS, StoryModel
from cmar.models.decoding import Decoding, State, length_penalty

UNK, A, B = 3, 4, 5  # a toy vocabulary of 6: [PAD] [BOS] [EOS] [UNK] a b
WORDS = (A, B)


class Scripted(Decoding):
    """Says ``a`` first; after ``a`` only ``a`` and ``b`` are possible, with ``logits``."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, logits: tuple[float, float]):
        self.after_a = torch.full((6,), float("-inf"))
        self.after_a[A], self.after_a[B] = logits

    def init_state(self, memory, memory_mask):
        return {"memory": memory}

    def step(self, tokens, state):
        first = torch.full((6,), float("-inf"))
        first[A] = 0.0
        return torch.stack([first if t == BOS else self.after_a for t in tokens]), state


def penalised(logit: float, penalty: float) -> float:
    """The CTRL / Hugging Face rule on one logit of a word already said."""
    return logit / penalty if logit > 0 else logit * penalty


@pytest.mark.parametrize("logits, temperature", [
    ((math.log(9.0), 0.0), 1.0),  # p(a) = 0.9 before the penalty
    ((-1.0, -1.0 - math.log(9.0)), 0.5),  # p(a) = 0.9 too, a negative logit
])
def test_the_repetition_penalty_acts_on_the_logits_before_the_temperature(
        logits, temperature, monkeypatch):
    seen = []  # the distribution every sampling step draws from
    draw = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, generator=None: (
        seen.append(probs / probs.sum(-1, keepdim=True)) or draw(probs, n, generator=generator)))
    decoder = Scripted(logits)
    decoder.generate(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), "sample",
                     max_len=2, top_p=1.0, temperature=temperature, repetition_penalty=1.2,
                     generator=torch.Generator().manual_seed(0))
    a, b = penalised(logits[0], 1.2) / temperature, logits[1] / temperature
    expected = 1 / (1 + math.exp(b - a))  # p(a) after "a": softmax of the penalised logits
    if logits[0] > 0:
        assert expected == pytest.approx(0.862, abs=1e-3)  # not 0.898 (penalty on log 0.9)
    second = seen[1][0]  # sorted, most likely first: a
    assert second[0].item() == pytest.approx(expected, abs=1e-5)
    assert second[1].item() == pytest.approx(1 - expected, abs=1e-5)


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_the_banned_unknown_word_is_the_tokenizers(kind):
    cfg = tiny_model(decoder=kind, copy_tokens=False).cfg
    torch.manual_seed(0)
    model = StoryModel(cfg, VOCAB, 32, max_len=12, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                       unk_id=7)
    with torch.no_grad():  # every step: 7 (the unknown word) best, then 3 (an ordinary word)
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.zero_()
        model.decoder.out.bias[7], model.decoder.out.bias[3] = 10.0, 5.0
    batch = random_batch(b=2)
    for strategy in ("greedy", "beam"):
        ids = model.generate(batch, strategy, max_len=5, beam_size=2)
        assert (ids == 3).all(), strategy
    assert model.decoder.unk_id == 7


class SecondOrderLM(Decoding):
    """A toy decoder: the next token depends on the last two. The token before the last is
    a per-beam state entry named ``memory_previous`` (a name beam search once took for
    memory, the same for every beam: it never followed its beam). Window i reads
    ``tables[i]``, through ``which``, an entry the same for every beam of a window."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, tables: torch.Tensor, declared: bool):
        self.log_tables = tables.log()  # (windows, V, V, V): previous, last -> next
        self.declared = declared

    def init_state(self, memory, memory_mask):
        entries = {"which": memory[:, 0, 0].long(),
                   "memory_previous": torch.full((memory.shape[0],), BOS)}
        return State(entries, shared={"which"}) if self.declared else entries

    def step(self, tokens, state):
        logp = self.log_tables[state["which"], state["memory_previous"], tokens]
        return logp, {**state, "memory_previous": tokens}


def random_tables(windows: int, seed: int) -> torch.Tensor:
    """(windows, 6, 6, 6) next-token probabilities over [EOS], a and b."""
    g = torch.Generator().manual_seed(seed)
    tables = torch.zeros(windows, 6, 6, 6)
    tables[..., [EOS, A, B]] = torch.rand(windows, 6, 6, 3, generator=g) ** 3 + 1e-3
    return tables / tables.sum(-1, keepdim=True)


def caption_score(table: torch.Tensor, caption: list[int], alpha: float) -> float:
    tokens = [BOS, BOS, *caption]
    triples = zip(tokens[:-2], tokens[1:-1], tokens[2:], strict=True)
    total = sum(table[p, a, n].log().item() for p, a, n in triples)
    return total / length_penalty(len(caption), alpha)


def exhaustive_best(table: torch.Tensor, max_len: int, alpha: float) -> float:
    captions = [[*words, EOS] for n in range(max_len) for words in
                itertools.product(WORDS, repeat=n)]
    captions += [list(words) for words in itertools.product(WORDS, repeat=max_len)]
    return max(caption_score(table, c, alpha) for c in captions)


@pytest.mark.parametrize("declared", [False, True])
def test_an_entry_declared_per_beam_follows_its_beam_whatever_its_name(declared):
    windows, max_len, alpha = 3, 4, 0.6
    memory = torch.arange(float(windows)).view(windows, 1, 1)
    mask = torch.ones(windows, 1, dtype=torch.bool)
    for seed in range(4):
        tables = random_tables(windows, seed)
        lm = SecondOrderLM(tables, declared)
        ids = lm.generate(memory, mask, "beam", max_len=max_len, beam_size=16,
                          length_penalty=alpha)  # 16 beams hold every caption: exhaustive
        assert ids.shape[0] == windows and ids.shape[1] <= max_len
        for table, row in zip(tables, ids.tolist(), strict=True):
            found = [t for t in row if t != PAD]
            assert caption_score(table, found, alpha) == pytest.approx(
                exhaustive_best(table, max_len, alpha), abs=1e-5), seed
        greedy = lm.generate(memory, mask, "greedy", max_len=max_len)
        narrow = lm.generate(memory, mask, "beam", max_len=max_len, beam_size=1,
                             length_penalty=0.0)
        assert torch.equal(narrow, greedy), seed  # one beam, no penalty: greedy search


def built_in_decoders():
    """Every built-in decoder, with and without copying; the Transformer also uncached."""
    for kind, copy in itertools.product(sorted(DECODERS), (False, True)):
        torch.manual_seed(0)
        decoder = DECODERS.build(kind, vocab_size=40, d_model=16, n_heads=2, n_layers=2,
                                 dropout=0.0, copy=copy).eval()
        yield f"{kind}-copy={copy}", decoder
        if kind == "transformer":
            uncached = DECODERS.build(kind, vocab_size=40, d_model=16, n_heads=2, n_layers=2,
                                      dropout=0.0, copy=copy).eval()
            uncached.use_cache = False
            yield f"{kind}-copy={copy}-uncached", uncached


def sharing_nothing(init_state):
    """``init_state`` answering a plain dict: every entry follows the beams."""
    return lambda *args, **kwargs: dict(init_state(*args, **kwargs))


def check_sharing(name: str, decoder, extra_ids: bool, vocab: int, width: int) -> None:
    """``decoder``'s first state declares the memory's entries shared, no step changes them,
    something else follows the beams, and beam search is the same without the sharing."""
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(3, 5, width, generator=g)
    mask = torch.arange(5) < torch.tensor([[5], [3], [1]])
    extra = {"memory_ids": torch.randint(4, vocab, (3, 5), generator=g)} if extra_ids else {}
    state = decoder.init_state(memory, mask, **extra)
    assert "memory_mask" in state.shared and state.shared <= state.keys(), name
    after = state
    for _ in range(2):
        _, after = decoder.step(torch.full((3,), 5), after)
    assert all(after[key] is state[key] for key in state.shared), name
    assert any(key not in state.shared for key in after), name  # something follows the beams
    beams = decoder.generate(memory, mask, "beam", max_len=8, beam_size=3, **extra)
    decoder.init_state = sharing_nothing(decoder.init_state)
    unshared = decoder.generate(memory, mask, "beam", max_len=8, beam_size=3, **extra)
    assert torch.equal(beams, unshared), name  # sharing only saves copies


def test_every_built_in_decoder_declares_what_its_beams_share():
    for name, decoder in built_in_decoders():
        check_sharing(name, decoder, decoder.copy is not None, vocab=40, width=16)


def test_the_pretrained_decoder_declares_what_its_beams_share(tmp_path):
    pytest.importorskip("transformers")
    from cmar.models.hf import HFDecoder, pretrained_tokenizer, stand_ins

    folder = stand_ins.causal_lm(tmp_path / "gpt2", ["a red circle", "a blue square"] * 4)
    end = pretrained_tokenizer(str(folder)).eos_token_id
    torch.manual_seed(0)
    decoder = HFDecoder(str(folder), 40, 16, end, end, end).eval()
    check_sharing("hf", decoder, False, vocab=40, width=16)
