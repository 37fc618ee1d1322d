"""ShapeStories: the embedded benchmark, generated in the StoryReasoning schema and markup.

``make_shapestories(n_stories, seed)`` returns a ``datasets.Dataset`` with the columns
``story_id``, ``images``, ``frame_count``, ``chain_of_thought`` and ``story``, exactly like
StoryReasoning, so it goes through the same parser and loader. The rules are in
:mod:`cmar.data.shapes_world`; the oracle that solves them in :mod:`cmar.data.shapes_oracle`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from cmar.data.shapes_render import Figure, box_around, render_frame
from cmar.data.shapes_world import (
    CHAR_RADIUS,
    COLOURS,
    LANDMARK_RADIUS,
    LANDMARKS,
    NAMES,
    RING8_NAMES,
    SHAPES,
    Knobs,
    anchor,
    ring_distance,
    ring_positions,
    stand_point,
    verb_for,
)
from cmar.processes import publish, temporary_path

FEATURES = datasets.Features(
    {
        "story_id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "frame_count": datasets.Value("int32"),
        "chain_of_thought": datasets.Value("string"),
        "story": datasets.Value("string"),
    }
)
_CHAR_HEADER = (
    "| Character ID | Name | Description | Emotions | Actions | Narrative Function "
    "| Bounding Box |\n|---|---|---|---|---|---|---|"
)
_OBJECT_HEADER = "| Object ID | Description | Function | Bounding Box |\n|---|---|---|---|"
_LANDMARK_HEADER = "| Landmark ID | Name | Description | Bounding Box |\n|---|---|---|---|"


def _box_text(box: tuple[int, int, int, int]) -> str:
    return ",".join(str(v) for v in box)


def generate_story(index: int, seed: int, knobs: Knobs) -> dict:
    """One story row. Randomness comes from (seed, index) only, so rows are independent."""
    rng = np.random.default_rng([seed, index])
    n, size = knobs.n_characters, knobs.image_size
    slots = ring_positions(knobs.n_landmarks)
    n_slots = len(slots)
    kinds = rng.choice(len(LANDMARKS), size=n_slots, replace=False)
    landmark_at = {slots[i]: LANDMARKS[k] for i, k in enumerate(kinds)}
    names = [NAMES[i] for i in rng.choice(len(NAMES), size=n, replace=False)]
    looks = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    colours = [list(COLOURS)[v // len(SHAPES)] for v in looks]
    shapes = [SHAPES[v % len(SHAPES)] for v in looks]
    n_frames = int(rng.integers(knobs.min_frames, knobs.max_frames + 1))
    distractors = [
        (SHAPES[int(rng.integers(len(SHAPES)))], float(rng.uniform(0.3, 0.7) * size),
         float(rng.uniform(0.3, 0.7) * size), int(rng.integers(90, 170)))
        for _ in range(knobs.n_distractors)
    ]

    def new_facing(at: int) -> int:
        return int(rng.choice([s for s in range(n_slots) if s != at]))

    pos = [int(rng.integers(n_slots)) for _ in range(n)]  # ring index (0..n_slots-1)
    facing = [new_facing(p) for p in pos]
    segments, tables, images = [], [], []
    for t in range(n_frames):
        actor = t % n
        dest = facing[actor]
        met = [c for c in range(n) if c != actor and pos[c] == dest]
        verb = verb_for(ring_distance(pos[actor], dest, n_slots), knobs.n_landmarks)
        pos[actor] = dest
        facing[actor] = new_facing(dest)
        for c in range(n):
            if c != actor and rng.random() < knobs.turn_prob:
                facing[c] = new_facing(pos[c])
        figures = []
        for c in range(n):
            x, y = stand_point(slots[pos[c]], c, n, size)
            if knobs.jitter:
                x += float(rng.integers(-knobs.jitter, knobs.jitter + 1))
                y += float(rng.integers(-knobs.jitter, knobs.jitter + 1))
            fx, fy = anchor(slots[facing[c]], size)
            figures.append(Figure(x, y, colours[c], shapes[c], fx, fy, knobs.mark_scale))
        images.append({"bytes": render_frame(size, landmark_at, distractors, figures,
                                              knobs.noise, rng), "path": None})
        lm = kinds[dest] + 1  # landmark ids are stable per kind: lm1 = house, ...
        segments.append(_segment_markup(t, actor, names, colours, shapes, verb,
                                        landmark_at[slots[dest]], lm, met))
        tables.append(_frame_tables(t, actor, names, colours, shapes, verb, figures, pos,
                                    facing, slots, landmark_at, kinds, distractors, size))
    return {
        "story_id": f"{index:05d}",
        "images": images,
        "frame_count": n_frames,
        "chain_of_thought": "\n\n".join(tables),
        "story": "\n".join(segments),
    }


def _segment_markup(t, actor, names, colours, shapes, verb, landmark, lm, met) -> str:
    a = f"char{actor + 1}"
    text = (f"<gdi image{t + 1}> <gdo {a}>{names[actor]}</gdo> the {colours[actor]} "
            f"{shapes[actor]} <gda {a}>{verb}</gda> to <gdl lm{lm}>the {landmark}</gdl>")
    if met:
        ordered = sorted(met, key=lambda c: names[c])
        ids = " ".join(f"char{c + 1}" for c in ordered)
        tagged = [f"<gdo char{c + 1}>{names[c]}</gdo>" for c in ordered]
        joined = tagged[0] if len(tagged) == 1 else ", ".join(tagged[:-1]) + " and " + tagged[-1]
        text += f" and <gda {a} {ids}>meets</gda> {joined}"
    return text + ". </gdi>"


def _frame_tables(t, actor, names, colours, shapes, verb, figures, pos, facing, slots,
                  landmark_at, kinds, distractors, size) -> str:
    """The chain_of_thought section of one frame: characters, objects, landmarks with boxes."""
    r = CHAR_RADIUS * size * 1.25
    lines = [f"## Image {t + 1}", "", "### Characters", _CHAR_HEADER]
    for c, figure in enumerate(figures):
        at, faces = landmark_at[slots[pos[c]]], landmark_at[slots[facing[c]]]
        action = f"{verb} to the {at}" if c == actor else f"stands at the {at}"
        lines.append(
            f"| char{c + 1} | {names[c]} | {colours[c]} {shapes[c]} at the {at}, facing the "
            f"{faces} | Calm | {action} | {'Actor' if c == actor else 'Bystander'} | "
            f"{_box_text(box_around(figure.x, figure.y, r, size))} |"
        )
    if distractors:
        lines += ["", "### Objects", _OBJECT_HEADER]
        for i, (shape, x, y, _) in enumerate(distractors):
            box = box_around(x, y, CHAR_RADIUS * size, size)
            lines.append(f"| obj{i + 1} | grey {shape} | distractor | {_box_text(box)} |")
    lines += ["", "### Landmarks", _LANDMARK_HEADER]
    for i, slot in enumerate(slots):
        x, y = anchor(slot, size)
        box = box_around(x, y, LANDMARK_RADIUS * size * 1.3, size)
        lines.append(f"| lm{kinds[i] + 1} | {landmark_at[slot]} | {RING8_NAMES[slot]} | "
                     f"{_box_text(box)} |")
    return "\n".join(lines)


def make_shapestories(
    n_stories: int, seed: int = 0, *, difficulty: str = "medium", progress: bool = False,
    **knobs,
) -> datasets.Dataset:
    """Generate ``n_stories`` ShapeStories in the StoryReasoning schema.

    Args:
        n_stories: number of stories (rows).
        seed: the same seed gives byte-identical images and text.
        difficulty: ``easy``, ``medium`` (default) or ``hard`` presets of the knobs.
        **knobs: any :class:`cmar.data.shapes_world.Knobs` field, overriding the preset.
    """
    settings = Knobs.from_difficulty(difficulty, **knobs)
    return schema_dataset(list(_stories(n_stories, seed, settings, progress)))


def schema_dataset(rows: list[dict]) -> datasets.Dataset:
    """Rows in the StoryReasoning schema (dicts with the :data:`FEATURES` keys) as a Dataset."""
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def shapestories_on_disk(
    cache_dir: str | Path = "data", n_stories: int = 2000, seed: int = 0,
    difficulty: str = "medium", knobs: dict | None = None, progress: bool = True,
    **more_knobs,
) -> Path:
    """Generate (once) and cache a ShapeStories dataset with ``save_to_disk``; return its folder.

    ``knobs`` and ``more_knobs`` override fields of :class:`Knobs`. The folder name encodes
    every setting, so changing a knob never reads a stale cache. ``progress=False`` also keeps
    the ``datasets`` progress bars of the writing quiet.
    """
    settings = Knobs.from_difficulty(difficulty, **(knobs or {}), **more_knobs)
    fields = asdict(settings)
    if fields["mark_scale"] == 1.0:  # a knob added later: at its default, caches keep their names
        del fields["mark_scale"]
    key = json.dumps({"n": n_stories, "seed": seed, **fields}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = Path(cache_dir) / "shapestories" / f"n{n_stories}-seed{seed}-{digest}"
    if (folder / "state.json").exists():
        return folder
    # Everything is written inside a folder of this process's own (two processes generating
    # at once never meet), then renamed into place whole: a reader finds a complete dataset
    # or none, never half of one.
    work = temporary_path(folder)
    # Streamed to an Arrow file 50 stories at a time: memory stays bounded at any size
    # (4,000 stories at 224 px are about 5 GB of PNG bytes).
    with _datasets_bars(progress):
        dataset = datasets.Dataset.from_generator(
            _stories, features=FEATURES, cache_dir=str(work / "arrow"), writer_batch_size=50,
            gen_kwargs={"n_stories": n_stories, "seed": seed, "knobs": settings,
                        "progress": progress})
        # small shards: save_to_disk holds about one shard in memory while writing it
        dataset.save_to_disk(str(work / "dataset"), max_shard_size="100MB")
    del dataset
    (work / "dataset" / "shapestories.json").write_text(key)
    publish(work / "dataset", folder)
    shutil.rmtree(work, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _datasets_bars(progress: bool):
    """``datasets``' own progress bars on or off for a while (as they were afterwards)."""
    was_off = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not progress and not was_off:
            datasets.utils.enable_progress_bars()


def _stories(n_stories: int, seed: int, knobs: Knobs, progress: bool = True):
    for i in tqdm(range(n_stories), desc="generating ShapeStories", disable=not progress):
        yield generate_story(i, seed, knobs)
