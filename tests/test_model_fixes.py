"""Regression tests of model defects: attention weights read after dropout, a frame-position
table too short for large k, parts dropped for being falsy, dynamically built encoder classes,
fusions that handed their inputs back, and private names the contributing guide imported."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from model_helpers import BOS, EOS, PAD, VOCAB, random_batch, tiny_model

from cmar.models import FUSIONS, FusedFrame, StoryModel, build_model, image_encoder
from cmar.settings import DataConfig, ModelConfig


def _with_boxes(batch):
    """One named character per context caption, at token 0, in the top-left quarter."""
    boxes = torch.full((*batch.context_tokens.shape, 4), float("nan"))
    boxes[:, :, 0] = torch.tensor([0.0, 0.0, 15.0, 15.0])
    return dataclasses.replace(batch, context_boxes=boxes)


@pytest.mark.parametrize("name", ["cmar", "cross"])
def test_fusion_attention_is_the_probabilities_before_dropout(name):
    torch.manual_seed(0)
    fusion = FUSIONS.build(name, d_model=32, n_heads=2, rounds=2, dropout=0.5)
    regions, tokens = torch.randn(6, 4, 32), torch.randn(6, 7, 32)
    mask = torch.ones(6, 7, dtype=torch.bool)
    trained = fusion.train()(regions, regions.mean(1), tokens, tokens.mean(1), mask, True)
    rows = trained.attention.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    evaluated = fusion.eval()(regions, regions.mean(1), tokens, tokens.mean(1), mask, True)
    # the first round reads the same inputs in both modes: the same probabilities ...
    assert torch.allclose(trained.attention[:, 0], evaluated.attention[:, 0], atol=1e-6)
    # ... while the attended values still go through dropout in training
    assert not torch.allclose(trained.tokens, evaluated.tokens, atol=1e-3)


def test_grounding_loss_keeps_a_gradient_when_dropout_drops_the_named_regions():
    torch.manual_seed(0)
    model = tiny_model(fusion="cross", w_ground=1.0).train()
    model.fusion.text_to_image.attend.dropout = 1.0  # every attention weight dropped
    out = model(_with_boxes(random_batch()))
    rows = out.attention.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert out.losses["ground"].item() < 5  # not -log(1e-6) = 13.8
    out.losses["ground"].backward()
    assert model.fusion.text_to_image.attend.in_proj_weight.grad.abs().sum() > 0


class _Tokenizer:
    pad_token_id, bos_token_id, eos_token_id, unk_token_id = PAD, BOS, EOS, 3

    def __len__(self):
        return VOCAB


def test_a_model_built_for_k_40_reads_40_context_frames():
    cfg = ModelConfig(d_model=32, n_heads=2, dropout=0.0)
    model = build_model(cfg, _Tokenizer(), DataConfig(k=40, image_size=32, max_tokens=11))
    out = model(random_batch(b=2, k=40))
    assert out.logits.shape[:2] == (2, 7) and torch.isfinite(out.logits).all()


def test_more_context_frames_than_the_model_holds_is_a_clear_error():
    model = StoryModel(ModelConfig(d_model=32, n_heads=2), VOCAB, 32, max_len=12, max_frames=3)
    with pytest.raises(ValueError, match="3 context frames"):
        model(random_batch(b=2, k=4))


class _FalsyFusion(torch.nn.Module):
    """A fusion whose truth value is False (it defines __len__, as a container would)."""

    def __init__(self, d_model):
        super().__init__()
        self.mix = torch.nn.Linear(2 * d_model, d_model)
        self.calls = 0

    def __len__(self):
        return 0

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False):
        self.calls += 1
        return FusedFrame(self.mix(torch.cat([image, text], -1)), tokens)


def test_a_falsy_component_is_used():
    fusion = _FalsyFusion(32)
    assert not fusion
    model = tiny_model(components={"fusion": fusion})
    assert model.fusion is fusion
    model(random_batch())
    assert fusion.calls == 1


@pytest.mark.parametrize("name, class_name", [("resnet18", "Resnet18"), ("resnet34", "Resnet34"),
                                              ("resnet50", "Resnet50"),
                                              ("mobilenet_v2", "MobilenetV2")])
def test_torchvision_encoders_are_plain_classes(name, class_name):
    cls = getattr(image_encoder, class_name, None)
    assert cls is not None and image_encoder.IMAGE_ENCODERS[name] is cls
    assert f"class {class_name}(" in inspect.getsource(cls)  # a definition a student can read
    assert cls.__doc__ == f"torchvision {name} up to its last block: S/32 x S/32 regions."


def test_torchvision_encoder_builds_and_encodes():
    encoder = image_encoder.IMAGE_ENCODERS.build("resnet18", d_model=32, image_size=64)
    regions, vector = encoder(torch.randn(2, 3, 64, 64))
    assert encoder.n_regions == 4 and regions.shape == (2, 4, 32) and vector.shape == (2, 32)


def test_fusions_return_only_what_they_compute():
    assert {f.name for f in dataclasses.fields(FusedFrame)} == {"frame", "tokens", "attention",
                                                                "regions"}
    model = tiny_model()
    batch = random_batch()
    enc = model.encode(batch)
    regions, image = model.encode_frames(batch.context_images, None, flat=True)
    assert torch.equal(enc.image, image)  # the pre-fusion vectors the alignment loss compares
    tokens, text = model.text_encoder(batch.context_tokens.flatten(0, 1),
                                      batch.context_mask.flatten(0, 1))
    assert torch.equal(enc.text, text)


def test_pool_and_hidden_for_are_public_and_the_guide_uses_them():
    from cmar.models import Pool, hidden_for
    from cmar.models.fusion import Pool as FusionPool

    assert Pool is FusionPool and hidden_for(None, 32, 0) == 0
    guide = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    assert "_Pool" not in guide and "_hidden_for" not in guide
    assert "import FusedFrame, Pool, hidden_for" in guide
