"""``load_stories``: any source of image sequences with captions -> validated :class:`Story` list.

Sources, all read through Hugging Face ``datasets``:

- ``"shapestories"``: the embedded procedural benchmark, generated once and cached under
  ``cache_dir`` with ``save_to_disk``, then read back like any local copy;
- ``"storyreasoning"``: ``daniel3303/StoryReasoning`` on the hub;
- a local folder: a ``save_to_disk`` folder or a folder of parquet files (split taken from the
  file names, ``train-*.parquet`` / ``test-*.parquet``, as on the hub), or one ``.parquet``
  file (its split from its name likewise, else ``train``); a path that does not exist is
  reported as such, not tried on the hub;
- your own folder of images with a ``captions.csv`` or ``captions.jsonl`` (or that file):
  read by :mod:`cmar.data.own`, its captions plain text;
- any other string: a hub dataset id.

Rows in the StoryReasoning schema (an ``images`` list and a ``story`` string with ``<gdi>``
markup) go through the markup parser; any other source names its ``images_column`` and
``captions_column`` (a list of images and a list of caption strings of the same length).
Every row passes the same validation; a bad row is skipped and counted, never raised on and
never misaligned. Splits without a counterpart in the source (StoryReasoning has no validation
split) are carved from ``train`` by story id with a fixed seed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import datasets
from PIL import Image
from tqdm.auto import tqdm

from cmar.data.markup import (
    apply_caption_policy,
    parse_boxes,
    parse_descriptions,
    parse_segments,
)
from cmar.data.own import CAPTIONS_COLUMN, captions_file, open_own
from cmar.data.story import LoadReport, Story, StoryList, decode_image
from cmar.settings import SPLITS

log = logging.getLogger("cmar.data")

STORYREASONING_HUB_ID = "daniel3303/StoryReasoning"
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
_WS = re.compile(r"\s+")


def carve_split(story_ids: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices by story id into (kept, carved), ``fraction`` of stories carved.

    The assignment depends only on the set of ids and the seed, not on row order, so the same
    source always gives the same split.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    unique = sorted(set(story_ids))
    random.Random(seed).shuffle(unique)
    n_carved = round(len(unique) * fraction)
    carved_ids = set(unique[:n_carved])
    kept = [i for i, sid in enumerate(story_ids) if sid not in carved_ids]
    carved = [i for i, sid in enumerate(story_ids) if sid in carved_ids]
    return kept, carved


LOCAL_LAYOUTS = ("A local copy is a folder written by Dataset.save_to_disk, a folder of parquet "
                 "files (data/train-*.parquet and data/test-*.parquet, as on the hub), one "
                 ".parquet file (its split from its name, train-... or test-..., else train), "
                 "or your own folder of images with a captions.csv or captions.jsonl "
                 "(story_id, frame, image, caption)")


def _looks_local(source: str) -> bool:
    """Whether ``source`` is meant as a path rather than a hub id ("owner/name"); a Windows
    drive (``D:/copy``) is a path too."""
    return (source.startswith(("/", ".", "~")) or source.endswith((".parquet", ".csv", ".jsonl"))
            or source.count("/") > 1 or "\\" in source or bool(PureWindowsPath(source).drive))


def open_source(source: str, cache_dir: str | Path = "data", progress: bool = True,
                **shapestories: Any):
    """Open ``source`` as a ``datasets.DatasetDict`` (see the module docstring for the forms);
    ``progress``: ShapeStories' generation shows its progress bars."""
    if source == "shapestories":
        from cmar.data.shapestories import shapestories_on_disk

        source = str(shapestories_on_disk(cache_dir=cache_dir, progress=progress,
                                          **shapestories))
    elif source == "storyreasoning":
        source = STORYREASONING_HUB_ID
    path = Path(source).expanduser()
    if captions_file(path) is not None:
        loaded = open_own(path)
    elif path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"data.source {source}: a single file must be a .parquet file or "
                             f"a captions file (.csv or .jsonl); {LOCAL_LAYOUTS}")
        split = _SPLIT_ALIASES.get(path.name.split("-")[0], path.name.split("-")[0])
        loaded = datasets.load_dataset("parquet", data_files={
            split if split in SPLITS else "train": str(path)})
    elif path.exists():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir() and not any(path.rglob("*.parquet")):
            raise FileNotFoundError(
                f"{path} holds neither a save_to_disk dataset, nor parquet files, nor a "
                f"captions file. {LOCAL_LAYOUTS}")
        else:
            loaded = datasets.load_dataset(str(path))
    elif _looks_local(source):
        raise FileNotFoundError(f"data.source {source}: no such file or folder. {LOCAL_LAYOUTS}")
    else:
        loaded = _load_from_hub(source)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


