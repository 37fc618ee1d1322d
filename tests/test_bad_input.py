"""Property-based: random and adversarial input ends as a loaded, aligned story or a counted
skip, never an exception and never a misaligned frame."""

import io
import tempfile
from pathlib import Path

from conftest import PALETTE, cot, segment, sr_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cmar.data import load_stories, parse_boxes, parse_segments, split_frames

FRAGMENTS = ["<gdi image", "1", "2", "99", "0", ">", "</gdi>", "<gdo char1>", "</gdo>",
             "<gda>", "<gdl bg1 lm2>", "</gdl>", "<gdi image1><gdi image1>", " ", "\n", "é",
             "字", "🙂", "word", ".", "<", "<<>>", "## Image 1\n| A | Bounding Box |\n|---|---|\n",
             "| x | 1,2,3 |", "| char1 | 1, 2, 3, 4 |"]


@settings(max_examples=300, deadline=None, derandomize=True)  # same examples every CI run
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


@settings(max_examples=40, deadline=None, derandomize=True,
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
