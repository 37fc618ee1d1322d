"""The facing probe: labels true to the frame tables, the pictures and the next caption; every
class present; a short training reads the dot (and cannot without it); seeded; the CLI."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from cmar.cli import main
from cmar.data import make_shapestories, parse_tables, split_frames
from cmar.data.shapes_world import RING8, Knobs, ring_positions
from cmar.data.shapestories import generate_story, shapestories_on_disk
from cmar.research.probes.facing import (
    FacingExamples,
    crop_half,
    frame_facings,
    probe_data,
    train_probe,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible and light on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """~1,500 train and ~200 test examples at 64 px with a doubled dot (the easy setting)."""
    cache = tmp_path_factory.mktemp("probe")
    train, test, settings = probe_data("smoke", [f"data.cache_dir={cache}", "data.n_stories=100"],
                                       image_size=64, knobs={"mark_scale": 2.0})
    return train, test, settings


def test_labels_of_a_hand_checked_story():
    # story 0 of seed 0 at the default knobs; ring: pond north, gate east, well south, rock west
    frames = frame_facings(generate_story(0, 0, Knobs())["chain_of_thought"])
    assert len(frames) == 7
    first = [(f.char_id, f.stands, f.faces, f.ring) for f in frames[0]]
    assert first == [("char1", 2, 0, 4), ("char2", 0, 1, 4), ("char3", 0, 1, 4)]
    second = [(f.char_id, f.stands, f.faces) for f in frames[1]]
    assert second == [("char1", 2, 3), ("char2", 1, 2), ("char3", 0, 1)]
    assert frames[0][0].box == (16, 42, 27, 53)


@pytest.mark.parametrize("knobs", [{}, {"n_characters": 2, "n_landmarks": 8}])
def test_labels_give_the_place_of_the_next_caption(knobs):
    """The label is what the task needs: the next actor's facing in frame t is the landmark
    caption t + 1 goes to."""
    rows = make_shapestories(20, seed=4, **knobs)
    checked = 0
    for cot, story in zip(rows["chain_of_thought"], rows["story"], strict=True):
        frames = frame_facings(cot)
        captions = split_frames(story)
        landmarks = [r for r in parse_tables(cot)[1] if r["_table"] == "Landmarks"]
        ring = {r["Name"]: i for i, r in enumerate(landmarks)}  # listed clockwise from north
        n = len(frames[0])
        for t in range(len(frames) - 1):
            place = re.search(r" to the (\w+)", captions[t + 1]).group(1)
            actor = next(f for f in frames[t] if f.char_id == f"char{(t + 1) % n + 1}")
            assert actor.faces == ring[place]
            assert actor.ring == len(landmarks) == Knobs(**knobs).n_landmarks
            checked += 1
    assert checked > 50


def test_the_dot_in_each_crop_points_at_the_labelled_landmark(tmp_path):
    """Read the dot from the crop's pixels (black, within one radius of the centre): its
    direction picks the labelled landmark, so crops are centred and labels match pictures."""
    size = 128
    train, _, _ = probe_data("smoke", [f"data.cache_dir={tmp_path}", "data.n_stories=12"],
                             image_size=size)
    h = crop_half(size)
    ys, xs = torch.meshgrid(torch.arange(2 * h) - h + 0.5, torch.arange(2 * h) - h + 0.5,
                            indexing="ij")
    near = xs**2 + ys**2 < (0.062 * size) ** 2
    slots = ring_positions(train.n_classes)
    for crop, centre, label in zip(train.crops, train.centres, train.labels, strict=True):
        dot = (crop.max(dim=0).values < 40) & near  # (2h, 2h) black pixels of this figure
        assert dot.sum() >= 4
        vec = torch.stack([xs[dot].mean(), ys[dot].mean()])
        cosines = []
        for slot in slots:
            to = torch.tensor(RING8[slot]) * size - centre * size
            cosines.append(float(vec @ to / (vec.norm() * to.norm())))
        assert max(range(len(slots)), key=cosines.__getitem__) == int(label)


def test_examples_cover_every_class_and_never_face_where_they_stand(examples):
    train, test, settings = examples
    assert train.n_classes == 4 and settings["crop"] == 2 * math.ceil(2 * 0.062 * 64) == 16
    assert train.crops.shape[1:] == (3, 16, 16) and train.crops.dtype == torch.uint8
    for split in (train, test):
        assert torch.bincount(split.labels, minlength=4).min() > 0.15 * len(split)
        assert not (split.labels == split.stands).any()  # so chance is 1 / 3, not 1 / 4
    assert settings["train_stories"] > settings["test_stories"] > 0


def test_short_training_reads_the_dot_and_beats_every_floor(examples):
    train, test, _ = examples
    result = train_probe(train, test, epochs=3, seed=0)
    assert result["chance"] == pytest.approx(1 / 3)
    assert max(result["majority"], result["position_only"]) < 0.45
    assert result["accuracy"] > 0.6  # measured 0.83


def test_without_the_pixels_the_probe_falls_to_its_floor(examples):
    train, test, _ = examples
    blank = [FacingExamples(torch.full_like(s.crops, 200), s.centres, s.stands, s.labels,
                            s.n_classes) for s in (train, test)]
    result = train_probe(*blank, epochs=3, seed=0)
    assert result["accuracy"] < 0.45  # only the stand position is left: about 1/3


def test_same_seed_same_accuracy_other_seed_other_model(examples):
    train, test, _ = examples
    a, b, c = (train_probe(train, test, epochs=1, seed=s) for s in (3, 3, 4))
    assert (a["accuracy"], a["final_loss"]) == (b["accuracy"], b["final_loss"])
    assert a["final_loss"] != c["final_loss"]


def test_mark_scale_knob_default_keeps_stories_and_cache_names(tmp_path):
    default, explicit, bigger = (generate_story(1, 2, Knobs(mark_scale=m)) for m in (1.0, 1.0, 2.0))
    assert default == explicit
    assert default["images"] != bigger["images"]
    assert default["chain_of_thought"] == bigger["chain_of_thought"]  # only the picture changes
    folder = shapestories_on_disk(tmp_path, n_stories=2, seed=0)
    assert folder.name == "n2-seed0-8143d2ebb3"  # the name it had before the knob existed
    assert shapestories_on_disk(tmp_path, n_stories=2, knobs={"mark_scale": 1.0}) == folder
    assert shapestories_on_disk(tmp_path, n_stories=2, knobs={"mark_scale": 2.0}) != folder
    with pytest.raises(ValueError, match="mark_scale"):
        Knobs(mark_scale=0)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", "--config", "smoke", "--set", f"data.cache_dir={tmp_path}",
                 "--set", "data.n_stories=30", "--epochs", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("accuracy", "chance", "majority", "position only", "examples", "seconds"):
        assert word in text
    (path,) = out.glob("*.json")
    assert path.name == "probe-32px-seed0.json"
    result = json.loads(path.read_text())
    assert result["image_size"] == 32 and result["crop"] == 8 and result["epochs"] == 1
    assert 0 <= result["accuracy"] <= 1 and result["chance"] == pytest.approx(1 / 3)


def test_other_sources_are_refused():
    with pytest.raises(ValueError, match="needs ShapeStories"):
        probe_data("storyreasoning")
