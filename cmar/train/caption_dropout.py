"""Context-caption dropout: training windows that must do without some of their text.

In ShapeStories the names and whose turn it is live in the captions, where the actor faces
only in the images. A model that can always lean on the captions may never learn to read the
images; dropping some of the text forces the other route. Two rates (``train``):

- ``caption_dropout``: the share of windows whose context captions are all blanked, exactly
  as the ``captions_blanked`` control blanks them (one [UNK] each);
- ``word_dropout``: the share of the other context caption tokens set to [UNK] (a dropped
  name's box is dropped too: there is nothing left to ground).

Training only: validation and evaluation see every caption. The draws come from torch's
global generator on the CPU, which the trainer seeds and saves with every checkpoint, so a
resumed run drops the same windows; rates of 0 draw nothing.
"""

from __future__ import annotations

import dataclasses

import torch

from cmar.data.batches import Batch
from cmar.evaluation.inputs import blank_captions


def drop_captions(batch: Batch, unk_id: int, caption_rate: float = 0.0,
                  word_rate: float = 0.0) -> Batch:
    """``batch`` with the context captions of a ``caption_rate`` share of its windows blanked
    and a ``word_rate`` share of the other real context tokens set to ``unk_id``."""
    if caption_rate > 0:
        windows = torch.rand(len(batch)) < caption_rate  # (B,)
        batch = blank_captions(batch, unk_id, windows=windows)
    if word_rate > 0:
        dropped = (torch.rand(batch.context_tokens.shape) < word_rate).to(
            batch.context_mask.device) & batch.context_mask  # (B, k, Lc)
        changed = {"context_tokens": batch.context_tokens.masked_fill(dropped, unk_id)}
        if batch.context_boxes is not None:
            changed["context_boxes"] = batch.context_boxes.masked_fill(dropped[..., None],
                                                                       float("nan"))
        batch = dataclasses.replace(batch, **changed)
    return batch
