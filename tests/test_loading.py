"""load_stories through the real datasets paths: parquet folders, save_to_disk, skip-and-count."""

import datasets
import numpy as np
import pytest
from conftest import PALETTE, png, sr_dataset, sr_row

from cmar.data import carve_split, load_stories


def frame_colour(story, t) -> str:
    pixel = tuple(int(v) for v in np.asarray(story.image(t))[0, 0])
    return next(name for name, rgb in PALETTE.items() if rgb == pixel)


def assert_aligned(stories):
    """Caption t names the colour of image t: nothing misaligned."""
    for story in stories:
        for t, caption in enumerate(story.captions):
            assert caption.startswith(f"The {frame_colour(story, t)} square"), (story.story_id, t)


def test_storyreasoning_parquet_folder_skips_and_counts_bad_rows(storyreasoning_parquet):
    train = load_stories(str(storyreasoning_parquet), "train", val_fraction=0.25, progress=False)
    val = load_stories(str(storyreasoning_parquet), "validation", val_fraction=0.25,
                       progress=False)
    report = {**train.report.skipped, **val.report.skipped}
    assert report == {"segment_count_mismatch": 1, "frame_count_mismatch": 1,
                      "corrupt_image": 1, "empty_caption": 1}
    assert len(train) + len(val) == 12  # every good story, once
    assert train.report.rows + val.report.rows == 16
    assert "corrupt_image" in train.report.summary() or "corrupt_image" in val.report.summary()
    assert_aligned(train)
    assert_aligned(val)


def test_validation_is_carved_by_story_with_a_fixed_seed(storyreasoning_parquet):
    def ids(split, seed):
        return {s.story_id for s in load_stories(str(storyreasoning_parquet), split,
                                                 split_seed=seed, val_fraction=0.25,
                                                 progress=False)}

    train, val = ids("train", 0), ids("validation", 0)
    assert not train & val and len(val) >= 2
    assert ids("validation", 0) == val  # same seed, same split
    assert any(ids("validation", s) != val for s in (1, 2, 3))  # the seed matters
    test = ids("test", 0)
    assert test == {"t0", "t1", "t2", "t3"}  # the source's test split stays the test split


def test_caption_policy_and_entities_come_through(storyreasoning_parquet):
    full = load_stories(str(storyreasoning_parquet), "test", caption_policy="full",
                        progress=False)
    first = load_stories(str(storyreasoning_parquet), "test", progress=False)
    assert full[0].captions[0] == "The red square sits near the wall. It waits."
    assert first[0].captions[0] == "The red square sits near the wall."
    assert first[0].entities[0] == {"obj1": (0.0, 0.0, 7.0, 7.0)}
    assert [m.text for m in first[0].mentions[0]] == ["red square", "sits", "the wall"]


def test_save_to_disk_folder_loads_the_same(tmp_path):
    rows = [sr_row(str(i), ["red", "green", "blue"]) for i in range(5)]
    datasets.DatasetDict({"train": sr_dataset(rows), "test": sr_dataset(rows[:2])}).save_to_disk(
        str(tmp_path / "copy"))
    test = load_stories(str(tmp_path / "copy"), "test", progress=False)
    assert [s.story_id for s in test] == ["0", "1"]
    assert test[0].captions == ["The red square sits near the wall.",
                                "The green square sits near the wall.",
                                "The blue square sits near the wall."]


def frames_captions_parquet(tmp_path):
    stories = [
        {"id": "a", "frames": [png("red"), png("blue"), png("green")],
         "captions": ["The red square.", "The  blue\nsquare.", "The green square."]},
        {"id": "b", "frames": [png("red"), png("blue")], "captions": ["The red square."]},
        {"id": "c", "frames": [png("white"), png("black")],
         "captions": ["The white square.", "   "]},
        {"id": "d", "frames": [png("yellow"), b"garbage"],
         "captions": ["The yellow square.", "The garbage square."]},
    ]
    features = datasets.Features({"id": datasets.Value("string"),
                                  "frames": datasets.List(datasets.Image()),
                                  "captions": datasets.List(datasets.Value("string"))})
    rows = {k: [s[k] for s in stories] for k in features}
    rows["frames"] = [[{"bytes": b, "path": None} for b in f] for f in rows["frames"]]
    folder = tmp_path / "generic"
    folder.mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(folder / "train-00000.parquet"))
    return folder


