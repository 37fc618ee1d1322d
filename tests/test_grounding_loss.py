"""Grounding supervision (``model.w_ground``): batches carry the box of every character a
context caption names, at the first token of the name; the loss is minus the log of the
attention mass on the regions of that box, and its gradient reaches the fusion's attention."""

import dataclasses
import math

import pytest
import torch
from model_helpers import random_batch, tiny_model

from cmar.config import load_config
from cmar.data import decode, prepare_data
from cmar.data.mentions import MentionTargets, box_regions, region_overlaps, token_position
from cmar.data.windows import window_frame
from cmar.models.losses import grounding_loss


def test_box_regions_agree_with_the_evaluations_overlaps_and_skip_nan():
    boxes = torch.tensor([[3.0, 5.0, 17.0, 9.0], [0.0, 0.0, 8.0, 8.0],
                          [float("nan")] * 4])
    grid = box_regions(boxes, 4, 8.0)  # 32 px frame, 4 x 4 cells
    for box, row in zip(boxes[:2].tolist(), grid[:2], strict=True):
        assert torch.equal(row, region_overlaps(tuple(box), 4, 8.0))
    assert grid[0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6]
    assert grid[1].nonzero().flatten().tolist() == [0]
    assert not grid[2].any()


def test_the_loss_is_minus_the_log_of_the_mass_on_the_box():
    b, k, rounds, length, side = 1, 1, 2, 3, 2
    boxes = torch.full((b, k, length, 4), float("nan"))
    boxes[0, 0, 1] = torch.tensor([0.0, 0.0, 10.0, 10.0])  # token 1 names someone in cell 0
    mask = torch.ones(b, k, length, dtype=torch.bool)
    attention = torch.full((b, k, rounds, length, side * side), 0.25)
    assert grounding_loss(attention, boxes, mask, 32) == pytest.approx(math.log(4))
    attention[0, 0, :, 1] = torch.tensor([0.9, 0.1, 0.0, 0.0])
    assert grounding_loss(attention, boxes, mask, 32) == pytest.approx(-math.log(0.9))
    mask[0, 0, 1] = False  # a padded token counts for nothing: no name left, a zero loss
    assert grounding_loss(attention.requires_grad_(), boxes, mask, 32).item() == 0


def _with_boxes(batch):
    """random_batch with one named character per context caption, at token 0, in the
    top-left quarter of the 32 px frame."""
    boxes = torch.full((*batch.context_tokens.shape, 4), float("nan"))
    boxes[:, :, 0] = torch.tensor([0.0, 0.0, 15.0, 15.0])
    return dataclasses.replace(batch, context_boxes=boxes)


@pytest.mark.parametrize("fusion", ["cmar", "cross"])
def test_the_gradient_reaches_the_fusion_attention_and_training_lowers_the_loss(fusion):
    torch.manual_seed(0)
    model = tiny_model(fusion=fusion, w_ground=1.0)
    batch = _with_boxes(random_batch())
    out = model(batch)
    out.losses["ground"].backward()
    attend = model.fusion.text_to_image
    attend = attend[0] if isinstance(attend, torch.nn.ModuleList) else attend
    assert attend.attend.in_proj_weight.grad.abs().sum() > 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = out.losses["ground"].item()
    for _ in range(30):
        optimizer.zero_grad()
        model(batch).losses["ground"].backward()
        optimizer.step()
    assert model(batch).losses["ground"].item() < 0.5 * first


def test_no_ground_term_without_the_weight_or_without_boxes():
    batch = _with_boxes(random_batch())
    assert "ground" not in tiny_model()(batch).losses
    assert "ground" not in tiny_model(w_ground=1.0)(random_batch()).losses


def test_concat_has_no_attention_to_supervise():
    with pytest.raises(ValueError, match=r"model.w_ground \(.*\) needs a fusion"):
        tiny_model(fusion="concat", w_ground=1.0)


def test_batches_carry_each_named_characters_box_at_the_names_first_token(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False, boxes=True)
    split = data.datasets["train"]
    targets = MentionTargets(data.stories["train"], split.store, data.tokenizer)
    batch = next(iter(data.loader("train", shuffle=False, batch_size=8, num_workers=0)))
    named = ~torch.isnan(batch.context_boxes[..., 0])
    assert named.any()
    seen = 0
    for row, wid in enumerate(batch.window_ids):
        story_id, t = window_frame(wid)
        story = data.stories["train"][targets.index[story_id]]
        for j, frame in enumerate(range(t - cfg.data.k, t)):
            expected = {p: box for p, box in targets.frame(story_id, frame)}
            assert set(named[row, j].nonzero().flatten().tolist()) == set(expected)
            for position, box in expected.items():
                assert batch.context_boxes[row, j, position].tolist() == pytest.approx(box)
                token = decode(data.tokenizer, [int(batch.context_tokens[row, j, position])])
                assert token.strip() and token.strip() in story.captions[frame]
                seen += 1
    assert seen >= 8
    plain = prepare_data(cfg.data, splits=("train",), progress=False)
    assert next(iter(plain.loader("train", shuffle=False, batch_size=8,
                                  num_workers=0))).context_boxes is None


def test_a_run_with_w_ground_logs_the_term_and_selects_on_it(shapes_cache, tmp_path):
    from cmar.train import Trainer

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}",
                                "model.w_ground=0.5", "train.epochs=1",
                                "train.select=val_ground"])
    trainer = Trainer(cfg, progress=False)
    history = trainer.fit()
    row = history[-1]
    assert row["train_ground"] > 0 and row["val_ground"] > 0
    expected = (row["train_caption"] + 0.1 * row["train_align"] + 0.1 * row["train_next"]
                + 0.5 * row["train_ground"] + row["train_look_ahead"])
    assert row["train_total"] == pytest.approx(expected, rel=1e-4)


def test_ground_mentions_all_adds_each_landmark_mention_at_its_box(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", "model.w_ground=0.5",
                                "model.ground_mentions=all"])
    data = prepare_data(cfg.data, splits=("train",), progress=False, boxes=True,
                        every_mention=True)
    stories, store = data.stories["train"], data.datasets["train"].store
    names = MentionTargets(stories, store, data.tokenizer)
    every = MentionTargets(stories, store, data.tokenizer, every=True)
    landmarks = 0
    for story in stories[:10]:
        for t in range(len(story)):
            extra = dict(every.frame(story.story_id, t))
            plain = dict(names.frame(story.story_id, t))
            assert plain.items() <= extra.items()  # the characters' mentions stay as they are
            places = [m for m in story.mentions[t] if m.kind == "gdl"]
            assert len(extra) == len(plain) + len(places)  # one place a frame: the destination
            for mention in places:
                position = token_position(data.tokenizer, story.captions[t], mention.start,
                                          mention.end)
                box = store.fit_box(stories.index(story), t, story.entities[t][mention.ids[0]])
                assert extra[position] == pytest.approx(box)
                landmarks += 1
    assert landmarks >= 10
    batch = next(iter(data.loader("train", shuffle=False, batch_size=8, num_workers=0)))
    plain_batch = next(iter(prepare_data(cfg.data, splits=("train",), progress=False,
                                         boxes=True).loader("train", shuffle=False,
                                                            batch_size=8, num_workers=0)))
    named = ~torch.isnan(batch.context_boxes[..., 0])
    assert named.sum() > (~torch.isnan(plain_batch.context_boxes[..., 0])).sum()
    with pytest.raises(ValueError, match="ground_mentions"):
        load_config("smoke", ["model.ground_mentions=verbs"])
