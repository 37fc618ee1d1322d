"""Pretrained parts named hf:<folder>: tiny CLIP, BERT and GPT-2 stand-ins built from configs,
saved with save_pretrained and loaded through the real from_pretrained path (no download)."""

import json

import pytest
import torch

from cmar.cli import main
from cmar.config import ModelConfig, load_config
from cmar.data import decode, encode, load_stories
from cmar.data.images import image_transform
from cmar.models import FUSIONS, StoryModel, load_model, save_model
from cmar.models.checkpoint import CheckpointError
from cmar.models.hf import HFDecoder, pretrained_tokenizer, stand_ins
from cmar.models.hf.loading import PretrainedLoadError, hf_source
from tests.model_helpers import random_batch


@pytest.fixture(scope="module")
def parts(tmp_path_factory, shapes_cache):
    """Folders of a tiny CLIP vision tower, BERT and GPT-2, the tokenizers trained on
    ShapeStories captions (as a pretrained tokenizer knows the language of the captions)."""
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"]).data
    stories = load_stories("shapestories", "train", cache_dir=shapes_cache, progress=False,
                           n_stories=cfg.n_stories, seed=cfg.shapestories_seed,
                           knobs={"image_size": cfg.image_size})
    texts = [c for s in stories for c in s.captions]
    root = tmp_path_factory.mktemp("pretrained")
    return {"image_encoder": stand_ins.vision_tower(root / "clip"),
            "text_encoder": stand_ins.text_encoder(root / "bert", texts),
            "decoder": stand_ins.causal_lm(root / "gpt2", texts)}


def hf_model(parts, mode="next", fusion="cmar", **overrides) -> StoryModel:
    tokenizer = pretrained_tokenizer(str(parts["decoder"]))
    # no copy head by default: an hf: decoder has its own vocabulary
    cfg = ModelConfig(**{"d_model": 32, "n_heads": 2, "dropout": 0.0, "fusion": fusion,
                         "region_layers": 0, "copy_tokens": False,
                         **{part: f"hf:{folder}" for part, folder in parts.items()}, **overrides})
    torch.manual_seed(0)
    return StoryModel(cfg, len(tokenizer), 32, mode=mode, max_len=12,
                      pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                      eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id)


@pytest.mark.parametrize("mode", ["next", "grounded"])
@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_every_fusion_and_mode_trains_and_generates_with_hf_parts(parts, fusion, mode):
    model = hf_model(parts, mode, fusion, w_ground=0.0)
    batch = random_batch(b=3, size=32)
    out = model(batch)
    assert out.logits.shape[:2] == batch.target_in.shape
    assert out.logits.shape[-1] == model.decoder.lm.config.vocab_size
    sum(out.losses.values()).backward()
    for part in ("image_encoder", "text_encoder", "decoder"):  # gradients reach every part
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), part
    for strategy in ("greedy", "beam", "sample"):
        ids = model.generate(batch, strategy, max_len=6, beam_size=3,
                             generator=torch.Generator().manual_seed(0))
        assert ids.shape[0] == 3 and 1 <= ids.shape[1] <= 6


class Rerun(HFDecoder):
    """Reference decoding: each step runs the whole prefix again, no cache."""

    def init_state(self, memory, memory_mask, memory_ids=None):
        state = super().init_state(memory, memory_mask)
        return {**state, "tokens": memory_mask.new_zeros(memory.shape[0], 0, dtype=torch.long)}

    def step(self, tokens, state):
        prefix = torch.cat([state["tokens"], tokens[:, None]], dim=1)
        out = self.lm(input_ids=prefix, encoder_hidden_states=state["memory_states"],
                      encoder_attention_mask=state["memory_mask"].long(), use_cache=False)
        return out.logits[:, -1], {**state, "tokens": prefix}


def test_cached_steps_equal_the_teacher_forced_pass_and_rerunning_the_prefix(parts):
    model = hf_model(parts).eval()
    decoder = model.decoder
    with torch.no_grad():  # far from uniform logits, and (tied embeddings) the start token
        embeddings = decoder.lm.get_input_embeddings().weight  # does not predict itself:
        embeddings.normal_(0.0, 1.0)[decoder.eos_id] = 0.0  # captions run long
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(3, 7, 32, generator=g)
    mask = torch.arange(7) < torch.tensor([[7], [3], [1]])
    tokens = torch.randint(1, decoder.lm.config.vocab_size, (3, 8), generator=g)
    forced = decoder(tokens, memory, mask)
    state = decoder.init_state(memory, mask)
    for i in range(tokens.shape[1]):
        logits, state = decoder.step(tokens[:, i], state)
        assert torch.allclose(logits, forced[:, i], atol=1e-5), i
    reference = Rerun.__new__(Rerun)
    reference.__dict__ = decoder.__dict__  # the same modules and ids, another step
    for strategy, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        cached = decoder.generate(memory, mask, strategy, max_len=10, **options)
        rerun = reference.generate(memory, mask, strategy, max_len=10, **options)
        assert torch.equal(cached, rerun), strategy
        assert cached.shape[1] > 3  # random weights: long captions, many cached steps


