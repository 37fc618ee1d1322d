"""A pretrained vision tower (CLIP, SigLIP, DINOv2, ViT) under the image-encoder contract.

::

    images (N, 3, S, S), ImageNet-normalised (as every cmar batch holds them)
      -> backbone: resized to the model's own input size and renormalised with its own mean
         and std (read from its image processor), then the tower
      -> features (N, 1 + R, H): the pooled output, then the R patch tokens (H: its width)
      -> regions (N, R, d_model) and global (N, d_model), each through a trained projection

The patch tokens are the regions (a sqrt(R) x sqrt(R) grid, row-major, like a CNN's feature map;
class and register tokens are dropped) and the pooled output is the global vector (the mean of
the patches for a tower without one). With ``freeze``, the backbone's features never change,
so the feature cache (:mod:`cmar.models.feature_cache`) computes them once.

Letterbox padding: the frame is resized as a whole, so the patch grid (``grid``) covers the S x S
frame as a CNN's feature map does and the model masks the patches wholly in the padding
(:func:`cmar.models.image_encoder.region_mask`) downstream. The global vector stays the tower's
pooled output: its attention inside the tower has read every patch, padding included, and no
projection can take that out (the model's region encoder, if any, pools kept patches only).
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

from cmar.data.images import IMAGENET_MEAN, IMAGENET_STD
from cmar.models.hf.loading import enable_checkpointing, freeze, load_pretrained

log = logging.getLogger("cmar.models")

# model_type of a full vision-language checkpoint -> the class that loads its vision tower only
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel",
                 "siglip2": "Siglip2VisionModel", "blip": "BlipVisionModel"}


def _side(value) -> int | None:
    """A square side from an image processor's ``crop_size`` / ``size``: an int, a dict, or
    (transformers 5) a ``SizeDict`` with attributes."""
    if isinstance(value, int):
        return value
    for key in ("height", "shortest_edge"):
        found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if found:
            return int(found)
    return None


def load_vision_tower(source: str) -> nn.Module:
    """The vision model of ``source``: a tower of its own, or the vision half of CLIP/SigLIP."""
    import transformers

    config = load_pretrained(transformers.AutoConfig, source, "vision model config")
    name = VISION_TOWERS.get(config.model_type)
    loader = getattr(transformers, name) if name else transformers.AutoModel
    return load_pretrained(loader, source, "vision model")


def image_settings(source: str, tower: nn.Module) -> tuple[int, tuple, tuple]:
    """(input side, mean, std) from the model's image processor; the config's image size and
    ImageNet statistics (with a warning) when it has none."""
    from transformers import AutoImageProcessor

    config = tower.config
    try:
        processor = load_pretrained(AutoImageProcessor, source, "image processor")
    except Exception as error:  # noqa: BLE001 - a tower without a processor still works
        log.warning("hf:%s has no image processor (%s); using its config's image size and "
                    "ImageNet mean and std", source, type(error).__name__)
        return int(config.image_size), IMAGENET_MEAN, IMAGENET_STD
    side = (_side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop",
                                                                   False) else None)
    side = side or _side(getattr(processor, "size", None)) or int(config.image_size)
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return side, mean, std


class HFVisionBackbone(nn.Module):
    """ImageNet-normalised frames (N, 3, S, S) -> features (N, 1 + R, H), as the tower's own
    image processor would feed it: the frame resized to its side, its mean and std."""

    def __init__(self, source: str):
        super().__init__()
        self.tower = load_vision_tower(source)
        self.side, mean, std = image_settings(source, self.tower)
        # x_tower = (x * imagenet_std + imagenet_mean - mean) / std, per channel
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        config = self.tower.config
        # a side other than the config's needs its position embeddings interpolated: asked of
        # towers that take the flag (CLIP, SigLIP, ViT); DINOv2 always interpolates
        takes_flag = "interpolate_pos_encoding" in inspect.signature(self.tower.forward).parameters
        self.interpolate = takes_flag and self.side != getattr(config, "image_size", self.side)
        self.cache_spec = {"side": self.side, "mean": list(mean), "std": list(std)}
        self.width = int(config.hidden_size)
        self.grid = (self.side // int(config.patch_size),) * 2  # patches per column, per row
        self.n_regions = self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.scale + self.shift
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.side)
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.tower(pixel_values=x.to(self.scale.dtype), **extra)
        tokens = out.last_hidden_state  # (N, prefix + R, H)
        patches = tokens[:, tokens.shape[1] - self.n_regions:]  # class/register tokens dropped
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or pooled.dim() != 2:
            pooled = patches.mean(dim=1)
        return torch.cat([pooled[:, None], patches], dim=1)  # (N, 1 + R, H)


class HFImageEncoder(nn.Module):
    """A pretrained vision tower as a cmar image encoder (see the module docstring)."""

    def __init__(self, source: str, d_model: int, image_size: int, freeze_tower: bool = False,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.source = source
        self.backbone = HFVisionBackbone(source)
        self.freeze = freeze_tower
        if freeze_tower:
            freeze(self.backbone)
        enable_checkpointing(self.backbone.tower, gradient_checkpointing)
        if image_size < self.backbone.side:
            log.warning("frames are stored at %d px and enlarged to %d px for hf:%s; set "
                        "data.image_size=%d to give it every pixel", image_size,
                        self.backbone.side, source, self.backbone.side)
        self.n_regions, self.grid = self.backbone.n_regions, self.backbone.grid
        self.project = nn.Linear(self.backbone.width, d_model)
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:  # a frozen tower keeps dropout off too
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (N, 3, S, S) -> regions (N, R, d) and a global vector (N, d)."""
        return self.from_features(self.backbone(images))

    def from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from the backbone's features (N, 1 + R, H), e.g. from the feature cache."""
        projected = self.norm(self.project(features.to(self.project.weight.dtype)))
        return projected[:, 1:], projected[:, 0]
