"""Saving and loading a StoryModel: a plain dict of tensors and numbers, written atomically,
read back with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed).

A frozen pretrained backbone (``freeze_image_encoder`` with ``pretrained``, or a frozen ``hf:``
image tower or text encoder) never changes in training, so a checkpoint names it instead of
storing it: where its weights come from and a hash of them. Loading rebuilds it from the same
source and refuses a different hash. At the ``storyreasoning`` preset's size that is 44 MB less
in every checkpoint (ResNet-18); 350 MB for CLIP ViT-B/32's tower. A trained ``hf:`` part is
stored, but rebuilding it still reads its architecture from its source (``from_pretrained``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from cmar.models.hf.loading import hf_source
from cmar.models.story_model import StoryModel
from cmar.settings import ModelConfig

FROZEN_BACKBONE = "image_encoder.backbone"  # parts a checkpoint may name, not store
FROZEN_TEXT = "text_encoder.model"
# Raised when parameter names or the stored fields change, so that an older checkpoint is
# refused with a sentence instead of a missing-key dump. 2: the decoders' own attention
# modules and model.infonce_temperature (issue 13).
CHECKPOINT_FORMAT = 2


def weights_digest(module: torch.nn.Module) -> str:
    """A short SHA-1 over the names and values of a module's parameters and buffers."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def named_weights(model: StoryModel) -> dict[str, dict]:
    """The frozen pretrained parts of ``model``: part -> {"source", "sha1"}. A frozen hf:
    image tower or text encoder is named by its hub id or folder."""
    cfg = model.cfg
    named = {}
    if cfg.freeze_image_encoder and hf_source(cfg.image_encoder):
        named[FROZEN_BACKBONE] = {"source": cfg.image_encoder,
                                  "sha1": weights_digest(model.image_encoder.backbone)}
    elif cfg.freeze_image_encoder and cfg.pretrained:
        from cmar.models.image_encoder import pretrained_weights

        weights = pretrained_weights(cfg.image_encoder)
        named[FROZEN_BACKBONE] = {"source": f"torchvision {cfg.image_encoder} {weights}",
                                  "sha1": weights_digest(model.image_encoder.backbone)}
    if cfg.freeze_text_encoder and hf_source(cfg.text_encoder):
        named[FROZEN_TEXT] = {"source": cfg.text_encoder,
                              "sha1": weights_digest(model.text_encoder.model)}
    return named


def save_model(model: StoryModel, path: str | Path, extra: dict | None = None,
               keep_previous: bool = False, frozen_weights: bool = False) -> None:
    """Write the model's config, constructor arguments and weights to ``path`` atomically
    (temp file, fsync, rename); ``keep_previous`` first moves the old file to ``<path>.prev``.
    A frozen pretrained backbone is named, not stored, unless ``frozen_weights``.

    A model built with custom ``components=`` saves its weights, but rebuilding it needs the
    same components passed to :func:`load_model`.
    """
    named = {} if frozen_weights else named_weights(model)
    state = {key: value for key, value in model.state_dict().items()
             if not any(key.startswith(part + ".") for part in named)}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": dataclasses.asdict(model.cfg),
        "init_args": dict(model.init_args),
        "state_dict": state,
        "named_weights": named,
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
    written = payload.get("format", 1)
    if written != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written by {'an older' if written < CHECKPOINT_FORMAT else 'a newer'} "
            f"cmar (checkpoint format {written}; this one reads format {CHECKPOINT_FORMAT}), "
            "whose parameters have other names. Train the run again with this version "
            "(cmar train --config RUN/config.yaml --overwrite).")
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(payload["model_config"]) - known)
    if unknown:
        raise CheckpointError(
            f"{path} was written by a cmar with model keys this one does not have ({unknown}). "
            "Train the run again with this version (cmar train --config RUN/config.yaml "
            "--overwrite), or load it with the cmar that trained it.")
    cfg = ModelConfig(**payload["model_config"])
    named = payload.get("named_weights", {})
    # stored weights replace any download; named torchvision ones need it
    cfg.pretrained = cfg.pretrained and FROZEN_BACKBONE in named
    model = StoryModel(cfg, **payload["init_args"], components=components)
    for part, spec in named.items():
        found = weights_digest(model.get_submodule(part))
        if found != spec["sha1"]:
            raise CheckpointError(
                f"{path} was trained with {spec['source']} of hash {spec['sha1']}, but those "
                f"loaded now hash to {found}: the weights file (under $TORCH_HOME, or the "
                "hf: folder or hub cache) changed. Put the original back, or retrain.")
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    missing = [k for k in missing if not any(k.startswith(part + ".") for part in named)]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model it describes: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
    return model, payload["extra"]
