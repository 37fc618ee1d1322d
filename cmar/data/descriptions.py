"""What each boxed entity of a context frame looks like: the targets of ``model.w_describe``.

StoryReasoning's ``chain_of_thought`` (and ShapeStories', in the same schema) describes every
character, object and landmark of a frame in a table row with its box. The describe
objective asks the image encoder's regions under a box to say that row's ``Description``
(:mod:`cmar.models.describe`). It is training-only supervision: the model never reads
``chain_of_thought`` when it predicts.

``EntityDescriptions(stories, store, tokenizer, entities)`` gives, per frame, each described
entity's box in the model's S x S frame and its description's token ids; batches carry them as
``context_entity_boxes`` (B, k, E, 4), ``context_descriptions`` (B, k, E, Ld) and
``context_description_mask`` (B, k, E, Ld) (:func:`collate_descriptions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmar.data.markup import Box
from cmar.data.story import Story
from cmar.data.tokenizer import encode
from cmar.settings import DESCRIBE_ENTITIES

DESCRIPTION_TOKENS = 16  # a description is cut to this many tokens


class EntityDescriptions:
    """The described entities of each frame of ``stories``, computed once per frame.

    ``stories`` are in the store's order (``data.stories[split]`` with
    ``data.datasets[split].store``). ``entities``: ``characters`` (ids ``charN``) or ``all``
    (objects and landmarks too). An entity qualifies when it has a box in that frame that
    survives the fit (:meth:`ImageStore.fit_box`) and a description.
    ``frame(story_index, t)`` gives ``[(box_in_frame_pixels, token_ids), ...]``.
    """

    def __init__(self, stories: Sequence[Story], store, tokenizer, entities: str = "characters",
                 max_tokens: int = DESCRIPTION_TOKENS):
        if entities not in DESCRIBE_ENTITIES:
            raise ValueError(f"entities must be one of {DESCRIBE_ENTITIES}, got {entities!r}")
        self.stories, self.store, self.tokenizer = stories, store, tokenizer
        self.entities, self.max_tokens = entities, max_tokens
        self._frames: dict[tuple[int, int], list[tuple[Box, list[int]]]] = {}

    def forget(self) -> None:
        """Drop the frames worked out so far (after the stories' descriptions changed)."""
        self._frames.clear()

    def frame(self, story: int, t: int) -> list[tuple[Box, list[int]]]:
        """(box in the S x S frame, description token ids) of each described entity of frame
        t of story number ``story``, in the table's order."""
        key = (story, t)
        if key not in self._frames:
            s = self.stories[story]
            boxes = s.entities[t] if t < len(s.entities) else {}
            described = s.descriptions[t] if t < len(s.descriptions) else {}
            out = []
            for entity, text in described.items():
                if self.entities == "characters" and not entity.startswith("char"):
                    continue
                box = boxes.get(entity)
                fitted = None if box is None else self.store.fit_box(story, t, box)
                ids = encode(self.tokenizer, text)[: self.max_tokens]
                if fitted is not None and ids:
                    out.append((fitted, ids))
            self._frames[key] = out
        return self._frames[key]


def collate_descriptions(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The items' ``context_entities`` (per context frame, a list of (box, ids)) as the batch
    fields ``context_entity_boxes`` (B, k, E, 4) float, NaN where no entity,
    ``context_descriptions`` (B, k, E, Ld) long and ``context_description_mask`` (B, k, E, Ld)
    bool, True on real tokens; E and Ld are at least 1. No fields when the items carry none."""
    if "context_entities" not in items[0]:
        return {}
    k = len(items[0]["context_entities"])
    frames = [frame for item in items for frame in item["context_entities"]]
    e = max(1, max(len(frame) for frame in frames))
    length = max(1, max((len(ids) for frame in frames for _, ids in frame), default=1))
    boxes = torch.full((len(items) * k, e, 4), float("nan"))
    tokens = torch.full((len(items) * k, e, length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items) * k, e, length), dtype=torch.bool)
    for row, frame in enumerate(frames):
        for j, (box, ids) in enumerate(frame):
            boxes[row, j] = torch.tensor(box, dtype=torch.float)
            tokens[row, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, j, : len(ids)] = True
    shape = (len(items), k)
    return {"context_entity_boxes": boxes.view(*shape, e, 4),
            "context_descriptions": tokens.view(*shape, e, length),
            "context_description_mask": mask.view(*shape, e, length)}
