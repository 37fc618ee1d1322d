"""Stand-ins for pretrained parts, built from a config and written with ``save_pretrained``.

They have random weights, so they know nothing; what they give is the real loading path with no
download: ``hf:<folder>`` goes through the same ``from_pretrained``, tokenizer and image
processor code as ``hf:openai/clip-vit-base-patch32``. Tests and notebook 02 use the ``tiny``
ones (2 layers of width 32, tokenizers trained here with ``tokenizers``); the memory and time
estimate of the ``storyreasoning-clip`` preset uses the ``base`` ones, the shapes of CLIP
ViT-B/32's vision tower and GPT-2 small.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SIZES = {  # width, layers, heads, feed-forward, vocabulary (text models; None: trained)
    "tiny": dict(width=32, layers=2, heads=2, ffn=64, vocab=None),
    "minilm": dict(width=384, layers=6, heads=12, ffn=1536, vocab=30522),  # all-MiniLM-L6-v2
    "base": dict(width=768, layers=12, heads=12, ffn=3072, vocab=50257),  # ViT-B/32, GPT-2
}
END = "<|endoftext|>"


def _check(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return SIZES[size]


def vision_tower(folder: str | Path, size: str = "tiny", image_size: int | None = None) -> Path:
    """A CLIP vision tower (patch 8 at 32 px when tiny; ViT-B/32 at 224 px otherwise) and its
    CLIP image processor (its own mean and std), in ``folder``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    s = _check(size)
    side = image_size or (32 if size == "tiny" else 224)
    config = CLIPVisionConfig(hidden_size=s["width"], intermediate_size=s["ffn"],
                              num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                              image_size=side, patch_size=8 if size == "tiny" else 32)
    folder = Path(folder)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": side},
                       crop_size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def text_encoder(folder: str | Path, texts: Iterable[str], size: str = "tiny",
                 vocab_size: int = 400) -> Path:
    """A BERT encoder and a lowercasing WordPiece tokenizer trained on ``texts``, in ``folder``
    (``minilm``: all-MiniLM-L6-v2's shape, with its 30,522 rows)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    s = _check(size)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=s["vocab"] or len(tokenizer), hidden_size=s["width"],
                        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                        intermediate_size=s["ffn"], max_position_embeddings=512)
    folder = Path(folder)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def causal_lm(folder: str | Path, texts: Iterable[str] | None = None, size: str = "tiny",
              vocab_size: int = 600) -> Path:
    """A GPT-2 language model and a byte-level BPE tokenizer (``<|endoftext|>`` as its one
    special token, as GPT-2's) trained on ``texts``, in ``folder``. ``base`` is GPT-2 small's
    shape, its vocabulary GPT-2's 50,257 rows whatever the tokenizer learnt."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    s = _check(size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts or [], trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=tok, bos_token=END, eos_token=END,
                                  unk_token=END)
    config = GPT2Config(vocab_size=s["vocab"] or len(tokenizer), n_embd=s["width"],
                        n_layer=s["layers"],
                        n_head=s["heads"], n_positions=1024 if size == "base" else 256,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = Path(folder)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