def test_a_tokenizer_whose_end_token_is_also_pad_bos_and_unk_can_still_end(parts):
    model = hf_model(parts).eval()
    decoder = model.decoder
    assert decoder.pad_id == decoder.bos_id == decoder.eos_id  # GPT-2's one <|endoftext|>
    logits = torch.zeros(2, decoder.lm.config.vocab_size)
    logits[:, decoder.eos_id] = 5.0
    assert decoder._scores(logits).argmax(-1).tolist() == [decoder.eos_id] * 2


def test_the_decoder_tokenizer_round_trips_captions_and_decode_stops_at_its_end(parts):
    tokenizer = pretrained_tokenizer(str(parts["decoder"]))
    text = "José’s “odd” hat — isn't it <|endoftext|> Ada's?"
    ids = encode(tokenizer, text)
    assert tokenizer.eos_token_id not in ids  # a literal end token in text stays text
    assert decode(tokenizer, ids) == text
    assert decode(tokenizer, [*ids, tokenizer.eos_token_id, *ids]) == text


def test_the_tower_sees_frames_as_its_own_image_processor_prepares_them(parts):
    from transformers import CLIPImageProcessor

    model = hf_model(parts).eval()
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ours = model.image_encoder.backbone(image_transform()(frames))
    processor = CLIPImageProcessor.from_pretrained(parts["image_encoder"])
    pixels = processor(list(frames.permute(0, 2, 3, 1).numpy()), return_tensors="pt")
    out = model.image_encoder.backbone.tower(pixel_values=pixels["pixel_values"])
    assert torch.allclose(ours[:, 0], out.pooler_output, atol=1e-4)
    assert torch.allclose(ours[:, 1:], out.last_hidden_state[:, 1:], atol=1e-4)
    assert model.image_encoder.n_regions == ours.shape[1] - 1 == 16  # 32 px / patch 8


def test_freeze_flags_stop_gradients_but_new_cross_attention_trains(parts):
    model = hf_model(parts, freeze_image_encoder=True, freeze_text_encoder=True,
                     freeze_decoder=True)
    assert not any(p.requires_grad for p in model.image_encoder.backbone.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.model.parameters())
    trainable = {n for n, p in model.decoder.lm.named_parameters() if p.requires_grad}
    assert trainable and all("crossattention" in n or "ln_cross_attn" in n for n in trainable)
    assert model.image_encoder.project.weight.requires_grad  # projections always train
    with pytest.raises(ValueError, match="freeze_decoder"):
        StoryModel(ModelConfig(freeze_decoder=True), 30, 32)


def test_a_frozen_tower_is_named_in_the_checkpoint_and_checked_on_load(parts, tmp_path):
    model = hf_model(parts, freeze_image_encoder=True, freeze_text_encoder=True)
    save_model(model, tmp_path / "m.pt")
    stored = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(stored["named_weights"]) == {"image_encoder.backbone", "text_encoder.model"}
    assert not any(k.startswith("image_encoder.backbone.") for k in stored["state_dict"])
    assert any(k.startswith("decoder.lm.") for k in stored["state_dict"])  # fine-tuned: stored
    loaded, _ = load_model(tmp_path / "m.pt")
    batch = random_batch(b=2, size=32)
    assert torch.allclose(loaded.eval()(batch).logits, model.eval()(batch).logits, atol=1e-5)
    stored["named_weights"]["image_encoder.backbone"]["sha1"] = "0" * 16
    torch.save(stored, tmp_path / "changed.pt")
    with pytest.raises(CheckpointError, match="changed"):
        load_model(tmp_path / "changed.pt")


def test_names_that_cannot_load_offline_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(d_model=32, n_heads=2, image_encoder="hf:nobody/no-such-model")
    with pytest.raises(PretrainedLoadError, match="not in the local Hugging Face cache.*"
                                                  "local folder"):
        StoryModel(cfg, 30, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedLoadError, match="does not hold a loadable"):
        StoryModel(ModelConfig(decoder=f"hf:{tmp_path / 'empty'}", copy_tokens=False), 30, 32)
    assert hf_source("lstm") is None and hf_source("hf:gpt2") == "gpt2"
    with pytest.raises(ValueError, match="names no model"):
        hf_source("hf:")


def test_copy_tokens_is_refused_with_an_hf_part(parts):
    with pytest.raises(ValueError, match="copy_tokens"):
        hf_model(parts, copy_tokens=True)


