"""The ShapeStories oracle: the next caption computed from the context, and one-modality floors.

The oracle reads the two modalities separately:

- text: the context captions, parsed back into (name, appearance, verb, landmark, met names);
- images: what a perfect eye sees in each context image, taken from the ``chain_of_thought``
  tables *without the names* (names are never drawn): each character's appearance, the
  landmark it stands at and the one it faces, and where each landmark sits on the ring.

``oracle_caption`` uses both and is exact (corpus BLEU-4 = 1.0). ``text_only_caption`` and
``image_only_caption`` are the best simple guesses with one modality: they show how much each
modality is worth and are the floors a trained model must beat.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from cmar.data.markup import parse_tables, split_frames
from cmar.data.shapes_world import (
    NAMES,
    RING8_NAMES,
    caption_text,
    ring_distance,
    verb_for,
)

_CAPTION = re.compile(
    r"^(?P<name>\w+) the (?P<look>\w+ \w+) (?P<verb>walks|runs) to the (?P<place>\w+)"
    r"(?: and meets (?P<met>[\w ,]+))?\.$"
)
_SEEN = re.compile(r"^(?P<look>\w+ \w+) at the (?P<at>\w+), facing the (?P<facing>\w+)$")
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class Said:
    """A context caption parsed back into its parts (the text modality)."""

    name: str
    look: str
    verb: str
    place: str
    met: tuple[str, ...]


@dataclass(frozen=True)
class Seen:
    """One character as a perfect eye sees it in one image (no name: names are not drawn)."""

    look: str
    at: str
    facing: str


@dataclass(frozen=True)
class Scene:
    """One image: the characters in it and the ring slot of each landmark."""

    characters: tuple[Seen, ...]
    ring: dict[str, int]  # landmark -> slot on the used ring
    ring_size: int


def parse_caption(text: str) -> Said:
    match = _CAPTION.match(text)
    if match is None:
        raise ValueError(f"not a ShapeStories caption: {text!r}")
    met = re.split(r", | and ", match["met"]) if match["met"] else []
    return Said(match["name"], match["look"], match["verb"], match["place"], tuple(met))


def scenes_of(chain_of_thought: str) -> list[Scene]:
    """The image modality of every frame, from the chain_of_thought tables (names dropped)."""
    scenes = []
    for _, rows in sorted(parse_tables(chain_of_thought).items()):
        characters = tuple(
            Seen(**_SEEN.match(row["Description"]).groupdict())
            for row in rows if row["_table"] == "Characters"
        )
        directions = {row["Name"]: RING8_NAMES.index(row["Description"])
                      for row in rows if row["_table"] == "Landmarks"}
        used = sorted(directions.values())
        ring = {place: used.index(slot) for place, slot in directions.items()}
        scenes.append(Scene(characters, ring, len(used)))
    return scenes


def _cast_size(said: list[Said] | None, scenes: list[Scene] | None) -> int:
    if scenes:
        return len(scenes[-1].characters)
    return len({s.name for s in said})


def _next_actor_text(said: list[Said], n: int) -> Said:
    if len(said) < n:
        raise ValueError(f"k={len(said)} context frames cannot show the turn of {n} characters")
    return said[-n]


def _destination(scene: Scene, look: str, next_scene: Scene | None) -> tuple[Seen, str]:
    me = next(c for c in scene.characters if c.look == look)
    if next_scene is not None:  # grounded mode: the next image shows where the actor went
        return me, next(c for c in next_scene.characters if c.look == look).at
    return me, me.facing


def _verb(scene: Scene, start: str, dest: str) -> str:
    return verb_for(ring_distance(scene.ring[start], scene.ring[dest], scene.ring_size),
                    scene.ring_size)


def oracle_caption(said: list[Said], scenes: list[Scene], next_scene: Scene | None = None) -> str:
    """The exact next caption from both modalities (``next_scene`` only in grounded mode)."""
    actor = _next_actor_text(said, _cast_size(said, scenes))
    names = {s.look: s.name for s in said}
    me, dest = _destination(scenes[-1], actor.look, next_scene)
    met = [names[c.look] for c in scenes[-1].characters if c.at == dest and c.look != actor.look]
    return caption_text(actor.name, actor.look, _verb(scenes[-1], me.at, dest), dest, met)


def text_only_caption(said: list[Said]) -> str:
    """Best simple guess from the captions alone: who and how they look are known, where not.

    Positions are tracked from the text; the destination is guessed as the landmark mentioned
    most often that the actor is not at, the verb as ``walks``.
    """
    actor = _next_actor_text(said, _cast_size(said, None))
    where: dict[str, str] = {}
    for s in said:
        for name in (s.name, *s.met):
            where[name] = s.place
    counts = Counter(s.place for s in said)
    here = where.get(actor.name)
    options = sorted((p for p in counts if p != here), key=lambda p: (-counts[p], p))
    dest = options[0] if options else "house"
    met = [n for n, p in where.items() if p == dest and n != actor.name]
    return caption_text(actor.name, actor.look, "walks", dest, met)


def image_only_caption(scenes: list[Scene], next_scene: Scene | None = None) -> str:
    """Best simple guess from the images alone: all is seen except the names.

    The turn is read from who moved between consecutive context images; every name is
    guessed as the same placeholder, since names are never drawn.
    """
    n = len(scenes[-1].characters)
    movers = []
    for before, after in zip(scenes, scenes[1:], strict=False):
        moved = [a.look for a, b in zip(after.characters, before.characters, strict=True)
                 if a.at != b.at]
        movers.extend(moved[:1])
    recent = movers[-(n - 1):] if n > 1 else []
    waiting = [c.look for c in scenes[-1].characters if c.look not in recent]
    look = waiting[0]
    me, dest = _destination(scenes[-1], look, next_scene)
    met = [NAMES[0] for c in scenes[-1].characters if c.at == dest and c.look != look]
    return caption_text(NAMES[0], look, _verb(scenes[-1], me.at, dest), dest, met)


def oracle_predictions(
    rows, k: int, mode: str = "next", modalities: tuple[str, ...] = MODALITIES
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Predictions and references for every window (story, t >= k) of ShapeStories rows.

    ``modalities`` picks the solver: both (the exact oracle), ``("text",)`` or ``("image",)``.
    Returns ``(predictions, references)`` keyed by window id, ready for ``caption_scores``.
    """
    from cmar.data.windows import window_id

    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    for row in rows:
        captions = split_frames(row["story"])
        said = [parse_caption(c) for c in captions]
        scenes = scenes_of(row["chain_of_thought"])
        for t in range(k, len(captions)):
            ctx_said, ctx_scenes = said[t - k : t], scenes[t - k : t]
            next_scene = scenes[t] if mode == "grounded" else None
            if set(modalities) == set(MODALITIES):
                guess = oracle_caption(ctx_said, ctx_scenes, next_scene)
            elif tuple(modalities) == ("text",):
                guess = text_only_caption(ctx_said)
            elif tuple(modalities) == ("image",):
                guess = image_only_caption(ctx_scenes, next_scene)
            else:
                raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}")
            key = window_id(row["story_id"], t)
            predictions[key] = guess
            references[key] = [captions[t]]
    return predictions, references
