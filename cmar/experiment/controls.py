"""Controls: named, evaluation-time interventions on a trained run's input.

A control is a plain function ``control(batch, split) -> batch``: it receives a
:class:`cmar.data.Batch` of B windows and the :class:`SplitWindows` it came from (to borrow
other windows), and returns the batch the model should see instead. The targets never change,
so a score under a control, paired with the plain run's, measures what the changed input was
worth. Register your own in a notebook cell::

    from cmar.evaluation.inputs import blank_captions
    from cmar.experiment import CONTROLS

    @CONTROLS.register("last_caption_blanked")
    def last_caption_blanked(batch, split):
        return blank_captions(batch, split.unk_id, frames=-1)

A control that takes a ``position`` argument stands for one control per context frame:
``"one_frame_blanked"`` expands to ``one_frame_blanked[0]`` (the oldest frame) ..
``one_frame_blanked[k-1]`` (the newest); ``"one_frame_blanked[2]"`` names one of them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import partial

import torch

from cmar.data.batches import Batch, Collate, WindowDataset
from cmar.data.windows import window_id
from cmar.evaluation.inputs import blank_captions, blank_images, reverse_context, with_context_of
from cmar.evaluation.retrieval import other_story
from cmar.models.registry import Registry

CONTROLS = Registry("control")
NONE = "none"  # the control column of the plain run
_POSITION = re.compile(r"^(?P<name>\w+)\[(?P<position>-?\d+)\]$")


class SplitWindows:
    """What a control may read beside its batch: the split's windows (to borrow another
    window's context), the context tokenizer's [UNK] id and a seed.

    ``other_story_batch(batch)`` gives, for every window of ``batch``, a window of another
    story drawn once per split with ``seed`` (:func:`cmar.evaluation.retrieval.other_story`),
    so the same window always borrows the same donor, however the loader batches it.
    """

    def __init__(self, dataset: WindowDataset, collate: Collate, unk_id: int, seed: int = 0):
        self.dataset, self.collate, self.unk_id, self.seed = dataset, collate, unk_id, seed
        self._index = {window_id(dataset.story_ids[w.story], w.t): i
                       for i, w in enumerate(dataset.windows)}
        self._donor: torch.Tensor | None = None

    def donors(self) -> torch.Tensor:
        """(windows,) the window of another story each window borrows from."""
        if self._donor is None:
            story_ids = [self.dataset.story_ids[w.story] for w in self.dataset.windows]
            self._donor = other_story(story_ids, self.seed)  # raises with a single story
        return self._donor

    def other_story_batch(self, batch: Batch) -> Batch:
        """The donor windows of ``batch``'s windows, collated, on ``batch``'s device."""
        rows = self.donors()[[self._index[w] for w in batch.window_ids]].tolist()
        return self.collate([self.dataset[j] for j in rows]).to(batch.context_tokens.device)


@CONTROLS.register("images_blanked")
def images_blanked(batch: Batch, split: SplitWindows) -> Batch:
    """Every image the model reads replaced by zeros: the context frames' and, in grounded
    mode, the target frame's (the captions untouched)."""
    return blank_images(batch, target=True)


@CONTROLS.register("captions_blanked")
def captions_blanked(batch: Batch, split: SplitWindows) -> Batch:
    """Every context caption reduced to one [UNK] (the images untouched)."""
    return blank_captions(batch, split.unk_id)


@CONTROLS.register("context_from_other_story")
def context_from_other_story(batch: Batch, split: SplitWindows) -> Batch:
    """The whole context (images and captions) taken from a window of another story; the
    target stays this window's."""
    return with_context_of(batch, split.other_story_batch(batch))


@CONTROLS.register("one_frame_blanked")
def one_frame_blanked(batch: Batch, split: SplitWindows, position: int) -> Batch:
    """Context frame ``position`` (0 the oldest, -1 or k-1 the newest) blanked: its image
    zeros, its caption one [UNK]; the other frames untouched."""
    return blank_captions(blank_images(batch, position), split.unk_id, position)


@CONTROLS.register("order_reversed")
def order_reversed(batch: Batch, split: SplitWindows) -> Batch:
    """The context frames in reverse order (newest first), each frame's image and caption
    kept together."""
    return reverse_context(batch)


def takes_position(control: Callable) -> bool:
    return "position" in inspect.signature(control).parameters


def resolve(names, k: int) -> dict[str, Callable]:
    """{label: control(batch, split)} for the names asked: a control that takes a position
    expands to one label per context frame (``name[0]`` .. ``name[k-1]``) unless the name
    already picks one (``"one_frame_blanked[2]"``). Unknown names list the registered ones."""
    out = {}
    for name in names:
        match = _POSITION.match(name)
        base = match["name"] if match else name
        if base not in CONTROLS:
            raise KeyError(f"unknown control {name!r}; registered: {sorted(CONTROLS)}")
        control = CONTROLS[base]
        if not takes_position(control):
            if match:
                raise ValueError(f"control {base!r} takes no frame position: name it without "
                                 "[...]")
            out[name] = control
            continue
        positions = [int(match["position"])] if match else range(k)
        for position in positions:
            if not -k <= position < k:
                raise ValueError(f"{name}: position {position} is outside the {k} context "
                                 "frames")
            out[f"{base}[{position % k}]"] = partial(control, position=position % k)
    return out
