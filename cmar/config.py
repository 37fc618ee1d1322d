"""Configuration: dataclasses with a commented default on every field, YAML presets, overrides.

``load_config("smoke")`` reads a preset shipped in ``cmar/configs/``; ``load_config("my.yaml",
["data.k=4", "seed=1"])`` reads a file and applies ``--set`` style overrides (values parsed as
YAML, so ``4`` is an int and ``null`` is None). Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    source: str = "shapestories"  # "shapestories", "storyreasoning", a hub id or a local folder
    k: int = 3  # context frames; the target is frame k+1 of each window
    mode: str = "next"  # "next": context only; "grounded": also the target frame's image
    images_column: str = "images"  # column with the list of frame images
    captions_column: str | None = None  # list-of-captions column; None = StoryReasoning markup
    caption_policy: str = "first_sentence"  # "first_sentence" | "full" (see max_tokens)
    image_size: int = 64  # frames are resized to image_size x image_size
    image_fit: str = "letterbox"  # "letterbox" (pads: keeps all characters) | center_crop | squash
    val_fraction: float = 0.1  # share of train stories carved out as validation (by story)
    test_fraction: float = 0.1  # carved only when the source has no test split
    split_seed: int = 0  # seed of the carving; fixed so splits never move
    limit: int | None = None  # at most this many stories per split (quick runs)
    n_stories: int = 2000  # ShapeStories: stories generated (before splitting)
    shapestories_seed: int = 0  # ShapeStories: generator seed
    difficulty: str = "medium"  # ShapeStories: "easy" | "medium" | "hard"
    shapestories_knobs: dict = field(default_factory=dict)  # ShapeStories: Knobs overrides
    min_pair_freq: int = 2  # BPE: a pair seen fewer times is never merged (no word is lost)
    vocab_size: int = 10000  # BPE vocabulary size, incl. the 256 byte symbols and 4 specials
    max_tokens: int = 40  # the caption length: BPE tokens kept of every caption, in or out
    batch_size: int = 32  # windows per batch
    num_workers: int = 2  # DataLoader worker processes
    cache_dir: str = "data"  # generated data, downloaded copies and decoded-frame caches


@dataclass
class ModelConfig:
    image_encoder: str = "small_cnn"  # "small_cnn" (CPU, S/16 regions) | "small_cnn_fine" (S/8)
    #                                  | "resnet18" | "resnet34" | "resnet50"
    #                                  | "hf:<hub id or folder>": a CLIP/SigLIP/DINOv2/ViT tower
    pretrained: bool = False  # ResNet: ImageNet weights through torchvision's weights API
    freeze_image_encoder: bool = False  # keep the CNN or tower fixed (only its projection
    #                                     trains; its features are then cached)
    freeze_text_encoder: bool = False  # hf: text encoder: keep it fixed
    freeze_decoder: bool = False  # hf: decoder: keep its pretrained weights fixed (its new
    #                               cross-attention layers still train)
    gradient_checkpointing: bool = False  # hf: parts recompute activations in backward
    #                                       (less memory, about a third more time)
    d_model: int = 128  # width of every representation the parts exchange
    n_heads: int = 4  # attention heads in fusion, Transformer encoders and decoder
    region_layers: int = 0  # self-attention layers over each frame's regions after the image
    #                         encoder (0: none): a region can then hold what lies elsewhere
    text_encoder: str = "gru"  # context captions: "gru" | "lstm" | "transformer"
    #                            | "hf:<hub id or folder>": BERT, MiniLM, with its tokenizer
    fusion: str = "cmar"  # per frame: "cmar" | "cmar_lite" | "cross" | "concat"
    cmar_rounds: int = 2  # CMAR refinement rounds (text->image then image->text each)
    story_encoder: str = "gru"  # over the k fused frames: "gru" | "lstm" | "transformer"
    decoder: str = "lstm"  # "lstm" | "gru" | "transformer" | "hf:<hub id or folder>": a
    #                        GPT-2-family LM that cross-attends; its tokenizer is the captions'
    encoder_layers: int = 1  # layers of the text encoder and of the story encoder
    decoder_layers: int = 1  # layers of the caption decoder
    memory_tokens: bool = True  # decoder memory also holds every context frame's fused words
    memory_regions: bool = True  # ... and every context frame's fused image regions
    copy_tokens: bool = False  # pointer-generator decoder: a word may be copied from the
    #                            context captions' tokens in its memory (needs memory_tokens)
    dropout: float = 0.1  # dropout inside every part
    infonce_temperature: float = 0.1  # of the alignment and next-frame InfoNCE losses
    learn_temperature: bool = False  # learn both temperatures (log scale, from the one above)
    next_target: str = "shared"  # next-frame target: "shared" (its gradient trains the image
    #                              encoder too) | "detached" (a fixed target: stop-gradient)
    next_negatives: str = "batch"  # "batch": the next frames of the batch's other windows |
    #                                "story": also the window's own context frames
    w_ground: float = 0.0  # weight of the grounding loss: the fusion's word-to-region
    #                        attention at a character's name pulled onto the regions of its box
    #                        (needs boxes in chain_of_thought and a cmar or cross fusion; 0: off)


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training windows
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay, on weight matrices only (cmar.optim)
    warmup: float = 0.05  # share of all steps spent warming the learning rate up
    grad_clip: float = 1.0  # max gradient norm (0 turns clipping off)
    w_align: float = 0.1  # weight of the image-text alignment InfoNCE (0 turns it off)
    w_next: float = 0.1  # weight of the next-frame InfoNCE (0 turns it off)
    amp: bool = True  # mixed precision (bf16 where supported, else fp16) on CUDA only
    select: str = "val_caption"  # history key that picks the best checkpoint (lower is better)
    patience: int = 0  # stop after this many epochs without improvement (0: never)
    log_every: int = 25  # steps between host syncs: loss shown, NaN check, stop agreed
    save_frozen_weights: bool = False  # store a frozen pretrained backbone in checkpoints


@dataclass
class EvalConfig:
    split: str = "test"  # split scored by `cmar evaluate`
    strategy: str = "greedy"  # "greedy" | "beam" | "sample"
    beam_size: int = 5  # beam width for strategy=beam
    batch_size: int = 64  # windows per generation batch
    candidates: int = 100  # retrieval candidates per window (the true one + others)
    retrieval_windows: int = 500  # windows scored for retrieval (a seeded sample)
    examples: int = 5  # example windows shown in report.md
    meteor: bool = False  # also METEOR (pycocoevalcap's jar: needs Java on the PATH)
    tokenizer: str = "python"  # how the metrics split words: "python" (no Java) | "ptb" (Java)
    bootstrap: int = 1000  # resamples of stories for the 95% intervals (0: no intervals)


@dataclass
class Config:
    name: str = "run"  # run folder name under runs_dir
    runs_dir: str = "runs"  # where run folders are written
    seed: int = 0  # seeds python, numpy, torch and the data order
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# old key -> its new name: an old config gets a clear error, not just "unknown key"
RENAMED = {"data.min_word_freq": "data.min_pair_freq", "data.max_vocab": "data.vocab_size",
           "model.temperature": "model.infonce_temperature"}
# old key -> what replaced it
REPLACED = {"data.max_caption_tokens":
            "data.max_tokens, the one caption length (in BPE tokens: a word is 1-3 of them)"}


def _build(cls, values: dict[str, Any], where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        old = f"{where}.{key}".strip(".")
        if old in RENAMED:
            raise KeyError(f"{old} was renamed to {RENAMED[old]}")
        if old in REPLACED:
            raise KeyError(f"{old} was removed; use {REPLACED[old]}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"unknown config key(s) {unknown} in {where or 'config'}; "
                       f"valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        name = f"{where}.{key}".strip(".")
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, name)
        else:
            value = _checked(name, value, default)
        kwargs[key] = value
    return cls(**kwargs)


def _checked(name: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of the field's default (ints pass as floats)."""
    if default is None or value is None:
        return value  # optional fields take anything, or nothing
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (expected is bool) == isinstance(value, bool):
        return value
    raise ValueError(f"config key {name} expects {expected.__name__} (like {default!r}), "
                     f"got {value!r}")


