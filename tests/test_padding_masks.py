"""Regions wholly in letterbox padding are masked out of every attention and pooled vector.

A StoryReasoning frame (575 x 240) letterboxed into a square keeps its picture in a band across
the middle; the model's regions whose cells lie wholly above or below it see only the pad
colour. Their mask comes from each frame's content box (carried by the batch, from the store's
fit geometry) and the image encoder's grid.
"""

import io
from fractions import Fraction

import pytest
import torch
from model_helpers import random_batch, tiny_model
from PIL import Image

from cmar.data import Collate, ImageStore, Story, WindowDataset, make_windows, train_tokenizer
from cmar.data.images import content_box
from cmar.models import FUSIONS
from cmar.models.feature_cache import FeatureStore
from cmar.models.image_encoder import SmallCNN, region_mask

WIDE = (575, 240)  # a StoryReasoning frame


def kept_rows(mask: torch.Tensor, side: int) -> list[int]:
    """The grid rows with a kept region (each row is kept whole by a full-width band)."""
    grid = mask.view(side, side)
    assert (grid.all(1) | ~grid.any(1)).all(), "a letterbox band keeps or drops whole rows"
    return [i for i in range(side) if grid[i].all()]


def test_the_content_box_of_a_wide_frame_is_the_band_the_letterbox_leaves():
    # 240 * 224 / 575 = 93.50 -> 93 rows of picture, offset (224 - 93) // 2 = 65
    assert content_box(*WIDE, 224) == (0.0, 65.0, 224.0, 158.0)
    # 240 * 64 / 575 = 26.71 -> 27 rows, offset (64 - 27) // 2 = 18
    assert content_box(*WIDE, 64) == (0.0, 18.0, 64.0, 45.0)
    for fit in ("squash", "center_crop"):  # these fill the frame
        assert content_box(*WIDE, 224, fit) == (0.0, 0.0, 224.0, 224.0)
    assert content_box(64, 64, 64) == (0.0, 0.0, 64.0, 64.0)  # ShapeStories


def test_a_resnet_grid_at_224_keeps_21_of_49_regions():
    # 7 x 7 cells of 32 px; the picture spans y = 65 .. 158: rows 2 (64..96), 3 and 4
    # (128..160) overlap it, row 1 (32..64) ends before it, row 5 (160..192) starts after
    mask = region_mask(torch.tensor(content_box(*WIDE, 224)), 224, (7, 7))
    assert kept_rows(mask, 7) == [2, 3, 4]
    assert int(mask.sum()) == 21 and int((~mask).sum()) == 28


def test_the_small_cnn_at_64_px_keeps_the_middle_two_rows_of_its_4_by_4_grid():
    encoder = SmallCNN(d_model=32, image_size=64)
    assert encoder.grid == (4, 4)  # S / 16
    # cells of 16 px; the picture spans y = 18 .. 45: rows 1 (16..32) and 2 (32..48)
    mask = region_mask(torch.tensor(content_box(*WIDE, 64)), 64, encoder.grid)
    assert kept_rows(mask, 4) == [1, 2]
    fine = region_mask(torch.tensor(content_box(*WIDE, 64)), 64, (8, 8))  # small_cnn_fine, S/8
    assert kept_rows(fine, 8) == [2, 3, 4, 5]  # 16..24 .. 40..48


@pytest.mark.parametrize("size,side", [(64, 4), (64, 8), (100, 3), (224, 7), (224, 14),
                                       (336, 24), (97, 5)])
@pytest.mark.parametrize("frame", [WIDE, (240, 575), (300, 299), (64, 64), (1000, 10)])
def test_the_mask_agrees_with_exact_cell_arithmetic(size, side, frame):
    x1, y1, x2, y2 = (Fraction(v) for v in content_box(*frame, size))
    edges = [Fraction(i * size, side) for i in range(side + 1)]
    expected = [edges[i] < y2 and edges[i + 1] > y1 and edges[j] < x2 and edges[j + 1] > x1
                for i in range(side) for j in range(side)]
    mask = region_mask(torch.tensor(content_box(*frame, size)), size, (side, side))
    assert mask.tolist() == expected


def test_a_square_frame_and_an_unknown_box_keep_every_region():
    assert region_mask(torch.tensor([0.0, 0, 64, 64]), 64, (4, 4)).all()
    assert region_mask(torch.full((4,), float("nan")), 64, (4, 4)).all()


