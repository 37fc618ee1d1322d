"""The describe objective (model.w_describe): the regions under each boxed entity of a context
frame say its chain_of_thought description. Its targets are the right rows and boxes, its
gradient reaches the image side only, and it is off at weight 0."""

import pytest
import torch
from model_helpers import fit_term, random_batch, tiny_model

from cmar.config import load_config
from cmar.data import decode, prepare_data
from cmar.data.descriptions import EntityDescriptions, collate_descriptions
from cmar.data.markup import parse_descriptions
from cmar.data.windows import window_frame
from cmar.train import loss_terms

COT = """## Image 1

### Characters
| Character ID | Name | Description | Emotions | Bounding Box |
|---|---|---|---|---|
| char1 | Ada | tall woman  in a red coat | Calm | 10,20,30,40 |
| char2 | Bob | boy with a kite | Happy | no box |

### Landmarks
| Landmark ID | Name | Description | Bounding Box |
|---|---|---|---|
| lm1 | pier | wooden pier | 0,0,5,5 |

## Image 2

### Characters
| Character ID | Name | Description | Bounding Box |
|---|---|---|---|
| char1 | Ada |  | 1,2,3,4 |
"""


def describing_batch(b: int = 4, k: int = 3, size: int = 32):
    """random_batch with two described entities per context frame (the second one only in
    the first frame), with boxes on a 32 px frame (2 x 2 grid of the tiny CNN: 16 px cells)."""
    batch = random_batch(b, k, size)
    items = [{"context_entities": [[((0.0, 0.0, 10.0, 10.0), [5, 6, 7])]
                                   + ([((20.0, 20.0, 31.0, 31.0), [8, 9])] if j == 0 else [])
                                   for j in range(k)]} for _ in range(b)]
    for name, value in collate_descriptions(items, pad_id=0).items():
        setattr(batch, name, value)
    return batch


def test_parse_descriptions_reads_the_description_of_boxed_rows_only():
    described = parse_descriptions(COT)
    assert described[1] == {"char1": "tall woman in a red coat", "lm1": "wooden pier"}
    assert described[2] == {}  # an empty description is no target
    assert "Ada" not in str(described)  # the Name column is never read


def test_collate_pads_entities_and_tokens():
    fields = collate_descriptions(
        [{"context_entities": [[((1, 2, 3, 4), [5, 6])], []]},
         {"context_entities": [[], [((0, 0, 1, 1), [7]), ((2, 2, 3, 3), [8, 9, 10])]]}], 0)
    boxes, tokens = fields["context_entity_boxes"], fields["context_descriptions"]
    mask = fields["context_description_mask"]
    assert boxes.shape == (2, 2, 2, 4) and tokens.shape == mask.shape == (2, 2, 2, 3)
    assert boxes[0, 0, 0].tolist() == [1, 2, 3, 4] and torch.isnan(boxes[0, 0, 1]).all()
    assert torch.isnan(boxes[0, 1]).all() and torch.isnan(boxes[1, 0]).all()
    assert tokens[1, 1, 1].tolist() == [8, 9, 10] and mask[1, 1, 0].tolist() == [True, False,
                                                                                   False]
    assert mask.sum() == 6
    assert collate_descriptions([{"context_ids": []}], 0) == {}


@pytest.mark.parametrize("entities", ["characters", "all"])
def test_batches_carry_each_described_entitys_box_and_words(shapes_cache, entities):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False, describe=entities)
    split, stories = data.datasets["train"], data.stories["train"]
    index = {story.story_id: i for i, story in enumerate(stories)}
    batch = next(iter(data.loader("train", shuffle=False, batch_size=4, num_workers=0)))
    seen = 0
    for row, wid in enumerate(batch.window_ids):
        story_id, t = window_frame(wid)
        story = stories[index[story_id]]
        for j, frame in enumerate(range(t - cfg.data.k, t)):
            kept = [e for e in story.descriptions[frame]
                    if entities == "all" or e.startswith("char")]
            real = ~torch.isnan(batch.context_entity_boxes[row, j, :, 0])
            assert real.sum() == len(kept) > 0
            for e, entity in enumerate(kept):
                box = split.store.fit_box(index[story_id], frame, story.entities[frame][entity])
                assert batch.context_entity_boxes[row, j, e].tolist() == pytest.approx(box)
                words = batch.context_descriptions[row, j, e][
                    batch.context_description_mask[row, j, e]]
                said = decode(data.tokenizer, words.tolist())
                assert said == story.descriptions[frame][entity][:len(said)]
                seen += 1
    n_characters = 3
    assert seen >= 4 * cfg.data.k * n_characters
    if entities == "characters":  # ShapeStories: the chain_of_thought says where each faces
        assert "facing the" in story.descriptions[0]["char1"]
    assert isinstance(split.described, EntityDescriptions)
    plain = prepare_data(cfg.data, splits=("train",), progress=False)
    assert next(iter(plain.loader("train", batch_size=4, num_workers=0))).context_descriptions \
        is None