def test_cli_trains_evaluates_and_generates_with_every_part_pretrained(parts, shapes_cache,
                                                                         tmp_path, capsys):
    sets = [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}", "name=hf",
            "train.epochs=1", "model.freeze_image_encoder=true", "data.mode=grounded",
            *(f"model.{part}=hf:{folder}" for part, folder in parts.items())]
    args = ["train", "--config", "smoke"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    run = tmp_path / "hf"
    saved = pretrained_tokenizer(str(run / "tokenizer"))
    assert saved.get_vocab() == pretrained_tokenizer(str(parts["decoder"])).get_vocab()
    assert list((shapes_cache / "features").glob("features-*.npy"))  # the tower's cache
    assert main(["evaluate", str(run), "--bootstrap", "0"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "model" in metrics["captions"] and len(metrics["captions"]) > 1  # beside floors
    assert main(["generate", str(run), "--strategy", "beam"]) == 0
    assert "predicted:" in capsys.readouterr().out


def test_the_pretrained_cost_estimate_measures_a_step_and_labels_estimates():
    from cmar.research.bench.pretrained import bench_pretrained, render_pretrained

    result = bench_pretrained("storyreasoning-clip", ["data.batch_size=2", "data.max_tokens=8",
                                                      "model.d_model=32", "model.n_heads=2"],
                              steps=1, size="tiny")
    assert result["batch"]["features"]  # the frozen tower reads cached features
    assert result["activations_gib"] > 0 and result["flops_per_step"] > 0
    assert 0 < result["trainable"] < result["parameters"]  # the tower and MiniLM are frozen
    estimate = result["estimate"]
    assert estimate["gpu_memory_gib"] > 1.0  # at least the CUDA context
    assert result["steps_per_epoch"] == -(-result["train_windows"] // 2)
    assert "ESTIMATES (not measured on a GPU)" in render_pretrained(result)


def test_decoders_that_cannot_cross_attend_are_refused_with_a_sentence(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM

    tiny = dict(vocab_size=64, max_position_embeddings=64)
    BartForConditionalGeneration(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=32, decoder_ffn_dim=32, **tiny)
                                 ).save_pretrained(tmp_path / "bart")
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, **tiny)
                     ).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="encoder-decoder"):
        HFDecoder(str(tmp_path / "bart"), 64, 16, 0, 1, 2)
    with pytest.raises(ValueError, match="cannot cross-attend"):
        HFDecoder(str(tmp_path / "llama"), 64, 16, 0, 1, 2)


def test_dinov2_siglip_and_vit_towers_give_patch_regions_at_their_processors_side(tmp_path):
    """Each tower's regions are its patch tokens (class and register tokens dropped), at the
    side its image processor crops to, which may differ from its config's."""
    import transformers as tf

    from cmar.models.hf import HFImageEncoder

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64)
    towers = {  # name: (model, processor, expected side, expected regions)
        "dinov2": (tf.Dinov2Model(tf.Dinov2Config(**small, image_size=56, patch_size=14)),
                   tf.BitImageProcessor(size={"shortest_edge": 28}, do_center_crop=True,
                                        crop_size={"height": 28, "width": 28}), 28, 4),
        "siglip": (tf.SiglipVisionModel(tf.SiglipVisionConfig(**small, image_size=32,
                                                              patch_size=8)),
                   tf.SiglipImageProcessor(size={"height": 32, "width": 32}), 32, 16),
        "vit": (tf.ViTModel(tf.ViTConfig(**small, image_size=32, patch_size=8)),
                tf.ViTImageProcessor(size={"height": 32, "width": 32}), 32, 16),
    }
    for name, (model, processor, side, regions) in towers.items():
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        encoder = HFImageEncoder(str(tmp_path / name), d_model=16, image_size=32)
        assert encoder.backbone.side == side, name
        assert encoder.backbone.scale.flatten().tolist() != [1.0, 1.0, 1.0]  # own mean, std
        r, g = encoder(torch.randn(2, 3, 32, 32))
        assert r.shape == (2, regions, 16) and g.shape == (2, 16), name


def test_gradient_checkpointing_gives_the_same_gradients(parts):
    batch = random_batch(b=2, size=32)
    grads = []
    for checkpointing in (False, True):
        model = hf_model(parts, gradient_checkpointing=checkpointing).train()
        lm = model.decoder.lm
        on = getattr(lm, "is_activation_checkpointing", None)  # transformers 5.x's name
        assert (lm.is_gradient_checkpointing if on is None else on) == checkpointing
        sum(model(batch).losses.values()).backward()
        grads.append([p.grad for p in model.decoder.lm.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_the_clip_preset_trains_gpt2s_pretrained_weights_slower_than_its_new_layers(parts):
    from cmar.train.optim import parameter_groups

    train = load_config("storyreasoning-clip").train
    model = hf_model(parts)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"]
             for g in parameter_groups(model, 0.01, train.lr_groups) for p in g["params"]}
    lm = {n: s for n, s in scale.items() if n.startswith("decoder.lm.")}
    new = {n for n in lm if "crossattention" in n or "ln_cross_attn" in n}
    assert new and all(lm[n] == 1.0 for n in new)  # the cross-attention GPT-2 did not have
    assert all(s == 0.2 for n, s in lm.items() if n not in new)  # its pretrained weights
    assert scale["decoder.bridge.weight"] == 1.0 and scale["fusion.pool.norm.weight"] == 1.0
    assert train.lr * 0.2 == pytest.approx(1e-4)
