"""Drawing one ShapeStories frame: landmarks, distractors, characters with a facing dot.

Everything is drawn at the target size with PIL (no resampling), so a 64 px frame costs well
under a millisecond. Returned boxes are ``(x1, y1, x2, y2)`` in pixels of the drawn image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cmar.data.shapes_world import CHAR_RADIUS, COLOURS, LANDMARK_RADIUS, anchor

BACKGROUND = (236, 232, 220)


@dataclass(frozen=True)
class Figure:
    """A character as drawn: where (pixels), what it looks like, which way it faces."""

    x: float
    y: float
    colour: str
    shape: str
    face_x: float  # the point it faces (pixels)
    face_y: float
    mark_scale: float = 1.0  # facing dot radius, times the default max(1.2, size / 50) px


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "diamond":
        return [(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    points = _polygon(shape, x, y, r)
    if points is None:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon(points, fill=fill)


def draw_landmark(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float) -> None:
    """Each landmark kind is a distinct dark icon, never in a character colour."""
    if kind == "house":
        draw.rectangle([x - r, y - r * 0.2, x + r, y + r], fill=(120, 80, 50))
        draw.polygon([(x - r * 1.2, y - r * 0.2), (x, y - r * 1.2), (x + r * 1.2, y - r * 0.2)],
                     fill=(90, 30, 30))
    elif kind == "tree":
        draw.rectangle([x - r * 0.25, y, x + r * 0.25, y + r * 1.2], fill=(100, 70, 40))
        draw.ellipse([x - r, y - r * 1.1, x + r, y + r * 0.5], fill=(20, 90, 40))
    elif kind == "pond":
        draw.ellipse([x - r * 1.3, y - r * 0.6, x + r * 1.3, y + r * 0.6], fill=(120, 190, 230))
    elif kind == "rock":
        draw.polygon([(x - r, y + r * 0.6), (x - r * 0.5, y - r * 0.7), (x + r * 0.6, y - r * 0.5),
                      (x + r, y + r * 0.6)], fill=(110, 110, 110))
    elif kind == "well":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(60, 60, 70), width=max(2, int(r / 3)))
    elif kind == "tower":
        draw.rectangle([x - r * 0.4, y - r * 1.3, x + r * 0.4, y + r * 1.3], fill=(60, 50, 80))
    elif kind == "gate":
        draw.rectangle([x - r, y - r, x - r * 0.6, y + r], fill=(80, 50, 30))
        draw.rectangle([x + r * 0.6, y - r, x + r, y + r], fill=(80, 50, 30))
        draw.rectangle([x - r, y - r, x + r, y - r * 0.6], fill=(80, 50, 30))
    elif kind == "bridge":
        draw.rectangle([x - r * 1.3, y - r * 0.3, x + r * 1.3, y + r * 0.3], fill=(170, 140, 90))
    else:
        raise ValueError(f"unknown landmark {kind!r}")


def render_frame(
    size: int,
    landmarks: dict[int, str],
    distractors: list[tuple[str, float, float, int]],
    figures: list[Figure],
    noise: float,
    rng: np.random.Generator,
) -> bytes:
    """Draw one frame and return it as PNG bytes.

    Args:
        landmarks: ring slot -> landmark kind.
        distractors: (shape, x, y, grey level) of static grey shapes, pixels.
        figures: the characters, in cast order.
        noise: std of Gaussian pixel noise as a fraction of 255 (0 for none).
    """
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for slot, kind in landmarks.items():
        x, y = anchor(slot, size)
        draw_landmark(draw, kind, x, y, LANDMARK_RADIUS * size)
    for shape, x, y, grey in distractors:
        draw_shape(draw, shape, x, y, CHAR_RADIUS * size * 0.8, (grey, grey, grey))
    r = CHAR_RADIUS * size
    dot = max(1.2, size / 50)
    for figure in figures:
        mark = dot * figure.mark_scale
        draw_shape(draw, figure.shape, figure.x, figure.y, r, COLOURS[figure.colour])
        dx, dy = figure.face_x - figure.x, figure.face_y - figure.y
        norm = math.hypot(dx, dy) or 1.0
        ex, ey = figure.x + dx / norm * r * 0.55, figure.y + dy / norm * r * 0.55
        draw.ellipse([ex - mark, ey - mark, ex + mark, ey + mark], fill=(0, 0, 0))
    if noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += rng.normal(0.0, noise * 255.0, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def box_around(x: float, y: float, r: float, size: int) -> tuple[int, int, int, int]:
    """Integer pixel box of radius r around (x, y), clipped to the image."""
    return (max(0, math.floor(x - r)), max(0, math.floor(y - r)),
            min(size - 1, math.ceil(x + r)), min(size - 1, math.ceil(y + r)))
