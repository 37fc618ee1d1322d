"""Which context tokens name a character, and where that character is in the frame.

A character mention (``<gdo charN>Name</gdo>`` in the markup) of a frame whose
``chain_of_thought`` table gives the character's box is tied to the first BPE token of the name
(with ``every``, also an object's or a place's: ``<gdl lm2>the pond</gdl>``)
and to the box mapped into the model's S x S frame (the store's ``fit_box``: the geometry of
``data.image_fit`` that made the frame). Grounding accuracy (``cmar.evaluation.grounding``)
and the grounding loss (``model.w_ground``) both read them from here.

Regions form a square ``sqrt(R) x sqrt(R)`` grid over the frame, row-major, as a CNN feature
map flattened by the image encoder; a region "overlaps" a box when their interiors intersect.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmar.data.markup import Box, Mention
from cmar.data.story import Story
from cmar.data.tokenizer import token_spans


def token_position(tokenizer, text: str, start: int, end: int) -> int | None:
    """Index, in ``encode(tokenizer, text)``, of the first token of ``text[start:end]``: a word
    may be several BPE tokens, and the space before it belongs to its first token
    (:func:`cmar.data.tokenizer.token_spans`). None when no token covers it."""
    for i, (first, last) in enumerate(token_spans(tokenizer, text)):
        if first < end and last > start:
            return i
    return None


class MentionTargets:
    """The scorable mentions of each frame of ``stories``, computed once per frame.

    ``stories`` are in the store's order (``data.stories[split]`` with
    ``data.datasets[split].store``). A mention qualifies when it is an entity tag (``gdo``) of
    exactly one character id (``charN``; group mentions such as ``<gdo char1 char2>`` are
    skipped: no single box), that character has a box in that frame, and the box survives the
    fit (:meth:`ImageStore.fit_box` is not None). ``every=True`` also takes the single-id
    mentions of objects (``<gdo objN>``) and places (``<gdl lmN>``, a landmark) that have a
    box (``model.ground_mentions=all``). ``frame(story_id, t)`` gives
    ``[(token_position, box_in_frame_pixels), ...]``.
    """

    def __init__(self, stories: Sequence[Story], store, tokenizer, every: bool = False):
        self.stories, self.store, self.tokenizer = stories, store, tokenizer
        self.every = every
        self.index = {story.story_id: i for i, story in enumerate(stories)}
        self._frames: dict[tuple[int, int], list[tuple[int, Box]]] = {}

    def _boxed(self, story: Story, t: int) -> list[tuple[Mention, Box]]:
        """The qualifying mentions of frame t with their box in original pixels."""
        entities = story.entities[t] if t < len(story.entities) else {}
        mentions = story.mentions[t] if t < len(story.mentions) else ()
        kinds = ("gdo", "gdl") if self.every else ("gdo",)
        out = []
        for mention in mentions:
            if mention.kind not in kinds or len(mention.ids) != 1:
                continue
            if not (self.every or mention.ids[0].startswith("char")):
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


def box_regions(boxes: torch.Tensor, side: int, cell: float) -> torch.Tensor:
    """boxes (..., 4) as (x1, y1, x2, y2) in frame pixels -> bool (..., side * side): which
    cells of a square grid (row-major, ``cell`` pixels wide) have an interior intersecting the
    box. A NaN box overlaps nothing."""
    starts = torch.arange(side, dtype=boxes.dtype, device=boxes.device) * cell
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # (..., 1) each
    cols = (starts < x2) & (starts + cell > x1)  # (..., side)
    rows = (starts < y2) & (starts + cell > y1)
    return (rows[..., :, None] & cols[..., None, :]).flatten(-2)


def region_overlaps(box: Box, side: int, cell: float) -> torch.Tensor:
    """Bool (side * side,): which cells of the grid overlap one box (frame pixels)."""
    return box_regions(torch.tensor(box, dtype=torch.float64), side, cell)
