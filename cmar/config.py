"""Configuration: YAML presets, ``--set`` overrides and every check of a setting.

The dataclasses and the choice sets live in :mod:`cmar.settings` (a leaf that imports nothing
from cmar) and are re-exported here, so ``from cmar.config import Config`` keeps working.
``load_config("smoke")`` reads a preset shipped in ``cmar/configs/``; ``load_config("my.yaml",
["data.k=4", "seed=1"])`` reads a file and applies ``--set`` style overrides (values parsed as
YAML, so ``4`` is an int and ``null`` is None). Unknown keys are errors, never ignored, and
every setting is checked before any work starts (:func:`check_ranges`): its type, range or
choices, and its combinations with other keys. A failure is one line that names the key, its
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from cmar.settings import (
    CAPTION_POLICIES,
    DEVICES,
    DIFFICULTIES,
    HF_PREFIX,
    IMAGE_FITS,
    LOSS_TERMS,
    METRIC_TOKENIZERS,
    MODES,
    NEXT_NEGATIVES,
    NEXT_TARGETS,
    SPLITS,
    STRATEGIES,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    check_model,
    loss_terms_of,
)

__all__ = [  # the settings, re-exported, then what this module adds
    "CAPTION_POLICIES", "DEVICES", "DIFFICULTIES", "HF_PREFIX", "IMAGE_FITS", "LOSS_TERMS",
    "METRIC_TOKENIZERS", "MODES", "NEXT_NEGATIVES", "NEXT_TARGETS", "SPLITS", "STRATEGIES",
    "Config", "DataConfig", "EvalConfig", "ModelConfig", "TrainConfig",
    "OWN_PART_HINT", "PRESETS_DIR", "check_combinations", "check_device", "check_ranges",
    "load_config", "loss_terms_of",
    "preset_for", "save_config", "selectable_keys",
]

PRESETS_DIR = Path(__file__).parent / "configs"

# old key -> its new name: an old config gets a clear error, not just "unknown key"
RENAMED = {"data.min_word_freq": "data.min_pair_freq", "data.max_vocab": "data.vocab_size",
           "model.temperature": "model.infonce_temperature"}
# old key -> what replaced it
REPLACED = {"data.max_caption_tokens":
            "data.max_tokens, the one caption length (in BPE tokens: a word is 1-3 of them)"}


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config {f'key {where}' if where else 'file'} must be a mapping of "
                         f"keys to values, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        old = f"{where}.{key}".strip(".")
        if old in RENAMED:
            raise KeyError(f"{old} was renamed to {RENAMED[old]}")
        if old in REPLACED:
            raise KeyError(f"{old} was removed; use {REPLACED[old]}")
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise KeyError(f"unknown config key(s) {unknown} in {where or 'config'}; "
                       f"valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        name = f"{where}.{key}".strip(".")
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, name)
        else:
            value = _checked(name, value, default, str(names[key].type))
        kwargs[key] = value
    return cls(**kwargs)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}


def _checked(name: str, value: Any, default: Any, annotation: str = "") -> Any:
    """``value`` if it has the field's type (ints and numeric strings such as ``1e-4`` pass as
    floats); None only where the field's annotation allows it (``int | None``)."""
    kinds = [kind.strip() for kind in annotation.split("|")]
    optional = "None" in kinds
    if value is None and optional:
        return None
    expected = type(default) if default is not None else _TYPES[kinds[0]]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, expected) and (expected is bool) == isinstance(value, bool):
        return value
    like = f" (like {default!r})" if default is not None else ""
    raise ValueError(f"config key {name} expects {expected.__name__}"
                     f"{' or null' if optional else ''}{like}, got {value!r}")


