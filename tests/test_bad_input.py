"""Property-based: random and adversarial input ends as a loaded, aligned story or a counted
skip, never an exception and never a misaligned frame."""

import io
import os
import tempfile
from pathlib import Path

from conftest import PALETTE, cot, segment, sr_dataset
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cmar.data import load_stories, parse_boxes, parse_segments, split_frames

# make test runs the counts below; CMAR_HYPOTHESIS_SCALE=10 gave RELIABILITY.md's larger counts
SCALE = int(os.environ.get("CMAR_HYPOTHESIS_SCALE", "1"))

FRAGMENTS = ["<gdi image", "1", "2", "99", "0", ">", "</gdi>", "<gdo char1>", "</gdo>",
             "<gda>", "<gdl bg1 lm2>", "</gdl>", "<gdi image1><gdi image1>", " ", "\n", "é",
             "字", "🙂", "word", ".", "<", "<<>>", "## Image 1\n| A | Bounding Box |\n|---|---|\n",
             "| x | 1,2,3 |", "| char1 | 1, 2, 3, 4 |"]


@settings(max_examples=300 * SCALE, deadline=None, derandomize=True)  # same examples every CI run
@given(st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)))
def test_markup_parsers_never_raise(text):
    segments = parse_segments(text)
    assert [s.image for s in segments] == sorted(s.image for s in segments)
    for s in segments:
        assert "<gdo" not in s.text and "  " not in s.text
        for m in s.mentions:
            assert s.text[m.start:m.end] == m.text
    assert len(split_frames(text)) == len(segments)
    parse_boxes(text)


def as_stored(colour: str, kind: str) -> Image.Image:
    """The frame as written: a solid colour, converted to the kind's mode."""
    return Image.new("RGB", (6, 4), PALETTE[colour]).convert(
        {"gray": "L", "rgba": "RGBA"}.get(kind, "RGB"))


def encoded(colour: str, kind: str) -> bytes:
    buffer = io.BytesIO()
    image = as_stored(colour, kind)
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "garbage":
        return b"GIF89a not really"
    return data


row_spec = st.fixed_dictionaries({
    "frames": st.integers(1, 5),
    "kinds": st.lists(st.sampled_from(["ok", "ok", "ok", "gray", "rgba", "truncated",
                                       "garbage"]), min_size=5, max_size=5),
    "numbering": st.sampled_from(["ok", "ok", "drop", "repeat", "shift", "reverse"]),
    "frame_count_delta": st.sampled_from([0, 0, 0, 1, -1]),
    "empty": st.integers(-1, 4),  # which segment is empty (-1: none)
})


def build_row(i: int, spec: dict) -> tuple[dict, bool]:
    """A row, and whether a correct loader must keep it."""
    n = spec["frames"]
    colours = [list(PALETTE)[(i + t) % len(PALETTE)] for t in range(n)]
    kinds = spec["kinds"][:n]
    numbers = list(range(1, n + 1))
    numbering = spec["numbering"] if n > 1 else "ok"
    if numbering == "drop":
        numbers = numbers[:-1]
    elif numbering == "repeat":
        numbers = numbers[:-1] + [numbers[-2]]
    elif numbering == "shift":
        numbers = [x + 1 for x in numbers]
    elif numbering == "reverse":
        numbers = numbers[::-1]  # order in the text does not matter: N decides
    empty = spec["empty"] if spec["empty"] < n else -1
    text = "\n".join(f"<gdi image{x}>  </gdi>" if x - 1 == empty else segment(x, colours[x - 1])
                     for x in numbers if x - 1 < n)
    if numbering == "shift":
        text = "\n".join(segment(x, colours[(x - 2) % n]) for x in numbers)
    row = {"story_id": f"s{i}",
           "images": [{"bytes": encoded(c, k), "path": None}
                      for c, k in zip(colours, kinds, strict=True)],
           "frame_count": n + spec["frame_count_delta"], "chain_of_thought": cot(colours),
           "story": text}
    keep = (all(k in ("ok", "gray", "rgba") for k in kinds) and numbering in ("ok", "reverse")
            and spec["frame_count_delta"] == 0 and empty == -1 and n >= 2)
    return row, keep


