"""Frames decoded once: every image of a split, fitted to S x S, in one uint8 array.

Peers re-decoded every image of a story on each ``__getitem__``; here each frame is decoded
exactly once per split (and, with ``cache_dir``, once ever: the array is written as a
memory-mapped ``.npy`` keyed by the image bytes, the size and the fit, which DataLoader
workers share).

Frames are fitted to a square ``image_size`` S by one of :data:`IMAGE_FITS`:

- ``"letterbox"`` (the default): scale the longer side to S and pad the rest symmetrically
  with the ImageNet mean colour. Every character stays in frame and keeps its shape: a
  StoryReasoning frame (about 575 x 240) fills the width and gets bands above and below. The
  pad is the mean colour, not black, because :func:`image_transform` maps it to exactly 0,
  so a pretrained CNN sees "no signal" there rather than a hard black edge it would respond to;
- ``"center_crop"``: scale the shorter side to S and keep the centre: at 575 x 240 that drops
  more than half the width, where characters often stand (their boxes then shrink or vanish);
- ``"squash"``: resize to S x S, ignoring the aspect ratio (the old behaviour).

Square frames (ShapeStories) give identical pixels under all three. Entity boxes stay in the
original pixels in :class:`Story`; :meth:`ImageStore.fit_box` maps one into the S x S frame
through the same :func:`fit_geometry` that resized the image, so the two cannot drift.
:meth:`ImageStore.content_box` gives, through the same geometry, where the picture lies in the
frame: batches carry it, and the model masks the regions that lie wholly in the padding
(:func:`cmar.models.image_encoder.region_mask`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from cmar.data.markup import Box
from cmar.data.story import Story, decode_image
from cmar.processes import publish, temporary_path
from cmar.settings import IMAGE_FITS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)  # letterbox bands: 0 once normalised


def image_transform() -> v2.Compose:
    """uint8 (…, 3, H, W) -> float32 normalised with ImageNet statistics (as torchvision's
    pretrained ResNets expect)."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def ensure_disk_space(folder: str | Path, needed: int, what: str,
                      elsewhere: str = "point data.cache_dir elsewhere") -> None:
    """Refuse, before any work starts, to write ``needed`` bytes where they do not fit."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OSError(f"{what} needs {needed / 1e9:.1f} GB in {folder} but only "
                      f"{free / 1e9:.1f} GB are free; free some space or {elsewhere}")


def fit_geometry(width: int, height: int, size: int,
                 fit: str = "letterbox") -> tuple[float, float, int, int]:
    """How a ``width`` x ``height`` image becomes the ``size`` x ``size`` frame under ``fit``.

    Returns ``(scale_x, scale_y, offset_x, offset_y)``: the image is resized to
    ``round(width * scale_x)`` x ``round(height * scale_y)`` pixels and pasted with its top-left
    corner at ``(offset_x, offset_y)`` of the frame (negative offsets crop), so an original
    point ``(x, y)`` lands at ``(x * scale_x + offset_x, y * scale_y + offset_y)``. Both the
    image resize and :meth:`ImageStore.fit_box` use it.
    """
    if fit not in IMAGE_FITS:
        raise ValueError(f"unknown image fit {fit!r}; choose one of {IMAGE_FITS}")
    if fit == "squash":
        new_w, new_h = size, size
    else:
        side = max(width, height) if fit == "letterbox" else min(width, height)
        new_w = max(1, round(width * size / side))
        new_h = max(1, round(height * size / side))
    return new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2


def fit_image(image: Image.Image, size: int, fit: str = "letterbox") -> Image.Image:
    """``image`` fitted to ``size`` x ``size`` RGB through :func:`fit_geometry`."""
    scale_x, scale_y, offset_x, offset_y = fit_geometry(*image.size, size, fit)
    new_size = (round(image.width * scale_x), round(image.height * scale_y))
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR)
    if new_size == (size, size):
        return image
    frame = Image.new("RGB", (size, size), PAD_COLOUR)
    frame.paste(image, (offset_x, offset_y))  # a negative offset crops
    return frame


def fitted_array(image: Image.Image, size: int, fit: str = "letterbox") -> np.ndarray:
    """uint8 (3, size, size): an RGB ``image`` fitted as every stored frame is."""
    return np.asarray(fit_image(image, size, fit), dtype=np.uint8).transpose(2, 0, 1)


def content_box(width: int, height: int, size: int, fit: str = "letterbox") -> Box:
    """Where the picture of a ``width`` x ``height`` image lies in its ``size`` x ``size`` frame
    under ``fit`` (same :func:`fit_geometry` as the image): ``(x1, y1, x2, y2)`` in frame
    pixels, clipped to the frame. The rest of the frame is letterbox padding; ``squash``,
    ``center_crop`` and square images fill the frame: ``(0, 0, size, size)``."""
    scale_x, scale_y, offset_x, offset_y = fit_geometry(width, height, size, fit)
    new_w, new_h = round(width * scale_x), round(height * scale_y)
    return (float(max(offset_x, 0)), float(max(offset_y, 0)),
            float(min(offset_x + new_w, size)), float(min(offset_y + new_h, size)))


def fit_box(box: Box, width: int, height: int, size: int,
            fit: str = "letterbox") -> Box | None:
    """A box ``(x1, y1, x2, y2)`` in pixels of a ``width`` x ``height`` image, in pixels of its
    ``size`` x ``size`` frame (same :func:`fit_geometry` as the image), clipped to the frame;
    None when nothing of it is left in the frame (cropped away, or empty)."""
    scale_x, scale_y, offset_x, offset_y = fit_geometry(width, height, size, fit)
    x1, y1, x2, y2 = box
    x1, x2 = (min(max(x * scale_x + offset_x, 0.0), size) for x in (x1, x2))
    y1, y2 = (min(max(y * scale_y + offset_y, 0.0), size) for y in (y1, y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _fingerprint(stories: list[Story], image_size: int, fit: str = "letterbox") -> str:
    digest = hashlib.sha1(f"size={image_size};fit={fit}".encode())
    for story in stories:
        for data in story.images:
            digest.update(hashlib.sha1(data).digest())
    return digest.hexdigest()[:16]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    partial = temporary_path(path)
    np.save(partial, array)
    publish(partial, path)  # atomic: readers never see half a file


class FrameGeometry:
    """Where each frame's original pixels went: its (width, height) and the fit, enough to
    map an entity box into the S x S frame. Light (no pixels), so a feature store keeps it."""

    def __init__(self, sizes: np.ndarray, offsets: np.ndarray, image_size: int, fit: str):
        self.sizes, self.offsets, self.image_size, self.fit = sizes, offsets, image_size, fit

    def original_size(self, story: int, t: int) -> tuple[int, int]:
        """(width, height) of frame ``t`` of story number ``story`` as stored in the source."""
        width, height = self.sizes[int(self.offsets[story]) + t]
        return int(width), int(height)

    def fit_box(self, story: int, t: int, box: Box) -> Box | None:
        """``box`` (original pixels of frame ``t`` of story ``story``) in the S x S frame's
        pixels, clipped; None when the fit crops it away entirely."""
        return fit_box(box, *self.original_size(story, t), self.image_size, self.fit)

    def content_box(self, story: int, t: int) -> Box:
        """Where frame ``t`` of story ``story``'s picture lies in its S x S frame
        (:func:`content_box`): the rest is letterbox padding."""
        return content_box(*self.original_size(story, t), self.image_size, self.fit)


class ImageStore:
    """All frames of ``stories`` as one array of shape (n_frames, 3, image_size, image_size).

    ``store.frames(story_index, [t1, t2])`` returns a uint8 tensor (len, 3, S, S);
    ``store.fit_box(story_index, t, box)`` maps an entity box of that frame into it. ``fit``
    is one of :data:`IMAGE_FITS` (see the module docstring). With ``cache_dir``, the frames and
    their original sizes (``frames-<key>.npy``, ``frames-<key>-sizes.npy``) are written once.
    """

    def __init__(self, stories: list[Story], image_size: int, cache_dir: str | Path | None = None,
                 progress: bool = True, fit: str = "letterbox"):
        if fit not in IMAGE_FITS:
            raise ValueError(f"unknown image fit {fit!r} (data.image_fit); "
                             f"choose one of {IMAGE_FITS}")
        self.image_size, self.fit = image_size, fit
        self.offsets = np.cumsum([0] + [len(s) for s in stories])
        total = int(self.offsets[-1])
        shape = (total, 3, image_size, image_size)
        path = sizes_path = None
        self.fingerprint = None  # the cache key; computed only with a cache_dir
        if cache_dir is not None:
            self.fingerprint = _fingerprint(stories, image_size, fit)
            path = Path(cache_dir) / f"frames-{self.fingerprint}.npy"
            sizes_path = Path(cache_dir) / f"frames-{self.fingerprint}-sizes.npy"
            if path.exists() and sizes_path.exists():
                self.array = np.load(path, mmap_mode="r")
                sizes = np.load(sizes_path)
                if self.array.shape == shape and sizes.shape == (total, 2):
                    self.geometry = FrameGeometry(sizes, self.offsets, image_size, fit)
                    return
        if path is None:
            array = np.empty(shape, dtype=np.uint8)
        else:  # written straight to disk: a large split never has to fit in memory
            ensure_disk_space(path.parent, int(np.prod(shape)), "the decoded-frame cache")
            partial = temporary_path(path)  # this process's own: two never write one file
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        sizes = np.empty((total, 2), dtype=np.int32)
        frames = (data for s in stories for data in s.images)
        for i, data in enumerate(tqdm(frames, total=total, desc="decoding frames",
                                      disable=not progress)):
            image = decode_image(data)
            sizes[i] = image.size
            array[i] = fitted_array(image, image_size, fit)
        self.geometry = FrameGeometry(sizes, self.offsets, image_size, fit)
        if path is None:
            self.array = array
        else:
            _save_atomically(sizes_path, sizes)  # before the frames: frames imply sizes
            array.flush()
            del array
            publish(partial, path)  # atomic: readers never see half a file
            self.array = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.array)

    def frames(self, story: int, ts: list[int] | range) -> torch.Tensor:
        """uint8 tensor (len(ts), 3, S, S) of frames ``ts`` of story number ``story``."""
        index = [int(self.offsets[story]) + t for t in ts]
        return torch.from_numpy(np.ascontiguousarray(self.array[index]))

    def original_size(self, story: int, t: int) -> tuple[int, int]:
        """(width, height) of frame ``t`` of story number ``story`` before fitting."""
        return self.geometry.original_size(story, t)

    def fit_box(self, story: int, t: int, box: Box) -> Box | None:
        """``box`` ``(x1, y1, x2, y2)`` in original pixels of frame ``t`` of story ``story``,
        in pixels of the S x S frame through the same geometry as the image (clipped to the
        frame); None when the fit crops it away entirely (``center_crop`` only)."""
        return self.geometry.fit_box(story, t, box)

    def content_box(self, story: int, t: int) -> Box:
        """``(x1, y1, x2, y2)``: where frame ``t`` of story ``story``'s picture lies in the
        S x S frame; the rest is letterbox padding (the model masks regions wholly in it)."""
        return self.geometry.content_box(story, t)
