"""Frame fitting: letterbox, centre crop and squash move entity boxes exactly like the pixels."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

import cmar.data.images as images_module
from cmar.data import Story
from cmar.data.images import IMAGE_FITS, PAD_COLOUR, ImageStore, fit_geometry
from cmar.data.shapes_world import Knobs
from cmar.data.shapestories import generate_story

WHITE = (255, 255, 255)
# A StoryReasoning-sized frame (575 x 240) with two "characters" at known original boxes
# (x1, y1, x2, y2), continuous pixel coordinates: one near the left edge, one near the middle.
WIDE = (575, 240)
CHARACTERS = {"char1": ((220, 0, 0), (12, 40, 104, 236)),
              "char2": ((0, 0, 220), (262, 30, 350, 200))}


def wide_png(size=WIDE, characters=CHARACTERS) -> bytes:
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    for colour, (x1, y1, x2, y2) in characters.values():
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)  # PIL's corners are inclusive
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def one_frame_stories(data: bytes, n: int = 1) -> list[Story]:
    return [Story(story_id=str(i), images=[data, data], captions=["a.", "b."]) for i in range(n)]


def pixels_of(frame: np.ndarray, colour) -> np.ndarray:
    """Bool (S, S): pixels nearer ``colour`` than white or the pad colour (bilinear edges
    count when they are mostly that colour)."""
    rgb = frame.transpose(1, 2, 0).astype(int)
    near = np.abs(rgb - np.array(colour)).sum(-1)
    return (near < np.abs(rgb - np.array(WHITE)).sum(-1)) & \
        (near < np.abs(rgb - np.array(PAD_COLOUR)).sum(-1))


@pytest.mark.parametrize("fit", IMAGE_FITS)
@pytest.mark.parametrize("size", [64, 224])
def test_fit_box_covers_exactly_the_pixels_of_the_character(fit, size):
    store = ImageStore(one_frame_stories(wide_png()), size, progress=False, fit=fit)
    assert store.original_size(0, 1) == WIDE
    frame = store.frames(0, [1])[0].numpy()
    for entity, (colour, box) in CHARACTERS.items():
        fitted = store.fit_box(0, 1, box)
        ys, xs = np.nonzero(pixels_of(frame, colour))
        if fitted is None:
            assert fit == "center_crop" and entity == "char1"  # the left edge is cropped away
            assert len(xs) == 0
            continue
        drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # pixel i spans [i, i + 1)
        assert np.allclose(fitted, drawn, atol=1.0), (entity, fitted, drawn)
        x1, y1, x2, y2 = fitted
        assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size


def test_letterbox_pads_top_and_bottom_with_the_mean_colour():
    store = ImageStore(one_frame_stories(wide_png()), 64, progress=False, fit="letterbox")
    frame = store.frames(0, [0])[0].numpy().transpose(1, 2, 0)
    scale_x, scale_y, offset_x, offset_y = fit_geometry(*WIDE, 64, "letterbox")
    assert (offset_x, offset_y) == (0, 18) and round(240 * scale_y) == 27  # 18 + 27 + 19 = 64
    pad = np.all(frame == PAD_COLOUR, axis=-1)
    assert pad[:18].all() and pad[18 + 27:].all()
    assert not pad[18:18 + 27].any()
    # normalised, the pad is (about) zero: no signal for a pretrained CNN
    normalised = images_module.image_transform()(store.frames(0, [0]))
    assert normalised[..., :18, :].abs().max() < 0.01


def test_center_crop_drops_the_sides_and_a_box_outside_is_none():
    store = ImageStore(one_frame_stories(wide_png()), 64, progress=False, fit="center_crop")
    frame = store.frames(0, [0])[0].numpy()
    assert not np.all(frame.transpose(1, 2, 0) == PAD_COLOUR, axis=-1).any()  # no padding
    scale_x, _, offset_x, _ = fit_geometry(*WIDE, 64, "center_crop")
    kept = (-offset_x / scale_x, (64 - offset_x) / scale_x)  # original columns still in frame
    assert kept[1] - kept[0] < WIDE[0] / 2  # more than half the width is gone
    assert store.fit_box(0, 0, (0, 0, kept[0] - 1, 240)) is None
    assert store.fit_box(0, 0, (kept[1] + 1, 0, 575, 240)) is None
    assert store.fit_box(0, 0, (0, 0, 575, 240)) == (0, 0, 64, 64)  # clipped to the frame


def test_square_frames_are_identical_under_every_fit():
    row = generate_story(0, 0, Knobs())  # ShapeStories: square 64 px frames
    stories = [Story("s", [image["bytes"] for image in row["images"]],
                     ["x."] * row["frame_count"])]
    for size in (64, 48):  # drawn size, and resized
        arrays = [ImageStore(stories, size, progress=False, fit=fit).array for fit in IMAGE_FITS]
        for other in arrays[1:]:
            assert np.array_equal(arrays[0], other)
        stores = [ImageStore(stories, size, progress=False, fit=fit) for fit in IMAGE_FITS]
        box = (10, 12, 30, 40)
        assert len({store.fit_box(0, 0, box) for store in stores}) == 1


def test_the_frame_cache_is_keyed_by_the_fit_and_keeps_the_original_sizes(tmp_path,
                                                                           monkeypatch):
    stories = one_frame_stories(wide_png(), n=2)
    built = {fit: ImageStore(stories, 32, cache_dir=tmp_path, progress=False, fit=fit)
             for fit in IMAGE_FITS}
    assert len({store.fingerprint for store in built.values()}) == len(IMAGE_FITS)
    assert len(list(tmp_path.glob("frames-*-sizes.npy"))) == len(IMAGE_FITS)
    assert len(list(tmp_path.glob("frames-*.npy"))) == 2 * len(IMAGE_FITS)
    assert not list(tmp_path.glob("*partial*"))
    monkeypatch.setattr(images_module, "decode_image", lambda data: 1 / 0)  # cache only now
    for fit, store in built.items():
        cached = ImageStore(stories, 32, cache_dir=tmp_path, progress=False, fit=fit)
        assert np.array_equal(cached.array, store.array)
        assert cached.original_size(1, 0) == WIDE
        box = CHARACTERS["char2"][1]
        assert cached.fit_box(1, 0, box) == store.fit_box(1, 0, box)


def test_an_unknown_fit_names_the_choices():
    with pytest.raises(ValueError, match="letterbox"):
        ImageStore(one_frame_stories(wide_png()), 16, progress=False, fit="stretch")
