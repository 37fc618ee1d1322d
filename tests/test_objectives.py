"""The contrastive objectives: duplicates of one frame are never negatives, the next-frame
target can be fixed (stop-gradient), the window's own context frames can be negatives, and
the temperatures can be learned."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import random_batch, tiny_model

from cmar.models import info_nce


def test_frame_ids_are_equal_exactly_where_overlapping_windows_share_a_frame():
    batch = dataclasses.replace(random_batch(b=4, k=3),
                                window_ids=["a:3", "a:4", "b:3", "hand-made"])
    context, target = batch.frame_ids(3)
    a3, a4 = context[0].tolist(), context[1].tolist()  # frames 0-2 and 1-3 of story a
    assert a3[1:] == a4[:2] and a3[0] not in a4
    assert int(target[0]) == a4[2]  # window a:3's target is a context frame of a:4
    assert not set(context[2].tolist()) & set(a3 + a4)  # story b shares nothing with a
    every = context.flatten().tolist() + target.tolist()
    assert len(set(every)) == 4 + 1 + 4 + 4  # a: frames 0-4, b: 0-3, the hand-made window: 4


def test_a_duplicate_pair_is_left_out_of_the_negatives():
    torch.manual_seed(0)
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    a, b = torch.cat([a, a[:1]]), torch.cat([b, b[:1]])  # pair 3 is pair 0 again
    ids = torch.tensor([0, 1, 2, 0])
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.1

    def nll(row: torch.Tensor, keep: list[int], target: int) -> torch.Tensor:
        return -torch.log_softmax(row[keep], 0)[keep.index(target)]

    keep = {0: [0, 1, 2], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3], 3: [1, 2, 3]}
    a_to_b = torch.stack([nll(logits[i], keep[i], i) for i in range(4)]).mean()
    b_to_a = torch.stack([nll(logits[:, i], keep[i], i) for i in range(4)]).mean()
    expected = (a_to_b + b_to_a) / 2
    assert torch.allclose(info_nce(a, b, 0.1, ids), expected, atol=1e-6)
    assert not torch.allclose(info_nce(a, b, 0.1), expected, atol=1e-3)  # the mask matters


def test_extra_negatives_count_one_way_only_and_raise_the_loss():
    torch.manual_seed(1)
    a, b, extra = torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)
    ids, extra_ids = torch.arange(4), torch.arange(4, 10)
    plain = info_nce(a, b, 0.1, ids)
    harder = info_nce(a, b, 0.1, ids, extra, extra_ids)
    assert harder > plain
    same = extra.clone()
    same[0] = b[2]  # an extra row that is the positive of pair 2 is not its negative
    extra_ids[0] = 2
    logits = F.normalize(a, dim=-1) @ F.normalize(torch.cat([b, same]), dim=-1).T / 0.1
    logits[2, 4] = float("-inf")
    a_to_b = F.cross_entropy(logits, torch.arange(4))
    b_to_a = F.cross_entropy(logits[:, :4].T, torch.arange(4))
    assert torch.allclose(info_nce(a, b, 0.1, ids, same, extra_ids), (a_to_b + b_to_a) / 2,
                          atol=1e-6)


def _image_encoder_grad(model, term: str) -> float:
    model.zero_grad()
    model(random_batch()).losses[term].backward()
    return sum(float(p.grad.abs().sum()) for p in model.image_encoder.parameters()
               if p.grad is not None)


def test_a_detached_next_target_sends_no_gradient_through_the_target_frame():
    for choice, reaches in (("shared", True), ("detached", False)):
        torch.manual_seed(0)
        out = tiny_model(next_target=choice)(random_batch())
        grad, = torch.autograd.grad(out.losses["next"], out.next_true, allow_unused=True)
        assert (grad is not None) == reaches
    # the image encoder still learns from the loss through the context frames it encodes
    torch.manual_seed(0)
    shared = _image_encoder_grad(tiny_model(), "next")
    torch.manual_seed(0)
    detached = _image_encoder_grad(tiny_model(next_target="detached"), "next")
    assert 0 < detached != pytest.approx(shared, rel=1e-3)


def test_story_negatives_make_the_next_frame_loss_harder():
    torch.manual_seed(0)
    batch_only = tiny_model().eval()
    story = tiny_model(next_negatives="story").eval()
    story.load_state_dict(batch_only.state_dict())
    batch = random_batch()
    assert story(batch).losses["next"] > batch_only(batch).losses["next"]


def test_learned_temperatures_start_at_the_configured_one_and_train():
    torch.manual_seed(0)
    model = tiny_model(learn_temperature=True, infonce_temperature=0.07)
    assert [float(t.detach()) for t in model.temperatures()] == pytest.approx([0.07, 0.07])
    out = model(random_batch())
    (out.losses["align"] + out.losses["next"]).backward()
    assert model.infonce_log_scale.grad is not None and model.infonce_log_scale.grad.ne(0).all()
    with torch.no_grad():
        model.infonce_log_scale.fill_(math.log(1e4))
    assert [float(t.detach()) for t in model.temperatures()] == pytest.approx([0.01, 0.01])
    assert tiny_model().temperatures() == (0.1, 0.1)  # fixed unless asked


@pytest.mark.parametrize("key, value", [("next_target", "ema"), ("next_negatives", "all")])
def test_unknown_objective_choices_are_refused(key, value):
    with pytest.raises(ValueError, match=f"model.{key} must be one of"):
        tiny_model(**{key: value})


class _ShiftedWords(torch.nn.Module):
    """A fusion that wraps another and adds ``shift`` to the word states it returns: the
    frame vector the story encoder reads is untouched."""

    def __init__(self, inner, shift: float = 0.0):
        super().__init__()
        self.inner, self.shift = inner, shift

    def forward(self, *args, **kwargs):
        fused = self.inner(*args, **kwargs)
        return dataclasses.replace(fused, tokens=fused.tokens + self.shift,
                                   regions=fused.regions + self.shift)


@pytest.mark.parametrize("tokens, regions", [(False, False), (True, False), (False, True)])
def test_the_memory_flags_really_remove_words_and_regions_from_the_decoders_reach(tokens,
                                                                                  regions):
    torch.manual_seed(0)
    model = tiny_model(memory_tokens=tokens, memory_regions=regions).eval()
    batch = random_batch()
    k, lc = batch.context_tokens.shape[1:]
    size = model.encode(batch).memory.shape[1]
    region_count = model.encode_frames(batch.context_images[:, 0], None)[0].shape[1]
    assert size == k + tokens * k * lc + regions * k * region_count
    before = model(batch).logits
    model.fusion = _ShiftedWords(model.fusion, shift=1.0)
    after = model(batch).logits
    # the story states alone reach the decoder: shifting words and regions changes nothing
    assert torch.allclose(before, after) == (not tokens and not regions)
