"""Property-based: whatever value any config key gets, `load_config` refuses it with one line
that names the key, or the run trains and evaluates. Never a traceback from deep inside."""

import contextlib
import dataclasses
import math
import os
import re
import tempfile
import traceback

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cmar.config import (
    CHOICES,
    HF_PREFIX,
    OWN_PART_HINT,
    PART_KEYS,
    Config,
    load_config,
    selectable_keys,
)
from cmar.evaluation import evaluate_run
from cmar.models import registry
from cmar.train import train  # imports cmar.models and cmar.data: every check load_config has

SCALE = int(os.environ.get("CMAR_HYPOTHESIS_SCALE", "1"))


def config_keys(cls=Config, where: str = "") -> dict[str, tuple[object, str]]:
    """Every key of every section, dotted: key -> (default, annotation). A new field is drawn
    with no change here."""
    keys = {}
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        name = f"{where}{f.name}"
        if dataclasses.is_dataclass(default):
            keys.update(config_keys(type(default), f"{name}."))
        else:
            keys[name] = (default, str(f.type))
    return keys


KEYS = config_keys()
# small and fast around which the drawn keys vary (12 stories: 10 train, 1 validation, 1 test)
BASE = ["data.n_stories=12", "train.epochs=1", "runs_dir=runs", "eval.bootstrap=0",
        "eval.candidates=4", "eval.retrieval_windows=8", "eval.examples=1", "eval.batch_size=8"]
# sizes: a drawn value above these still has its load_config answer checked, but is not run
# (minutes of work, or more memory than a test machine has: a beam of 10^6 wants 39 GB)
RUN_AT_MOST = {"data.n_stories": 40, "data.image_size": 64, "data.max_tokens": 64,
               "data.num_workers": 12, "data.vocab_size": 100_000, "model.d_model": 128,
               "model.n_heads": 16, "model.encoder_layers": 3, "model.decoder_layers": 3,
               "model.region_layers": 3, "model.cmar_rounds": 4, "train.epochs": 2,
               "eval.beam_size": 8, "eval.bootstrap": 30}
ODD = [0, -1, 1, 2, 3, 10**9, -(10**9), 2**32, 0.5, -0.5, 1.0, 1e30, math.nan, math.inf,
       -math.inf, True, False, None, "", "abc", "3", [], [1], {}, {"a": 1}]
KNOBS = [{}, {"bogus": 1}, {"n_characters": 1}, {"n_characters": 2}, {"n_landmarks": 5},
         {"max_frames": 6}, {"min_frames": 9}, {"image_size": 16}, {"noise": "loud"},
         {"mark_scale": 2.0}]


def values_for(key: str) -> st.SearchStrategy:
    """Values for one key: of its type, at its boundaries, of the wrong type, its choices."""
    default, annotation = KEYS[key]
    kinds = [kind.strip() for kind in annotation.split("|")]
    odd = st.sampled_from(ODD)
    if isinstance(default, bool):
        return st.one_of(st.booleans(), odd)
    if isinstance(default, int) or kinds[0] == "int":
        return st.one_of(st.integers(-3, 12), st.integers(-(10**12), 10**12), odd)
    if isinstance(default, float):
        return st.one_of(st.floats(-2, 2), st.floats(allow_nan=True, allow_infinity=True), odd)
    if isinstance(default, dict):
        return st.one_of(st.sampled_from(KNOBS), odd)
    if isinstance(default, list):  # eval.candidate_sets: sizes, some below 2, some above
        return st.one_of(st.lists(st.integers(-3, 40), max_size=4), odd)  # eval.candidates
    choices = list(CHOICES.get(key, ()))
    if key in PART_KEYS:
        kind, hf = PART_KEYS[key]
        choices += sorted(getattr(registry, kind))
        # an absolute folder that is not there: loading it fails at once, with no network
        choices += [HF_PREFIX, f"{HF_PREFIX}/no-such-model"] if hf else [f"{HF_PREFIX}x"]
    if key == "train.select":
        choices += selectable_keys(Config()) + ["val_ground", "loss"]
    if key == "data.source":
        choices += ["shapestories", "./no-such-folder", " "]
    if key in ("runs_dir", "data.cache_dir", "name"):  # relative: inside the test's folder
        choices += ["x", "x/y", "", ".", "..", "a\0b"]
        text = st.text("abcxyz-_. ", min_size=0, max_size=8)
    else:
        text = st.text(max_size=12)
    return st.one_of(st.sampled_from(choices or ["x"]), text, odd)