HUB_TIMEOUT = 5.0  # seconds the hub gets to answer one request before it counts as unreachable


def _hub_unreachable(source: str) -> Exception | None:
    """The error of one short request to the hub (through any configured proxy), or None
    when it answers at all: a 401 or 404 still means the hub is there."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(f"{constants.ENDPOINT}/api/datasets/{source}", timeout=HUB_TIMEOUT)
    except Exception as error:  # a refused connection, a timeout, a proxy or DNS failure
        return error
    return None


@contextlib.contextmanager
def _offline():
    """``datasets`` and ``huggingface_hub`` in offline mode: only the local cache is read."""
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _load_from_hub(source: str):
    """A hub dataset, or at once a sentence naming data.source when the hub cannot be reached
    and the local Hugging Face cache has no copy (``datasets`` alone would retry for about
    half a minute first)."""
    offline = datasets.config.HF_HUB_OFFLINE
    unreachable = None if offline else _hub_unreachable(source)
    if offline or unreachable is not None:
        try:
            with _offline():
                return datasets.load_dataset(source)  # a copy downloaded earlier
        except Exception:
            why = ("offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" if offline else
                   f"the Hugging Face hub is unreachable ({type(unreachable).__name__}: "
                   f"{unreachable})")
            raise ConnectionError(
                f"data.source {source!r}: {why}, and the local Hugging Face cache holds no "
                f"copy of it. Connect once to download it, or set data.source to a local copy. "
                f"{LOCAL_LAYOUTS}") from None
    try:
        return datasets.load_dataset(source)
    except Exception as error:  # the hub's errors do not say what to do next
        raise RuntimeError(
            f"data.source {source!r}: could not load it from the Hugging Face hub ({error}). "
            f"Check the id, or set data.source to a local copy. {LOCAL_LAYOUTS}") from error


def _select_split(
    dataset_dict, split: str, id_column: str, val_fraction: float, test_fraction: float, seed: int
):
    """The rows of ``split``, carving validation/test from train when the source lacks them."""
    split = _SPLIT_ALIASES.get(split, split)
    if split in dataset_dict:
        rows = dataset_dict[split]
        if split != "train":
            return rows
    if "train" not in dataset_dict:
        raise KeyError(f"split {split!r} not found; the source has {list(dataset_dict)}")
    train = dataset_dict["train"]
    ids = _story_ids(train, id_column, "train")
    carved: dict[str, list[int]] = {}
    kept = list(range(len(train)))
    for name, fraction, offset in (("test", test_fraction, 1), ("validation", val_fraction, 0)):
        if name in dataset_dict:
            continue
        keep_idx, carve_idx = carve_split([ids[i] for i in kept], fraction, seed + offset)
        carved[name] = [kept[i] for i in carve_idx]
        kept = [kept[i] for i in keep_idx]
    if split == "train":
        return train.select(kept)
    if split in carved:
        return train.select(carved[split])
    raise KeyError(f"split {split!r} not found; the source has {list(dataset_dict)}")


def _story_ids(rows, id_column: str, split: str) -> list[str]:
    if id_column in rows.column_names:
        return [str(value) for value in rows[id_column]]
    return [f"{split}-{i}" for i in range(len(rows))]


def _encoded(value: Any) -> bytes | None:
    """Image file bytes from whatever a ``datasets`` image cell holds (None if nothing)."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and Path(value["path"]).is_file():
            return Path(value["path"]).read_bytes()
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, str) and Path(value).is_file():
        return Path(value).read_bytes()
    return None


