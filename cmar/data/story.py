"""The validated story every other part of cmar consumes, and the report of what was skipped."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from cmar.data.markup import Box, Mention

log = logging.getLogger("cmar.data")


@dataclass
class Story:
    """One story that passed validation.

    ``images`` are the encoded image files (PNG/JPEG bytes), one per frame: a list, or, from
    :func:`cmar.data.load_stories`, a sequence that reads them from the memory-mapped dataset on
    demand, so a split of thousands of stories costs no heap for its images; :meth:`image`
    decodes one. ``captions[t]`` is the caption of frame t after the caption policy;
    ``entities[t]`` maps entity id to its box in frame t (empty when the source has no boxes);
    ``mentions[t]`` are the tagged spans of ``captions[t]`` (empty for sources without markup);
    ``descriptions[t]`` maps a boxed entity's id to its ``Description`` in ``chain_of_thought``
    (training-only supervision: ``model.w_describe``; empty when the source has none).
    """

    story_id: str
    images: Sequence[bytes]
    captions: list[str]
    entities: list[dict[str, Box]] = field(default_factory=list)
    mentions: list[tuple[Mention, ...]] = field(default_factory=list)
    descriptions: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def image(self, t: int) -> Image.Image:
        """Frame t decoded as an RGB PIL image."""
        return decode_image(self.images[t])


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (not just the header) into RGB; raises on corrupt data."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


@dataclass
class LoadReport:
    """What :func:`cmar.data.load_stories` kept and skipped, and why."""

    source: str
    split: str
    rows: int = 0
    loaded: int = 0
    frames: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, story_id: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(f"{story_id}: {detail}" if detail else story_id)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        line = (
            f"{self.source}[{self.split}]: {self.loaded} of {self.rows} stories loaded "
            f"({self.frames} frames), {self.n_skipped} skipped"
        )
        if self.skipped:
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
            line += f" ({reasons})"
        return line


class StoryList(list):
    """A list of :class:`Story` with the :class:`LoadReport` that produced it."""

    def __init__(self, stories: list[Story], report: LoadReport):
        super().__init__(stories)
        self.report = report