def test_any_image_sequence_with_captions(tmp_path):
    folder = frames_captions_parquet(tmp_path)
    stories = load_stories(str(folder), "train", images_column="frames",
                           captions_column="captions", id_column="id", val_fraction=0,
                           test_fraction=0, progress=False)
    assert [s.story_id for s in stories] == ["a"]
    assert stories[0].captions[1] == "The blue square."  # whitespace collapsed
    assert_aligned(stories)
    assert stories.report.skipped == {"caption_count_mismatch": 1, "empty_caption": 1,
                                      "corrupt_image": 1}


def test_wrong_column_names_the_column_and_lists_the_real_ones(tmp_path):
    folder = frames_captions_parquet(tmp_path)
    with pytest.raises(ValueError, match=r"no column 'captionz'.*'captions'"):
        load_stories(str(folder), "train", images_column="frames", captions_column="captionz",
                     progress=False)
    with pytest.raises(ValueError, match="not in the StoryReasoning schema"):
        load_stories(str(folder), "train", images_column="frames", progress=False)


def test_hub_failure_says_how_to_use_a_local_copy(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    # offline mode (as in make test): the cache is tried, then one sentence
    with pytest.raises(ConnectionError, match="data.source 'daniel3303/StoryReasoning': "
                       "offline mode is on.*local copy.*data/train-"):
        load_stories("storyreasoning", "train", progress=False)


def test_an_unreachable_hub_fails_at_once_naming_the_source_and_the_layout(monkeypatch):
    """Online mode, the hub at a closed local port: one request is refused, the cache is read
    in offline mode only, and the error names data.source and the local-copy layouts."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    calls = []

    def from_cache_only(source, *args, **kwargs):
        calls.append(datasets.config.HF_HUB_OFFLINE)
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(datasets, "load_dataset", from_cache_only)
    with pytest.raises(ConnectionError, match="data.source 'someone/stories': the Hugging Face "
                       "hub is unreachable.*no copy of it.*save_to_disk.*captions.csv"):
        load_stories("someone/stories", "train", progress=False)
    assert calls == [True]  # never the retrying online download
    assert datasets.config.HF_HUB_OFFLINE is False  # offline mode was only borrowed


def test_carve_split_ignores_row_order():
    ids = [f"s{i}" for i in range(100)]
    kept, carved = carve_split(ids, 0.1, seed=0)
    kept_rev, carved_rev = carve_split(ids[::-1], 0.1, seed=0)
    assert len(carved) == 10 and not set(kept) & set(carved)
    assert {ids[i] for i in carved} == {ids[::-1][i] for i in carved_rev}


def test_stories_read_their_frames_from_the_table_without_copying_it(tmp_path):
    """A loaded story holds row numbers, not image files, and loading writes no second copy
    of the split (casting the image column would: a cache-*.arrow file beside the data)."""
    rows = [sr_row(str(i), ["red", "green", "blue"]) for i in range(4)]
    folder = tmp_path / "copy"
    datasets.DatasetDict({"train": sr_dataset(rows)}).save_to_disk(str(folder))
    stories = load_stories(str(folder), "train", val_fraction=0.25, test_fraction=0.0,
                           progress=False)
    assert stories and not any(folder.rglob("cache-*.arrow"))
    for story in stories:
        assert not isinstance(story.images, list)  # read on demand
        assert len(story.images) == 3
        assert list(story.images) == [story.images[t] for t in range(3)]
        assert all(isinstance(data, bytes) for data in story.images)
        with pytest.raises(IndexError):
            story.images[3]
    assert_aligned(stories)


def test_a_single_parquet_file_is_a_source(storyreasoning_parquet):
    train_file = next((storyreasoning_parquet / "data").glob("train-*.parquet"))
    # alone, the file has no test split; carving none keeps train as the folder's
    stories = load_stories(str(train_file), "train", val_fraction=0.25, test_fraction=0.0,
                           progress=False)
    folder = load_stories(str(storyreasoning_parquet), "train", val_fraction=0.25,
                          progress=False)
    assert [s.story_id for s in stories] == [s.story_id for s in folder]
    test_file = next((storyreasoning_parquet / "data").glob("test-*.parquet"))
    assert len(load_stories(str(test_file), "test", progress=False)) == 4  # split from its name


def test_a_local_path_that_does_not_exist_is_not_tried_on_the_hub(tmp_path):
    for source in (str(tmp_path / "missing"), "./copy/train-00000.parquet", "~/nowhere/data"):
        with pytest.raises(FileNotFoundError, match="no such file or folder.*save_to_disk"):
            load_stories(source, "train", progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="must be a .parquet file"):
        load_stories(str(tmp_path / "notes.txt"), "train", progress=False)
