"""Your own dataset: a folder of images and one captions file -> a ``datasets`` source.

The captions file is ``captions.csv`` or ``captions.jsonl`` in the folder (or the file itself
named as ``data.source``). It holds one line per frame::

    story_id,frame,image,caption
    beach,1,beach/01.jpg,Ana walks down to the water with her dog.
    beach,2,beach/02.jpg,The dog runs ahead and barks at a gull.

``frame`` orders a story's frames (any whole numbers; gaps are fine); ``image`` is a path
relative to the captions file's folder (or absolute). An optional ``split`` column (``train``,
``validation``, ``test``) assigns whole stories to splits; splits it does not name are carved
from ``train`` as for any source. A JSON-lines file may instead hold one story per line:
``{"story_id": ..., "images": [...], "captions": [...]}``.

Nothing is decided here about what is usable: every story becomes one row (``story_id``,
``images``, ``captions``), and :func:`cmar.data.load_stories` validates it like a row of any
other source, so a problem is a counted skip in its :class:`~cmar.data.LoadReport`:

- a missing image file -> ``missing_image`` (the row keeps the path, not the bytes);
- a frame given two captions (two lines with the same story and frame), or a JSON story with
  more captions than images -> ``caption_count_mismatch``;
- an empty caption -> ``empty_caption``; an unreadable image -> ``corrupt_image``;
- fewer frames than a window needs -> ``too_short``.

Only a file that cannot be read as a table at all (a missing column, a frame that is not a whole
number, a story split across two splits) raises, naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import datasets

from cmar.settings import SPLITS

CAPTIONS_FILES = ("captions.csv", "captions.jsonl")
COLUMNS = ("story_id", "frame", "image", "caption")
CAPTIONS_COLUMN = "captions"  # the column of the converted rows that holds the captions
FEATURES = datasets.Features({
    "story_id": datasets.Value("string"),
    "images": datasets.List({"bytes": datasets.Value("binary"), "path": datasets.Value("string")}),
    CAPTIONS_COLUMN: datasets.List(datasets.Value("string")),
})


def captions_file(source: str | Path) -> Path | None:
    """The captions file ``source`` names (itself, or one inside the folder), else None."""
    path = Path(source).expanduser()
    if path.is_file() and path.name.endswith((".csv", ".jsonl")):
        return path
    if path.is_dir():
        found = [path / name for name in CAPTIONS_FILES if (path / name).is_file()]
        if len(found) > 1:
            raise ValueError(f"{path} holds both captions.csv and captions.jsonl; keep one")
        return found[0] if found else None
    return None


def _read_lines(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, record) of a CSV or JSON-lines file; a header counts as line 1."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path.name} has no column(s) {missing}; its header is "
                                 f"{reader.fieldnames}. Needed: {', '.join(COLUMNS)} "
                                 "(and optionally split)")
            for record in reader:
                yield reader.line_num, record
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path.name} line {number} is not JSON: {error}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path.name} line {number} is not a JSON object")
            yield number, record


def _frame_number(value, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise ValueError(f"{where}: frame {value!r} is not a whole number")
    return int(number)


def _image_cell(value, folder: Path) -> dict:
    """A ``datasets`` image cell that points at the file; the loader reads it on demand."""
    path = Path(str(value)).expanduser() if value not in (None, "") else None
    if path is not None and not path.is_absolute():
        path = folder / path
    return {"bytes": None, "path": str(path) if path is not None else ""}


def read_own_rows(source: str | Path) -> dict[str, list[dict]]:
    """The stories of a captions file as rows (``story_id``, ``images``, ``captions``), per split.

    See the module docstring for the file format and what becomes a skip later.
    """
    path = captions_file(source)
    if path is None:
        raise FileNotFoundError(f"{source}: no {' or '.join(CAPTIONS_FILES)} there")
    folder = path.parent
    frames: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    whole: dict[str, dict] = {}
    split_of: dict[str, str] = {}
    order: dict[str, None] = {}  # story ids in the order of their first line
    for number, record in _read_lines(path):
        where = f"{path.name} line {number}"
        story_id = str(record.get("story_id") or "").strip()
        if not story_id:
            raise ValueError(f"{where}: no story_id")
        split = str(record.get("split") or "train").strip().lower()
        if split not in SPLITS:
            raise ValueError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if split_of.setdefault(story_id, split) != split:
            raise ValueError(f"{where}: story {story_id!r} is in both {split_of[story_id]} and "
                             f"{split}; a story belongs to one split")
        order.setdefault(story_id, None)
        if "images" in record or "captions" in record:  # one story per JSON line
            if story_id in whole or story_id in frames:
                raise ValueError(f"{where}: story {story_id!r} appears twice")
            images, captions = record.get("images"), record.get("captions")
            if not isinstance(images, list) or not isinstance(captions, list):
                raise ValueError(f"{where}: images and captions must both be lists")
            whole[story_id] = {"images": [_image_cell(v, folder) for v in images],
                               "captions": [c if isinstance(c, str) else "" for c in captions]}
            continue
        missing = [c for c in COLUMNS if c not in record]
        if missing:
            raise ValueError(f"{where}: no {missing}; each line needs {', '.join(COLUMNS)}")
        if story_id in whole:
            raise ValueError(f"{where}: story {story_id!r} appears twice")
        caption = record["caption"] if isinstance(record["caption"], str) else ""
        frames[story_id][_frame_number(record["frame"], where)].append(
            (_image_cell(record["image"], folder), caption))
    rows: dict[str, list[dict]] = {}
    for story_id in order:
        if story_id in whole:
            row = whole[story_id]
        else:
            lines = [line for _, group in sorted(frames[story_id].items()) for line in group]
            # one image per frame number, one caption per line: a frame given two captions
            # makes the counts differ, and the loader skips the story as caption_count_mismatch
            row = {"images": [group[0][0] for _, group in sorted(frames[story_id].items())],
                   "captions": [caption for _, caption in lines]}
        rows.setdefault(split_of[story_id], []).append({"story_id": story_id, **row})
    return rows


def open_own(source: str | Path) -> datasets.DatasetDict:
    """A captions file (or its folder) as a ``DatasetDict`` of rows the loader validates."""
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(rows, features=FEATURES)
        for split, rows in read_own_rows(source).items()})


def write_own_folder(stories, folder: str | Path, split: str | None = None,
                     fmt: str = "csv") -> Path:
    """Write stories (anything with ``story_id``, ``captions`` and ``image(t)``) as PNG files
    plus a captions file in ``folder``, the layout above; returns the captions file.

    Appends when the captions file exists, so splits can be written one after another.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ("captions.csv" if fmt == "csv" else "captions.jsonl")
    fresh = not target.exists()
    columns = [*COLUMNS, *(["split"] if split else [])]
    if not fresh and fmt == "csv":  # appending: the header already written decides
        with target.open(newline="", encoding="utf-8") as handle:
            columns = next(csv.reader(handle))
    lines = []
    for story in stories:
        (folder / story.story_id).mkdir(exist_ok=True)
        for t, caption in enumerate(story.captions):
            name = f"{story.story_id}/{t + 1:02d}.png"
            story.image(t).save(folder / name)
            lines.append({"story_id": story.story_id, "frame": t + 1, "image": name,
                          "caption": caption, **({"split": split} if split else {})})
    with target.open("a", newline="", encoding="utf-8") as handle:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            if fresh:
                writer.writeheader()
            writer.writerows(lines)
        else:
            handle.writelines(json.dumps(line) + "\n" for line in lines)
    return target
