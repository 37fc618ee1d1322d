"""Models: image and text encoders, per-frame fusion (concat / cross / cmar), story encoder,
decoders with shared decoding, and the StoryModel that composes them.

Every interchangeable part lives in a registry; see CONTRIBUTING.md to add one.
"""

from cmar.models import decoders, fusion, image_encoder, sequence  # noqa: F401 (registration)
from cmar.models.checkpoint import load_model, save_model
from cmar.models.decoders import CaptionDecoder
from cmar.models.fusion import (
    CMARFusion,
    ConcatFusion,
    CrossFusion,
    FusedFrame,
    GatedAttention,
    Pool,
    hidden_for,
)
from cmar.models.losses import info_nce
from cmar.models.registry import (
    DECODERS,
    FUSIONS,
    IMAGE_ENCODERS,
    SEQUENCE_ENCODERS,
    Registry,
    count_parameters,
)
from cmar.models.sequence import StoryEncoder, TextEncoder
from cmar.models.story_model import FRAME_POSITIONS, PARTS, ModelOutput, NextFrameHead, StoryModel


def build_model(cfg, tokenizer, data_cfg, components: dict | None = None) -> StoryModel:
    """A StoryModel for a :class:`cmar.settings.Config`'s model and data sections; ``tokenizer``
    is the caption tokenizer (the run's: a trained BPE or a pretrained decoder's own). The
    frame-position table holds at least one row per context frame (``data.k``; in grounded
    mode the target frame is marked by its memory kind, not a position), and never fewer than
    :data:`FRAME_POSITIONS`, so a model of a given seed starts from the same weights for every
    k up to it."""
    return StoryModel(cfg, vocab_size=len(tokenizer), image_size=data_cfg.image_size,
                      mode=data_cfg.mode, max_len=data_cfg.max_tokens + 1,
                      pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                      eos_id=tokenizer.eos_token_id,
                      max_frames=max(FRAME_POSITIONS, data_cfg.k),
                      unk_id=tokenizer.unk_token_id, components=components)


__all__ = [
    "DECODERS", "FUSIONS", "IMAGE_ENCODERS", "PARTS", "SEQUENCE_ENCODERS", "CMARFusion",
    "CaptionDecoder", "ConcatFusion", "CrossFusion", "FusedFrame", "GatedAttention",
    "ModelOutput", "NextFrameHead", "Pool", "Registry", "StoryEncoder", "StoryModel",
    "TextEncoder", "build_model", "count_parameters", "hidden_for", "info_nce", "load_model",
    "save_model",
]
