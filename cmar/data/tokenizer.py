"""Caption tokenizer: a word-level Hugging Face ``tokenizers`` model in PreTrainedTokenizerFast.

Word level (not BPE) is the documented choice: BLEU and CIDEr are computed on words, so a
generated token is a word a reader can check, and captions of these datasets have a small
vocabulary. Words seen fewer than ``min_frequency`` times in the training captions map to
``[UNK]``. The tokenizer is trained on training captions only and saved with every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_SPACE_BEFORE_PUNCT = re.compile(r" ([.,!?;:'])")


def train_tokenizer(
    captions: Iterable[str], min_frequency: int = 1, max_vocab: int = 10000
) -> PreTrainedTokenizerFast:
    """Train a lowercase word-level tokenizer (words and punctuation marks are tokens)."""
    model = Tokenizer(models.WordLevel(unk_token=UNK))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    model.train_from_iterator(captions, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    tokenizer.save_pretrained(str(folder))


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of a caption, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """Ids back to a caption; stops at [EOS], drops special tokens, re-attaches punctuation."""
    words = []
    for i in ids:
        i = int(i)
        if i == tokenizer.eos_token_id:
            break
        if i in (tokenizer.pad_token_id, tokenizer.bos_token_id):
            continue
        words.append(tokenizer.convert_ids_to_tokens(i))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(words))
