"""Named internal representations of a StoryModel: read them for a probe, replace them for an
intervention.

For a batch of B windows with k context frames and d = d_model:

| name      | level  | what                                                        | shape    |
|-----------|--------|-------------------------------------------------------------|----------|
| "image"   | frame  | the image encoder's vector of a context frame, before fusion | (B*k, d) |
| "fused"   | frame  | the fused frame vector the story encoder reads               | (B*k, d) |
| "story"   | frame  | the story state of a frame (as the decoder's memory holds it) | (B*k, d) |
| "summary" | window | the story summary the next-frame head reads                  | (B, d)   |
| "memory"  | window | the mean of the decoder's memory over its real entries       | (B, d)   |

Frame-level rows are ordered window by window, frame by frame: row ``b * k + i`` is context
frame ``i`` (0 the oldest) of window ``b``.

:func:`replaced` swaps one context frame's "image" (its regions and its vector) or "fused"
frame vector for given values while the model runs: the causal half of "decodable or used?".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch

FRAME_LEVEL = ("image", "fused", "story")
WINDOW_LEVEL = ("summary", "memory")
REPRESENTATIONS = (*FRAME_LEVEL, *WINDOW_LEVEL)
REPLACEABLE = ("image", "fused")


def check_name(representation: str, allowed: tuple[str, ...] = REPRESENTATIONS) -> None:
    if representation not in allowed:
        raise KeyError(f"unknown representation {representation!r}; choose from "
                       f"{list(allowed)}")


def read(model, batch, representation: str) -> torch.Tensor:
    """``representation`` of every context frame (B*k, d) or every window (B, d) of
    ``batch`` (on the model's device), without gradients."""
    check_name(representation)
    with torch.no_grad():
        enc = model.encode(batch)
    b, k = batch.context_tokens.shape[:2]
    if representation == "image":
        return enc.image
    if representation == "fused":
        return enc.fused.frame
    if representation == "story":
        return enc.memory[:, :k].reshape(b * k, -1)  # the k story states lead the memory
    if representation == "summary":
        return enc.summary
    mask = enc.memory_mask.unsqueeze(-1).to(enc.memory.dtype)  # "memory"
    return (enc.memory * mask).sum(1) / mask.sum(1).clamp(min=1)


def frame_rows(b: int, k: int, position: int, device) -> torch.Tensor:
    """(B,) the frame-level rows of context frame ``position`` in each of b windows."""
    return torch.arange(b, device=device) * k + position


def image_output(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The image encoder's output for every context frame of ``batch``: regions (B*k, R, d)
    and vectors (B*k, d), as :meth:`StoryModel.encode` computes them."""
    keep = model.region_mask(getattr(batch, "context_content", None))
    keep = None if keep is None else keep.flatten(0, 1)
    with torch.no_grad():
        return model.encode_frames(batch.context_images, batch.context_features, flat=True,
                                   region_mask=keep)


def donor_values(model, donor, representation: str, position: int):
    """What :func:`replaced` puts in: the ``representation`` of context frame ``position`` of
    each window of ``donor`` (a batch of the same size)."""
    check_name(representation, REPLACEABLE)
    b, k = donor.context_tokens.shape[:2]
    if representation == "image":
        regions, vector = image_output(model, donor)
        rows = frame_rows(b, k, position, vector.device)
        return regions[rows], vector[rows]
    with torch.no_grad():
        frame = model.encode(donor).fused.frame
    return frame[frame_rows(b, k, position, frame.device)]


@contextmanager
def replaced(model, representation: str, position: int, values) -> Iterator[None]:
    """While inside, the model's ``representation`` of context frame ``position`` of every
    window is ``values`` (from :func:`donor_values`): for "image" (regions (B, R, d), vector
    (B, d)), for "fused" the frame vector (B, d)."""
    check_name(representation, REPLACEABLE)
    if representation == "image":
        original = model.encode_frames
        regions_new, vector_new = values

        def encode_frames(images, features, flat=False, region_mask=None):
            regions, vector = original(images, features, flat, region_mask)
            if not flat:  # the target frame (grounded mode): untouched
                return regions, vector
            k = (images if images is not None else features).shape[1]
            rows = frame_rows(vector.shape[0] // k, k, position, vector.device)
            regions, vector = regions.clone(), vector.clone()
            regions[rows], vector[rows] = regions_new.to(regions.dtype), \
                vector_new.to(vector.dtype)
            return regions, vector

        model.encode_frames = encode_frames  # an instance attribute shadows the method
        try:
            yield
        finally:
            del model.encode_frames
        return

    def swap(module, inputs, output):
        k = inputs[0].shape[0] // values.shape[0]
        frame = output.frame.clone()
        frame[frame_rows(values.shape[0], k, position, frame.device)] = values.to(frame.dtype)
        return dataclasses.replace(output, frame=frame)

    handle = model.fusion.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()