def png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_batches_carry_each_frames_content_box_also_from_cached_features():
    stories = [Story("wide", [png(WIDE)] * 3, ["a b.", "c d.", "e f."]),
               Story("square", [png((64, 64))] * 3, ["a b.", "c d.", "e f."])]
    tokenizer = train_tokenizer(c for s in stories for c in s.captions)
    store = ImageStore(stories, image_size=64, progress=False)
    collate = Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    windows = make_windows(stories, 2)
    batch = collate([WindowDataset(stories, windows, store, tokenizer)[i] for i in range(2)])
    assert batch.context_content.shape == (2, 2, 4) and batch.target_content.shape == (2, 4)
    assert batch.context_content[0].tolist() == [[0.0, 18.0, 64.0, 45.0]] * 2
    assert batch.target_content[1].tolist() == [0.0, 0.0, 64.0, 64.0]
    # a feature store keeps the frames' geometry: the same boxes travel with cached features
    features = FeatureStore(torch.zeros(len(store), 128, 4, 4).numpy(), store.offsets,
                            store.geometry)
    cached = collate([WindowDataset(stories, windows, features, tokenizer)[i] for i in range(2)])
    assert cached.context_images is None and cached.context_features.shape[-2:] == (4, 4)
    assert torch.equal(cached.context_content, batch.context_content)
    assert torch.equal(cached.target_content, batch.target_content)
    assert batch.rows(slice(0, 1)).context_content.shape == (1, 2, 4)
    # a batch of frames that all fill their square carries no boxes: the unmasked path
    squares = collate([WindowDataset(stories, windows, store, tokenizer)[1]])  # the square
    assert squares.context_content is None and squares.target_content is None


# A batch of cached small-CNN features (64 px frames, 4 x 4 regions) of letterboxed frames
SIZE, SIDE = 64, 4
MASKED_ROWS, KEPT_ROWS = (0, 3), (1, 2)


def wide_batch(seed: int = 0):
    batch = random_batch(size=SIZE, seed=seed)
    g = torch.Generator().manual_seed(seed)
    b, k = batch.context_tokens.shape[:2]
    batch.context_features = torch.randn(b, k, 128, SIDE, SIDE, generator=g)
    batch.target_features = torch.randn(b, 128, SIDE, SIDE, generator=g)
    batch.context_images = batch.target_image = None
    box = torch.tensor(content_box(*WIDE, SIZE))
    batch.context_content, batch.target_content = box.expand(b, k, 4), box.expand(b, 4)
    return batch


def changed(batch, rows, value: float = 50.0):
    """``batch`` with the features of every region in grid ``rows`` of every frame replaced."""
    other = wide_batch()
    other.context_features = batch.context_features.clone()
    other.target_features = batch.target_features.clone()
    for row in rows:
        other.context_features[..., row, :] = value
        other.target_features[..., row, :] = value
    return other


def outputs(model, batch):
    out = model(batch, return_attention=model.cfg.fusion != "concat")
    return out, torch.stack([out.losses[name] for name in ("caption", "align", "next")])


MODELS = [dict(fusion=f) for f in sorted(FUSIONS)] + [
    dict(fusion="cmar", region_layers=1, decoder="transformer"),
    dict(fusion="cross", region_layers=2, decoder="gru", mode="grounded"),
    dict(fusion="cmar", decoder="transformer", copy_tokens=True, mode="grounded"),
]


@pytest.mark.parametrize("options", MODELS, ids=lambda o: "-".join(map(str, o.values())))
def test_a_masked_region_changes_nothing_and_a_kept_one_does(options):
    options = dict(options)
    torch.manual_seed(0)
    model = tiny_model(options.pop("mode", "next"), size=SIZE, **options).eval()
    batch = wide_batch()
    with torch.no_grad():
        out, losses = outputs(model, batch)
        padding, padding_losses = outputs(model, changed(batch, MASKED_ROWS))
        picture, picture_losses = outputs(model, changed(batch, KEPT_ROWS[:1]))
    assert torch.equal(out.logits, padding.logits)
    assert torch.equal(losses, padding_losses)
    assert torch.equal(out.next_true, padding.next_true)
    assert not torch.allclose(out.logits, picture.logits, atol=1e-4)
    assert not torch.allclose(losses, picture_losses, atol=1e-4)
    if out.attention is not None:  # word -> region maps put no weight on padding
        grid = out.attention.view(*out.attention.shape[:-1], SIDE, SIDE)
        assert (grid[..., list(MASKED_ROWS), :] == 0).all()
        assert torch.allclose(out.attention.sum(-1), torch.ones(out.attention.shape[:-1]),
                              atol=1e-5)


@pytest.mark.parametrize("region_layers", [0, 1])
def test_the_pooled_image_vector_is_the_mean_of_the_kept_regions(region_layers):
    model = tiny_model(size=SIZE, region_layers=region_layers).eval()
    batch = wide_batch()
    keep = model.region_mask(batch.context_content).flatten(0, 1)  # (B*k, R)
    assert int(keep[0].sum()) == 8
    with torch.no_grad():
        regions, image = model.encode_frames(None, batch.context_features, flat=True,
                                             region_mask=keep)
        enc = model.encode(batch)
    expected = torch.stack([r[m].mean(0) for r, m in zip(regions, keep, strict=True)])
    assert torch.allclose(image, expected, atol=1e-6)
    assert torch.equal(enc.image, image)  # the vector of the alignment and next-frame losses
    assert torch.equal(enc.region_mask, keep)


