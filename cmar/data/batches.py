"""Windows -> padded tensors: the Dataset, the Batch and the DataLoader settings.

A :class:`Batch` of B windows with k context frames, image side S:

- ``context_images``  float (B, k, 3, S, S): frames t-k .. t-1, normalised
- ``target_image``    float (B, 3, S, S): frame t. In ``next`` mode a model may use it only as
  the target of the next-frame loss; in ``grounded`` mode it is also an input.
- ``context_features`` float (B, k, C, h, w) and ``target_features`` (B, C, h, w): the same
  frames as a frozen backbone's features, read from the feature cache. A batch holds either
  the images or the features, the other pair is None.
- ``context_tokens``  long (B, k, Lc) and ``context_mask`` bool (B, k, Lc): captions t-k .. t-1
- ``target_in``       long (B, Lt): ``[BOS] w1 .. wn``, the decoder input (target shifted right)
- ``target_out``      long (B, Lt): ``w1 .. wn [EOS]``, what each position must predict
- ``target_mask``     bool (B, Lt): True on real positions of ``target_out``; padding is False
  and must be ignored by the loss (``target_out`` holds ``[PAD]`` there)
- ``window_ids``      list of B strings ``"<story_id>:<t>"``
- ``context_boxes``   float (B, k, Lc, 4), only from ``prepare_data(..., boxes=True)``: at the
  first token of each character's name in a context caption, that character's box in the
  frame (x1, y1, x2, y2, frame pixels); NaN at every other token (:mod:`cmar.data.mentions`)
- ``context_entity_boxes`` float (B, k, E, 4), ``context_descriptions`` long (B, k, E, Ld) and
  ``context_description_mask`` bool (B, k, E, Ld), only from ``prepare_data(...,
  describe=...)``: each described entity of a context frame, its box (NaN for padding) and
  its ``chain_of_thought`` description (:mod:`cmar.data.descriptions`)
- ``context_move_from`` and ``context_move_to`` float (B, k, E, 4), only from
  ``prepare_data(..., moves=True)``: each character that moves between a context frame and
  the frame after it, its box in both (NaN for padding; :mod:`cmar.data.moves`)
- ``context_content`` float (B, k, 4) and ``target_content`` (B, 4): where each frame's picture
  lies in the S x S frame (x1, y1, x2, y2, frame pixels; :meth:`ImageStore.content_box`), the
  rest being letterbox padding. The model turns them into a mask of the regions that see any
  picture (its encoder knows the grid). None when the store cannot tell (then nothing is
  masked); a batch of images or of cached features carries them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
from torch.utils.data import DataLoader, Dataset

from cmar.data.descriptions import EntityDescriptions, collate_descriptions
from cmar.data.images import ImageStore, image_transform
from cmar.data.mentions import MentionTargets
from cmar.data.moves import EntityMoves, collate_moves
from cmar.data.story import Story
from cmar.data.tokenizer import encode
from cmar.data.windows import Window, window_frame, window_id

FRAME_FIELDS = ("context_images", "target_image", "context_features", "target_features")


@dataclass
class Batch:
    context_images: torch.Tensor | None
    target_image: torch.Tensor | None
    context_tokens: torch.Tensor
    context_mask: torch.Tensor
    target_in: torch.Tensor
    target_out: torch.Tensor
    target_mask: torch.Tensor
    window_ids: list[str]
    context_features: torch.Tensor | None = None
    target_features: torch.Tensor | None = None
    context_boxes: torch.Tensor | None = None
    context_content: torch.Tensor | None = None
    target_content: torch.Tensor | None = None
    context_entity_boxes: torch.Tensor | None = None
    context_descriptions: torch.Tensor | None = None
    context_description_mask: torch.Tensor | None = None
    context_move_from: torch.Tensor | None = None
    context_move_to: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        moved = {
            f.name: (value.to(device, non_blocking=non_blocking)
                     if isinstance(value, torch.Tensor) else value)
            for f in fields(self) for value in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def __len__(self) -> int:
        return len(self.window_ids)

    def rows(self, index: slice) -> Batch:
        """The windows ``index`` (a slice) of this batch, as a batch."""
        return Batch(**{f.name: None if value is None else value[index]
                        for f in fields(self) for value in [getattr(self, f.name)]})

    def frame_ids(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A number for every frame of the batch, equal where two windows hold the same frame
        of the same story (overlapping windows): context (B, k) and target (B,), long. A
        window id that is not ``"<story_id>:<t>"`` (a batch built by hand) shares no frame."""
        numbers: dict[tuple[str, int], int] = {}
        context, target = [], []
        for wid in self.window_ids:
            try:
                story, t = window_frame(wid)
            except ValueError:
                story, t = f"window {wid}", k
            context.append([numbers.setdefault((story, f), len(numbers))
                            for f in range(t - k, t)])
            target.append(numbers.setdefault((story, t), len(numbers)))
        device = self.context_tokens.device
        return (torch.tensor(context, device=device).view(len(self), k),
                torch.tensor(target, device=device))

    def frames(self) -> dict[str, torch.Tensor]:
        """The frame tensors this batch holds, by field name (images or features)."""
        return {name: getattr(self, name) for name in FRAME_FIELDS
                if getattr(self, name) is not None}


