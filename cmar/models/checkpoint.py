"""Saving and loading a StoryModel: a plain dict of tensors and numbers, written atomically,
read back with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from cmar.config import ModelConfig
from cmar.models.story_model import StoryModel


def save_model(model: StoryModel, path: str | Path, extra: dict | None = None,
               keep_previous: bool = False) -> None:
    """Write the model's config, constructor arguments and weights to ``path`` atomically
    (temp file, fsync, rename); ``keep_previous`` first moves the old file to ``<path>.prev``.

    A model built with custom ``components=`` saves its weights, but rebuilding it needs the
    same components passed to :func:`load_model`.
    """
    payload = {
        "model_config": dataclasses.asdict(model.cfg),
        "init_args": dict(model.init_args),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(partial, path)  # a crash mid-write never leaves a truncated checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a cmar checkpoint)."""


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               components: dict | None = None) -> tuple[StoryModel, dict]:
    """Rebuild a saved model; returns ``(model, extra)``. Raises :class:`CheckpointError`
    naming the file when it is truncated or corrupt; code hidden in a pickle is refused by
    ``weights_only=True`` (an ``UnpicklingError``)."""
    import pickle

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: "
                              f"{error}. The file is truncated or corrupt.") from error
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a cmar checkpoint")
    cfg = ModelConfig(**payload["model_config"])
    cfg.pretrained = False  # the saved weights replace any download
    model = StoryModel(cfg, **payload["init_args"], components=components)
    model.load_state_dict(payload["state_dict"])
    return model, payload["extra"]