@settings(max_examples=40 * SCALE, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_spec, min_size=1, max_size=4))
def test_any_mix_of_bad_rows_is_skipped_and_counted_never_misaligned(specs):
    rows, keeps = zip(*(build_row(i, spec) for i, spec in enumerate(specs)), strict=True)
    with tempfile.TemporaryDirectory() as folder:
        sr_dataset(list(rows)).to_parquet(str(Path(folder) / "train-0.parquet"))
        stories = load_stories(folder, "train", val_fraction=0, test_fraction=0,
                               progress=False)
    report = stories.report
    assert report.rows == len(rows) and report.loaded + report.n_skipped == len(rows)
    assert sorted(s.story_id for s in stories) == sorted(
        r["story_id"] for r, keep in zip(rows, keeps, strict=True) if keep)
    kinds = {f"s{i}": spec["kinds"] for i, spec in enumerate(specs)}
    for story in stories:
        assert len(story.images) == len(story.captions) >= 2
        for t, caption in enumerate(story.captions):
            colour = caption.split()[1]  # "The <colour> square ..."
            expected = as_stored(colour, kinds[story.story_id][t]).convert("RGB")
            assert story.image(t).getpixel((0, 0)) == expected.getpixel((0, 0)), (story, t)


# --- images of every shape and mode, captions of any length, through to a batch -------------

def image_bytes(kind: str, size: tuple[int, int]) -> bytes:
    """One frame of ``kind``: a real image in some mode, or an adversarial file."""
    import struct
    import zlib

    def png_header(width: int, height: int) -> bytes:  # a valid IHDR, no pixel data
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                + struct.pack(">I", zlib.crc32(chunk)))

    if kind == "zero-size":
        return png_header(0, 0)
    if kind == "bomb":  # 200,000 x 200,000 pixels claimed: PIL's decompression-bomb guard
        return png_header(200_000, 200_000)
    if kind == "empty":
        return b""
    mode, fmt = {"rgb": ("RGB", "PNG"), "gray": ("L", "PNG"), "rgba": ("RGBA", "PNG"),
                 "palette": ("P", "PNG"), "bilevel": ("1", "PNG"), "cmyk": ("CMYK", "JPEG"),
                 "16-bit": ("I;16", "TIFF"), "float": ("F", "TIFF")}[kind]
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


GOOD = ["rgb", "gray", "rgba", "palette", "bilevel", "cmyk", "16-bit", "float"]
BAD = ["zero-size", "bomb", "empty"]
frame_spec = st.tuples(st.sampled_from(GOOD * 3 + BAD),
                       st.tuples(st.sampled_from([1, 2, 7, 64, 500]),
                                 st.sampled_from([1, 3, 64, 900])))
caption = st.lists(st.sampled_from(["a", "red", "circle", "é", "字", "🙂", "walks", "."]),
                   min_size=1, max_size=120).map(" ".join)


@settings(max_examples=60 * SCALE, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(frame_spec, caption), min_size=1, max_size=5),
                min_size=1, max_size=4))
def test_any_image_mode_size_or_caption_length_loads_and_batches_or_is_skipped(stories_spec):
    """An images + captions dataset (the generic schema) with frames of every PIL mode and
    odd sizes, adversarial files and captions up to 120 words: bad frames skip their story as
    corrupt, the rest load with captions cut to the cap, and go through the image store, the
    tokenizer and collate into batches of the configured shapes."""
    import datasets
    import torch

    from cmar.data import ImageStore, WindowDataset, make_loader, make_windows, train_tokenizer

    rows = {"story_id": [], "images": [], "captions": []}
    for i, frames in enumerate(stories_spec):
        rows["story_id"].append(f"s{i}")
        rows["images"].append([{"bytes": image_bytes(kind, size), "path": None}
                               for (kind, size), _ in frames])
        rows["captions"].append([text for _, text in frames])
    features = datasets.Features({"story_id": datasets.Value("string"),
                                  "images": datasets.Sequence(datasets.Image()),
                                  "captions": datasets.Sequence(datasets.Value("string"))})
    with tempfile.TemporaryDirectory() as folder:
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(Path(folder) / "train-0.parquet"))
        stories = load_stories(folder, "train", captions_column="captions", val_fraction=0,
                               test_fraction=0, progress=False)
    expected = [f"s{i}" for i, frames in enumerate(stories_spec)
                if len(frames) >= 2 and all(kind in GOOD for (kind, _), _ in frames)]
    assert sorted(s.story_id for s in stories) == expected
    report = stories.report
    assert report.loaded + report.n_skipped == len(stories_spec)
    bad = sum(any(kind in BAD for (kind, _), _ in frames) for frames in stories_spec)
    assert report.skipped.get("corrupt_image", 0) == bad
    event(f"stories loaded: {min(len(stories), 2)}+, skipped as corrupt: {min(bad, 1)}+")
    if not stories:
        return
    for story in stories:
        assert all(c.split() for c in story.captions)  # the length is cut in tokens, below
    tokenizer = train_tokenizer(c for s in stories for c in s.captions)
    store = ImageStore(stories, 16, progress=False)
    dataset = WindowDataset(stories, make_windows(stories, 1), store, tokenizer, max_tokens=40)
    for batch in make_loader(dataset, tokenizer, batch_size=3, num_workers=0):
        assert batch.context_images.shape[1:] == (1, 3, 16, 16)
        assert torch.isfinite(batch.context_images).all()
        assert batch.target_out.shape[1] <= 41  # the token cap plus [EOS]


