"""One call from a :class:`cmar.settings.DataConfig` to loaders: the whole data flow.

``prepare_data(cfg)`` loads every split with :func:`load_stories`, trains the tokenizer on the
training captions only (or reuses the one given, e.g. a run's), builds the windows, decodes
the frames once into an :class:`ImageStore` per split and wraps them as datasets.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from cmar.data.batches import WindowDataset, make_loader
from cmar.data.descriptions import EntityDescriptions
from cmar.data.images import ImageStore
from cmar.data.loading import load_stories
from cmar.data.mentions import MentionTargets
from cmar.data.moves import EntityMoves
from cmar.data.story import StoryList
from cmar.data.tokenizer import encode, train_tokenizer
from cmar.data.windows import MODES, make_windows
from cmar.settings import SPLITS, DataConfig


def shapestories_options(cfg: DataConfig) -> dict:
    """The generator settings a config implies (empty for other sources)."""
    if cfg.source != "shapestories":
        return {}
    # the knobs travel as one dict: a knob such as min_frames must not meet load_stories'
    # own keyword of the same name
    knobs = {"image_size": cfg.image_size, **cfg.shapestories_knobs}
    return dict(n_stories=cfg.n_stories, seed=cfg.shapestories_seed, difficulty=cfg.difficulty,
                knobs=knobs)


def no_story_left(cfg: DataConfig, stories: StoryList, split: str = "train") -> str:
    """Why a split came out empty, and what to change."""
    report = stories.report
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.skipped.items()) or "none"
    text = (f"{cfg.source}[{split}] has no usable story: {report.rows} rows read, skipped: "
            f"{reasons}.")
    if not report.rows and split != "train":
        fraction = "data.val_fraction" if split == "validation" else "data.test_fraction"
        text += f" Raise {fraction} (the share of train carved out when the source has none)."
    if "too_short" in report.skipped:
        examples = "; ".join(report.examples.get("too_short", [])[:3])
        text += (f" A window needs data.k + 1 = {cfg.k + 1} frames, more than these stories "
                 f"have (e.g. {examples}): lower data.k.")
    return text


def load_split(cfg: DataConfig, split: str, progress: bool = True) -> StoryList:
    """The stories of one split, as the config describes them."""
    extra = shapestories_options(cfg)
    return load_stories(
        cfg.source, split, images_column=cfg.images_column, captions_column=cfg.captions_column,
        caption_policy=cfg.caption_policy,
        min_frames=cfg.k + 1, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed, limit=cfg.limit, cache_dir=cfg.cache_dir, progress=progress,
        **extra,
    )


@dataclass
class StoryData:
    """Stories, windows and datasets of every split, with the tokenizer they share."""

    cfg: DataConfig
    tokenizer: object  # the caption tokenizer (targets, decoding)
    context_tokenizer: object = None  # the context captions' (a pretrained text encoder's own)
    stories: dict[str, StoryList] = field(default_factory=dict)
    datasets: dict[str, WindowDataset] = field(default_factory=dict)

    def __post_init__(self):
        if self.context_tokenizer is None:
            self.context_tokenizer = self.tokenizer

    def loader(self, split: str, shuffle: bool | None = None, seed: int = 0,
               batch_size: int | None = None, num_workers: int | None = None):
        """DataLoader over the windows of ``split`` (shuffled for train unless told)."""
        return make_loader(
            self.datasets[split], self.tokenizer,
            batch_size=batch_size or self.cfg.batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle, seed=seed,
            num_workers=self.cfg.num_workers if num_workers is None else num_workers,
        )

    def fingerprint(self, splits: tuple[str, ...] = ("train", "validation")) -> str:
        """SHA-256 (hex) over the stories of ``splits`` in order: their ids, captions (after
        the caption policy) and image bytes. Equal fingerprints: the same data."""
        digest = hashlib.sha256()
        for split in splits:
            digest.update(f"split={split}\0".encode())
            for story in self.stories.get(split, []):
                digest.update(f"{story.story_id}\0".encode())
                for caption in story.captions:
                    digest.update(f"{caption}\0".encode())
                for image in story.images:
                    digest.update(hashlib.sha256(image).digest())
        return digest.hexdigest()

    def summary(self) -> dict:
        """Counts a reader checks first: stories, frames, windows, vocabulary, skipped rows,
        and how many target captions (one per window) are cut at ``max_tokens``."""
        out = {"source": self.cfg.source, "k": self.cfg.k, "mode": self.cfg.mode,
               "vocabulary": len(self.tokenizer), "max_tokens": self.cfg.max_tokens,
               "splits": {}}
        for split, stories in self.stories.items():
            lengths = [len(s) for s in stories] or [0]
            words = [len(c.split()) for s in stories for c in s.captions] or [0]
            targets = [stories[w.story].captions[w.t] for w in self.datasets[split].windows]
            tokens = [len(encode(self.tokenizer, c)) for c in targets]
            out["splits"][split] = {
                "stories": len(stories),
                "frames": sum(lengths),
                "windows": len(self.datasets[split]),
                "frames_per_story": f"{min(lengths)}-{max(lengths)} "
                                    f"(mean {statistics.mean(lengths):.1f})",
                "caption_words_mean": round(statistics.mean(words), 1),
                "targets": len(targets),
                "targets_cut": sum(n > self.cfg.max_tokens for n in tokens),
                "skipped": dict(stories.report.skipped),
                "rows_read": stories.report.rows,
            }
        return out


CUT_SHARE = 0.1  # `cmar data` warns when more of the target captions than this are cut


def cut_targets_warning(summary: dict, caption_policy: str = "full") -> str | None:
    """The warning for a dataset whose target captions are cut at ``data.max_tokens`` in more
    than CUT_SHARE of the windows (all splits of ``summary``, :meth:`StoryData.summary`),
    else None: a cut caption ends mid-sentence, and the model learns to stop there."""
    targets = sum(row["targets"] for row in summary["splits"].values())
    cut = sum(row["targets_cut"] for row in summary["splits"].values())
    if not targets or cut / targets <= CUT_SHARE:
        return None
    cap = summary["max_tokens"]
    hint = ("raise data.max_tokens" if caption_policy == "first_sentence" else
            "raise data.max_tokens or use data.caption_policy=first_sentence")
    return (f"{cut / targets:.0%} of target captions ({cut} of {targets}) are cut at "
            f"data.max_tokens={cap} tokens (mid-sentence); {hint}")


def prepare_data(cfg: DataConfig, tokenizer=None, splits: tuple[str, ...] = SPLITS,
                 progress: bool = True, boxes: bool = False,
                 context_tokenizer=None, every_mention: bool = False,
                 describe: str | None = None, moves: bool = False) -> StoryData:
    """Load, tokenize, window and decode every split named in ``splits``. ``tokenizer``: the
    caption tokenizer (a run's, or a pretrained decoder's); None trains a BPE on the training
    captions. ``context_tokenizer``: a pretrained text encoder's, for the context captions
    (default: the caption tokenizer). ``boxes``: batches also carry the boxes of the
    characters named in the context captions (``Batch.context_boxes``, for the grounding
    loss); ``every_mention``: of the objects and places too (``model.ground_mentions=all``).
    ``describe`` (``characters`` or ``all``): batches also carry the box and
    ``chain_of_thought`` description of each such entity of the context frames (the describe
    objective, ``model.w_describe``). ``moves``: batches also carry the boxes of each
    character that moves between a context frame and the frame after it (the look-ahead
    objective, ``model.w_look_ahead``)."""
    if cfg.mode not in MODES:
        raise ValueError(f"data.mode must be one of {MODES}, got {cfg.mode!r}")
    stories = {split: load_split(cfg, split, progress) for split in splits}
    if tokenizer is None:
        if "train" not in stories:
            raise ValueError("without a tokenizer, the train split is needed to train one")
        captions = (c for story in stories["train"] for c in story.captions)
        tokenizer = train_tokenizer(captions, min_frequency=cfg.min_pair_freq,
                                    vocab_size=cfg.vocab_size)
    context_tokenizer = context_tokenizer or tokenizer
    data = StoryData(cfg=cfg, tokenizer=tokenizer, context_tokenizer=context_tokenizer,
                     stories=stories)
    frame_cache = Path(cfg.cache_dir) / "frames"
    for split, split_stories in stories.items():
        if split in ("train", "validation") and not split_stories:  # training validates
            raise ValueError(no_story_left(cfg, split_stories, split))
        store = ImageStore(split_stories, cfg.image_size, cache_dir=frame_cache, progress=progress,
                           fit=cfg.image_fit)
        windows = make_windows(split_stories, cfg.k)
        mentions = (MentionTargets(split_stories, store, context_tokenizer, every_mention)
                    if boxes else None)
        described = (EntityDescriptions(split_stories, store, tokenizer, describe)
                     if describe else None)
        moving = EntityMoves(split_stories, store) if moves else None
        data.datasets[split] = WindowDataset(split_stories, windows, store, tokenizer,
                                             max_tokens=cfg.max_tokens, mentions=mentions,
                                             context_tokenizer=context_tokenizer,
                                             described=described, moves=moving)
    return data
