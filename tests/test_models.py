"""Every model combination builds and learns; the decoder uses its input; checkpoints reload."""

import itertools

import pytest
import torch
from model_helpers import EOS, PAD, TinyFusion, random_batch, tiny_model

from cmar.models import DECODERS, FUSIONS, SEQUENCE_ENCODERS, load_model, save_model


@pytest.mark.parametrize("mode", ["next", "grounded"])
@pytest.mark.parametrize("fusion,story,decoder",
                         list(itertools.product(FUSIONS, SEQUENCE_ENCODERS, DECODERS)))
def test_every_combination_runs_forward_and_backward(fusion, story, decoder, mode):
    model = tiny_model(mode, fusion=fusion, story_encoder=story, decoder=decoder)
    batch = random_batch()
    out = model(batch)
    assert out.logits.shape == (4, 7, 30)
    total = sum(out.losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("text_encoder", list(SEQUENCE_ENCODERS))
def test_every_text_encoder(text_encoder):
    out = tiny_model(text_encoder=text_encoder)(random_batch())
    assert torch.isfinite(out.losses["caption"])


def test_next_mode_never_reads_the_target_image_but_grounded_does():
    batch, other = random_batch(seed=0), random_batch(seed=0)
    other.target_image = torch.randn_like(other.target_image)
    for mode, should_change in (("next", False), ("grounded", True)):
        torch.manual_seed(0)
        model = tiny_model(mode).eval()
        changed = not torch.allclose(model(batch).logits, model(other).logits)
        assert changed == should_change, mode


def test_fusion_parameter_budgets_match_within_one_percent():
    counts = {f: tiny_model(fusion=f).parameter_counts()["fusion"] for f in FUSIONS}
    assert max(counts.values()) / min(counts.values()) < 1.01, counts


def test_cmar_returns_attention_over_regions_per_word():
    model = tiny_model(fusion="cmar", cmar_rounds=3)
    out = model(random_batch(), return_attention=True)
    b, k, rounds, words, regions = out.attention.shape
    assert (b, k, rounds, words) == (4, 3, 3, 6)
    assert regions == model.image_encoder.n_regions
    assert torch.allclose(out.attention.sum(-1), torch.ones(b, k, rounds, words), atol=1e-5)


def test_components_hook_swaps_a_part():
    fusion = TinyFusion(32)
    model = tiny_model(components={"fusion": fusion})
    assert model.fusion is fusion
    model(random_batch())
    assert fusion.calls == 1
    with pytest.raises(KeyError, match="unknown components"):
        tiny_model(components={"fuser": fusion})


def test_unknown_registry_name_lists_the_choices():
    with pytest.raises(KeyError, match="registered: .*cmar"):
        tiny_model(fusion="cmra")


def test_checkpoint_reloads_with_weights_only_and_identical_logits(tmp_path):
    model = tiny_model(fusion="cross", decoder="transformer").eval()
    save_model(model, tmp_path / "best.pt", extra={"epoch": 3})
    loaded, extra = load_model(tmp_path / "best.pt")
    loaded.eval()
    batch = random_batch()
    assert extra == {"epoch": 3}
    assert torch.equal(model(batch).logits, loaded(batch).logits)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["init_args"]["max_len"] == 12


def test_frozen_image_encoder_keeps_weights_and_batchnorm_statistics():
    model = tiny_model(freeze_image_encoder=True)
    backbone = model.image_encoder.backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model.train()
    model(random_batch())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_generated_ids_end_at_eos_and_respect_max_len():
    model = tiny_model()
    for strategy in ("greedy", "beam", "sample"):
        ids = model.generate(random_batch(), strategy, max_len=9)
        assert ids.shape[1] <= 9
        for row in ids.tolist():
            if EOS in row:
                assert all(t == PAD for t in row[row.index(EOS) + 1:])
            else:
                assert len(row) == 9 and PAD not in row


def test_attention_module_equals_torch_multihead_attention():
    from cmar.models.attention import Attention

    g = torch.Generator().manual_seed(0)
    attention = Attention(32, 4).eval()
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():  # the same projections, packed the way torch packs them
        reference.in_proj_weight.copy_(torch.cat([attention.query.weight, attention.key.weight,
                                                  attention.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([attention.query.bias, attention.key.bias,
                                                attention.value.bias]))
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
    states, memory = torch.randn(3, 5, 32, generator=g), torch.randn(3, 9, 32, generator=g)
    mask = torch.arange(9) < torch.tensor([[9], [4], [1]])
    ours = attention(states, *attention.keys_values(memory), mask)
    theirs, _ = reference(states, memory, memory, key_padding_mask=~mask)
    assert torch.allclose(ours, theirs, atol=1e-5)
    causal = attention(memory, *attention.keys_values(memory), causal=True)
    upper = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert torch.allclose(causal, reference(memory, memory, memory, attn_mask=upper)[0],
                          atol=1e-5)