# keys whose value has a floor: a value below it would fail later with an unrelated error
# (a division by zero, an empty run folder)
AT_LEAST = {"data.k": 1, "data.batch_size": 1, "data.max_tokens": 1, "data.image_size": 8,
            "data.num_workers": 0, "data.vocab_size": 260, "train.epochs": 1,
            "train.log_every": 1, "eval.batch_size": 1, "eval.beam_size": 1,
            "model.d_model": 1, "model.n_heads": 1, "model.decoder_layers": 1,
            "model.encoder_layers": 1, "model.cmar_rounds": 1,
            "data.n_stories": 1, "data.shapestories_seed": 0, "data.min_pair_freq": 0,
            "model.region_layers": 0, "model.w_ground": 0, "model.w_regions": 0,
            "model.w_describe": 0, "model.w_look_ahead": 0, "model.w_move": 0,
            "train.weight_decay": 0,
            "train.grad_clip": 0, "train.w_align": 0, "train.w_next": 0, "train.patience": 0,
            "eval.candidates": 2, "eval.retrieval_windows": 0, "eval.examples": 0,
            "eval.bootstrap": 0, "train.process_timeout": 1,
            # InfoNCE logits are cosines / temperature: at most 1e4, finite even in fp16
            "model.infonce_temperature": 1e-4}
ABOVE = {"train.lr": 0}  # keys that must exceed a bound
# keys with a ceiling: the BPE trainer reserves room for the whole vocabulary up front (10^12
# aborts the process) and counts pair frequencies in unsigned 64-bit integers
AT_MOST = {"data.vocab_size": 1_000_000, "data.min_pair_freq": 2**64 - 1,
           "train.process_timeout": 7 * 24 * 60}  # a week: far beyond any cache build
FLOAT32_MAX = 3.4e38  # a float setting ends up in float32 tensors (a learning rate in AdamW's)
# keys in an interval: key -> (low, high, whether high is allowed); low always is
WITHIN = {"data.val_fraction": (0, 1, False), "data.test_fraction": (0, 1, False),
          "model.dropout": (0, 1, False), "train.warmup": (0, 1, True),
          "train.caption_dropout": (0, 1, True), "train.word_dropout": (0, 1, False),
          "model.teacher_regions": (0, 1, True),
          "seed": (0, 2**32 - 1, True)}  # numpy's seed
# string keys with a closed set of choices
CHOICES = {"data.mode": MODES, "data.caption_policy": CAPTION_POLICIES,
           "data.image_fit": IMAGE_FITS, "data.difficulty": tuple(DIFFICULTIES),
           "eval.split": SPLITS, "eval.strategy": STRATEGIES, "eval.tokenizer": METRIC_TOKENIZERS}
# keys naming a registered part: key -> (its registry in cmar.models.registry, whether
# hf:<hub id or folder> is allowed too)
PART_KEYS = {"model.image_encoder": ("IMAGE_ENCODERS", True),
             "model.text_encoder": ("SEQUENCE_ENCODERS", True),
             "model.story_encoder": ("SEQUENCE_ENCODERS", False),
             "model.fusion": ("FUSIONS", False), "model.decoder": ("DECODERS", True)}
PATH_KEYS = ("runs_dir", "data.cache_dir")  # folders; data.source may be one too


def _get(config: Config, key: str) -> Any:
    """The value of a dotted key (``seed``, ``data.k``)."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _bad(key: str, value: Any, allowed: str) -> ValueError:
    """The one-line error of a key: its name, its value and what is allowed."""
    return ValueError(f"config key {key} must be {allowed}, got {value!r}")


def check_ranges(config: Config) -> Config:
    """``config``, or a ValueError naming the first key out of its range (:data:`AT_LEAST`,
    :data:`AT_MOST`, :data:`ABOVE`, :data:`WITHIN`, finite floats) or choices (:data:`CHOICES`,
    registered parts), or the first combination of keys that could not run
    (:func:`check_combinations`): every setting is checked before any data is read or
    model built."""
    for key, value in _items(config):
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise _bad(key, value, f"a finite number within float32 (at most {FLOAT32_MAX})")
    for key, floor in AT_LEAST.items():
        value = _get(config, key)
        if value < floor:
            raise ValueError(f"config key {key} must be at least {floor}, got {value}")
    for key, ceiling in AT_MOST.items():
        value = _get(config, key)
        if value > ceiling:
            raise ValueError(f"config key {key} must be at most {ceiling}, got {value}")
    for key, bound in ABOVE.items():
        value = _get(config, key)
        if value <= bound:
            raise ValueError(f"config key {key} must be above {bound}, got {value}")
    for key, (low, high, closed) in WITHIN.items():
        value = _get(config, key)
        if not (low <= value <= high if closed else low <= value < high):
            raise _bad(key, value, f"in [{low}, {high}{']' if closed else ')'}")
    if config.data.limit is not None and config.data.limit < 1:
        raise _bad("data.limit", config.data.limit, "at least 1, or null (no limit)")
    sizes = config.eval.candidate_sets
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in sizes):
        raise _bad("eval.candidate_sets", sizes, "a list of integers, each at least 2")
    for key in ("train.lr_groups", "train.frozen_epochs"):
        groups = _get(config, key)
        whole = key == "train.frozen_epochs"
        for prefix, value in groups.items():
            number = (isinstance(value, int) if whole else isinstance(value, (int, float)))
            if not (isinstance(prefix, str) and prefix and number
                    and not isinstance(value, bool) and 0 <= value <= FLOAT32_MAX):
                raise _bad(key, groups, "a mapping from parameter name prefixes (such as "
                           f"image_encoder) to {'whole epochs' if whole else 'multipliers'}, "
                           "each at least 0")
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            raise _bad(key, _get(config, key), f"one of {', '.join(choices)}")
    selectable = selectable_keys(config)
    if config.train.select not in selectable:
        raise _bad("train.select", config.train.select, f"one of {', '.join(selectable)}")
    _check_names(config)
    _check_parts(config)
    return check_combinations(config)


def _items(config: Any, where: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting, section by section."""
    items = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            items += _items(value, f"{where}{f.name}.")
        else:
            items.append((f"{where}{f.name}", value))
    return items


