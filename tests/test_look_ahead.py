"""The look-ahead (model.look_ahead, model.w_look_ahead): each context region points at where its
content goes in the next frame and reads what lies there. Its targets are the moving
characters' boxes in two consecutive frames, its loss reaches the pointer and the image side
only, a padding region is never pointed at, and it is off at weight 0. The move loss
(model.w_move) reads how far and which way each mover goes from the same regions, off at
weight 0."""

import math

import pytest
import torch
from model_helpers import TinyFusion, fit_term, random_batch, tiny_model

from cmar.config import load_config
from cmar.data import prepare_data
from cmar.data.moves import MIN_MOVE, collate_moves, moves_of
from cmar.data.windows import window_frame
from cmar.models.look_ahead import LookAhead, look_ahead_loss, move_loss
from cmar.train import loss_terms


def moving_batch(b: int = 4, k: int = 3, size: int = 32):
    """random_batch where, in every context frame, one character moves from the top-left cell
    to the bottom-right one of the tiny CNN's 2 x 2 grid (16 px cells)."""
    batch = random_batch(b, k, size)
    items = [{"context_moves": [[((1.0, 1.0, 9.0, 9.0), (20.0, 20.0, 30.0, 30.0))]
                                for _ in range(k)]} for _ in range(b)]
    for name, value in collate_moves(items).items():
        setattr(batch, name, value)
    return batch


def test_moves_of_keeps_the_entities_that_move_far_enough():
    size = 100
    step = MIN_MOVE * size
    now = {"char1": (0, 0, 10, 10), "char2": (50, 50, 60, 60), "char3": (0, 0, 4, 4)}
    after = {"char1": (step + 1, 0, 10 + step + 1, 10),  # moved just over the threshold
             "char2": (50 + step - 1, 50, 60 + step - 1, 60)}  # just under; char3 is gone
    assert moves_of(now, after, size) == [((0, 0, 10, 10), after["char1"])]
    assert moves_of(now, {}, size) == []


def test_collate_pads_moves():
    fields = collate_moves([{"context_moves": [[((1, 2, 3, 4), (5, 6, 7, 8))], []]},
                            {"context_moves": [[], []]}])
    start, end = fields["context_move_from"], fields["context_move_to"]
    assert start.shape == end.shape == (2, 2, 1, 4)
    assert start[0, 0, 0].tolist() == [1, 2, 3, 4] and end[0, 0, 0].tolist() == [5, 6, 7, 8]
    assert torch.isnan(start[0, 1]).all() and torch.isnan(end[1]).all()
    assert collate_moves([{"context_ids": []}]) == {}


def test_batches_carry_each_moving_characters_two_boxes(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False, moves=True)
    split, stories = data.datasets["train"], data.stories["train"]
    index = {story.story_id: i for i, story in enumerate(stories)}
    batch = next(iter(data.loader("train", shuffle=False, batch_size=8, num_workers=0)))
    seen = 0
    for row, wid in enumerate(batch.window_ids):
        story_id, t = window_frame(wid)
        i = index[story_id]
        story = stories[i]
        for j, frame in enumerate(range(t - cfg.data.k, t)):
            real = ~torch.isnan(batch.context_move_from[row, j, :, 0])
            # ShapeStories: only the actor of the next frame moves (to the landmark it faces)
            assert real.sum() <= 1
            for e in real.nonzero()[:, 0].tolist():
                start = batch.context_move_from[row, j, e].tolist()
                end = batch.context_move_to[row, j, e].tolist()
                mover = [c for c, box in story.entities[frame].items()
                         if split.store.fit_box(i, frame, box) == pytest.approx(start)]
                assert len(mover) == 1 and mover[0].startswith("char")
                after = split.store.fit_box(i, frame + 1, story.entities[frame + 1][mover[0]])
                assert end == pytest.approx(after)
                assert math.dist(start[:2], end[:2]) > MIN_MOVE * cfg.data.image_size
                seen += 1
    assert seen >= 8  # most frames have a mover: the next frame's actor walks somewhere
    plain = prepare_data(cfg.data, splits=("train",), progress=False)
    assert next(iter(plain.loader("train", batch_size=4, num_workers=0))).context_move_from \
        is None


