"""Edits of a batch's input that evaluation and the experiment's controls make: blank the
images or the captions of some context frames, or take the context of other windows. The
targets are never touched, so a score under an edit pairs with the plain one.

Shapes as in :class:`cmar.data.Batch`: every context field has the frame axis at dim 1.
"""

from __future__ import annotations

import dataclasses

import torch

from cmar.data.batches import Batch

CONTEXT_FIELDS = ("context_images", "context_features", "context_tokens", "context_mask",
                  "context_boxes", "context_content")


def blank_images(batch: Batch, frames: slice | int = slice(None), target: bool = False
                 ) -> Batch:
    """The context images (or cached features) of ``frames`` set to zeros; ``target``: the
    target frame's too (an input in grounded mode). Padding boxes are kept: a blanked frame
    is a black picture of the same size."""
    changed = {}
    for name in ("context_images", "context_features"):
        value = getattr(batch, name)
        if value is not None:
            value = value.clone()
            value[:, frames] = 0
            changed[name] = value
    if target:
        changed.update({name: torch.zeros_like(getattr(batch, name))
                        for name in ("target_image", "target_features")
                        if getattr(batch, name) is not None})
    return dataclasses.replace(batch, **changed)


def context_unk_id(tokenizer) -> int:
    """The id a blanked context caption holds: the tokenizer's [UNK], else its [PAD]."""
    return tokenizer.pad_token_id if tokenizer.unk_token_id is None else tokenizer.unk_token_id


def blank_captions(batch: Batch, unk_id: int, frames: slice | int = slice(None),
                   windows: torch.Tensor | None = None) -> Batch:
    """The context captions of ``frames`` reduced to one [UNK] token, the rest masked out as
    padding (``unk_id``: the context tokenizer's), in every window or in those ``windows``
    (B,) bool marks. Their caption boxes become NaN: no name is left to ground."""
    rows = slice(None) if windows is None else windows.to(batch.context_tokens.device)
    tokens, mask = batch.context_tokens.clone(), batch.context_mask.clone()
    tokens[rows, frames] = unk_id  # masked positions are never read
    mask[rows, frames] = False
    mask[rows, frames, 0] = True
    changed = {"context_tokens": tokens, "context_mask": mask}
    if batch.context_boxes is not None:
        boxes = batch.context_boxes.clone()
        boxes[rows, frames] = float("nan")
        changed["context_boxes"] = boxes
    return dataclasses.replace(batch, **changed)


def with_context_of(batch: Batch, other: Batch) -> Batch:
    """``batch`` with every window's context (images or features, captions, boxes, padding
    boxes) replaced by the context of ``other``'s window in the same row."""
    return dataclasses.replace(batch, **{name: getattr(other, name) for name in CONTEXT_FIELDS})


def reverse_context(batch: Batch) -> Batch:
    """The context frames in reverse order (newest first), each frame's image, caption and
    boxes kept together."""
    return dataclasses.replace(batch, **{name: getattr(batch, name).flip(1)
                                         for name in CONTEXT_FIELDS
                                         if getattr(batch, name) is not None})
