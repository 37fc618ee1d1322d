"""Frames decoded once: every image of a split, resized, in one uint8 array.

Peers re-decoded every image of a story on each ``__getitem__``; here each frame is decoded
exactly once per split (and, with ``cache_dir``, once ever: the array is written as a
memory-mapped ``.npy`` keyed by the image bytes and size, which DataLoader workers share).
Frames are resized to a square ``image_size`` (no crop, so entity boxes scale with it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from cmar.data.story import Story, decode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def _fingerprint(stories: list[Story], image_size: int) -> str:
    digest = hashlib.sha1(f"size={image_size}".encode())
    for story in stories:
        for data in story.images:
            digest.update(hashlib.sha1(data).digest())
    return digest.hexdigest()[:16]


class ImageStore:
    """All frames of ``stories`` as one array of shape (n_frames, 3, image_size, image_size).

    ``store.frames(story_index, [t1, t2])`` returns a uint8 tensor (len, 3, S, S).
    """

    def __init__(self, stories: list[Story], image_size: int, cache_dir: str | Path | None = None,
                 progress: bool = True):
        self.image_size = image_size
        self.offsets = np.cumsum([0] + [len(s) for s in stories])
        total = int(self.offsets[-1])
        shape = (total, 3, image_size, image_size)
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"frames-{_fingerprint(stories, image_size)}.npy"
            if path.exists():
                self.array = np.load(path, mmap_mode="r")
                if self.array.shape == shape:
                    return
        if path is None:
            array = np.empty(shape, dtype=np.uint8)
        else:  # written straight to disk: a large split never has to fit in memory
            ensure_disk_space(path.parent, int(np.prod(shape)), "the decoded-frame cache")
            partial = path.with_suffix(".partial.npy")
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        frames = (data for s in stories for data in s.images)
        for i, data in enumerate(tqdm(frames, total=total, desc="decoding frames",
                                      disable=not progress)):
            array[i] = self._resized(data)
        if path is None:
            self.array = array
        else:
            array.flush()
            del array
            os.replace(partial, path)  # atomic: readers never see half a file
            self.array = np.load(path, mmap_mode="r")

    def _resized(self, data: bytes) -> np.ndarray:
        image = decode_image(data)
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)

    def __len__(self) -> int:
        return len(self.array)

    def frames(self, story: int, ts: list[int] | range) -> torch.Tensor:
        """uint8 tensor (len(ts), 3, S, S) of frames ``ts`` of story number ``story``."""
        index = [int(self.offsets[story]) + t for t in ts]
        return torch.from_numpy(np.ascontiguousarray(self.array[index]))