class RowImages(Sequence):
    """The encoded frames of one dataset row, read from the (memory-mapped) table on demand.

    ``rows`` is a one-column dataset in arrow format, so nothing is decoded on the way.

    A split of thousands of stories holds only row numbers, not image files: at StoryReasoning
    size the encoded frames of every split are several GB, while the Arrow table behind them is
    memory-mapped and costs no heap. Iterating reads the row once; ``images[t]`` reads one cell.
    """

    def __init__(self, rows, index: int, column: str, length: int):
        self._rows, self._index, self._column, self._length = rows, index, column, length

    def __len__(self) -> int:
        return self._length

    def _cells(self) -> list:
        return self._rows[self._index].column(self._column)[0].as_py()

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [_encoded(cell) for cell in self._cells()[t]]
        if not -self._length <= t < self._length:
            raise IndexError(f"frame {t} of a {self._length}-frame story")
        return _encoded(self._cells()[t])

    def __iter__(self) -> Iterator[bytes]:
        return (_encoded(cell) for cell in self._cells())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RowImages(row {self._index}, {self._length} frames)"


def _raw_rows(rows, batch_size: int = 16) -> Iterator[dict]:
    """The rows as plain Python values read straight from the Arrow table.

    Image cells stay as stored (``{"bytes", "path"}``), never decoded, so a corrupt image is
    caught per row. Casting the column to ``Image(decode=False)`` instead would rewrite the
    whole split, images included, to a new cache file, with the split's size in memory at the
    peak; reading the table in arrow format costs neither.
    """
    for batch in rows.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


def _check_columns(rows, needed: dict[str, str], where: str) -> None:
    for role, column in needed.items():
        if column not in rows.column_names:
            raise ValueError(
                f"{where} has no column {column!r} (the {role}); its columns are "
                f"{rows.column_names}. Name the right one with {role}=... "
                f"(config: data.{role})."
            )


def load_stories(
    source: str = "shapestories",
    split: str = "train",
    *,
    images_column: str = "images",
    captions_column: str | None = None,
    id_column: str = "story_id",
    caption_policy: str = "first_sentence",
    min_frames: int = 2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    limit: int | None = None,
    cache_dir: str | Path = "data",
    progress: bool = True,
    **shapestories: Any,
) -> StoryList:
    """Load the validated stories of one split of ``source``.

    Args:
        source: ``"shapestories"``, ``"storyreasoning"``, a hub id, or a local folder.
        split: ``train``, ``validation`` (alias ``val``) or ``test``.
        images_column: column holding the list of frame images.
        captions_column: column holding the list of captions; ``None`` means the
            StoryReasoning schema (captions parsed from the ``story`` markup).
        caption_policy: see :func:`cmar.data.apply_caption_policy`.
        min_frames: stories with fewer frames are skipped (``too_short``).
        val_fraction / test_fraction / split_seed: how missing splits are carved from train.
        limit: keep at most this many rows of the split (after carving), for quick runs.
        cache_dir: where ShapeStories is generated and cached.
        **shapestories: ``n_stories``, ``seed`` and generator knobs for ``"shapestories"``.

    Returns:
        A :class:`StoryList` (a list of :class:`Story`) whose ``.report`` says how many rows
        were read, loaded and skipped, per reason, with example story ids.
    """
    dataset_dict = open_source(source, cache_dir=cache_dir, progress=progress, **shapestories)
    rows = _select_split(dataset_dict, split, id_column, val_fraction, test_fraction, split_seed)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    where = f"{source}[{split}]"
    if captions_column is None and captions_file(source) is not None:
        captions_column = CAPTIONS_COLUMN  # your own folder: its captions are plain text
    markup = captions_column is None
    needed = {"images_column": images_column}
    if markup:
        if "story" not in rows.column_names:
            raise ValueError(
                f"{where} has no 'story' column, so it is not in the StoryReasoning schema; "
                f"its columns are {rows.column_names}. Pass captions_column=... (config: "
                "data.captions_column) naming the column that holds the list of captions."
            )
    else:
        needed["captions_column"] = captions_column
    _check_columns(rows, needed, where)
    image_rows = rows.select_columns([images_column]).with_format("arrow")  # read on demand

    report = LoadReport(source=source, split=_SPLIT_ALIASES.get(split, split), rows=len(rows))
    ids = _story_ids(rows, id_column, report.split)
    seen: set[str] = set()
    stories: list[Story] = []
    for i, row in enumerate(tqdm(_raw_rows(rows), total=len(rows), desc=f"loading {where}",
                                 disable=not progress)):
        story_id = ids[i]
        if story_id in seen:
            report.skip("duplicate_story_id", story_id)
            continue
        story = _validate_row(row, story_id, report, markup, images_column, captions_column,
                              caption_policy, min_frames)
        if story is not None:
            story.images = RowImages(image_rows, i, images_column, len(story))
            seen.add(story_id)
            stories.append(story)
    report.loaded = len(stories)
    report.frames = sum(len(s) for s in stories)
    log.info(report.summary())
    for reason, examples in report.examples.items():
        log.warning("skipped %d stories (%s), e.g. %s", report.skipped[reason], reason, examples)
    return StoryList(stories, report)


