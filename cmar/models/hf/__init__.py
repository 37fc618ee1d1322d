"""Pretrained parts from Hugging Face ``transformers``: any part named ``hf:<hub id or folder>``.

- ``model.image_encoder: hf:<id>``: a vision tower (CLIP, SigLIP, DINOv2, ViT),
  :class:`HFImageEncoder`;
- ``model.text_encoder: hf:<id>``: an encoder (BERT, MiniLM) with its own tokenizer for the
  context captions, :class:`HFTextEncoder`;
- ``model.decoder: hf:<id>``: a causal language model that can cross-attend (the GPT-2 family),
  :class:`HFDecoder`; its tokenizer becomes the run's caption tokenizer.

Every part loads through ``from_pretrained`` (never with ``trust_remote_code``) and keeps the
contract of the part it replaces, so it works with every fusion and both modes.
"""

from cmar.models.hf.decoder import HFDecoder
from cmar.models.hf.loading import (
    HF_PREFIX,
    caption_tokenizer,
    context_tokenizer,
    hf_source,
    load_pretrained,
    pretrained_tokenizer,
    tokenizers_for,
)
from cmar.models.hf.text import HFTextEncoder
from cmar.models.hf.vision import HFImageEncoder

__all__ = ["HF_PREFIX", "HFDecoder", "HFImageEncoder", "HFTextEncoder", "caption_tokenizer",
           "context_tokenizer", "hf_source", "load_pretrained", "pretrained_tokenizer",
           "tokenizers_for"]