@st.composite
def settings_drawn(draw) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=3, unique=True))
    return {key: draw(values_for(key)) for key in keys}


def as_override(key: str, value) -> str:
    """``key=value`` with the value written so that YAML reads it back unchanged."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
    text = text.removesuffix("\n...\n").removesuffix("\n")
    assert yaml.safe_load(text) == value or value != value  # nan != nan
    return f"{key}={text}"


def costly(cfg: Config, drawn: dict) -> bool:
    for key, most in RUN_AT_MOST.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key in drawn and value is not None and value > most:
            return True
    return False


def names_a_key(message: str, drawn: dict) -> bool:
    """Whether ``message`` names one of the drawn keys whole (``seed``, not the end of
    ``data.shapestories_seed``; ``model.decoder``, not ``model.decoder_layers``)."""
    return any(re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message) for key in drawn)


def names_a_key_or_source(message: str, drawn: dict) -> bool:
    """A run may also fail on what only the run can find: a hf: model or a data source it
    cannot load, named by its value."""
    return names_a_key(message, drawn) or any(
        isinstance(value, str) and value.strip() and value in message
        for key, value in drawn.items() if key in (*PART_KEYS, "data.source"))


@contextlib.contextmanager
def inside(folder: str):
    """Run with ``folder``/work as the working directory: relative paths drawn (``..`` too)
    stay in ``folder``, which the test removes; a run written to the shared parent of every
    temporary folder would make the next test run find it there."""
    before = os.getcwd()
    work = os.path.join(folder, "work")
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def one_thread():
    """Tiny models run several times faster on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One ShapeStories cache for every example (the keys that change it regenerate it)."""
    return tmp_path_factory.mktemp("property-cache")


@settings(max_examples=60 * SCALE, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(drawn=settings_drawn())
def test_any_setting_is_refused_in_one_line_by_name_or_runs(drawn, shared_cache):
    overrides = [*BASE, f"data.cache_dir={shared_cache}",
                 *(as_override(key, value) for key, value in drawn.items())]
    with tempfile.TemporaryDirectory() as folder, inside(folder), one_thread():
        try:
            cfg = load_config("smoke", overrides)
        except (ValueError, KeyError, FileNotFoundError, TypeError) as error:
            message = str(error.args[0]) if error.args else ""
            assert "\n" not in message, f"{drawn}: more than one line: {message}"
            assert names_a_key(message, drawn), f"{drawn}: names no drawn key: {message}"
            event("refused by load_config")
            return
        if costly(cfg, drawn):
            event("loaded; too costly to run")
            return
        try:
            run_dir = train(cfg, progress=False)
            evaluate_run(run_dir, progress=False)
        except Exception as error:  # a run of a loaded config may fail only by naming the key
            message = str(error)
            if isinstance(error, (ValueError, KeyError, OSError, RuntimeError,
                                  FloatingPointError)) and "\n" not in message \
                    and names_a_key_or_source(message, drawn):
                event("refused by the run, naming the key")
                return
            pytest.fail(f"load_config accepted {drawn}, then the run failed: "
                        f"{''.join(traceback.format_exception(error))}")
        event("ran")


REFUSED = [  # one bad value per rule, and its exact message
    (["data.val_fraction=1"], "config key data.val_fraction must be in [0, 1), got 1.0"),
    (["data.test_fraction=-0.1"], "config key data.test_fraction must be in [0, 1), got -0.1"),
    (["model.dropout=1"], "config key model.dropout must be in [0, 1), got 1.0"),
    (["train.warmup=1.5"], "config key train.warmup must be in [0, 1], got 1.5"),
    (["seed=-1"], "config key seed must be in [0, 4294967295], got -1"),
    (["train.lr=.nan"],
     "config key train.lr must be a finite number within float32 (at most 3.4e+38), got nan"),
    (["train.lr=1e39"],
     "config key train.lr must be a finite number within float32 (at most 3.4e+38), got 1e+39"),
    (["train.lr=0"], "config key train.lr must be above 0, got 0.0"),
    (["model.infonce_temperature=1e-5"],
     "config key model.infonce_temperature must be at least 0.0001, got 1e-05"),
    (["train.w_align=-1"], "config key train.w_align must be at least 0, got -1.0"),
    (["train.w_next=-0.5"], "config key train.w_next must be at least 0, got -0.5"),
    (["model.w_ground=-1"], "config key model.w_ground must be at least 0, got -1.0"),
    (["train.weight_decay=-1"], "config key train.weight_decay must be at least 0, got -1.0"),
    (["train.grad_clip=-1"], "config key train.grad_clip must be at least 0, got -1.0"),
    (["train.patience=-1"], "config key train.patience must be at least 0, got -1"),
    (["eval.bootstrap=-1"], "config key eval.bootstrap must be at least 0, got -1"),
    (["eval.candidates=1"], "config key eval.candidates must be at least 2, got 1"),
    (["eval.retrieval_windows=-1"],
     "config key eval.retrieval_windows must be at least 0, got -1"),
    (["eval.candidate_sets=[20, 1]"],
     "config key eval.candidate_sets must be a list of integers, each at least 2, got [20, 1]"),
    (["eval.examples=-1"], "config key eval.examples must be at least 0, got -1"),
    (["data.n_stories=0"], "config key data.n_stories must be at least 1, got 0"),
    (["data.min_pair_freq=-1"], "config key data.min_pair_freq must be at least 0, got -1"),
    (["data.shapestories_seed=-1"],
     "config key data.shapestories_seed must be at least 0, got -1"),
    (["model.region_layers=-1"], "config key model.region_layers must be at least 0, got -1"),
    (["data.limit=0"], "config key data.limit must be at least 1, or null (no limit), got 0"),
    (["data.k=null"], "config key data.k expects int (like 3), got None"),
    (["data.limit=abc"], "config key data.limit expects int or null, got 'abc'"),
    (["data=3"], "config key data must be a mapping of keys to values, got 3"),
    (["data.mode=sideways"], "config key data.mode must be one of next, grounded, got 'sideways'"),
    (["data.caption_policy=all"],
     "config key data.caption_policy must be one of first_sentence, full, got 'all'"),
    (["data.image_fit=crop"],
     "config key data.image_fit must be one of letterbox, center_crop, squash, got 'crop'"),
    (["data.difficulty=extreme"],
     "config key data.difficulty must be one of easy, medium, hard, got 'extreme'"),
    (["model.next_target=frozen"],
     "config key model.next_target must be one of shared, detached, got 'frozen'"),
    (["model.next_negatives=all"],
     "config key model.next_negatives must be one of batch, story, got 'all'"),
    (["eval.split=dev"], "config key eval.split must be one of train, validation, test, got 'dev'"),
    (["eval.strategy=nucleus"],
     "config key eval.strategy must be one of greedy, beam, sample, got 'nucleus'"),
    (["eval.tokenizer=spacy"], "config key eval.tokenizer must be one of python, ptb, got 'spacy'"),
    (["train.select=val_ground"],
     "config key train.select must be one of val_caption, val_align, val_next, "
     "val_look_ahead, val_total, train_caption, train_align, train_next, train_look_ahead, "
     "train_total, got 'val_ground'"),
    (['model.decoder="hf:"'], "config key model.decoder must be hf:<hub id or local folder>, "
                            "got 'hf:'"),
    (["model.story_encoder=hf:gpt2"],
     "config key model.story_encoder must be one of gru, lstm, transformer, got 'hf:gpt2'; "
     + OWN_PART_HINT),
    (["model.text_encoder=bert"], "config key model.text_encoder must be one of gru, lstm, "
                                  "transformer, or hf:<hub id or local folder>, got 'bert'; "
                                  + OWN_PART_HINT),
    (["name=a/b"], "config key name must be a folder name: not empty, not . or .., no / or \\, "
                   "got 'a/b'"),
    (['data.source=" "'], "config key data.source must be shapestories, storyreasoning, a hub "
                          "id or a local folder, got ' '"),
    (["model.d_model=100", "model.n_heads=3"],
     "config key model.d_model (100) must be divisible by model.n_heads (3)"),
    (["model.copy_tokens=true", "model.memory_tokens=false"],
     "config key model.copy_tokens (true) copies the context words of the decoder's memory: "
     "it needs model.memory_tokens=true, got false"),
    (["model.copy_tokens=true", "model.decoder=hf:gpt2"],
     "config key model.copy_tokens (true) needs the built-in decoder and text encoder (one "
     "shared vocabulary), got model.decoder=hf:gpt2: set model.copy_tokens=false"),
    (["model.w_ground=0.5", "model.fusion=concat"],
     "config key model.w_ground (0.5) needs a fusion with word-to-region attention (cmar, "
     "cmar_lite or cross), got model.fusion=concat"),
    (["model.pretrained=true"],
     "config key model.pretrained (true) needs an image encoder with pretrained weights (a "
     "torchvision one or hf:), got model.image_encoder=small_cnn"),
    (["data.test_fraction=0.95", "data.val_fraction=0.9"],
     "config key data.n_stories (60) with data.test_fraction (0.95) and data.val_fraction (0.9) "
     "makes 0 train, 3 validation and 57 test stories: each split needs at least 1"),
    (["data.n_stories=2"],
     "config key data.n_stories (2) with data.test_fraction (0.1) and data.val_fraction (0.1) "
     "makes 2 train, 0 validation and 0 test stories: each split needs at least 1"),
    (["data.images_column=frames"], "config key data.images_column must be 'images' on "
                                    "ShapeStories (the StoryReasoning schema), got 'frames'"),
    (["data.captions_column=captions"], "config key data.captions_column must be null on "
                                        "ShapeStories (the StoryReasoning schema), got 'captions'"),
    (["data.image_size=16"], "config key data.image_size (16) is refused by ShapeStories: "
                             "image_size must be at least 32 pixels"),
    (["model.image_encoder=resnet18"],
     "config key data.image_size (32) must be above 32 for model.image_encoder=resnet18: it "
     "shrinks frames 32 times, and BatchNorm cannot train a 1 x 1 map of one window's frame"),
    (["model.freeze_decoder=true"],
     "config key model.freeze_decoder (true) keeps pretrained weights fixed: it needs "
     "model.decoder=hf:<hub id or folder>, got model.decoder=lstm"),
    (["model.freeze_text_encoder=true"],
     "config key model.freeze_text_encoder (true) keeps pretrained weights fixed: it needs "
     "model.text_encoder=hf:<hub id or folder>, got model.text_encoder=gru"),
    (["data.shapestories_knobs={bogus: 1}"],
     "config key data.shapestories_knobs has unknown knob(s) ['bogus']; knobs: image_size, "
     "min_frames, max_frames, n_characters, n_landmarks, n_distractors, noise, jitter, "
     "turn_prob, mark_scale"),
    (["data.shapestories_knobs={n_characters: 1}"],
     "config key data.shapestories_knobs ({'n_characters': 1}) is refused by ShapeStories: "
     "n_characters must be at least 2, got 1"),
    (["data.shapestories_knobs={noise: loud}"],
     "config key data.shapestories_knobs.noise expects float (like 0.02), got 'loud'"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_each_rule_refuses_in_one_line_naming_key_and_value(overrides, message):
    with pytest.raises((ValueError, KeyError)) as caught:
        load_config("smoke", overrides)
    assert caught.value.args[0] == message
    assert "\n" not in message


def test_every_key_is_drawn():
    sections = [f for f in dataclasses.fields(Config)
                if dataclasses.is_dataclass(getattr(Config(), f.name))]
    assert len(KEYS) == len(dataclasses.fields(Config)) - len(sections) + sum(
        len(dataclasses.fields(getattr(Config(), f.name))) for f in sections)
    assert {"seed", "data.k", "model.fusion", "train.lr", "eval.bootstrap"} <= set(KEYS)