def _shown(path: str) -> str:
    """A path as a report shows it: its last two parts (no local folders in printed output)."""
    return "/".join(Path(path).parts[-2:]) or "(none named)"


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (3, 3.0, "3"), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _validate_row(
    row: dict,
    story_id: str,
    report: LoadReport,
    markup: bool,
    images_column: str,
    captions_column: str | None,
    caption_policy: str,
    min_frames: int,
) -> Story | None:
    """One row -> Story, or None after recording why it was skipped."""
    cells = row[images_column]
    if not isinstance(cells, list) or not cells:
        report.skip("missing_images", story_id)
        return None
    images = [_encoded(cell) for cell in cells]
    for t, data in enumerate(images):
        if data is None and isinstance(cells[t], dict) and cells[t].get("path") is not None:
            report.skip("missing_image", story_id,
                        f"frame {t + 1}: no file {_shown(cells[t]['path'])}")
            return None
        try:
            if data is None:
                raise ValueError("no image data")
            decode_image(data)
        except Exception as error:
            report.skip("corrupt_image", story_id, f"frame {t + 1}: {type(error).__name__}")
            return None

    entities: list[dict] = [{} for _ in images]
    descriptions: list[dict] = [{} for _ in images]
    mentions: list[tuple] = [() for _ in images]
    if markup:
        frame_count = row.get("frame_count")
        if frame_count is not None and _as_int(frame_count) != len(images):
            report.skip("frame_count_mismatch", story_id,
                        f"frame_count {frame_count!r}, {len(images)} images")
            return None
        story_text = row.get("story")
        if not isinstance(story_text, str):
            report.skip("segment_count_mismatch", story_id,
                        f"story is {type(story_text).__name__}, not text")
            return None
        segments = parse_segments(story_text)
        numbers = [segment.image for segment in segments]
        if numbers != list(range(1, len(images) + 1)):
            report.skip("segment_count_mismatch", story_id,
                        f"{len(segments)} segments {numbers[:25]} for {len(images)} images")
            return None
        texts = [segment.text for segment in segments]
        reasoning = row.get("chain_of_thought")
        boxes = parse_boxes(reasoning) if isinstance(reasoning, str) else {}
        entities = [boxes.get(t + 1, {}) for t in range(len(images))]
        described = parse_descriptions(reasoning) if isinstance(reasoning, str) else {}
        descriptions = [described.get(t + 1, {}) for t in range(len(images))]
    else:
        texts = row[captions_column]
        if not isinstance(texts, list) or len(texts) != len(images):
            count = len(texts) if isinstance(texts, list) else type(texts).__name__
            report.skip("caption_count_mismatch", story_id,
                        f"{count} captions for {len(images)} images")
            return None
        if not all(isinstance(text, str) for text in texts):
            report.skip("empty_caption", story_id, "a caption is not a string")
            return None
        texts = [_WS.sub(" ", text).strip() for text in texts]

    captions = [apply_caption_policy(text, caption_policy) for text in texts]
    if any(not caption for caption in captions):
        empty = [t + 1 for t, caption in enumerate(captions) if not caption]
        report.skip("empty_caption", story_id, f"frames {empty}")
        return None
    if len(images) < min_frames:
        report.skip("too_short", story_id, f"{len(images)} frames < {min_frames}")
        return None
    if markup:
        mentions = [
            tuple(m for m in segment.mentions if m.start < len(caption))
            for segment, caption in zip(segments, captions, strict=True)
        ]
    return Story(story_id=story_id, images=images, captions=captions,
                 entities=entities, mentions=mentions, descriptions=descriptions)
