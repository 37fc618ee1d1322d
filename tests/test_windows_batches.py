"""Window arithmetic, the decoder shift, padding masks, decode-once frames and the tokenizer."""

import pytest
import torch
import torch.nn.functional as F
from conftest import PALETTE, colours_for, png

import cmar.data.images as images_module
from cmar.data import (
    Collate,
    ImageStore,
    Story,
    WindowDataset,
    decode,
    encode,
    load_tokenizer,
    make_loader,
    make_windows,
    save_tokenizer,
    train_tokenizer,
)
from cmar.data.images import IMAGENET_MEAN, IMAGENET_STD


def make_stories(lengths):
    stories = []
    for i, n in enumerate(lengths):
        colours = colours_for(i, n)
        captions = [f"Frame {t} of story {i} is {c}" + " very" * (t % 3) + "." for t, c in
                    enumerate(colours)]
        stories.append(Story(f"s{i}", [png(c) for c in colours], captions))
    return stories


@pytest.fixture
def setup():
    stories = make_stories([5, 7, 3, 4])
    tokenizer = train_tokenizer(c for s in stories for c in s.captions)
    store = ImageStore(stories, image_size=8, progress=False)
    return stories, tokenizer, store


def colour_of(image: torch.Tensor) -> str:
    """Undo the normalisation of a (3, S, S) frame and name its solid colour."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = tuple(int(v) for v in ((image * std + mean) * 255).round()[:, 0, 0])
    return next(name for name, value in PALETTE.items() if value == rgb)


def test_every_window_targets_frame_t_with_context_t_minus_k_to_t_minus_1(setup):
    stories, tokenizer, store = setup
    k = 3
    windows = make_windows(stories, k)
    assert len(windows) == (5 - 3) + (7 - 3) + 0 + (4 - 3)  # sliding, not only the first k+1
    dataset = WindowDataset(stories, windows, store, tokenizer)
    batch = Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)(
        [dataset[i] for i in range(len(dataset))])
    for row, w in enumerate(windows):
        story = stories[w.story]
        assert batch.window_ids[row] == f"{story.story_id}:{w.t}"
        assert decode(tokenizer, batch.target_out[row]) == story.captions[w.t]
        for j, t in enumerate(range(w.t - k, w.t)):
            assert decode(tokenizer, batch.context_tokens[row, j]) == story.captions[t]
            assert colour_of(batch.context_images[row, j]) == colours_for(w.story, 7)[t]
        assert colour_of(batch.target_image[row]) == colours_for(w.story, 7)[w.t]
    assert batch.context_images.shape == (len(windows), k, 3, 8, 8)
    assert batch.context_mask.shape == batch.context_tokens.shape


def test_decoder_input_is_the_target_shifted_right(setup):
    stories, tokenizer, store = setup
    dataset = WindowDataset(stories, make_windows(stories, 2), store, tokenizer)
    batch = Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)(
        [dataset[i] for i in range(6)])
    assert (batch.target_in[:, 0] == tokenizer.bos_token_id).all()
    lengths = batch.target_mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch really has padding
    for row, n in enumerate(lengths.tolist()):
        assert torch.equal(batch.target_in[row, 1:n], batch.target_out[row, : n - 1])
        assert batch.target_out[row, n - 1] == tokenizer.eos_token_id
        assert (batch.target_out[row, n:] == tokenizer.pad_token_id).all()
        assert not batch.target_mask[row, n:].any()


def test_padding_does_not_change_the_masked_loss(setup):
    stories, tokenizer, store = setup
    dataset = WindowDataset(stories, make_windows(stories, 2), store, tokenizer)
    batch = Collate(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)(
        [dataset[i] for i in range(6)])
    logits = torch.randn(*batch.target_out.shape, len(tokenizer))

    def masked_ce(scores):
        per_token = F.cross_entropy(scores.transpose(1, 2), batch.target_out, reduction="none")
        return (per_token * batch.target_mask).sum() / batch.target_mask.sum()

    changed = logits.clone()
    changed[~batch.target_mask] = torch.randn_like(changed[~batch.target_mask]) * 100
    assert masked_ce(changed) == pytest.approx(masked_ce(logits).item())
    changed[batch.target_mask] += torch.randn_like(changed[batch.target_mask])
    assert masked_ce(changed) != pytest.approx(masked_ce(logits).item())


def test_frames_are_decoded_once_per_split_not_per_window(setup, monkeypatch):
    stories, tokenizer, _ = setup
    calls = []
    real = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image", lambda data: calls.append(1) or real(data))
    store = ImageStore(stories, image_size=8, progress=False)
    assert len(calls) == sum(len(s) for s in stories) == len(store)
    dataset = WindowDataset(stories, make_windows(stories, 1), store, tokenizer)
    for i in range(len(dataset)):
        dataset[i]
    assert len(calls) == len(store)  # windows index the store, they never decode


def test_frame_cache_on_disk_is_reused(setup, tmp_path, monkeypatch):
    stories, _, store = setup
    ImageStore(stories, image_size=8, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(images_module, "decode_image", lambda data: 1 / 0)
    cached = ImageStore(stories, image_size=8, cache_dir=tmp_path, progress=False)
    assert torch.equal(cached.frames(1, range(7)), store.frames(1, range(7)))


def test_a_frame_cache_that_cannot_fit_on_disk_is_refused_before_decoding(setup, tmp_path,
                                                                         monkeypatch):
    import shutil
    from collections import namedtuple

    stories, _, _ = setup
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    monkeypatch.setattr(images_module, "decode_image", lambda data: 1 / 0)  # never reached
    with pytest.raises(OSError, match="decoded-frame cache needs"):
        ImageStore(stories, image_size=8, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.npy"))


def test_loader_order_is_seeded(setup):
    stories, tokenizer, store = setup
    dataset = WindowDataset(stories, make_windows(stories, 1), store, tokenizer)

    def order(seed):
        loader = make_loader(dataset, tokenizer, batch_size=4, shuffle=True, seed=seed,
                             num_workers=0)
        return [i for batch in loader for i in batch.window_ids]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


def test_short_stories_give_no_window_and_k_must_be_positive(setup):
    stories, _, _ = setup
    assert all(w.story != 2 for w in make_windows(stories, 3))  # the 3-frame story
    with pytest.raises(ValueError, match="k must be"):
        make_windows(stories, 0)


def test_tokenizer_round_trip_and_unknown_words(tmp_path):
    tokenizer = train_tokenizer(["Ann walks to the tree.", "Bob runs to the pond."])
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id] == [0, 1, 2, 3]
    save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    ids = encode(loaded, "Ann runs to the castle.")
    assert tokenizer.unk_token_id not in ids  # byte-level BPE: an unseen word is spelt out
    assert decode(loaded, ids) == "Ann runs to the castle."
    runs = len(encode(loaded, "Ann runs"))
    assert decode(loaded, ids[:runs] + [loaded.eos_token_id] + ids[runs:]) == "Ann runs"


def test_a_loader_never_starts_more_workers_than_cpus(shapes_cache):
    from cmar.config import load_config
    from cmar.data import prepare_data
    from cmar.data.batches import usable_cpus

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"]).data
    data = prepare_data(cfg, splits=("train",), progress=False)
    loader = data.loader("train", num_workers=usable_cpus() + 3)
    assert loader.num_workers == usable_cpus()
    assert data.loader("train", num_workers=0).num_workers == 0