class WindowDataset(Dataset):
    """Item i is window i: its frames (uint8, from the ImageStore) and caption token ids.

    Captions are tokenized once here, images decoded once in the store; ``__getitem__`` only
    indexes. ``context_tokenizer`` tokenizes the context captions when a pretrained text
    encoder brings its own (default: ``tokenizer``, the caption tokenizer). With ``mentions``
    (grounding supervision), an item also carries the boxes of the characters its context
    captions name, worked out once per frame on first use; with ``described`` (the describe
    objective), the box and description of each described entity of its context frames;
    with ``moves`` (the look-ahead objective), the boxes of each character that moves between
    a context frame and the frame after it.
    """

    def __init__(self, stories: list[Story], windows: list[Window], store: ImageStore,
                 tokenizer, max_tokens: int = 40, mentions: MentionTargets | None = None,
                 context_tokenizer=None, described: EntityDescriptions | None = None,
                 moves: EntityMoves | None = None):
        self.story_ids = [s.story_id for s in stories]  # not the stories: workers stay light
        self.windows = windows
        self.store = store
        self.ids = [[encode(tokenizer, c)[:max_tokens] for c in s.captions] for s in stories]
        self.context_ids = self.ids
        self.context_pad_id = tokenizer.pad_token_id
        if context_tokenizer is not None and context_tokenizer is not tokenizer:
            self.context_ids = [[encode(context_tokenizer, c)[:max_tokens] for c in s.captions]
                                for s in stories]
            self.context_pad_id = context_tokenizer.pad_token_id
        self.mentions = mentions
        self.described = described
        self.moves = moves

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        frames = self.store.frames(w.story, range(w.t - w.k, w.t + 1))  # (k + 1, 3, S, S)
        if getattr(self.store, "holds", "images") == "features":  # (k + 1, C, h, w)
            pair = {"context_features": frames[:-1], "target_features": frames[-1]}
        else:
            pair = {"context_images": frames[:-1], "target_image": frames[-1]}
        item = {
            **pair,
            "context_ids": [self.context_ids[w.story][c] for c in w.context],
            "target_ids": self.ids[w.story][w.t],
            "window_id": window_id(self.story_ids[w.story], w.t),
        }
        content = getattr(self.store, "content_box", None)
        if callable(content) and getattr(self.store, "geometry", True) is not None:
            item["content"] = [content(w.story, t) for t in range(w.t - w.k, w.t + 1)]
        if self.mentions is not None:  # [(token position, box), ...] per context frame
            item["context_boxes"] = [
                [(p, box) for p, box in self.mentions.frame(self.story_ids[w.story], c)
                 if p < len(self.context_ids[w.story][c])]  # a name cut off with its caption
                for c in w.context]
        if self.described is not None:  # [(box, description ids), ...] per context frame
            item["context_entities"] = [self.described.frame(w.story, c) for c in w.context]
        if self.moves is not None:  # [(box now, box next), ...] per context frame
            item["context_moves"] = [self.moves.frame(w.story, c) for c in w.context]
        return item