def test_the_loss_is_low_when_the_pointer_points_at_the_next_box_and_high_elsewhere():
    start = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])  # (N=1, E=1, 4): top-left cell of 2 x 2
    end = torch.tensor([[[20.0, 20.0, 30.0, 30.0]]])  # bottom-right cell
    right = torch.zeros(1, 4, 4)
    right[0, 0, 3] = 20.0  # region 0 points at region 3
    wrong = torch.zeros(1, 4, 4)
    wrong[0, 0, 1] = 20.0
    assert look_ahead_loss(right, start, end, 32) < 1e-6
    assert look_ahead_loss(wrong, start, end, 32) > 19
    # only the regions under the first box count: region 1's row is free
    right[0, 1] = torch.randn(4)
    assert look_ahead_loss(right, start, end, 32) < 1e-6
    nobody = torch.full((1, 1, 4), float("nan"))
    quiet = look_ahead_loss(right.requires_grad_(), nobody, nobody, 32)
    assert quiet == 0 and quiet.requires_grad


def test_a_padding_region_is_never_pointed_at_nor_a_target():
    torch.manual_seed(0)
    look = LookAhead(8, (2, 2), dropout=0.0)
    regions = torch.randn(2, 4, 8)
    keep = torch.tensor([[True, True, True, False], [True] * 4])
    out, logits = look(regions, keep)
    assert out.shape == regions.shape
    assert (logits[0].softmax(-1)[:, 3] < 1e-6).all() and (logits[1].softmax(-1)[:, 3] > 0).all()
    # a target that lies wholly in the padding is no target
    start = torch.tensor([[[0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 10.0, 10.0]]])
    end = torch.tensor([[[20.0, 20.0, 30.0, 30.0]], [[20.0, 20.0, 30.0, 30.0]]])
    loss = look_ahead_loss(logits, start, end, 32, keep)
    only_second = look_ahead_loss(logits[1:], start[1:], end[1:], 32)
    assert loss.item() == pytest.approx(only_second.item())
    # a batch where no one moves gives 0, even with masked logits (the dtype's lowest value)
    nobody = torch.full((2, 1, 4), float("nan"))
    assert look_ahead_loss(logits, nobody, nobody, 32, keep).item() == 0