def test_the_decoder_memory_excludes_the_masked_regions():
    model = tiny_model("grounded", size=SIZE).eval()
    batch = wide_batch()
    b, k, length = batch.context_tokens.shape
    with torch.no_grad():
        enc = model.encode(batch)
    regions = SIDE * SIDE
    start = k + k * length  # story states, then the context words, then the regions
    context = enc.memory_mask[:, start:start + k * regions].view(b, k, SIDE, SIDE)
    target = enc.memory_mask[:, start + k * regions:].view(b, SIDE, SIDE)
    assert enc.memory.shape[1] == start + (k + 1) * regions
    for grid in (context, target):
        assert grid[..., list(KEPT_ROWS), :].all()
        assert not grid[..., list(MASKED_ROWS), :].any()


@pytest.mark.parametrize("options", MODELS, ids=lambda o: "-".join(map(str, o.values())))
def test_an_all_true_mask_gives_the_outputs_of_the_unmasked_path(options):
    """Square frames carry no boxes (see the batches test above), so they take the unmasked
    path, bitwise as before; boxes that keep every region give the same outputs."""
    options = dict(options)
    mode = options.pop("mode", "next")
    torch.manual_seed(0)
    model = tiny_model(mode, size=SIZE, **options)
    plain = random_batch(size=SIZE)
    boxed = random_batch(size=SIZE)
    b, k = boxed.context_tokens.shape[:2]
    boxed.context_content = torch.tensor([0.0, 0, SIZE, SIZE]).expand(b, k, 4)
    boxed.target_content = torch.tensor([0.0, 0, SIZE, SIZE]).expand(b, 4)
    assert bool(model.region_mask(boxed.context_content).all())
    for train in (False, True):  # dropout is 0 in tiny models: training is deterministic too
        model.train(train)
        first, first_losses = outputs(model, plain)
        second, second_losses = outputs(model, boxed)
        assert torch.allclose(first.logits, second.logits, atol=1e-5)
        assert torch.allclose(first_losses, second_losses, atol=1e-5)
        if first.attention is not None:
            assert torch.allclose(first.attention, second.attention, atol=1e-6)


class OldFusion(torch.nn.Module):
    """A user's fusion written before ``region_mask`` existed."""

    def __init__(self, d_model):
        super().__init__()
        self.mix = torch.nn.Linear(2 * d_model, d_model)

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False):
        from cmar.models import FusedFrame

        return FusedFrame(self.mix(torch.cat([image, text], -1)), tokens, None, regions)


def test_a_fusion_without_region_mask_still_runs_and_its_memory_is_still_masked():
    model = tiny_model(size=SIZE, components={"fusion": OldFusion(32)}).eval()
    with pytest.warns(UserWarning, match="region_mask"):
        enc = model.encode(wide_batch())
    assert (~enc.memory_mask).any()
    with torch.no_grad():  # square frames: no mask, no warning
        model(random_batch(size=SIZE))


def test_an_hf_tower_masks_its_patch_grid(tmp_path):
    """A CLIP tower's 4 x 4 patches at 32 px: the letterbox picture spans y = 9 .. 22 (13 rows
    of 240 * 32 / 575 = 13.4), which meets patch rows 1 (8..16) and 2 (16..24) only."""
    from cmar.models.hf import stand_ins

    folder = stand_ins.vision_tower(tmp_path / "clip")
    torch.manual_seed(0)
    model = tiny_model(size=32, image_encoder=f"hf:{folder}").eval()
    assert model.image_encoder.grid == (4, 4)
    batch = random_batch(size=32)
    b, k = batch.context_tokens.shape[:2]
    box = torch.tensor(content_box(*WIDE, 32))
    assert box.tolist() == [0.0, 9.0, 32.0, 22.0]
    batch.context_content, batch.target_content = box.expand(b, k, 4), box.expand(b, 4)
    with torch.no_grad():
        batch.context_features = model.image_encoder.backbone(
            batch.context_images.flatten(0, 1)).view(b, k, 17, -1)  # pooled + 16 patches
        batch.target_features = model.image_encoder.backbone(batch.target_image)
        batch.context_images = batch.target_image = None
        assert kept_rows(model.region_mask(box), 4) == [1, 2]
        out = model(batch)
        features = batch.context_features
        batch.context_features = features.clone()
        batch.context_features[:, :, 1:5] = 30.0  # patch row 0 (the pooled vector, 0, kept)
        batch.context_features[:, :, 13:17] = -30.0  # patch row 3
        assert torch.equal(out.logits, model(batch).logits)
        batch.context_features = features.clone()
        batch.context_features[:, :, 5:9] = 30.0  # patch row 1 sees picture
        assert not torch.allclose(out.logits, model(batch).logits, atol=1e-4)
