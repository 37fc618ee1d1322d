"""Grounding accuracy on StoryReasoning-style stories: boxes in original pixels of wide frames,
mapped through the fit, against a fake fusion whose attention we choose."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import sr_dataset
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cmar.data import ImageStore, WindowDataset, load_stories, make_loader, make_windows
from cmar.data.images import fit_box
from cmar.data.mentions import MentionTargets, region_overlaps, token_position
from cmar.data.tokenizer import encode, train_tokenizer
from cmar.evaluation.grounding import grounding_scores
from cmar.models.feature_cache import FeatureStore

WIDE = (575, 240)  # a StoryReasoning-sized frame
SIZE, SIDE = 64, 4  # the model's frame, and its 4 x 4 grid of 16 x 16 px regions
TOM = (200, 40, 300, 200)  # original pixels: letterboxed to about (22.3, 22.5, 33.4, 40.5)
ANN = (470, 30, 560, 230)  # near the right edge: cropped away by center_crop
TOM_REGION = 1 * SIDE + 1  # row 1 (y 16-32), column 1 (x 16-32): holds Tom's box centre
FAR_REGION = 3 * SIDE + 0  # row 3 (y 48-64), column 0: the bottom pad band of the letterbox

SCENES = [  # hand-written, in StoryReasoning's style: one paragraph per frame
    "<gdo char1>Tom</gdo> <gda char1>pushes</gda> open the heavy door of the diner and scans "
    "the empty booths. Rain streaks the windows.",
    "At the counter, <gdo char1>Tom</gdo> <gda char1>taps</gda> a coin against the glass. "
    "Nobody answers.",
    "<gdo char1>Tom</gdo> <gda char1>turns</gda> toward the kitchen, his hat dripping on the "
    "tiles. A radio hums somewhere.",
    "The kitchen door swings shut behind <gdo char1>Tom</gdo>. Steam rises from a pot.",
]
SCENES_WITH_ANN = [
    f"<gdo char2>Ann</gdo> <gda char2>watches</gda> as {scene[0].lower()}{scene[1:]}"
    for scene in SCENES
]


def wide_frame() -> bytes:
    import io

    image = Image.new("RGB", WIDE, (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle(TOM, fill=(150, 40, 40))
    draw.rectangle(ANN, fill=(40, 40, 150))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def chain_of_thought(n: int, with_ann: bool) -> str:
    header = ("| Character ID | Name | Description | Emotions | Actions | Narrative Function "
              "| Bounding Box |\n|---|---|---|---|---|---|---|")
    rows = [f"| char1 | Tom | A man in a wet hat | Tense | Walks | Protagonist | "
            f"{','.join(str(v) for v in TOM)} |"]
    if with_ann:
        rows.append(f"| char2 | Ann | A waitress | Wary | Watches | Witness | "
                    f"{','.join(str(v) for v in ANN)} |")
    return "\n\n".join(f"## Image {t}\n\n### Characters\n{header}\n" + "\n".join(rows)
                       for t in range(1, n + 1))


def story_rows(with_ann: bool = False, n_stories: int = 3) -> list[dict]:
    scenes = SCENES_WITH_ANN if with_ann else SCENES
    frame = wide_frame()
    return [{
        "story_id": f"s{i}",
        "images": [{"bytes": frame, "path": None} for _ in scenes],
        "frame_count": len(scenes),
        "chain_of_thought": chain_of_thought(len(scenes), with_ann),
        "story": "\n".join(f"<gdi image{t}> {scene} </gdi>"
                           for t, scene in enumerate(scenes, start=1)),
    } for i in range(n_stories)]


def make_data(tmp_path, rows, fit="letterbox", k=2):
    folder = tmp_path / f"sr-{fit}"
    sr_dataset(rows).save_to_disk(str(folder))
    stories = load_stories(str(folder), "train", val_fraction=0.0, test_fraction=0.0,
                           min_frames=k + 1, progress=False)
    tokenizer = train_tokenizer([c for s in stories for c in s.captions])
    store = ImageStore(stories, SIZE, progress=False, fit=fit)
    dataset = WindowDataset(stories, make_windows(stories, k), store, tokenizer)

    def loader(split, shuffle=False, batch_size=4, num_workers=0):
        return make_loader(dataset, tokenizer, batch_size=batch_size, shuffle=False,
                           num_workers=0)

    return SimpleNamespace(cfg=SimpleNamespace(source=str(folder), image_size=SIZE),
                           stories={"test": stories}, datasets={"test": dataset},
                           tokenizer=tokenizer, loader=loader)


class FixedAttention(torch.nn.Module):
    """A fusion stand-in: every word of every context frame attends only to ``region``."""

    def __init__(self, region: int | None, regions: int = SIDE * SIDE, rounds: int = 2):
        super().__init__()
        self.region, self.regions, self.rounds = region, regions, rounds
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch, return_attention=False):
        if self.region is None:
            return SimpleNamespace(attention=None)
        b, k, length = batch.context_tokens.shape
        attention = torch.zeros(b, k, self.rounds, length, self.regions)
        attention[..., self.region] = 1.0
        return SimpleNamespace(attention=attention)


def test_all_weight_on_the_characters_region_scores_one(tmp_path):
    data = make_data(tmp_path, story_rows())
    scores = grounding_scores(FixedAttention(TOM_REGION), data, "test", progress=False)
    # 3 stories x 2 windows (k = 2, 4 frames) x 2 context frames, one mention of Tom in each
    assert scores["mentions"] == 12
    assert scores["accuracy"] == 1.0
    # Tom's letterboxed box (about x 22.3-33.4, y 22.5-40.5) overlaps columns 1-2, rows 1-2;
    # the wide frames' picture fills rows 1-2 only, so a random pick among its 8 picture
    # regions (never the letterbox padding, which the model cannot attend to) hits 4
    assert scores["chance"] == pytest.approx(4 / 8)
    assert scores["floor"] == {"name": "random region", "accuracy": scores["chance"]}


def test_all_weight_on_a_far_region_scores_zero(tmp_path):
    data = make_data(tmp_path, story_rows())
    scores = grounding_scores(FixedAttention(FAR_REGION), data, "test", progress=False)
    assert scores["accuracy"] == 0.0
    assert scores["chance"] == pytest.approx(4 / 8)  # 4 of the 8 picture regions


def test_chance_is_the_share_of_regions_overlapping_the_fitted_box():
    box = fit_box(TOM, *WIDE, SIZE, "letterbox")
    assert box == pytest.approx((200 * 64 / 575, 18 + 40 * 27 / 240, 300 * 64 / 575,
                                 18 + 200 * 27 / 240))  # 575 x 240 -> 64 x 27, 18 px band
    overlaps = region_overlaps(box, SIDE, SIZE / SIDE)
    assert overlaps.nonzero().flatten().tolist() == [5, 6, 9, 10]
    # a box ending exactly on a cell border does not spill into the next cell
    assert region_overlaps((0, 0, 16, 16), SIDE, 16.0).nonzero().flatten().tolist() == [0]


def test_a_box_cropped_away_does_not_count(tmp_path):
    rows = story_rows(with_ann=True)
    letterbox = make_data(tmp_path, rows, fit="letterbox")
    crop = make_data(tmp_path, rows, fit="center_crop")
    model = FixedAttention(TOM_REGION)
    both = grounding_scores(model, letterbox, "test", progress=False)
    only_tom = grounding_scores(model, crop, "test", progress=False)
    assert both["mentions"] == 24  # Tom and Ann in every context frame
    assert both["accuracy"] == 0.5  # Ann's box is elsewhere
    assert only_tom["mentions"] == 12  # Ann stands where the centre crop cuts
    assert crop.datasets["test"].store.fit_box(0, 0, ANN) is None


def test_no_attention_or_no_boxed_character_gives_none(tmp_path, storyreasoning_parquet):
    data = make_data(tmp_path, story_rows())
    assert grounding_scores(FixedAttention(None), data, "test", progress=False) is None
    # the conftest stories tag objects only (obj1), never a character: nothing to score
    stories = load_stories(str(storyreasoning_parquet), "test", progress=False)
    tokenizer = train_tokenizer([c for s in stories for c in s.captions])
    store = ImageStore(stories, 8, progress=False)
    dataset = WindowDataset(stories, make_windows(stories, 2), store, tokenizer)
    plain = SimpleNamespace(stories={"test": stories}, datasets={"test": dataset},
                            tokenizer=tokenizer, loader=data.loader)
    assert grounding_scores(FixedAttention(0), plain, "test", progress=False) is None


def test_the_feature_cache_keeps_the_frame_geometry(tmp_path):
    data = make_data(tmp_path, story_rows())
    store = data.datasets["test"].store
    features = FeatureStore(np.zeros((len(store), 8, 2, 2), np.float16), store.offsets,
                            store.geometry)
    assert features.fit_box(1, 2, TOM) == store.fit_box(1, 2, TOM)
    data.datasets["test"].store = features  # what attach_feature_cache does
    scores = grounding_scores(FixedAttention(TOM_REGION), data, "test", progress=False)
    assert scores["accuracy"] == 1.0 and scores["mentions"] == 12


def word_level(captions):
    """The lowercasing word-level tokenizer cmar used before byte-level BPE."""
    model = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.train_from_iterator(captions, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[BOS]", "[EOS]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")


CAPTIONS = ["Tom meets Ann.", '"Ann," says Tom, "wait."', "Old Maximilian greets Ann and Tom.",
            "Sgt. O'Neill follows Ann."]


@pytest.mark.parametrize("make", [word_level, train_tokenizer], ids=["word-level", "bpe"])
def test_token_position_is_the_first_token_of_the_mention(make):
    tokenizer = make(CAPTIONS * 3)
    for caption in CAPTIONS:
        for name in ("Tom", "Ann", "Maximilian", "O'Neill"):
            start = caption.find(name)
            if start < 0:
                continue
            ids = encode(tokenizer, caption)
            position = token_position(tokenizer, caption, start, start + len(name))
            first = tokenizer.decode([ids[position]]).strip().lower()
            assert first and name.lower().startswith(first), (caption, name, first)
            before = "".join(tokenizer.decode(ids[:position]).split()).lower()
            assert before == "".join(caption[:start].split()).lower(), (caption, name)


def test_mention_targets_skip_group_mentions_and_unboxed_characters(tmp_path):
    rows = story_rows()
    rows[0]["story"] = rows[0]["story"].replace(
        "<gdo char1>Tom</gdo> <gda char1>pushes</gda>",
        "<gdo char1 char2>Tom and Ann</gdo> <gda char1>push</gda>", 1)
    rows[0]["story"] = rows[0]["story"].replace("Nobody answers.",
                                                "<gdo char3>Lou</gdo> answers.")
    data = make_data(tmp_path, rows)
    targets = MentionTargets(data.stories["test"], data.datasets["test"].store, data.tokenizer)
    assert targets.frame("s0", 0) == []  # a group mention has no single box
    assert len(targets.frame("s0", 1)) == 1  # Tom counts; Lou has no box in the table
    assert len(targets.frame("s1", 0)) == 1