def test_the_describe_loss_trains_the_image_side_and_nothing_the_captions_feed():
    torch.manual_seed(0)
    model = tiny_model(image_encoder="small_cnn", w_describe=1.0, region_layers=1,
                       look_ahead=False)  # describing alone (after the look-ahead: its tests)
    losses = model(describing_batch()).losses
    assert losses["describe"] > 0
    model.zero_grad()
    losses["describe"].backward()
    for part in ("image_encoder", "region_encoder", "describer"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    for part in ("text_encoder", "fusion", "story_encoder", "decoder"):
        assert all(p.grad is None or p.grad.abs().sum() == 0
                   for p in getattr(model, part).parameters()), part


def test_the_describe_loss_reads_only_the_regions_under_the_boxes():
    torch.manual_seed(0)
    model = tiny_model(w_describe=1.0).eval()
    batch = describing_batch()
    regions = torch.randn(12, 4, 32, requires_grad=True)  # (B*k, R, d): a 2 x 2 grid
    loss = model.describer.loss(regions, batch.context_entity_boxes.flatten(0, 1),
                                batch.context_descriptions.flatten(0, 1),
                                batch.context_description_mask.flatten(0, 1), 32)
    (grad,) = torch.autograd.grad(loss, regions)
    touched = grad.abs().sum(-1) > 0  # (12, 4)
    expected = torch.zeros(12, 4, dtype=torch.bool)
    expected[:, 0] = True  # every frame: the box in the top-left cell
    expected[0::3, 3] = True  # the first frame of each window: the bottom-right one too
    assert torch.equal(touched, expected)
    # a region mask that hides a box's only cell leaves that entity out
    hidden = torch.ones(12, 4, dtype=torch.bool)
    hidden[:, 0] = False
    (grad,) = torch.autograd.grad(model.describer.loss(
        regions, batch.context_entity_boxes.flatten(0, 1),
        batch.context_descriptions.flatten(0, 1), batch.context_description_mask.flatten(0, 1),
        32, hidden), regions)
    assert (grad[:, 0] == 0).all() and (grad[0::3, 3] != 0).any()


def test_describing_lowers_its_loss():
    torch.manual_seed(0)
    model = tiny_model(w_describe=1.0)
    batch = describing_batch()
    first, last = fit_term(model, batch, "describe")
    assert last < 0.3 * first


def test_the_describe_loss_is_off_at_weight_zero_and_without_targets():
    torch.manual_seed(0)
    off = tiny_model()
    assert off.describer is None and "describe" not in off(describing_batch()).losses
    on = tiny_model(w_describe=1.0)
    assert "describe" not in on(random_batch()).losses  # a batch without descriptions
    cfg = load_config("smoke", ["model.w_describe=0.5"])
    terms = loss_terms(on, describing_batch(), cfg)
    expected = (terms["caption"] + 0.1 * terms["align"] + 0.1 * terms["next"]
                + 0.5 * terms["describe"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_describe_keys_are_checked():
    from cmar.settings import loss_terms_of

    assert "describe" in loss_terms_of(load_config("smoke", ["model.w_describe=0.5"]))
    assert "describe" not in loss_terms_of(load_config("smoke"))
    with pytest.raises(ValueError, match="describe_entities"):
        load_config("smoke", ["model.describe_entities=verbs"])
    with pytest.raises(ValueError, match="model.w_describe"):
        load_config("smoke", ["model.w_describe=-1"])