def selectable_keys(config: Config) -> list[str]:
    """The history keys ``train.select`` may name: ``val_`` or ``train_`` and a loss term."""
    return [f"{split}_{term}" for split in ("val", "train") for term in loss_terms_of(config)]


def _check_names(config: Config) -> None:
    """The run name is one folder inside runs_dir; no path holds a NUL byte."""
    name = config.name
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise _bad("name", name, "a folder name: not empty, not . or .., no / or \\")
    for key in (*PATH_KEYS, "data.source"):
        value = _get(config, key)
        if "\0" in value:
            raise _bad(key, value, "a path without a NUL byte")
    if not config.data.source.strip():
        raise _bad("data.source", config.data.source,
                   "shapestories, storyreasoning, a hub id or a local folder")


def _models():
    """(registry, image_encoder) of :mod:`cmar.models`, every part registered. Imported when a
    config is checked, not when this module is: reading this file needs no torch."""
    import cmar.models  # noqa: F401  (importing the package registers every part)
    from cmar.models import image_encoder, registry

    return registry, image_encoder


# the end of the error of an unknown part name
OWN_PART_HINT = ("a part of your own is registered once the file defining it is imported: run "
                 "that cell first, or pass --plugin FILE.py to the cmar command")


def _check_parts(config: Config) -> None:
    """Every part key names a registered part (or ``hf:<source>`` where allowed)."""
    registry, _ = _models()
    for key, (kind, hf) in PART_KEYS.items():
        value = _get(config, key)
        if hf and value.startswith(HF_PREFIX):
            if not value[len(HF_PREFIX):].strip():
                raise _bad(key, value, f"{HF_PREFIX}<hub id or local folder>")
            continue
        names = sorted(getattr(registry, kind))
        if value not in names:
            extra = f", or {HF_PREFIX}<hub id or local folder>" if hf else ""
            error = _bad(key, value, f"one of {', '.join(names)}{extra}")
            raise ValueError(f"{error}; {OWN_PART_HINT}")


def check_combinations(config: Config) -> Config:
    """``config``, or a ValueError naming the first keys whose values cannot run together."""
    m, d = config.model, config.data
    check_model(m)  # the model keys' own combinations (StoryModel runs them too)
    if m.predict_regions and d.mode != "next":
        raise ValueError(f"config key model.predict_regions (true) predicts the target frame, "
                         f"which data.mode={d.mode} shows the model: it needs data.mode=next")
    registry, encoders = _models()
    if m.pretrained:
        encoder = registry.IMAGE_ENCODERS.get(m.image_encoder)
        if isinstance(encoder, type) and issubclass(encoder, encoders.SmallCNN):
            raise ValueError(f"config key model.pretrained (true) needs an image encoder with "
                             f"pretrained weights (a torchvision one or hf:), got "
                             f"model.image_encoder={m.image_encoder}")
    if d.source == "shapestories":
        _check_shapestories(d)
    stride = _image_stride(m.image_encoder)
    if stride and not m.freeze_image_encoder and d.image_size <= stride:
        raise ValueError(f"config key data.image_size ({d.image_size}) must be above {stride} "
                         f"for model.image_encoder={m.image_encoder}: it shrinks frames {stride} "
                         "times, and BatchNorm cannot train a 1 x 1 map of one window's frame")
    return config