# keys whose value has a floor: a value below it would fail later with an unrelated error
# (a division by zero, an empty run folder)
AT_LEAST = {"data.k": 1, "data.batch_size": 1, "data.max_tokens": 1, "data.image_size": 8,
            "data.num_workers": 0, "data.vocab_size": 260, "train.epochs": 1,
            "train.log_every": 1, "eval.batch_size": 1, "eval.beam_size": 1,
            "model.d_model": 1, "model.n_heads": 1, "model.decoder_layers": 1,
            "model.encoder_layers": 1, "model.cmar_rounds": 1}


def check_ranges(config: Config) -> Config:
    """``config``, or a ValueError naming the first key below its floor (:data:`AT_LEAST`)."""
    for key, floor in AT_LEAST.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value < floor:
            raise ValueError(f"config key {key} must be at least {floor}, got {value}")
    if config.train.lr <= 0:
        raise ValueError(f"config key train.lr must be above 0, got {config.train.lr}")
    return config


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def load_config(
    preset_or_path: str | Path = "default", overrides: list[str] | None = None
) -> Config:
    """A :class:`Config` from a preset name or YAML file, then ``key.sub=value`` overrides."""
    path = Path(preset_or_path)
    if not path.exists():
        path = PRESETS_DIR / f"{preset_or_path}.yaml"
    if not path.exists():
        presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no config file or preset {preset_or_path!r}; presets: {presets}")
    tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    return check_ranges(_build(Config, tree, ""))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a crash never leaves half a file)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    partial.replace(path)