def _dataset_with(**columns):
    import datasets

    return datasets.Dataset.from_dict(columns)


def _write(dataset, folder: Path) -> str:
    dataset.to_parquet(str(folder / "train-0.parquet"))
    return str(folder)


def test_columns_of_the_wrong_type_are_skipped_with_their_reason(tmp_path):
    """Columns typed differently than the schema says: numbers as text, text as numbers,
    images as paths that do not exist. Each row ends as a counted skip or a loaded story."""
    from conftest import png

    frames = [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}]
    text = "\n".join(segment(n, c) for n, c in ((1, "red"), (2, "blue")))
    cases = {
        # frame_count stored as text: a number in text is read, anything else is a mismatch
        "frame_count_text": (dict(story_id=["a", "b"], images=[frames, frames],
                                  frame_count=["2", "two"], story=[text, text],
                                  chain_of_thought=["", ""]), {}, ["a"],
                             {"frame_count_mismatch": 1}),
        # the story markup column holding numbers
        "story_numbers": (dict(story_id=["a"], images=[frames], frame_count=[2], story=[7],
                               chain_of_thought=[3]), {}, [], {"segment_count_mismatch": 1}),
        # images given as file paths that do not exist
        "images_paths": (dict(story_id=["a"], images=[["/nope/1.png", "/nope/2.png"]],
                              captions=[["x", "y"]]), {"captions_column": "captions"}, [],
                         {"corrupt_image": 1}),
    }
    for name, (columns, options, kept, skipped) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        stories = load_stories(_write(_dataset_with(**columns), folder), "train",
                               val_fraction=0, test_fraction=0, progress=False, **options)
        assert [s.story_id for s in stories] == kept, name
        assert dict(stories.report.skipped) == skipped, name


def test_a_caption_column_of_the_wrong_kind_is_skipped(tmp_path):
    from conftest import png

    frames = [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}]
    for name, captions, reason in (("string", ["one caption", "two"], "caption_count_mismatch"),
                                   ("numbers", [[1, 2], [3, 4]], "empty_caption")):
        folder = tmp_path / name
        folder.mkdir()
        data = _dataset_with(story_id=["a", "b"], images=[frames, frames], captions=captions)
        stories = load_stories(_write(data, folder), "train", captions_column="captions",
                               val_fraction=0, test_fraction=0, progress=False)
        assert len(stories) == 0 and stories.report.skipped == {reason: 2}, name


def test_a_missing_column_names_the_columns_found_and_expected(tmp_path):
    import pytest
    from conftest import png

    frames = [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}]
    data = _dataset_with(story_id=["a"], pictures=[frames], text=[["x", "y"]])
    folder = _write(data, tmp_path)
    with pytest.raises(ValueError, match=r"(?s)images.*pictures.*text"):
        load_stories(folder, "train", captions_column="text", val_fraction=0,
                     test_fraction=0, progress=False)
    with pytest.raises(ValueError, match=r"no 'story' column.*captions_column"):
        load_stories(folder, "train", images_column="pictures", val_fraction=0,
                     test_fraction=0, progress=False)


def test_nested_image_tags_keep_each_frame_with_its_own_text():
    text = ("<gdi image1> The red square sits. <gdi image2> The blue square sits. </gdi> "
            "tail </gdi>")
    segments = parse_segments(text)
    assert [(s.image, s.text) for s in segments] == [(1, "The red square sits."),
                                                     (2, "The blue square sits.")]
