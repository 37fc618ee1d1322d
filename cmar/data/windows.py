"""Sliding windows over stories: context frames t-k .. t-1, target frame t, for every t >= k.

A story of T frames gives T - k windows (not just the first k + 1 frames). In ``next`` mode
the model sees the k context frames; in ``grounded`` mode it also sees the image of frame t.
The target caption is always caption t (the next one), never caption t - 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cmar.data.story import Story
from cmar.settings import MODES  # noqa: F401  (its home is cmar.settings: re-exported)

log = logging.getLogger("cmar.data")



def window_id(story_id: str, t: int) -> str:
    """Stable id of the window whose target is frame t (0-based) of a story: ``"<id>:<t>"``."""
    return f"{story_id}:{t}"


def window_frame(wid: str) -> tuple[str, int]:
    """The story id and target frame of a :func:`window_id`: ``"<id>:<t>"`` -> (id, t)."""
    story_id, t = wid.rsplit(":", 1)
    return story_id, int(t)


@dataclass(frozen=True)
class Window:
    """One training example: ``story`` indexes the story list, ``t`` is the target frame."""

    story: int
    t: int
    k: int

    @property
    def context(self) -> range:
        """Frame indices the model reads: t - k .. t - 1."""
        return range(self.t - self.k, self.t)


def make_windows(stories: list[Story], k: int) -> list[Window]:
    """Every window (story, t) with k <= t < len(story), in story order then t order.

    Stories with k or fewer frames give no window; they are counted in a log line.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    windows = [Window(i, t, k) for i, story in enumerate(stories) for t in range(k, len(story))]
    short = sum(1 for story in stories if len(story) <= k)
    if short:
        log.warning("%d stories have <= k=%d frames and give no window", short, k)
    return windows
