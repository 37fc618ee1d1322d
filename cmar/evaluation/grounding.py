"""Grounding accuracy: how often a character name's strongest word-to-region attention (CMAR or
cross fusion) lands on a region overlapping that character's box, beside the chance rate of a
uniformly random region.

It runs on any split whose stories carry entity boxes (:attr:`Story.entities`, from the
``chain_of_thought`` tables: StoryReasoning, ShapeStories) and character mentions
(``<gdo charN>Name</gdo>`` in the markup). Boxes are in the ORIGINAL image's pixels; they reach
the model's frame through the split's store (``store.fit_box``), i.e. the very geometry
(``data.image_fit``: letterbox, centre crop or squash) that made the S x S frame.

The region grid is an explicit assumption (see :mod:`cmar.data.mentions`, which the grounding
loss shares): the fusion's R regions form a square ``sqrt(R) x sqrt(R)`` grid over the S x S
frame, row-major (region ``r`` is row ``r // side``, column ``r % side``), as a CNN feature map
of a square input flattened by the image encoder. A region "overlaps" a box when their
interiors intersect.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from cmar.data.batches import Batch
from cmar.data.mentions import MentionTargets, region_overlaps
from cmar.data.windows import window_frame
from cmar.models.image_encoder import region_mask


@torch.no_grad()
def grounding_scores(model, data, split: str, batch_size: int = 64,
                     progress: bool = True) -> dict | None:
    """Grounding accuracy over ``split`` beside its chance rate.

    Returns ``{"accuracy", "mentions", "chance", "floor": {"name": "random region",
    "accuracy": chance}}``: ``accuracy`` is the share of qualifying mentions (see
    :class:`MentionTargets`) in the context captions of every window whose strongest region
    (attention averaged over rounds) overlaps the character's box; ``chance`` the same for a
    uniformly random region, i.e. the mean share of regions overlapping the box. A mention is
    counted once per window it appears in as context.

    Returns None, as "not measurable here" rather than a score, when:

    - the fusion returns no attention (``concat``: there is no word-to-region map to read);
    - the split's store cannot map boxes into its frames (no ``fit_box``);
    - no mention qualifies: the source has no character markup or no boxes (a captions-column
      dataset), or every box is cropped away by the fit, or every mention lies past the
      caption's token cap.
    """
    store = data.datasets[split].store
    if not callable(getattr(store, "fit_box", None)):
        return None
    targets = MentionTargets(data.stories[split], store,
                             getattr(data, "context_tokenizer", data.tokenizer))
    if not targets.has_candidates():
        return None  # nothing to score: do not run the model for nothing
    device = next(model.parameters()).device
    hits = mentions = 0
    chance = 0.0
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    for batch in tqdm(loader, desc="grounding", disable=not progress):
        out = model(batch.to(device), return_attention=True)
        if out.attention is None:
            return None
        h, m, c = grounding_hits(out.attention.float().cpu(), batch, targets)
        hits, mentions, chance = hits + h, mentions + m, chance + c
    if not mentions:
        return None
    chance /= mentions
    return {"accuracy": hits / mentions, "mentions": mentions, "chance": chance,
            "floor": {"name": "random region", "accuracy": chance}}


def grounding_hits(attention: torch.Tensor, batch: Batch,
                   targets: MentionTargets) -> tuple[int, int, float]:
    """(hits, mentions, summed chance) over the character mentions of a batch's context; the
    chance of a mention is the share of the frame's picture regions (not letterbox padding)
    that overlap its box.

    ``attention`` (B, k, rounds, Lc, R) word-to-region weights, averaged over rounds; the R
    regions must form a square grid over the S x S frame (see the module docstring), where S
    is ``targets.store.image_size``. A mention past the caption's (token-capped) length in
    ``batch.context_mask`` is not counted.
    """
    b, k, _, length, regions = attention.shape
    side = math.isqrt(regions)
    if side * side != regions:
        raise ValueError(f"grounding assumes a square grid of regions, got R={regions}")
    cell = targets.store.image_size / side
    maps = attention.mean(2)  # (B, k, Lc, R)
    # the regions a random pick chooses from: those that see any picture (letterboxed frames
    # keep only some; the model never attends to the others)
    keep = (torch.ones(b, k, regions, dtype=torch.bool) if batch.context_content is None
            else region_mask(batch.context_content.cpu(), targets.store.image_size,
                             (side, side)))  # (B, k, R)
    hits = mentions = 0
    chance = 0.0
    for row, wid in enumerate(batch.window_ids):
        story_id, t = window_frame(wid)
        for j, frame in enumerate(range(t - k, t)):
            for position, box in targets.frame(story_id, frame):
                if position >= length or not bool(batch.context_mask[row, j, position]):
                    continue
                overlaps = region_overlaps(box, side, cell)
                best = int(maps[row, j, position].argmax())
                hits += bool(overlaps[best])
                chance += overlaps[keep[row, j]].float().mean().item()
                mentions += 1
    return hits, mentions, chance
