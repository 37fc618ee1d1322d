"""Alignment scores: rankings, candidate sets, the floors beside every score, the cross-story
shuffle, and evaluation of splits too small for some groups."""

import json
import random

import pytest
import torch

from cmar.data.windows import Window
from cmar.evaluation.alignment import (
    _frame_group,
    alignment_scores,
    image_text_alignment,
    next_caption_retrieval,
)
from cmar.evaluation.floors import TfIdf
from cmar.evaluation.frames import SplitFrames
from cmar.evaluation.retrieval import (
    SATURATED,
    by_size,
    candidate_index,
    cross_story_permutation,
    other_story,
    pad_candidates,
    ranking_scores,
    same_story_candidates,
    with_floors,
)


def test_ranking_scores_on_a_constructed_ranking():
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.0, 0.0],   # true first: rank 1
                           [0.5, 0.6, 0.1, 0.2, 0.0, 0.0],   # rank 2
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # rank 6
    out = ranking_scores(scores)
    assert out["R@1"] == pytest.approx(1 / 3) and out["R@5"] == pytest.approx(2 / 3)
    assert out["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)
    assert out["chance R@1"] == pytest.approx(1 / 6)


def test_candidates_come_from_other_stories():
    stories = ["a", "a", "b", "b", "c", "c", "d"]
    index = candidate_index(stories, 5)
    for i, row in enumerate(index.tolist()):
        assert row[0] == i and all(stories[j] != stories[i] for j in row[1:])
        assert len(set(row)) == 5
    assert torch.equal(index, candidate_index(stories, 5))  # seeded


def test_other_story_partner_is_another_story_drawn_over_the_whole_split():
    stories = ["a"] * 5 + ["b"] * 2 + ["c"] * 9 + ["d"]
    partner = other_story(stories, seed=3)
    assert all(stories[j] != stories[i] for i, j in enumerate(partner.tolist()))
    assert torch.equal(partner, other_story(stories, seed=3))
    draws = torch.stack([other_story(stories, seed=s) for s in range(200)])
    assert set(draws[:, 0].tolist()) == set(range(5, 17))  # every row outside story "a"
    with pytest.raises(ValueError, match="two stories"):
        other_story(["a", "a", "a"])


def test_shuffle_pairs_every_frame_with_another_story_and_is_a_permutation():
    rng = random.Random(0)
    for trial in range(200):
        sizes = [rng.randint(1, 6) for _ in range(rng.randint(2, 8))]
        stories = [f"s{i}" for i, n in enumerate(sizes) for _ in range(n)]
        rng.shuffle(stories)
        perm = cross_story_permutation(stories, seed=trial)
        if 2 * max(sizes) > len(stories):  # no such permutation exists
            assert perm is None
            continue
        assert sorted(perm.tolist()) == list(range(len(stories)))
        assert all(stories[j] != stories[i] for i, j in enumerate(perm.tolist()))
        assert torch.equal(perm, cross_story_permutation(stories, seed=trial))
    stories = [f"s{i % 10}" for i in range(100)]
    assert not torch.equal(cross_story_permutation(stories, 0), cross_story_permutation(stories, 1))


def test_image_text_control_uses_other_stories_and_skips_a_single_story():
    stories = ["a", "a", "b", "b", "c", "c"]
    # text i equals image i; frames of a story share their direction, stories are orthogonal
    image = torch.eye(3).repeat_interleave(2, 0)
    out = image_text_alignment(image, image.clone(), stories)
    assert out["matched cosine"] == pytest.approx(1.0)
    assert out["shuffled cosine"] == pytest.approx(0.0)  # roll(1) would give 0.5
    assert out["floor"] == {"name": "shuffled across stories", "cosine": out["shuffled cosine"]}
    assert out["gap"] == pytest.approx(1.0)
    one = image_text_alignment(image, image, ["a"] * 6)
    assert "skipped" in one and "shuffled cosine" not in one


def test_same_story_candidates_never_include_context_frames():
    lengths = [4, 5, 9, 6]
    k = 3
    windows = [Window(s, t, k) for s, n in enumerate(lengths) for t in range(k, n)]
    candidates = same_story_candidates(lengths, windows)
    for w, row in zip(windows, candidates, strict=True):
        allowed = [u for u in range(lengths[w.story]) if u != w.t and u not in w.context]
        if not allowed:
            assert row is None  # one candidate ranks nothing: the window is skipped
            continue
        assert row[0] == w.t and sorted(row[1:]) == allowed
        assert not set(row) & set(w.context)
    assert candidates[0] is None  # a story of k + 1 frames has nothing else
    index, valid = pad_candidates([c for c in candidates if c is not None])
    assert valid.sum(1).tolist() == [len(c) for c in candidates if c is not None]
    assert torch.equal(index[:, 0], torch.tensor([w.t for w, c in zip(windows, candidates,
                                                                      strict=True) if c]))


def test_chance_and_ranks_with_variable_candidate_counts():
    scores = torch.tensor([[0.5, 0.1, 9.0, 9.0, 9.0],    # 2 candidates: rank 1
                           [0.5, 0.7, 0.1, 9.0, 9.0],    # 3 candidates: rank 2
                           [0.5, 0.1, 0.2, 0.3, 0.4]])   # 5 candidates: rank 1
    valid = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = ranking_scores(scores, valid)  # padding (9.0) must not outrank the true candidate
    assert out["R@1"] == pytest.approx(2 / 3) and out["MRR"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["chance R@1"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 5) / 3)
    assert ranking_scores(scores)["R@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("floor_r1", [SATURATED, 0.95, 0.8999, 0.3])
def test_saturated_exactly_when_the_floor_reaches_0_9(floor_r1):
    model = {"R@1": 0.5, "R@5": 0.9, "MRR": 0.6, "chance R@1": 0.01}
    floors = {"weak": {"R@1": 0.1, "R@5": 0.2, "MRR": 0.15, "chance R@1": 0.01},
              "strong": {"R@1": floor_r1, "R@5": 1.0, "MRR": 0.95, "chance R@1": 0.01}}
    group = with_floors(model, floors, windows=7)
    assert group["saturated"] is (floor_r1 >= 0.9)
    assert group["floor"] == {"name": "strong", "R@1": floor_r1, "R@5": 1.0, "MRR": 0.95}
    assert set(group["floors"]) == {"weak", "strong"}
    assert group["above floor"] == pytest.approx(0.5 - floor_r1)
    assert group["windows"] == 7 and group["chance R@1"] == 0.01


def _caption_pool(n: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n captions of 1 to length - 2 words as (target_in, target_out), padded to ``length``
    (past the longest: the padding the batched scorer cuts)."""
    from model_helpers import BOS, EOS, PAD, VOCAB

    g = torch.Generator().manual_seed(seed)
    words = torch.randint(4, VOCAB, (n, length), generator=g)
    size = torch.randint(1, length - 1, (n,), generator=g)
    target_out = torch.where(torch.arange(length) < size[:, None], words, PAD)
    target_out[torch.arange(n), size] = EOS
    target_in = torch.cat([torch.full((n, 1), BOS), target_out[:, :-1]], 1)
    target_in[target_in == EOS] = PAD
    return target_in, target_out


@pytest.mark.parametrize("decoder", [dict(decoder="lstm"),
                                     dict(decoder="transformer", decoder_layers=2,
                                          copy_tokens=True)])
def test_batched_caption_scores_equal_one_candidate_at_a_time(decoder):
    """The batched scorer (each window encoded once, candidates sorted by length, passes cut
    after their longest caption, padding columns skipped) gives the scores of decoding every
    candidate alone, after its window alone, padded to the pool's length."""
    from model_helpers import VOCAB, random_batch, tiny_model

    from cmar.models.losses import token_nll

    torch.manual_seed(0)
    model = tiny_model(**decoder).eval()
    batch = random_batch(b=5)
    pool_in, pool_out = _caption_pool(40, 14)
    index = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(5, 9, dtype=torch.bool)
    valid[1, 4:] = valid[3, 2:] = False
    # a few candidates a pass: many passes of different lengths
    batched = next_caption_retrieval(model, batch, pool_out, pool_in, index, valid,
                                     elements=30 * VOCAB)
    with torch.no_grad():
        for i in range(5):
            enc = model.encode(batch.rows(slice(i, i + 1)))
            for c in range(9):
                if not valid[i, c]:
                    assert batched[i, c] == float("-inf")
                    continue
                j = index[i, c]
                logits = model.decoder(pool_in[j:j + 1], enc.memory, enc.memory_mask,
                                       **model.copy_from(enc))
                real = pool_out[j:j + 1] != model.pad_id
                alone = (-token_nll(logits, pool_out[j:j + 1]) * real).sum() / real.sum()
                assert batched[i, c].item() == pytest.approx(alone.item(), abs=1e-5)
    every = next_caption_retrieval(model, batch, pool_out, pool_in, index)  # no padding
    assert torch.isfinite(every).all() and torch.allclose(every[valid], batched[valid], atol=1e-5)


def test_each_candidate_set_size_is_the_first_columns_of_the_largest():
    stories = [f"s{i // 3}" for i in range(60)]  # 20 stories of 3 windows
    largest = candidate_index(stories, 40)
    for n in (2, 20, 32):  # the first n columns are the draw of n candidates
        assert torch.equal(largest[:, :n], candidate_index(stories, n))
    scores = torch.randn(60, 40, generator=torch.Generator().manual_seed(0))
    scores[:10, 0] = 10.0  # ten windows find the true candidate
    floor = torch.zeros(60, 40)  # a floor that ties everything: rank n, never first
    sizes = by_size(scores, {"flat": floor}, [32, 20, 100, 20])
    assert list(sizes) == ["20", "32", "100"]
    assert sizes["100"] == {"skipped": "needs 100 candidates per window, has 40 (eval.candidates,"
                                       " or what the split allows)"}
    for n in (20, 32):
        direct = ranking_scores(scores[:, :n])
        got = sizes[str(n)]
        assert (got["R@1"], got["R@5"], got["mean rank"]) == (
            direct["R@1"], direct["R@5"], direct["mean rank"])
        assert got["chance"] == {"R@1": 1 / n, "R@5": 5 / n, "mean rank": (n + 1) / 2}
        assert got["floor"] == {"name": "flat", "R@1": 0.0, "R@5": 0.0, "mean rank": n}
        assert got["above floor"] == got["R@1"] and not got["saturated"]
    assert by_size(scores[:, :3], {"flat": floor[:, :3]}, [3])["3"]["chance"]["R@5"] == 1.0


def _synthetic_split(stories=12, length=6, k=3):
    """SplitFrames of ``stories`` stories of ``length`` frames, one window each (the last
    frame its target), and random frame vectors."""
    offsets = torch.arange(stories) * length
    target = offsets + length - 1
    frames = SplitFrames([length] * stories, offsets, target, target - 1,
                         [f"s{s}" for s in range(stories)])
    return frames, torch.randn(stories * length, 12, generator=torch.Generator().manual_seed(0))


def test_pixel_floor_finds_a_target_equal_to_the_last_context_frame():
    frames, pixels = _synthetic_split()
    pixels[frames.target] = pixels[frames.last]
    index = frames.target[candidate_index(frames.story_ids, 10)]
    encoded = torch.randn(len(pixels), 8, generator=torch.Generator().manual_seed(1))
    pred = torch.randn(len(frames.target), 8, generator=torch.Generator().manual_seed(2))
    hits = {}
    group = _frame_group(pred, encoded, pixels, frames, index, None,
                         lambda name, ids, h: hits.update({name: (ids, h)}), "g",
                         frames.story_ids)
    assert group["floors"]["last context frame (pixels)"]["R@1"] == 1.0
    assert group["floor"]["name"] == "last context frame (pixels)" and group["saturated"]
    assert group["R@1"] < 1.0 and hits["g"][1].mean().item() == group["R@1"]
    # a floor that looked at the target itself would still score 1.0 here
    pixels[frames.target] = -pixels[frames.last]
    group = _frame_group(pred, encoded, pixels, frames, index, None, lambda *a: None, "g",
                         frames.story_ids)
    assert group["floors"]["last context frame (pixels)"]["R@1"] == 0.0


def test_tfidf_floor_ranks_the_caption_sharing_rare_words_first():
    tfidf = TfIdf(["the cat sat", "the dog ran", "the bird flew", "a cat ran"])
    keys = ["the dog sat", "the cat flew", "a bird ran"]
    # "sat" (in one training caption) outweighs "cat" (in two); true candidates first
    scores = tfidf.scores(["the cat sat on the mat", "a bird"], keys,
                          torch.tensor([[0, 1, 2], [2, 0, 1]]))
    assert scores.argmax(1).tolist() == [0, 0]


# --- end to end: splits small enough to break per-batch logic -------------------------------


def _train_and_evaluate(shapes_cache, tmp_path, *extra):
    from cmar.config import load_config
    from cmar.evaluation.run import evaluate_run
    from cmar.train import Trainer

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}",
                                "train.epochs=1", *extra])
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    return trainer, evaluate_run(trainer.run_dir, progress=False)