def _pad(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) ids and bool mask (True on the first len(s) positions of each row); L >= 1 even
    when every sequence is empty. The mask comes from the lengths, not from ``ids != pad``:
    a pretrained tokenizer may pad with its [EOS] (GPT-2), which a target does hold."""
    length = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask


def pad_targets(targets: list[list[int]], pad_id: int, bos_id: int, eos_id: int):
    """Caption ids -> (target_in, target_out, target_mask), each (N, L): ``[BOS] w..`` and
    ``w.. [EOS]``, padded."""
    target_in, _ = _pad([[bos_id] + ids for ids in targets], pad_id)
    target_out, target_mask = _pad([ids + [eos_id] for ids in targets], pad_id)
    return target_in, target_out, target_mask


class Collate:
    """Stacks items into a :class:`Batch`; a class (not a closure) so workers can pickle it.
    ``context_pad_id``: the context captions' [PAD] when a pretrained text encoder brings its
    own tokenizer (default: ``pad_id``)."""

    def __init__(self, pad_id: int, bos_id: int, eos_id: int, context_pad_id: int | None = None):
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.context_pad_id = pad_id if context_pad_id is None else context_pad_id
        self.transform = image_transform()

    def _frames(self, items: list[dict], name: str) -> torch.Tensor | None:
        """The stacked frames ``name`` of the items: images normalised, cached features as
        float32; None when the items hold the other kind."""
        if name not in items[0]:
            return None
        frames = torch.stack([item[name] for item in items])
        return self.transform(frames) if name.endswith(("images", "image")) else frames.float()

    def __call__(self, items: list[dict]) -> Batch:
        b, k = len(items), len(items[0]["context_ids"])
        context = [ids for item in items for ids in item["context_ids"]]  # B * k captions
        context_tokens, context_mask = _pad(context, self.context_pad_id)
        context_tokens = context_tokens.view(b, k, -1)  # (B, k, Lc)
        target_in, target_out, target_mask = pad_targets(
            [it["target_ids"] for it in items], self.pad_id, self.bos_id, self.eos_id)
        return Batch(
            **{name: self._frames(items, name) for name in FRAME_FIELDS},
            context_tokens=context_tokens,
            context_mask=context_mask.view(b, k, -1),
            target_in=target_in,
            target_out=target_out,
            target_mask=target_mask,
            window_ids=[it["window_id"] for it in items],
            context_boxes=_boxes(items, context_tokens.shape[-1]),
            **_content(items),
            **collate_descriptions(items, self.pad_id),
            **collate_moves(items),
        )


def fills_frame(box) -> bool:
    """Whether a content box ``(x1, y1, x2, y2)`` is its whole square frame (no padding)."""
    x1, y1, x2, y2 = box
    return x1 == 0 and y1 == 0 and x2 == y2


def _content(items: list[dict]) -> dict[str, torch.Tensor]:
    """The items' content boxes (picture within the letterboxed frame) as ``context_content``
    (B, k, 4) and ``target_content`` (B, 4); none when the items hold none, or when every
    frame fills its square (ShapeStories): the model then takes its unmasked path, decided
    here in Python so that it never waits on the device to ask."""
    if "content" not in items[0] or all(fills_frame(box) for item in items
                                        for box in item["content"]):
        return {}
    boxes = torch.tensor([item["content"] for item in items], dtype=torch.float)  # (B, k+1, 4)
    return {"context_content": boxes[:, :-1], "target_content": boxes[:, -1]}


def _boxes(items: list[dict], length: int) -> torch.Tensor | None:
    """The items' ``context_boxes`` as (B, k, Lc, 4), NaN where a token names no one."""
    if "context_boxes" not in items[0]:
        return None
    k = len(items[0]["context_boxes"])
    boxes = torch.full((len(items), k, length, 4), float("nan"))
    for row, item in enumerate(items):
        for j, frame in enumerate(item["context_boxes"]):
            for position, box in frame:
                boxes[row, j, position] = torch.tensor(box, dtype=torch.float)
    return boxes


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def make_loader(dataset: WindowDataset, tokenizer, batch_size: int = 32, shuffle: bool = False,
                seed: int = 0, num_workers: int = 2) -> DataLoader:
    """A DataLoader with a seeded order, persistent workers and pinned memory on CUDA; never
    more worker processes than this process may use CPUs (a preset's 4 on a 2-core machine
    would only contend, and torch warns)."""
    generator = torch.Generator().manual_seed(seed)
    num_workers = min(num_workers, usable_cpus())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                           getattr(dataset, "context_pad_id", None)),
    )
