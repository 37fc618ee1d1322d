"""Where each boxed entity of a context frame goes in the frame after it: the targets of
``model.w_look_ahead``.

``chain_of_thought`` gives every character's box in every frame (StoryReasoning and
ShapeStories alike). The look-ahead objective (:mod:`cmar.models.look_ahead`) asks the regions
under an entity's box in frame t to point at its box in frame t+1, for every entity that
moves. Frame t+1 of the newest context frame is the target frame: its boxes are read as
training-only supervision, as the next-frame losses read its image; the model never reads a
box when it predicts.

``EntityMoves(stories, store)`` gives, per frame, the (box now, box next) pairs in the model's
S x S frame; batches carry them as ``context_move_from`` and ``context_move_to`` (B, k, E, 4)
(:func:`collate_moves`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cmar.data.markup import Box
from cmar.data.story import Story

MIN_MOVE = 0.1  # an entity moves when its box's centre shifts by more than this share of S


def moves_of(now: dict[str, Box], after: dict[str, Box], size: float) -> list[tuple[Box, Box]]:
    """(box now, box next) of each entity in both ``now`` and ``after`` (entity id -> box, the
    same pixels) whose centre shifts by more than ``MIN_MOVE * size``, in ``now``'s order."""
    out = []
    for entity, box in now.items():
        nxt = after.get(entity)
        if nxt is None:
            continue
        shift = math.dist(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
                          ((nxt[0] + nxt[2]) / 2, (nxt[1] + nxt[3]) / 2))
        if shift > MIN_MOVE * size:
            out.append((box, nxt))
    return out


class EntityMoves:
    """The moving characters of each frame of ``stories``, computed once per frame.

    ``stories`` are in the store's order (``data.stories[split]`` with
    ``data.datasets[split].store``). Characters are the entities with ids ``charN``; a box
    counts when it survives the fit (:meth:`ImageStore.fit_box`).
    ``frame(story_index, t)`` gives ``[(box in frame t, box in frame t + 1), ...]``, frame
    pixels; none for the last frame of a story.
    """

    def __init__(self, stories: Sequence[Story], store):
        self.stories, self.store = stories, store
        self._frames: dict[tuple[int, int], list[tuple[Box, Box]]] = {}

    def boxes(self, story: int, t: int) -> dict[str, Box]:
        """Each character's box in frame t of story number ``story``, in frame pixels."""
        s = self.stories[story]
        found = s.entities[t] if t < len(s.entities) else {}
        fitted = {e: self.store.fit_box(story, t, box) for e, box in found.items()
                  if e.startswith("char")}
        return {e: box for e, box in fitted.items() if box is not None}

    def frame(self, story: int, t: int) -> list[tuple[Box, Box]]:
        key = (story, t)
        if key not in self._frames:
            self._frames[key] = moves_of(self.boxes(story, t), self.boxes(story, t + 1),
                                         self.store.image_size)
        return self._frames[key]


def collate_moves(items: list[dict]) -> dict[str, torch.Tensor]:
    """The items' ``context_moves`` (per context frame, a list of (box now, box next)) as the
    batch fields ``context_move_from`` and ``context_move_to`` (B, k, E, 4) float, NaN where no
    entity; E is at least 1. No fields when the items carry none."""
    if "context_moves" not in items[0]:
        return {}
    k = len(items[0]["context_moves"])
    frames = [frame for item in items for frame in item["context_moves"]]
    e = max(1, max(len(frame) for frame in frames))
    start = torch.full((len(items) * k, e, 4), float("nan"))
    end = start.clone()
    for row, frame in enumerate(frames):
        for j, (now, nxt) in enumerate(frame):
            start[row, j] = torch.tensor(now, dtype=torch.float)
            end[row, j] = torch.tensor(nxt, dtype=torch.float)
    shape = (len(items), k, e, 4)
    return {"context_move_from": start.view(shape), "context_move_to": end.view(shape)}