def test_the_look_ahead_loss_trains_the_pointer_and_the_image_side_only():
    torch.manual_seed(0)
    model = tiny_model(image_encoder="small_cnn", look_ahead=True, look_ahead_turn=False,
                       w_look_ahead=1.0, region_layers=1)
    losses = model(moving_batch()).losses
    assert losses["look_ahead"] > 0
    model.zero_grad()
    losses["look_ahead"].backward()
    for part in ("image_encoder", "region_encoder"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert model.look_ahead.pointer[-1].weight.grad.abs().sum() > 0
    for part in ("text_encoder", "fusion", "story_encoder", "decoder"):
        assert all(p.grad is None or p.grad.abs().sum() == 0
                   for p in getattr(model, part).parameters()), part
    # the caption reaches the glimpse: what the pointed-at regions hold feeds the fusion
    model.zero_grad()
    model(moving_batch()).losses["caption"].backward()
    assert model.look_ahead.value.weight.grad.abs().sum() > 0


def test_looking_ahead_learns_where_the_mover_goes():
    torch.manual_seed(0)
    model = tiny_model(look_ahead=True, look_ahead_turn=False, w_look_ahead=1.0)
    batch = moving_batch()
    first, last = fit_term(model, batch, "look_ahead")
    assert last < 0.2 * first
    pointer = model.encode(batch).pointer  # (B*k, R, R)
    assert (pointer[:, 0].argmax(-1) == 3).all()


def test_the_look_ahead_is_off_at_weight_zero_and_without_targets():
    torch.manual_seed(0)
    off = tiny_model(look_ahead=False)
    assert off.look_ahead is None and "look_ahead" not in off(moving_batch()).losses
    assert off.encode(moving_batch()).pointer is None
    unsupervised = tiny_model(look_ahead=True, w_look_ahead=0.0)  # from the caption only
    assert "look_ahead" not in unsupervised(moving_batch()).losses
    on = tiny_model(look_ahead=True, w_look_ahead=1.0)
    assert "look_ahead" not in on(random_batch()).losses  # a batch without moves
    cfg = load_config("smoke", ["model.look_ahead=true", "model.w_look_ahead=0.5"])
    terms = loss_terms(on, moving_batch(), cfg)
    expected = (terms["caption"] + 0.1 * terms["align"] + 0.1 * terms["next"]
                + 0.5 * terms["look_ahead"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_look_ahead_keys_are_checked():
    from cmar.settings import loss_terms_of

    assert "look_ahead" in loss_terms_of(
        load_config("smoke", ["model.look_ahead=true", "model.w_look_ahead=0.5"]))
    assert "look_ahead" in loss_terms_of(load_config("smoke", []))  # on by default
    assert "look_ahead" not in loss_terms_of(
        load_config("smoke", ["model.look_ahead=true", "model.w_look_ahead=0"]))
    # off is one key: the place and the weight are then unread
    off = load_config("smoke", ["model.look_ahead=false"])
    assert off.model.look_ahead_turn and off.model.w_look_ahead > 0
    assert "look_ahead" not in loss_terms_of(off)
    with pytest.raises(ValueError, match="model.w_look_ahead"):
        load_config("smoke", ["model.look_ahead=true", "model.w_look_ahead=-1"])


def test_each_region_reads_where_it_starts_and_where_it_lands():
    look = LookAhead(8, (2, 2), dropout=0.0)
    assert look.centres.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    with torch.no_grad():  # every region points at region 3, the bottom-right cell
        look.pointer[-1].weight.zero_()
        look.pointer[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 50.0]))
        look.proj.weight.zero_()
        look.proj.bias.zero_()
    seen = {}
    look.where.register_forward_hook(lambda _, inputs, __: seen.update(read=inputs[0]))
    look(torch.zeros(1, 4, 8))
    expected = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.75, 0.25, 0.75, 0.75],
                             [0.25, 0.75, 0.75, 0.75], [0.75, 0.75, 0.75, 0.75]])
    assert torch.allclose(seen["read"][0], expected)  # (R, 4): start, then end


def test_a_turn_conditioned_look_ahead_reads_the_story_and_refines_the_memory():
    torch.manual_seed(0)
    model = tiny_model(look_ahead=True, look_ahead_turn=True, w_look_ahead=1.0).eval()
    batch = moving_batch()
    enc = model.encode(batch)
    assert enc.pointer.shape == (12, 4, 4)
    # the fusion reads the plain regions; the memory holds the looked-ahead fused ones
    plain = tiny_model(look_ahead=True, look_ahead_turn=True, w_look_ahead=1.0).eval()
    plain.load_state_dict(model.state_dict())
    plain.look_ahead = None
    assert torch.equal(plain.encode(batch).fused.frame, enc.fused.frame)
    assert not torch.equal(plain.encode(batch).fused.regions, enc.fused.regions)
    # the pointer reads the story state: its loss reaches the story and text encoders
    model.train()
    model.zero_grad()
    model(batch).losses["look_ahead"].backward()
    for part in ("story_encoder", "text_encoder", "image_encoder"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in getattr(model, part).parameters()), part
    with pytest.raises(ValueError, match="condition"):
        model.look_ahead(torch.randn(2, 4, 32))
    assert tiny_model(look_ahead=False, look_ahead_turn=True).look_ahead is None


