"""Your own dataset: a folder of images and a captions file (CSV or JSON lines) as data.source.

Every bad line becomes a counted skip with its reason; rows read = loaded + skipped, so
nothing is lost silently. Only a file that is not a table at all raises, naming the line."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from cmar.cli import main
from cmar.config import load_config
from cmar.data import load_stories
from cmar.data.own import read_own_rows, write_own_folder
from cmar.evaluation import evaluate_run
from cmar.train import train

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
           "yellow": (220, 200, 40)}


@dataclass
class HandStory:
    """A story as write_own_folder reads it: frame t is one colour, its caption names it."""

    story_id: str
    colours: list[str]

    @property
    def captions(self) -> list[str]:
        return [f"Ana paints the wall {c}." for c in self.colours]

    def image(self, t: int) -> Image.Image:
        # odd sizes on purpose: the loader fits any size
        return Image.new("RGB", (57 + 10 * t, 24 + 3 * t), COLOURS[self.colours[t]])


def hand_stories(n: int, start: int = 0) -> list[HandStory]:
    names = list(COLOURS)
    return [HandStory(f"s{i}", [names[(i + t) % 4] for t in range(4 + i % 2)])
            for i in range(start, start + n)]


def loaded_colour(story, t) -> str:
    pixel = tuple(int(v) for v in np.asarray(story.image(t))[0, 0])
    return next(name for name, rgb in COLOURS.items() if rgb == pixel)


def load_all(source, **kwargs):
    return load_stories(str(source), "train", val_fraction=0.0, test_fraction=0.0,
                        progress=False, **kwargs)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_written_folder_loads_back_aligned_in_frame_order(tmp_path, fmt):
    stories = hand_stories(5)
    target = write_own_folder(stories, tmp_path / "mine", fmt=fmt)
    assert target.name == f"captions.{fmt}"
    # lines in any order: frame numbers, not line order, order the frames
    lines = target.read_text().splitlines()
    head, body = (lines[:1], lines[1:]) if fmt == "csv" else ([], lines)
    target.write_text("\n".join(head + body[::-1]) + "\n")
    for source in (tmp_path / "mine", target):  # the folder or the file itself
        loaded = load_all(source)
        assert not loaded.report.skipped and loaded.report.rows == 5
        by_id = {s.story_id: s for s in loaded}
        for story in stories:
            got = by_id[story.story_id]
            assert got.captions == story.captions
            assert [loaded_colour(got, t) for t in range(len(got))] == story.colours


def test_bad_lines_are_counted_skips_and_nothing_is_lost(tmp_path):
    folder = tmp_path / "mine"
    target = write_own_folder(hand_stories(8), folder)
    lines = target.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    (folder / rows[0][2]).unlink()
    rows[0][2] = "s0"  # s0: no image file (a folder named instead)
    (folder / rows[5][2]).write_bytes(b"not a png")  # s1 frame 2): a corrupt image
    s2 = [r for r in rows if r[0] == "s2"]
    extra = [s2[1][0], s2[1][1], s2[1][2], "A second caption for frame 2.", ""]  # s2: 2 captions
    s3_blank = next(i for i, r in enumerate(rows) if r[0] == "s3")
    rows[s3_blank][3] = ""  # s3: an empty caption
    target.write_text("\n".join([lines[0]] + [",".join(r) for r in rows + [extra]]) + "\n")

    loaded = load_all(folder, min_frames=5)  # s4, s6 have 4 frames: too short for k=4
    report = loaded.report
    assert dict(report.skipped) == {"missing_image": 1, "corrupt_image": 1,
                                    "caption_count_mismatch": 1, "empty_caption": 1,
                                    "too_short": 2}
    assert report.rows == 8 == report.loaded + report.n_skipped
    assert {s.story_id for s in loaded} == {"s5", "s7"}
    assert report.examples["missing_image"] == ["s0: frame 1: no file mine/s0"]
    assert report.examples["caption_count_mismatch"] == ["s2: 5 captions for 4 images"]
    assert "missing_image=1" in report.summary()


def test_a_json_story_per_line_with_more_captions_than_images_is_skipped(tmp_path):
    folder = tmp_path / "mine"
    write_own_folder(hand_stories(2), folder, fmt="jsonl")
    good = {"story_id": "whole", "images": ["s0/01.png", "s0/02.png", "s0/03.png"],
            "captions": ["One.", "Two.", "Three."]}
    bad = {"story_id": "uneven", "images": ["s0/01.png", "s0/02.png"],
           "captions": ["One.", "Two.", "Three."]}
    gone = {"story_id": "gone", "images": ["s0/01.png", "s0/nowhere.png"],
            "captions": ["One.", "Two."]}
    with (folder / "captions.jsonl").open("a") as handle:
        lines = [json.dumps(good), "", json.dumps(bad), json.dumps(gone)]  # a blank line too
        handle.write("\n".join(lines) + "\n")
    loaded = load_all(folder)
    assert dict(loaded.report.skipped) == {"caption_count_mismatch": 1, "missing_image": 1}
    assert loaded.report.examples["missing_image"] == ["gone: frame 2: no file s0/nowhere.png"]
    assert loaded.report.examples["caption_count_mismatch"] == ["uneven: 3 captions for 2 images"]
    assert next(s for s in loaded if s.story_id == "whole").captions == ["One.", "Two.", "Three."]


def test_a_split_column_assigns_whole_stories(tmp_path):
    folder = tmp_path / "mine"
    write_own_folder(hand_stories(6), folder, split="train")
    write_own_folder(hand_stories(2, start=10), folder, split="test")
    assert sorted(read_own_rows(folder)) == ["test", "train"]
    test = load_stories(str(folder), "test", progress=False)
    assert {s.story_id for s in test} == {"s10", "s11"}
    val = load_stories(str(folder), "validation", val_fraction=0.34, progress=False)
    train_ids = {s.story_id for s in load_stories(str(folder), "train", val_fraction=0.34,
                                                  progress=False)}
    assert len(val) == 2 and not train_ids & {s.story_id for s in val}


@pytest.mark.parametrize("header,line,message", [
    ("story_id,frame,caption", "a,1,Hi.", "no column(s) ['image']"),
    ("story_id,frame,image,caption", "a,two,x.png,Hi.", "captions.csv line 2: frame 'two'"),
    ("story_id,frame,image,caption", ",1,x.png,Hi.", "captions.csv line 2: no story_id"),
    ("story_id,frame,image,caption,split", "a,1,x.png,Hi.,dev",
     "split 'dev' is not one of train, validation, test"),
])
def test_a_file_that_is_not_a_table_says_where(tmp_path, header, line, message):
    (tmp_path / "captions.csv").write_text(f"{header}\n{line}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_all(tmp_path)


def test_one_story_in_two_splits_is_refused(tmp_path):
    (tmp_path / "captions.csv").write_text(
        "story_id,frame,image,caption,split\na,1,x.png,Hi.,train\na,2,y.png,Ho.,test\n")
    with pytest.raises(ValueError, match="line 3: story 'a' is in both train and test"):
        read_own_rows(tmp_path)


def test_a_folder_with_neither_layout_names_the_own_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="captions.csv or captions.jsonl"):
        load_all(tmp_path)


def test_cmar_trains_and_evaluates_on_your_own_folder(tmp_path, capsys):
    folder = tmp_path / "mine"
    target = write_own_folder(hand_stories(24), folder)
    lines = target.read_text().splitlines()
    blank = lines[2].split(",")
    blank[3] = ""  # s0 frame 2: an empty caption
    target.write_text("\n".join(lines[:2] + [",".join(blank)] + lines[3:]) + "\n")
    overrides = [f"data.source={folder}", f"runs_dir={tmp_path / 'runs'}", "name=own",
                 f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "eval.bootstrap=0"]
    assert main(["data", "--config", "smoke", *sum((["--set", o] for o in overrides), [])]) == 0
    printed = capsys.readouterr().out
    assert "empty_caption=1" in printed
    run_dir = train(load_config("smoke", overrides), progress=False)
    metrics = evaluate_run(run_dir, progress=False)
    assert metrics["windows"] > 0
    assert {"model", "copy last caption"} <= set(metrics["captions"])
