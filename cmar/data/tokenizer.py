"""Caption tokenizer: a byte-level BPE (Hugging Face ``tokenizers``) in PreTrainedTokenizerFast.

Why byte-level BPE: captions of real movie scenes are full of names ("Alex", "José"),
possessives and contractions ("Tom's", "isn't"), curly quotes and dashes. A word-level
vocabulary maps every unseen name to ``[UNK]`` and loses case and spacing ("tom' s"), which the
caption metrics then punish. A byte-level BPE starts from the 256 byte symbols, so any text is
representable, and merges frequent pairs into larger pieces. Hence:

- exact round trip: ``decode(tokenizer, encode(tokenizer, x)) == x`` for every ``str`` x, case,
  spacing, punctuation and accents included (no normalizer, no lowercasing);
- no ``[UNK]``: a word never seen in training is spelt in smaller pieces (down to bytes), so
  names survive. ``UNK_ID`` stays reserved (other code uses it as a blanked-caption
  placeholder) but the tokenizer never produces it;
- a common word is one token, a rare one 2-3 (more for unusual names), so ``data.max_tokens``
  counts BPE tokens, not words;
- one token per word wherever it stands: :func:`encode` puts a space before the text (and
  :func:`decode` takes exactly that space off again), so the first word of a caption is the
  same token as the word inside a sentence ("Dot walks" and "meets Dot" share ``ĠDot``). Without
  it, a name the decoder must copy from the context captions would be a different token at
  the start of its caption, and the model would have to learn every name twice.

The vocabulary knob is ``vocab_size`` (``data.vocab_size``): the size of the whole vocabulary,
the 256 byte symbols and the 4 special tokens included; training stops merging when it is
reached, or when no pair is seen at least ``min_frequency`` (``data.min_pair_freq``) times. A
rarer pair is simply never merged: no word is ever lost. The tokenizer is trained on training
captions only and saved with every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
PREFIX = " "  # put before every text, so a first word is the same token as anywhere else


def train_tokenizer(
    captions: Iterable[str], min_frequency: int = 2, vocab_size: int = 10000
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``captions``; specials take ids 0-3, then the 256 bytes."""
    model = Tokenizer(models.BPE())  # no unk_token: every byte is in the vocabulary
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    model.train_from_iterator((PREFIX + c for c in captions), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    tokenizer.save_pretrained(str(folder))


def load_tokenizer(folder: str | Path):
    """A run's caption tokenizer: this module's BPE, or a pretrained decoder's own."""
    return with_padding(AutoTokenizer.from_pretrained(str(folder)))


def with_padding(tokenizer):
    """``tokenizer`` with a [PAD] id: a causal LM's tokenizer (GPT-2) has none, and pads with
    its end-of-text token, as is usual. Padding is never read: masks come from lengths."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of a caption, without special tokens.

    A literal "[UNK]" (or "[PAD]" ...) in the text is spelt in bytes like any other text
    (``split_special_tokens``), so it round-trips instead of becoming a special id.
    """
    return tokenizer(PREFIX + text, add_special_tokens=False,
                     split_special_tokens=True)["input_ids"]


def token_spans(tokenizer: PreTrainedTokenizerFast, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets in ``text`` of each token of ``encode(tokenizer, text)``
    (a token's leading space included, so a word's first token starts just before it)."""
    enc = tokenizer(PREFIX + text, add_special_tokens=False, split_special_tokens=True,
                    return_offsets_mapping=True)
    shift = len(PREFIX)
    return [(max(0, a - shift), max(0, b - shift)) for a, b in enc["offset_mapping"]]


def decode(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """Ids back to a caption: stops at the tokenizer's [EOS], drops its other special tokens
    ([PAD], [BOS], [UNK]), adds no spaces."""
    special = set(tokenizer.all_special_ids)
    kept = []
    for i in ids:
        i = int(i)
        if i == tokenizer.eos_token_id:
            break
        if i not in special:
            kept.append(i)
    text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.removeprefix(PREFIX)  # the space encode() put there


def target_text(tokenizer: PreTrainedTokenizerFast, text: str, max_tokens: int) -> str:
    """A caption exactly as the model is trained on it: its first ``max_tokens`` tokens.

    The text itself when it fits, else a prefix of it. A cut can fall inside a multi-byte
    character (an accent, a curly quote); that half character is dropped, not shown as "�".
    """
    ids = encode(tokenizer, text)
    if len(ids) <= max_tokens:
        return text
    cut = decode(tokenizer, ids[:max_tokens])
    while cut and not text.startswith(cut):  # only a trailing half character can differ
        cut = cut[:-1]
    return cut
