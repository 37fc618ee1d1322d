"""The ShapeStories world: its vocabulary, its layout and the one rule that drives a story.

A story has a cast of ``n_characters`` coloured shapes with names (names appear only in the
text), and ``n_landmarks`` landmarks on a ring around the picture (4: the sides; 8: sides and
corners). Each character stands at a landmark and faces another one (a black dot on the
shape's edge, visible only in the image). At frame t:

1. the actor is ``cast[t % n_characters]`` (turn taking: whose turn it is is read from the
   text, as the actor of frame t - n_characters);
2. the actor goes to the landmark it faces (read from the image of frame t - 1): it ``runs``
   when that landmark is more than a quarter of the ring away, otherwise it ``walks``;
3. it ``meets`` every character already standing there (read from the image; named from the
   text), listed in alphabetical order of their names;
4. the actor turns to face a new landmark, and every other character turns to a new one with
   probability ``turn_prob``, so only the last context image tells where anyone is going.

The caption of frame t is therefore a deterministic function of the captions and images of
frames t - k .. t - 1 whenever ``k >= n_characters`` (see :mod:`cmar.data.shapes_oracle`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from cmar.settings import DIFFICULTIES  # the knobs of each data.difficulty

NAMES = (
    "Ada", "Ann", "Bob", "Cid", "Dot", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim",
    "Lou", "Max", "Ned", "Oli", "Pam", "Rex", "Sam", "Tom", "Uma", "Vic", "Wes", "Zoe",
)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
LANDMARKS = ("house", "tree", "pond", "rock", "well", "tower", "gate", "bridge")
# Ring of landmark anchor points (fractions of the image side), clockwise from the top.
RING8 = ((0.5, 0.08), (0.92, 0.08), (0.92, 0.5), (0.92, 0.92), (0.5, 0.92), (0.08, 0.92),
         (0.08, 0.5), (0.08, 0.08))
RING8_NAMES = ("north", "north-east", "east", "south-east", "south", "south-west", "west",
               "north-west")

# Layout, in fractions of the image side. A character stands TOWARD_CENTRE of the way from its
# landmark to the centre, in a slot of its own (by cast index) across that line.
CHAR_RADIUS = 0.062
LANDMARK_RADIUS = 0.065
TOWARD_CENTRE = 0.38
SLOT_SPACING = 0.15
MIN_GAP = 2.2 * CHAR_RADIUS  # closest two characters may stand: no figure hides another

@dataclass(frozen=True)
class Knobs:
    """Size and difficulty of a ShapeStories dataset (defaults: the ``medium`` difficulty)."""

    image_size: int = 64  # pixels per side; 64 trains in minutes on a CPU
    min_frames: int = 5  # frames per story are drawn uniformly from [min_frames, max_frames]
    max_frames: int = 8
    n_characters: int = 3  # cast size; the next caption is solvable when k >= n_characters
    n_landmarks: int = 4  # 4 (sides) or 8 (sides and corners: finer directions to read)
    n_distractors: int = 2  # grey shapes that are not characters
    noise: float = 0.02  # std of Gaussian pixel noise, as a fraction of 255
    jitter: int = 1  # max random offset of each character per frame, in pixels
    turn_prob: float = 0.5  # chance a non-acting character turns to face a new landmark
    mark_scale: float = 1.0  # facing dot radius, times max(1.2, image_size / 50) px (1.3 at 64)

    def __post_init__(self) -> None:
        if self.n_landmarks not in (4, 8):
            raise ValueError(f"n_landmarks must be 4 or 8, got {self.n_landmarks}")
        if self.n_characters < 2:
            raise ValueError(f"n_characters must be at least 2, got {self.n_characters}")
        gap = closest_gap(self.n_characters, self.n_landmarks)
        if gap < MIN_GAP:
            raise ValueError(
                f"{self.n_characters} characters around {self.n_landmarks} landmarks would "
                f"overlap in the picture (closest gap {gap:.3f} < {MIN_GAP:.3f} of the side); "
                "use at most 3 characters with 4 landmarks, 2 with 8"
            )
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError("need 2 <= min_frames <= max_frames")
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 pixels")
        if not 0 < self.mark_scale <= 3:
            raise ValueError(f"mark_scale must be in (0, 3], got {self.mark_scale}")

    @classmethod
    def from_difficulty(cls, difficulty: str = "medium", **overrides) -> Knobs:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}, got {difficulty!r}")
        return cls(**{**DIFFICULTIES[difficulty], **overrides})


def anchor(slot: int, size: float) -> tuple[float, float]:
    """Pixel position of landmark slot ``slot`` (an index into RING8)."""
    fx, fy = RING8[slot]
    return fx * size, fy * size


def stand_point(slot: int, cast_index: int, n_cast: int, size: float) -> tuple[float, float]:
    """Where character ``cast_index`` stands at landmark ``slot``: fixed, so never overlapping."""
    ax, ay = anchor(slot, size)
    dx, dy = size / 2 - ax, size / 2 - ay
    norm = math.hypot(dx, dy)
    px, py = -dy / norm, dx / norm  # perpendicular to the line towards the centre
    offset = (cast_index - (n_cast - 1) / 2) * SLOT_SPACING * size
    return ax + TOWARD_CENTRE * dx + px * offset, ay + TOWARD_CENTRE * dy + py * offset


def closest_gap(n_characters: int, n_landmarks: int) -> float:
    """Smallest distance between two stand points, as a fraction of the image side."""
    points = [stand_point(s, c, n_characters, 1.0)
              for s in ring_positions(n_landmarks) for c in range(n_characters)]
    return min(math.dist(a, b) for a, b in itertools.combinations(points, 2))


def ring_positions(n_landmarks: int) -> list[int]:
    """Indices into RING8 of the landmark slots used: every other one when there are 4."""
    return list(range(0, 8, 8 // n_landmarks))


def ring_distance(a: int, b: int, n: int) -> int:
    """Steps between slots a and b on a ring of n slots, the short way round."""
    d = abs(a - b) % n
    return min(d, n - d)


def verb_for(distance: int, n_landmarks: int) -> str:
    """``runs`` to a landmark more than a quarter of the ring away, else ``walks``."""
    return "runs" if distance > n_landmarks // 4 else "walks"


def join_names(names: list[str]) -> str:
    """['Bob'] -> 'Bob'; ['Bob', 'Cid'] -> 'Bob and Cid'; three -> 'Bob, Cid and Dot'."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def caption_text(name: str, appearance: str, verb: str, landmark: str, met: list[str]) -> str:
    """The plain caption of one frame (the markup version strips to exactly this)."""
    text = f"{name} the {appearance} {verb} to the {landmark}"
    if met:
        text += f" and meets {join_names(sorted(met))}"
    return text + "."