def _image_stride(name: str) -> int | None:
    """How many times a built-in CNN image encoder shrinks a frame's side (None: unknown)."""
    registry, encoders = _models()
    encoder = registry.IMAGE_ENCODERS.get(name)
    if isinstance(encoder, type) and issubclass(encoder, encoders.SmallCNN):
        return math.prod(encoder.strides)
    return 32 if name in encoders.TORCHVISION else None  # ResNets and MobileNetV2: S/32


def _check_shapestories(d: DataConfig) -> None:
    """Splits the generated stories fill, its columns, the generator's knobs and the image
    size."""
    schema = DataConfig()  # ShapeStories is written in the StoryReasoning schema
    for name in ("images_column", "captions_column"):
        if getattr(d, name) != (wanted := getattr(schema, name)):
            wanted = "null" if wanted is None else repr(wanted)
            raise _bad(f"data.{name}", getattr(d, name),
                       f"{wanted} on ShapeStories (the StoryReasoning schema)")
    # carved as cmar.data.loading.carve_split does: test from all, validation from the rest
    n_test = round(d.n_stories * d.test_fraction)
    n_val = round((d.n_stories - n_test) * d.val_fraction)
    n_train = d.n_stories - n_test - n_val
    if min(n_train, n_val, n_test) < 1:  # training validates, evaluation tests
        raise ValueError(f"config key data.n_stories ({d.n_stories}) with data.test_fraction "
                         f"({d.test_fraction}) and data.val_fraction ({d.val_fraction}) makes "
                         f"{n_train} train, {n_val} validation and {n_test} test stories: "
                         "each split needs at least 1")
    from cmar.data import shapes_world as world

    fields = {f.name: f for f in dataclasses.fields(world.Knobs)}
    unknown = sorted(set(d.shapestories_knobs) - set(fields), key=str)
    if unknown:
        raise ValueError(f"config key data.shapestories_knobs has unknown knob(s) {unknown}; "
                         f"knobs: {', '.join(fields)}")
    knobs = {name: _checked(f"data.shapestories_knobs.{name}", value,
                            fields[name].default, str(fields[name].type))
             for name, value in d.shapestories_knobs.items()}
    try:
        world.Knobs.from_difficulty(d.difficulty, **knobs)
    except ValueError as error:
        raise ValueError(f"config key data.shapestories_knobs ({d.shapestories_knobs}) is "
                         f"refused by ShapeStories: {error}") from None
    if "image_size" not in knobs:
        try:
            world.Knobs.from_difficulty(d.difficulty, **knobs, image_size=d.image_size)
        except ValueError as error:
            raise ValueError(f"config key data.image_size ({d.image_size}) is refused by "
                             f"ShapeStories: {error}") from None



def check_device(config: Config) -> Config:
    """``config``, or a ValueError naming a ``device`` that is not one of :data:`DEVICES`."""
    if config.device not in DEVICES:
        raise ValueError(f"config key device must be one of {', '.join(DEVICES)}, "
                         f"got {config.device!r}")
    return config


def preset_for(source: str, smoke: bool = False) -> str:
    """The preset that suits ``source`` (a ``data.source`` value): ``"default"`` for
    ShapeStories, ``"storyreasoning"`` for anything else (the hub's StoryReasoning, another hub
    id, a local copy in the hub's layout, your own folder); with ``smoke``, their small
    versions ``"smoke"`` and ``"storyreasoning-smoke"`` (seconds on a CPU, no download)."""
    if source == "shapestories":  # exactly as cmar.data.loading.open_source tells it apart
        return "smoke" if smoke else "default"
    return "storyreasoning-smoke" if smoke else "storyreasoning"


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
    return check_device(check_ranges(_build(Config, tree, "")))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a crash never leaves half a file)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    partial.replace(path)