def test_evaluation_survives_a_last_batch_of_one_story(shapes_cache, tmp_path):
    """The crash this guards against: context sensitivity looked for another story within each
    batch, and the last batch of 64 windows of this test split (66) holds one story."""
    trainer, _ = _train_and_evaluate(shapes_cache, tmp_path, "data.n_stories=200",
                                     "eval.batch_size=64")
    dataset = _test_split(trainer)
    tail = dataset.windows[64 * (len(dataset) // 64):]
    assert tail and len({w.story for w in tail}) == 1  # the case that crashed
    saved = json.loads((trainer.run_dir / "metrics.json").read_text())["alignment"]
    for group in ("next-frame retrieval", "next-frame retrieval (same story)",
                  "next-caption retrieval", "next-caption retrieval (same story)"):
        assert {"R@1", "R@5", "MRR", "chance R@1", "windows", "floor", "floors", "saturated",
                "above floor"} <= set(saved[group]), group
    assert saved["context sensitivity"]["floor"]["gap"] == 0.0
    assert saved["image-text alignment"]["floor"]["name"] == "shuffled across stories"
    assert saved["next-frame retrieval"]["floor"]["R@1"] >= SATURATED  # pixels find it
    # a second pass gives the same numbers, and per-window hits average to R@1
    from cmar.evaluation.run import load_run, run_data

    cfg, tokenizer, model = load_run(trainer.run_dir)
    data = run_data(cfg, tokenizer, model, ("train", "test"), progress=False)
    per_window = {}
    again = alignment_scores(model, data, "test", cfg.eval.candidates,
                             cfg.eval.retrieval_windows, cfg.eval.batch_size, False, per_window)
    again = json.loads(json.dumps(again))  # run.py may add keys (intervals) to saved groups
    assert again == {g: {key: saved[g][key] for key in again[g]} for g in again}
    for group, (story_ids, hits) in per_window.items():
        assert len(story_ids) == len(hits) == saved[group]["windows"]
        assert hits.mean().item() == pytest.approx(saved[group]["R@1"])
    # eval.candidate_sets: the smoke preset ranks 20 candidates, so 32 and 100 are skipped
    for group in ("next-frame retrieval", "next-caption retrieval"):
        sizes = saved[group]["candidate sets"]
        assert list(sizes) == ["20", "32", "100"] and "skipped" in sizes["100"]
        assert sizes["20"]["R@1"] == pytest.approx(saved[group]["R@1"])
        assert sizes["20"]["chance"]["mean rank"] == 10.5
    assert "candidate sets" not in saved["next-caption retrieval (same story)"]
    # eval.retrieval_windows 0: no caption ranking, every other group unchanged
    off = alignment_scores(model, data, "test", cfg.eval.candidates, 0, cfg.eval.batch_size,
                           False)
    off = json.loads(json.dumps(off))
    for group in again:
        if group.startswith("next-caption"):
            assert off[group] == {"skipped": "eval.retrieval_windows is 0: no caption ranking"}
        else:
            assert off[group] == again[group]


def _test_split(trainer):
    from cmar.data import prepare_data

    return prepare_data(trainer.cfg.data, tokenizer=trainer.data.tokenizer, splits=("test",),
                        progress=False).datasets["test"]


def test_evaluation_of_a_single_story_split_skips_what_needs_two(shapes_cache, tmp_path):
    trainer, metrics = _train_and_evaluate(shapes_cache, tmp_path, "data.limit=1")
    assert (trainer.run_dir / "metrics.json").exists()
    alignment = metrics["alignment"]
    for group in ("next-frame retrieval", "next-caption retrieval", "context sensitivity"):
        assert alignment[group] == {"skipped": "needs windows of at least two stories"}
    assert "skipped" in alignment["image-text alignment"]
    assert alignment["next-frame retrieval (same story)"]["windows"] > 0  # one story is enough