def test_with_a_fusion_that_returns_no_regions_the_turn_refines_the_encoders():
    torch.manual_seed(0)
    model = tiny_model(components={"fusion": TinyFusion(32)}, look_ahead=True,
                       look_ahead_turn=True, w_look_ahead=1.0).eval()
    enc = model.encode(moving_batch())
    assert enc.pointer.shape == (12, 4, 4)
    assert enc.fused.regions.shape == enc.regions.shape  # the encoder's regions, refined
    assert not torch.equal(enc.fused.regions, enc.regions)
    without = tiny_model(components={"fusion": TinyFusion(32)}, look_ahead=False)
    plain = without.encode(moving_batch())
    assert plain.fused.regions is None  # no regions in the memory at all, as before
    assert enc.memory.shape[1] == plain.memory.shape[1] + 3 * 4  # + k frames x R regions


def test_the_describer_reads_the_regions_the_look_ahead_refined():
    torch.manual_seed(0)
    before = tiny_model(look_ahead=True, look_ahead_turn=False, w_describe=1.0)
    enc = before.encode(moving_batch())
    assert before.looked_regions(enc) is enc.regions  # after the look-ahead, pre-fusion
    after = tiny_model(look_ahead=True, look_ahead_turn=True, w_describe=1.0)
    enc = after.encode(moving_batch())
    assert after.looked_regions(enc) is enc.fused.regions  # refined after the story
    without = tiny_model(look_ahead=False, w_describe=1.0)
    enc = without.encode(moving_batch())
    assert enc.regions is not None and without.looked_regions(enc) is enc.regions


def test_the_loss_stays_finite_when_a_padding_regions_log_probability_is_infinite():
    logits = torch.zeros(1, 4, 4)
    logits[..., 3] = float("-inf")  # what log_softmax can give at a masked padding region
    start = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    end = torch.tensor([[[20.0, 0.0, 30.0, 10.0]]])  # region 1
    loss = look_ahead_loss(logits.requires_grad_(), start, end, 32)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(3))
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_the_move_target_is_the_step_between_box_centres_in_quarter_sides():
    start = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [float("nan")] * 4]])  # (N=1, E=2, 4)
    end = torch.tensor([[[20.0, 10.0, 30.0, 20.0], [float("nan")] * 4]])  # entity 2: no box
    dx, dy = 20 * 4 / 32, 10 * 4 / 32  # (5, 5) -> (25, 15), a quarter side is 8 px
    step = [dx, dy, math.hypot(dx, dy)]
    exact = torch.tensor([[step, [0.7] * 3, [0.7] * 3, [0.7] * 3]])  # only region 0 lies under
    assert move_loss(exact, start, end, 32).item() == pytest.approx(0, abs=1e-6)  # the first box
    off = exact.clone()
    off[0, 0] += torch.tensor([0.5, 0.0, -0.5])
    assert move_loss(off, start, end, 32).item() == pytest.approx(0.5)
    keep = torch.tensor([[False, True, True, True]])  # its start wholly in padding: no target
    quiet = move_loss(off.requires_grad_(), start, end, 32, keep)
    assert quiet.item() == 0 and quiet.requires_grad
    with pytest.raises(ValueError, match="square grid"):
        move_loss(torch.zeros(1, 6, 3), start, end, 32)


def test_the_move_loss_trains_the_look_ahead_and_is_off_at_weight_zero():
    torch.manual_seed(0)
    off = tiny_model(look_ahead=True)
    assert off.look_ahead.move is None and "move" not in off(moving_batch()).losses
    model = tiny_model(look_ahead=True, w_move=1.0)
    assert "move" not in model(random_batch()).losses  # a batch without moves
    losses = model(moving_batch()).losses
    model.zero_grad()
    losses["move"].backward()
    look = model.look_ahead
    for part in (look.move, look.where, look.pointer, model.image_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    first, last = fit_term(model, moving_batch(), "move")
    assert last < 0.2 * first
    cfg = load_config("smoke", ["model.w_move=0.5"])
    assert cfg.model.w_move == 0.5
    terms = loss_terms(model, moving_batch(), cfg)
    expected = (terms["caption"] + 0.1 * terms["align"] + 0.1 * terms["next"]
                + cfg.model.w_look_ahead * terms["look_ahead"] + 0.5 * terms["move"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
