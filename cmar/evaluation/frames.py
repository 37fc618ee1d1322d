"""Every frame of a split as vectors for the next-frame retrieval: the image encoder's global
vector (what the model's next-frame prediction is compared with) and pooled pixels (the pixel
floor), indexed story after story as the ImageStore lays frames out: frame t of story s is
``offsets[s] + t``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cmar.data.batches import fills_frame
from cmar.data.images import ImageStore, image_transform

PIXEL_SIDE = 16  # the pixel floor compares frames pooled to this side (bounds its memory)


@dataclasses.dataclass
class SplitFrames:
    """Every frame of a split (story after story) and where each window's frames are."""

    lengths: list[int]  # frames per story
    offsets: torch.Tensor  # (stories,) first frame of each story
    target: torch.Tensor  # (N,) frame index of each window's target
    last: torch.Tensor  # (N,) frame index of each window's last context frame
    story_ids: list[str]  # (N,) each window's story

    @classmethod
    def of(cls, dataset) -> SplitFrames:
        lengths = [len(ids) for ids in dataset.ids]
        offsets = torch.tensor([0, *lengths]).cumsum(0)[:-1]
        story = torch.tensor([w.story for w in dataset.windows], dtype=torch.long)
        t = torch.tensor([w.t for w in dataset.windows], dtype=torch.long)
        return cls(lengths, offsets, offsets[story] + t, offsets[story] + t - 1,
                   [dataset.story_ids[w.story] for w in dataset.windows])


def pixel_store(data, split: str, progress: bool):
    """The split's uint8 frames: its own store, or (when a feature cache replaced it) an
    ImageStore over the decoded-frame cache prepare_data wrote."""
    store = data.datasets[split].store
    if store.frames(0, [0]).dtype == torch.uint8:
        return store
    return ImageStore(data.stories[split], data.cfg.image_size,
                      cache_dir=Path(data.cfg.cache_dir) / "frames", progress=progress,
                      fit=data.cfg.image_fit)


def content_boxes(store, stories: list[int], lengths: list[int], device) -> torch.Tensor | None:
    """(frames, 4): where each frame's picture lies in its letterboxed S x S frame, for every
    frame of ``stories`` (None when the store does not know, or when every frame fills its
    square: then nothing is masked)."""
    box = getattr(store, "content_box", None)
    if not callable(box) or getattr(store, "geometry", True) is None:
        return None
    boxes = [box(s, t) for s in stories for t in range(lengths[s])]
    if all(fills_frame(b) for b in boxes):  # square frames: nothing to mask
        return None
    return torch.tensor(boxes, dtype=torch.float32, device=device)


@torch.no_grad()
def frame_vectors(model, data, split: str, frames: SplitFrames, chunk: int, device,
                  progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder global vector (F, d), pooled normalised pixels (F, 3 * side^2)) of every frame
    of the split; the encoder reads the dataset's store (frames or cached CNN features), and
    its vector leaves out the regions wholly in letterbox padding, as in training."""
    store, pixels = data.datasets[split].store, pixel_store(data, split, progress)
    transform = image_transform()
    encoded, pooled = [], []
    groups, size = [[]], 0  # stories in groups of about ``chunk`` frames
    for s, n in enumerate(frames.lengths):
        if size >= chunk:
            groups.append([])
            size = 0
        groups[-1].append(s)
        size += n
    for group in tqdm(groups, desc="alignment: frames", disable=not progress):
        x = torch.cat([store.frames(s, range(frames.lengths[s])) for s in group])
        keep = model.region_mask(content_boxes(store, group, frames.lengths, device))
        if x.dtype == torch.uint8:  # decoded frames; else the backbone's cached features
            vectors = model.encode_frames(transform(x).to(device), None, region_mask=keep)[1]
        else:
            vectors = model.encode_frames(None, x.float().to(device), region_mask=keep)[1]
        encoded.append(vectors.float().cpu())
        p = transform(torch.cat([pixels.frames(s, range(frames.lengths[s])) for s in group]))
        side = min(PIXEL_SIDE, p.shape[-1])
        pooled.append(F.adaptive_avg_pool2d(p, side).flatten(1))
    return torch.cat(encoded), torch.cat(pooled)
