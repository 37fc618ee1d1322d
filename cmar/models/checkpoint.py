"""Saving and loading a StoryModel: a plain dict of tensors and numbers, written atomically,
read back with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from cmar.config import ModelConfig
from cmar.models.story_model import StoryModel


def save_model(model: StoryModel, path: str | Path, extra: dict | None = None) -> None:
    """Write the model's config, constructor arguments and weights to ``path``.

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
    torch.save(payload, partial)
    os.replace(partial, path)  # a crash mid-write never leaves a truncated checkpoint


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               components: dict | None = None) -> tuple[StoryModel, dict]:
    """Rebuild a saved model; returns ``(model, extra)``."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    cfg = ModelConfig(**payload["model_config"])
    cfg.pretrained = False  # the saved weights replace any download
    model = StoryModel(cfg, **payload["init_args"], components=components)
    model.load_state_dict(payload["state_dict"])
    return model, payload["extra"]
