"""Is the facing cue learnable? A probe that reads one character's facing dot from one frame.

In ShapeStories the place in the next caption is the landmark the next actor faces in the
last context image, and only a small black dot on the character's edge shows it (radius
``max(1.2, size / 50)`` px: about 1.3 px at 64 px). The story model's place slot sits at
chance; this probe asks whether a network can read the dot at all, with nothing else to learn.

Examples (one per character per frame, from the story model's own train and test stories):

- input: a ``2h x 2h`` crop of the frame centred on the character's box from the frame table
  (``h = ceil(2 * CHAR_RADIUS * size)``: 8 px at 64, so the crop holds the whole shape and its
  dot), plus the box centre as a fraction of the image side;
- label: the ring position of the landmark it faces (``Description``: "... facing the tree",
  looked up in the frame's landmark table): class 0 is north, then clockwise.

Why a crop and not the whole frame with a mask channel: the crop is cut in pixels, never
resampled, so the dot keeps exactly the pixels the story model gets, and the probe is told
only *which* character (as the story model is, by name and colour) and where it stands. A
failure then means "the dot cannot be read at this size", not "the probe did not find the
character". The centre is needed because the same dot direction points at different
landmarks from different stand points.

Floors reported beside the accuracy (a number without its floor is not a result):

- ``chance``: ``1 / (n_landmarks - 1)``: a character never faces the landmark it stands at,
  so knowing where it stands but not reading the dot leaves this many choices (1/3 with the
  default 4 landmarks, the same chance as the story model's place slot);
- ``majority``: the most frequent training label, no image at all;
- ``position_only``: the most frequent training label for each stand position (what the
  centre input alone can give).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmar.config import load_config
from cmar.data.markup import parse_tables
from cmar.data.shapes_world import CHAR_RADIUS, RING8_NAMES

# 4 epochs of the default preset's 31.5k training examples: measured on 1 thread, 43 s at
# 64 px (crop 16), 90 s at 96 px, 165 s at 128 px; test accuracy 0.999-1.000 at each size
DEFAULT_EPOCHS = 4
_FACING = re.compile(r"at the (\w+), facing the (\w+)")


@dataclass(frozen=True)
class Facing:
    """One character in one frame, as its frame table says."""

    char_id: str  # "char1"
    box: tuple[float, float, float, float]  # (x1, y1, x2, y2), pixels
    stands: int  # ring class of the landmark it stands at (0 = north, clockwise)
    faces: int  # ring class of the landmark it faces (the label)
    ring: int  # landmarks on the ring (the number of classes)


def frame_facings(chain_of_thought: str) -> list[list[Facing]]:
    """Per frame (in order), the characters with their box, stand and facing ring classes.

    The ring class of a landmark is its position among the story's landmark slots, clockwise
    from north: with 4 landmarks, 0 north, 1 east, 2 south, 3 west.
    """
    frames = []
    for image, rows in sorted(parse_tables(chain_of_thought).items()):
        landmarks = [r for r in rows if r.get("_table") == "Landmarks"]
        step = 8 // len(landmarks)  # 4 landmarks use every other slot of the 8-slot ring
        ring = {r["Name"]: RING8_NAMES.index(r["Description"]) // step for r in landmarks}
        facings = []
        for row in rows:
            if row.get("_table") != "Characters":
                continue
            match = _FACING.search(row["Description"])
            if match is None:
                raise ValueError(f"frame {image}: no 'at the X, facing the Y' in {row}")
            box = tuple(float(v) for v in row["Bounding Box"].split(","))
            facings.append(Facing(row["Character ID"], box, ring[match.group(1)],
                                  ring[match.group(2)], len(ring)))
        frames.append(facings)
    return frames


def crop_half(image_size: int) -> int:
    """Half the side of the crop around a character: twice its radius, in pixels."""
    return math.ceil(2 * CHAR_RADIUS * image_size)


@dataclass
class FacingExamples:
    """Probe examples of one split; N = characters x frames x stories."""

    crops: torch.Tensor  # (N, 3, 2h, 2h) uint8, centred on the character
    centres: torch.Tensor  # (N, 2) float32, box centre / image side
    stands: torch.Tensor  # (N,) int64, ring class of the landmark it stands at
    labels: torch.Tensor  # (N,) int64, ring class of the landmark it faces
    n_classes: int  # landmarks on the ring

    def __len__(self) -> int:
        return len(self.labels)


def facing_examples(stories, cots: dict[str, str]) -> FacingExamples:
    """Every character of every frame of ``stories`` as a probe example.

    Args:
        stories: :class:`cmar.data.Story` list (square frames, as ShapeStories draws them).
        cots: story id -> its ``chain_of_thought`` (the frame tables with the labels).
    """
    crops, centres, stands, labels, n_classes = [], [], [], [], 0
    for story in stories:
        frames = frame_facings(cots[story.story_id])
        if len(frames) != len(story):
            raise ValueError(f"story {story.story_id}: {len(frames)} frame tables for "
                             f"{len(story)} frames")
        for t, facings in enumerate(frames):
            pixels = np.asarray(story.image(t))  # (S, S, 3) uint8
            size = pixels.shape[0]
            h = crop_half(size)
            padded = np.pad(pixels, ((h, h), (h, h), (0, 0)), mode="edge")
            for f in facings:
                x, y = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2  # box centre, px
                cx, cy = round(x), round(y)  # pixel (cx, cy) is padded[cy + h, cx + h]
                crops.append(padded[cy : cy + 2 * h, cx : cx + 2 * h])  # (2h, 2h, 3)
                centres.append((x / size, y / size))
                stands.append(f.stands)
                labels.append(f.faces)
                n_classes = max(n_classes, f.ring)
    if not labels:
        raise ValueError("no characters in these stories: nothing to probe")
    return FacingExamples(
        crops=torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
        centres=torch.tensor(centres, dtype=torch.float32),
        stands=torch.tensor(stands), labels=torch.tensor(labels), n_classes=n_classes)


class FacingCNN(nn.Module):
    """Crop (B, 3, 2h, 2h) + centre (B, 2) -> logits (B, n_classes).

    Two 3x3 convolutions at full resolution (the dot is 2-3 px wide, so nothing is strided
    before it is seen), one pooling, one more convolution, then a 4x4 grid of features: the
    grid keeps *where* in the crop the dot is, which is the whole answer.
    """

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # (B, 2 * width * 16)
        )
        self.head = nn.Sequential(nn.Linear(2 * width * 16 + 2, 128), nn.ReLU(),
                                  nn.Linear(128, n_classes))

    def forward(self, crops: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        x = crops.float() / 127.5 - 1.0  # uint8 -> [-1, 1]
        return self.head(torch.cat([self.features(x), centres - 0.5], dim=1))


def floors(train: FacingExamples, test: FacingExamples) -> dict[str, float]:
    """Accuracy on ``test`` of the predictors that never look at the crop."""
    majority = int(torch.bincount(train.labels).argmax())
    by_stand = {int(s): int(torch.bincount(train.labels[train.stands == s]).argmax())
                for s in train.stands.unique()}
    guess = torch.tensor([by_stand.get(int(s), majority) for s in test.stands])
    return {"chance": 1.0 / (train.n_classes - 1),
            "majority": float((test.labels == majority).float().mean()),
            "position_only": float((test.labels == guess).float().mean())}


def train_probe(train: FacingExamples, test: FacingExamples, epochs: int = DEFAULT_EPOCHS,
                seed: int = 0, batch_size: int = 64, lr: float = 2e-3) -> dict:
    """Train a :class:`FacingCNN` on ``train`` for ``epochs`` and score it on ``test``.

    Seeded (weights and batch order), so the same call gives the same accuracy on the same
    machine. Returns accuracy, its floors, per-class accuracy, example counts and seconds.
    """
    torch.manual_seed(seed)
    model = FacingCNN(train.n_classes)
    steps = epochs * math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=order).split(batch_size):
            loss = nn.functional.cross_entropy(model(train.crops[idx], train.centres[idx]),
                                               train.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    predicted = predict(model, test)
    correct = predicted == test.labels
    per_class = {c: float(correct[test.labels == c].float().mean())
                 for c in range(test.n_classes) if (test.labels == c).any()}
    return {"accuracy": float(correct.float().mean()), **floors(train, test),
            "per_class": per_class, "train_examples": len(train), "test_examples": len(test),
            "epochs": epochs, "seed": seed, "train_seconds": round(seconds, 1),
            "final_loss": loss.item()}


@torch.no_grad()
def predict(model: FacingCNN, examples: FacingExamples, batch_size: int = 512) -> torch.Tensor:
    """Predicted ring class of every example, (N,) int64."""
    model.eval()
    return torch.cat([model(examples.crops[i : i + batch_size],
                            examples.centres[i : i + batch_size]).argmax(1)
                      for i in range(0, len(examples), batch_size)])


def frame_tables(cfg) -> dict[str, str]:
    """Story id -> its ``chain_of_thought`` (the frame tables with boxes and facings), for
    every generated story of the ShapeStories dataset a :class:`cmar.settings.DataConfig`
    names (the splits are carved from its one ``train`` split)."""
    from cmar.data import open_source
    from cmar.data.prepare import shapestories_options

    rows = open_source(cfg.source, cache_dir=cfg.cache_dir, **shapestories_options(cfg))["train"]
    return dict(zip(rows["story_id"], rows["chain_of_thought"], strict=True))


def probe_data(config: str = "default", overrides: list[str] | tuple = (),
               image_size: int | None = None, knobs: dict | None = None,
               progress: bool = False) -> tuple[FacingExamples, FacingExamples, dict]:
    """Train and test examples from the story model's own train and test stories.

    Args:
        config: preset name or YAML file (``data.source`` must be ``shapestories``).
        overrides: ``key=value`` config overrides, as ``--set`` takes them.
        image_size: frame size in pixels (``data.image_size``); stories are generated at it.
        knobs: ShapeStories :class:`cmar.data.Knobs` overrides (``data.shapestories_knobs``),
            e.g. ``{"mark_scale": 2.0}``.

    Returns (train, test, settings): the examples and what was probed (for the JSON).
    """
    from cmar.data import load_split
    from cmar.data.prepare import shapestories_options

    cfg = load_config(config, list(overrides)).data
    if cfg.source != "shapestories":
        raise ValueError(f"the facing probe needs ShapeStories (its frame tables hold the "
                         f"facing), not data.source={cfg.source!r}")
    if image_size is not None:
        cfg.image_size = image_size
    cfg.shapestories_knobs = {**cfg.shapestories_knobs, **(knobs or {})}
    options = shapestories_options(cfg)
    cots = frame_tables(cfg)
    split = {name: load_split(cfg, name, progress) for name in ("train", "test")}
    settings = {"config": config, "overrides": list(overrides), "image_size": cfg.image_size,
                "difficulty": cfg.difficulty, "knobs": options["knobs"],
                "n_stories": cfg.n_stories, "crop": 2 * crop_half(cfg.image_size),
                "train_stories": len(split["train"]), "test_stories": len(split["test"])}
    return (facing_examples(split["train"], cots), facing_examples(split["test"], cots),
            settings)


def run_probe(config: str = "default", overrides: list[str] | tuple = (),
              image_size: int | None = None, knobs: dict | None = None,
              epochs: int = DEFAULT_EPOCHS, seed: int = 0, progress: bool = False) -> dict:
    """Build the examples (see :func:`probe_data`), train the probe, return its result."""
    train, test, settings = probe_data(config, overrides, image_size, knobs, progress)
    return {**settings, **train_probe(train, test, epochs=epochs, seed=seed)}


def render_result(result: dict) -> str:
    """A small plain-text table of one probe result."""
    lines = [f"facing probe: {result['image_size']} px, crop {result['crop']} px, "
             f"knobs {result['knobs']}, {result['epochs']} epochs, seed {result['seed']}",
             f"{'accuracy':<15}{result['accuracy']:>8.3f}",
             f"{'chance':<15}{result['chance']:>8.3f}   (1 / (landmarks - 1))",
             f"{'majority':<15}{result['majority']:>8.3f}   (no image)",
             f"{'position only':<15}{result['position_only']:>8.3f}   (stand position, no dot)",
             f"{'examples':<15}{result['train_examples']:>8} train, {result['test_examples']} "
             f"test ({result['train_stories']} / {result['test_stories']} stories)",
             f"{'seconds':<15}{result['train_seconds']:>8.1f}   (training)"]
    return "\n".join(lines)


def save_result(result: dict, out_dir: str | Path = "runs/probe") -> Path:
    """Write ``result`` as JSON under ``out_dir``; the file name says size, knobs and seed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = "".join(f"-{k}{v}" for k, v in sorted(result["knobs"].items()) if k != "image_size")
    path = out / f"probe-{result['image_size']}px{extra}-seed{result['seed']}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
