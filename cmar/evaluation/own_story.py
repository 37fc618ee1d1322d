"""The next caption for a user's own k frames: ``cmar generate RUN --images ... --captions ...``.

Any image PIL reads (any size, mode or format) is fitted to the run's frame size with the run's
``data.image_fit`` (:func:`cmar.data.images.fitted_array`, as the dataset's frames were) and its
caption tokenized with the run's context tokenizer, so the model sees the user's story exactly
as it saw a window of its dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from cmar.data.batches import Collate
from cmar.data.images import fitted_array
from cmar.data.story import decode_image
from cmar.data.tokenizer import decode, encode
from cmar.models.hf import tokenizers_for


def read_frame(path: str | Path, size: int, fit: str) -> torch.Tensor:
    """uint8 (3, size, size): the image at ``path`` fitted like the run's frames."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        image = decode_image(path.read_bytes())
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not an image PIL can read ({type(error).__name__})") \
            from None
    return torch.from_numpy(fitted_array(image, size, fit).copy())


def own_story_caption(cfg, tokenizer, model, images: list[str], captions: list[str],
                      strategy: str | None = None, beam_size: int | None = None) -> str:
    """The caption ``model`` (a run's) predicts after the user's frames ``images`` with their
    ``captions``: exactly ``data.k`` of each, in story order. Decoded as ``cmar evaluate``
    decodes unless told otherwise: ``strategy`` and ``beam_size`` default to the run's
    ``eval.strategy`` and ``eval.beam_size``."""
    k = cfg.data.k
    if len(images) != k or len(captions) != k:
        raise ValueError(f"this run reads k = {k} frames (its data.k): give {k} images and {k} "
                         f"captions, in story order; got {len(images)} images and "
                         f"{len(captions)} captions")
    if cfg.data.mode != "next":
        raise ValueError("this run was trained in grounded mode, which also reads the image "
                         "of the frame to caption; own stories need a run in next mode")
    context_tokenizer = tokenizers_for(cfg.model, tokenizer)["context_tokenizer"]
    frames = torch.stack([read_frame(p, cfg.data.image_size, cfg.data.image_fit)
                          for p in images])
    item = {"context_images": frames, "target_image": torch.zeros_like(frames[0]),
            "context_ids": [encode(context_tokenizer, c)[:cfg.data.max_tokens]
                            for c in captions],
            "target_ids": [], "window_id": "own story"}
    collate = Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                      context_tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids = model.generate(collate([item]).to(device), strategy or cfg.eval.strategy,
                         beam_size=beam_size or cfg.eval.beam_size)[0]
    return decode(tokenizer, ids.cpu())
