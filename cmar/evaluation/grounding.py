"""Grounding accuracy: how often a character name's strongest word-to-region attention (CMAR or
cross fusion) lands on a region overlapping that character's box, beside the chance rate of a
uniformly random region.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from cmar.data.batches import Batch


@torch.no_grad()
def grounding_scores(model, data, split: str, batch_size: int = 64,
                     progress: bool = True) -> dict | None:
    """Grounding accuracy over ``split`` beside its chance rate, or None when the fusion
    returns no attention or no character mention has a box."""
    if data.cfg.source != "shapestories":
        return None
    device = next(model.parameters()).device
    stories = {s.story_id: s for s in data.stories[split]}
    hits = mentions = 0
    chance = 0.0
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    for batch in tqdm(loader, desc="grounding", disable=not progress):
        out = model(batch.to(device), return_attention=True)
        if out.attention is None:
            return None
        h, m, c = grounding_hits(out.attention.cpu(), batch, stories, data.tokenizer,
                                 data.cfg.image_size)
        hits, mentions, chance = hits + h, mentions + m, chance + c
    if not mentions:
        return None
    return {"accuracy": hits / mentions, "chance": chance / mentions, "mentions": mentions}


def grounding_hits(attention: torch.Tensor, batch: Batch, stories: dict, tokenizer,
                   image_size: int) -> tuple[int, int, float]:
    """(hits, mentions, chance) over the character-name mentions of a batch's context.

    ``attention`` (B, k, rounds, Lc, R), averaged over rounds; regions form a square grid.
    """
    from cmar.data.tokenizer import encode

    b, k, _, length, regions = attention.shape
    side = int(round(regions ** 0.5))
    cell = image_size / side
    maps = attention.mean(2)  # (B, k, Lc, R)
    hits = mentions = 0
    chance = 0.0
    for row, wid in enumerate(batch.window_ids):
        story_id, t = wid.rsplit(":", 1)
        story = stories[story_id]
        for j, frame in enumerate(range(int(t) - k, int(t))):
            caption = story.captions[frame]
            for mention in story.mentions[frame]:
                if mention.kind != "gdo" or len(mention.ids) != 1 \
                        or not mention.ids[0].startswith("char"):
                    continue
                box = story.entities[frame].get(mention.ids[0])
                position = len(encode(tokenizer, caption[:mention.start]))
                if box is None or position >= length:
                    continue
                overlaps = torch.tensor([_overlaps(r, side, cell, box) for r in range(regions)])
                best = int(maps[row, j, position].argmax())
                hits += bool(overlaps[best])
                chance += overlaps.float().mean().item()
                mentions += 1
    return hits, mentions, chance


def _overlaps(region: int, side: int, cell: float, box) -> bool:
    y, x = divmod(region, side)
    x1, y1, x2, y2 = box
    return x * cell <= x2 and (x + 1) * cell >= x1 and y * cell <= y2 and (y + 1) * cell >= y1
