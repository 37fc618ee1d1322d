"""Grounding accuracy: how often a character name's strongest word-to-region attention (CMAR or
cross fusion) lands on a region overlapping that character's box, beside the chance rate of a
uniformly random region.

It runs on any split whose stories carry entity boxes (:attr:`Story.entities`, from the
``chain_of_thought`` tables: StoryReasoning, ShapeStories) and character mentions
(``<gdo charN>Name</gdo>`` in the markup). Boxes are in the ORIGINAL image's pixels; they reach
the model's frame through the split's store (``store.fit_box``), i.e. the very geometry
(``data.image_fit``: letterbox, centre crop or squash) that made the S x S frame.

The region grid is an explicit assumption: the fusion's R regions form a square
``sqrt(R) x sqrt(R)`` grid over the S x S frame, row-major (region ``r`` is row ``r // side``,
column ``r % side``), as a CNN feature map of a square input flattened by the image encoder. A
region "overlaps" a box when their interiors intersect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from cmar.data.batches import Batch
from cmar.data.markup import Box, Mention
from cmar.data.story import Story
from cmar.data.tokenizer import token_spans
from cmar.data.windows import window_frame


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
    targets = MentionTargets(data.stories[split], store, data.tokenizer)
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


def token_position(tokenizer, text: str, start: int, end: int) -> int | None:
    """Index, in ``encode(tokenizer, text)``, of the first token of ``text[start:end]``: a word
    may be several BPE tokens, and the space before it belongs to its first token
    (:func:`cmar.data.tokenizer.token_spans`). None when no token covers it."""
    for i, (first, last) in enumerate(token_spans(tokenizer, text)):
        if first < end and last > start:
            return i
    return None


class MentionTargets:
    """The scorable character mentions of each frame of ``stories``, computed once per frame.

    ``stories`` are in the store's order (``data.stories[split]`` with
    ``data.datasets[split].store``). A mention qualifies when it is an entity tag (``gdo``) of
    exactly one character id (``charN``; group mentions such as ``<gdo char1 char2>`` are
    skipped: no single box), that character has a box in that frame, and the box survives the
    fit (:meth:`ImageStore.fit_box` is not None). ``frame(story_id, t)`` gives
    ``[(token_position, box_in_frame_pixels), ...]``.
    """

    def __init__(self, stories: Sequence[Story], store, tokenizer):
        self.stories, self.store, self.tokenizer = stories, store, tokenizer
        self.index = {story.story_id: i for i, story in enumerate(stories)}
        self._frames: dict[tuple[int, int], list[tuple[int, Box]]] = {}

    @staticmethod
    def _boxed(story: Story, t: int) -> list[tuple[Mention, Box]]:
        """Character mentions of frame t with their box in original pixels."""
        entities = story.entities[t] if t < len(story.entities) else {}
        mentions = story.mentions[t] if t < len(story.mentions) else ()
        out = []
        for mention in mentions:
            if mention.kind != "gdo" or len(mention.ids) != 1 \
                    or not mention.ids[0].startswith("char"):
                continue
            box = entities.get(mention.ids[0])
            if box is not None:
                out.append((mention, box))
        return out

    def has_candidates(self) -> bool:
        """Whether any frame has a character mention with a box (before the fit)."""
        return any(self._boxed(story, t) for story in self.stories for t in range(len(story)))

    def frame(self, story_id: str, t: int) -> list[tuple[int, Box]]:
        """(token position, box in the S x S frame) of each qualifying mention of frame t."""
        i = self.index[story_id]
        key = (i, t)
        if key not in self._frames:
            story = self.stories[i]
            targets = []
            for mention, box in self._boxed(story, t):
                fitted = self.store.fit_box(i, t, box)
                if fitted is None:
                    continue  # cropped away: nothing of the character is in the frame
                position = token_position(self.tokenizer, story.captions[t], mention.start,
                                          mention.end)
                if position is not None:
                    targets.append((position, fitted))
            self._frames[key] = targets
        return self._frames[key]


def grounding_hits(attention: torch.Tensor, batch: Batch,
                   targets: MentionTargets) -> tuple[int, int, float]:
    """(hits, mentions, summed chance) over the character mentions of a batch's context.

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
                chance += overlaps.float().mean().item()
                mentions += 1
    return hits, mentions, chance


def region_overlaps(box: Box, side: int, cell: float) -> torch.Tensor:
    """Bool (side * side,): which cells of a square grid (row-major, ``cell`` pixels wide)
    have an interior intersecting ``box`` (frame pixels)."""
    x1, y1, x2, y2 = box
    starts = torch.arange(side, dtype=torch.float64) * cell
    cols = (starts < x2) & (starts + cell > x1)
    rows = (starts < y2) & (starts + cell > y1)
    return (rows[:, None] & cols[None, :]).flatten()
