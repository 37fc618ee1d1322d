"""The visual-route recipe: predicted next-frame regions (model.predict_regions, w_regions),
the decoder memory's region source, context-caption dropout, and per-part learning rates.
Each objective's gradient reaches what it should, and each is off at weight or rate 0."""

import dataclasses

import pytest
import torch
from model_helpers import random_batch, tiny_model

from cmar.config import load_config
from cmar.models.imagine import NextRegions, next_regions_loss
from cmar.train import loss_terms
from cmar.train.caption_dropout import drop_captions
from cmar.train.optim import make_optimizer, parameter_groups

UNK = 3


def imagining(**overrides):
    return tiny_model(**{"predict_regions": True, "w_regions": 1.0, **overrides})


def test_predicted_regions_join_the_memory_as_the_target_frame_does_in_grounded_mode():
    batch = random_batch()
    torch.manual_seed(0)
    plain = tiny_model(region_layers=1)
    torch.manual_seed(0)
    model = imagining(region_layers=1).eval()
    r = model.image_encoder.n_regions
    plain_enc, enc = plain.encode(batch), model.encode(batch)
    assert enc.predicted.shape == enc.newest.shape == (4, r, 32)
    assert enc.memory.shape[1] == plain_enc.memory.shape[1] + r
    # the memory holds what the region encoder makes of the prediction, as of a real frame
    imagined, _ = model.refine((enc.predicted, enc.predicted.mean(1)))
    assert torch.allclose(enc.memory[:, -r:], imagined + model.memory_kind.weight[3], atol=1e-6)
    assert enc.memory_mask[:, -r:].all()
    # the decoder reads them: another prediction changes the logits
    logits = model.decoder(batch.target_in, enc.memory, enc.memory_mask)
    moved = enc.memory.clone()
    moved[:, -r:] += 1.0
    assert not torch.allclose(logits, model.decoder(batch.target_in, moved, enc.memory_mask))


def test_the_region_loss_trains_the_predictor_and_the_context_encoder_not_the_target():
    torch.manual_seed(0)
    model = imagining(image_encoder="small_cnn")
    # the change layer starts at zero (a copy of frame k), which passes no gradient back yet
    torch.nn.init.normal_(model.next_regions.out.weight, std=0.05)
    batch = random_batch()
    losses = model(batch).losses
    assert "regions" in losses and losses["regions"] > 0
    losses["regions"].backward()
    predictor = [p.grad for p in model.next_regions.parameters()]
    assert all(g is not None for g in predictor) and any(g.abs().sum() > 0 for g in predictor)
    cnn = next(model.image_encoder.parameters()).grad
    assert cnn is not None and cnn.abs().sum() > 0  # through the context regions it reads
    # the true frame and frame k only set the target and the scale: no gradient reaches them
    enc = model.encode(batch)
    true_regions, _ = model.encode_grid(batch.target_image, None)
    newest = enc.newest.detach().requires_grad_()
    predicted = enc.predicted.detach().requires_grad_()
    loss = next_regions_loss(predicted, true_regions, newest)
    to_predicted, to_true, to_newest = torch.autograd.grad(
        loss, [predicted, true_regions, newest], allow_unused=True)
    assert to_predicted.abs().sum() > 0 and to_true is None and to_newest is None


def test_the_region_loss_is_off_at_weight_zero_and_refused_without_the_predictor():
    torch.manual_seed(0)
    model = imagining(w_regions=0.0)
    losses = model(random_batch()).losses
    assert "regions" not in losses
    assert model.encode(random_batch()).predicted is not None  # the prediction is still read
    cfg = load_config("smoke", ["model.predict_regions=true", "model.w_regions=0"])
    total = loss_terms(tiny_model(predict_regions=True), random_batch(), cfg)
    assert set(total) == {"caption", "align", "next", "total"}
    with pytest.raises(ValueError, match="model.predict_regions=true"):
        load_config("smoke", ["model.w_regions=0.5"])
    with pytest.raises(ValueError, match="data.mode=next"):
        load_config("smoke", ["model.predict_regions=true", "data.mode=grounded"])


def test_the_weighted_total_adds_the_region_term_at_its_weight():
    cfg = load_config("smoke", ["model.predict_regions=true", "model.w_regions=0.5"])
    torch.manual_seed(0)
    model = imagining(w_regions=0.5)
    model.eval()
    out = loss_terms(model, random_batch(), cfg)
    t = cfg.train
    expected = (out["caption"] + t.w_align * out["align"] + t.w_next * out["next"]
                + 0.5 * out["regions"])
    assert torch.allclose(out["total"], expected)


def test_region_loss_is_the_share_of_the_change_left_unpredicted():
    torch.manual_seed(0)
    newest = torch.randn(2, 4, 8)
    true = newest.clone()
    true[:, 2] = torch.randn(2, 8)  # only region 2 changes
    assert next_regions_loss(true.clone(), true, newest) == pytest.approx(0, abs=1e-6)
    assert next_regions_loss(newest.clone(), true, newest) == pytest.approx(1)  # a copy
    halfway = newest + 0.5 * (true - newest)
    assert next_regions_loss(halfway, true, newest) == pytest.approx(0.25)
    wrong = true.clone()
    wrong[:, 0] += true[:, 2] - newest[:, 2]  # as large an error, where nothing moved
    assert next_regions_loss(wrong, true, newest) == pytest.approx(1)
    # by hand, for each window: error over change, then the mean of the windows
    error = ((halfway - true) ** 2).sum(-1).sum(-1)
    change = ((true - newest) ** 2).sum(-1).sum(-1)
    assert next_regions_loss(halfway, true, newest) == pytest.approx((error / change).mean())
    # blind to the features' scale; a region outside the picture counts nowhere
    assert next_regions_loss(3 * halfway, 3 * true, 3 * newest) == pytest.approx(0.25)
    keep = torch.tensor([[True, True, True, False]] * 2)
    off = halfway.clone()
    off[:, 3] += 100.0
    assert next_regions_loss(off, true, newest, keep) == pytest.approx(0.25)


def test_the_prediction_starts_as_a_copy_of_the_newest_frame():
    torch.manual_seed(0)
    model = imagining(region_layers=1).eval()
    batch = random_batch()
    enc = model.encode(batch)
    newest, _ = model.encode_grid(batch.context_images[:, -1], None)  # before region layers
    assert torch.allclose(enc.newest, newest, atol=1e-6)
    assert torch.allclose(enc.predicted, newest, atol=1e-6)


def test_the_predictor_ignores_masked_context_regions():
    torch.manual_seed(0)
    head = NextRegions(16, 2, dropout=0.0).eval()
    torch.nn.init.normal_(head.out.weight)  # not the copy it starts as
    regions, newest = torch.randn(2, 3, 4, 16), torch.randn(2, 4, 16)
    keep = torch.ones(2, 3, 4, dtype=torch.bool)
    keep[:, 0, 1] = False
    changed = regions.clone()
    changed[:, 0, 1] = 100.0
    assert torch.allclose(head(regions, newest, keep), head(changed, newest, keep), atol=1e-5)
    assert not torch.allclose(head(regions, newest), head(changed, newest), atol=1e-3)


@pytest.mark.parametrize("source", ["fused", "encoder", "both"])
def test_memory_region_source_picks_the_regions_the_decoder_reads(source):
    torch.manual_seed(0)
    model = tiny_model(memory_region_source=source, fusion="cmar")
    enc = model.encode(random_batch())
    k, r = 3, model.image_encoder.n_regions
    start = k + 3 * 6  # story states, then the context words (k captions of 6 tokens)
    where = model.frame_position.weight[:k].repeat_interleave(r, 0)
    fused = enc.fused.regions.reshape(4, k * r, -1) + where + model.memory_kind.weight[2]
    raw = enc.regions.reshape(4, k * r, -1) + where + model.memory_kind.weight[2]
    held = enc.memory[:, start:]
    if source == "fused":
        assert torch.allclose(held, fused)
    elif source == "encoder":
        assert torch.allclose(held, raw)
    else:
        assert torch.allclose(held[:, :k * r], fused)
        assert torch.allclose(held[:, k * r:], raw + model.encoder_region_kind)
    with pytest.raises(ValueError, match="memory_region_source"):
        load_config("smoke", ["model.memory_region_source=pixels"])


def test_caption_dropout_blanks_exactly_the_drawn_windows():
    batch = random_batch(b=64)
    torch.manual_seed(5)
    drawn = torch.rand(64) < 0.3
    torch.manual_seed(5)
    dropped = drop_captions(batch, UNK, caption_rate=0.3)
    blank = dropped.context_mask.sum(-1) == 1  # (B, k)
    assert 0 < drawn.sum() < 64
    assert (blank.all(-1) == drawn).all() and not (blank.any(-1) & ~drawn).any()
    assert (dropped.context_tokens[drawn][..., 0] == UNK).all()
    assert torch.equal(dropped.context_tokens[~drawn], batch.context_tokens[~drawn])
    assert torch.equal(dropped.context_mask[~drawn], batch.context_mask[~drawn])
    for name in ("context_images", "target_in", "target_out", "target_image"):
        assert torch.equal(getattr(dropped, name), getattr(batch, name))  # text only
    assert drop_captions(batch, UNK) is batch  # rates of 0: nothing drawn, nothing changed


def test_word_dropout_sets_a_share_of_the_real_tokens_to_unk_and_drops_their_boxes():
    batch = random_batch(b=64)
    boxes = torch.zeros(*batch.context_tokens.shape, 4)
    batch = dataclasses.replace(batch, context_boxes=boxes)
    torch.manual_seed(0)
    dropped = drop_captions(batch, UNK, word_rate=0.25)
    changed = dropped.context_tokens != batch.context_tokens
    real = batch.context_mask
    assert not (changed & ~real).any()  # padding is never touched
    assert (dropped.context_tokens[changed] == UNK).all()
    share = changed.sum() / real.sum()
    assert 0.18 < share < 0.32
    assert torch.equal(dropped.context_mask, batch.context_mask)
    assert dropped.context_boxes[changed].isnan().all()
    assert not dropped.context_boxes[~changed].isnan().any()


def test_the_trainer_drops_captions_in_training_only(tmp_path):
    from cmar.train import Trainer

    cfg = load_config("smoke", [f"runs_dir={tmp_path}", "train.epochs=1",
                                "train.caption_dropout=1.0", "data.n_stories=24"])
    trainer = Trainer(cfg, progress=False)
    seen = {True: [], False: []}

    def record(module, args):
        tokens, mask = args
        seen[module.training].append(mask.sum(-1))

    trainer.model.text_encoder.register_forward_pre_hook(record)
    trainer._check_memory = lambda: None  # its one trial step (undone) reads whole captions
    trainer.fit()
    training, validation = torch.cat(seen[True]), torch.cat(seen[False])
    assert (training == 1).all()  # every training caption was one [UNK]
    assert (validation > 1).any()  # validation read the captions


def test_lr_groups_scale_a_part_and_frozen_epochs_hold_it_at_zero():
    torch.manual_seed(0)
    model = tiny_model(image_encoder="small_cnn")
    train = load_config("smoke", ["train.lr_groups={image_encoder: 0.1, decoder.out: 0.5}",
                                  "train.frozen_epochs={image_encoder: 2}"]).train
    groups = parameter_groups(model, 0.01, train.lr_groups, train.frozen_epochs)
    by_name = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        names = [by_name[id(p)] for p in group["params"]]
        prefix = group["prefix"]
        if prefix is None:
            assert not any(n.startswith(("image_encoder.", "decoder.out.")) for n in names)
        else:
            assert all(n.startswith(prefix + ".") for n in names)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters()
                                                         if p.requires_grad)
    optimizer, scheduler = make_optimizer(model, train, total_steps=40, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append({g["prefix"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    for step in (5, 15, 25):
        assert rates[step]["decoder.out"] == pytest.approx(0.5 * rates[step][None])
    assert all(rates[s]["image_encoder"] == 0 for s in range(20))  # frozen for 2 epochs
    assert rates[25]["image_encoder"] == pytest.approx(0.1 * rates[25][None])
    assert rates[25]["image_encoder"] > 0
    # a * stands for one part of a name; the longest prefix wins
    from cmar.train.optim import matching_prefix

    prefixes = ["decoder", "decoder.blocks.*.cross", "decoder.blocks"]
    assert matching_prefix("decoder.blocks.3.cross.weight", prefixes) == "decoder.blocks.*.cross"
    assert matching_prefix("decoder.blocks.3.self.weight", prefixes) == "decoder.blocks"
    assert matching_prefix("decoder_norm.weight", prefixes) is None
    with pytest.raises(ValueError, match="imge_encoder"):
        parameter_groups(model, 0.01, {"imge_encoder": 0.1})
    with pytest.raises(ValueError, match="train.lr_groups"):
        load_config("smoke", ["train.lr_groups={image_encoder: -1}"])


def test_a_part_in_its_frozen_epochs_keeps_its_weights(tmp_path):
    from cmar.train import Trainer

    cfg = load_config("smoke", [f"runs_dir={tmp_path}", "train.epochs=2", "data.n_stories=24",
                                "train.frozen_epochs={image_encoder: 1}"])
    trainer = Trainer(cfg, progress=False)
    start = {n: p.detach().clone() for n, p in trainer.model.image_encoder.named_parameters()}
    decoder_start = trainer.model.decoder.out.weight.detach().clone()
    trainer.fit(stop_after=1)
    after_one = dict(trainer.model.image_encoder.named_parameters())
    assert all(torch.equal(start[n], after_one[n]) for n in start)
    assert not torch.equal(decoder_start, trainer.model.decoder.out.weight)
    trainer.fit()
    after_two = dict(trainer.model.image_encoder.named_parameters())
    assert any(not torch.equal(start[n], after_two[n]) for n in start)


def test_teacher_regions_feeds_the_true_next_frame_in_training_only():
    batch = random_batch(b=8)
    torch.manual_seed(0)
    model = imagining(teacher_regions=1.0)
    r = model.image_encoder.n_regions
    model.train()  # (tiny models have no dropout: the two passes can be compared)
    enc = model.encode(batch)
    true_grid, _ = model.encode_grid(batch.target_image, None)
    read, _ = model.refine((true_grid, true_grid.mean(1)))
    assert torch.allclose(enc.memory[:, -r:], read + model.memory_kind.weight[3], atol=1e-5)
    assert enc.true_grid is not None  # encoded once, and the region loss reuses it
    model.eval()
    enc = model.encode(batch)
    imagined, _ = model.refine((enc.predicted, enc.predicted.mean(1)))
    assert torch.allclose(enc.memory[:, -r:], imagined + model.memory_kind.weight[3], atol=1e-5)
    # a share of 0.5: each window reads either the truth or its prediction, drawn per window
    # from the global generator (the draw comes after the encoder's, which draws nothing)
    model = imagining(teacher_regions=0.5).train()
    torch.manual_seed(3)
    chosen = torch.rand(8) < 0.5
    assert 0 < chosen.sum() < 8
    torch.manual_seed(3)
    enc = model.encode(batch)
    true_grid, _ = model.encode_grid(batch.target_image, None)
    truth = model.refine((true_grid, true_grid.mean(1)))[0] + model.memory_kind.weight[3]
    guess = model.refine((enc.predicted, enc.predicted.mean(1)))[0] + model.memory_kind.weight[3]
    held = enc.memory[:, -r:]
    for i in range(8):
        assert torch.allclose(held[i], (truth if chosen[i] else guess)[i], atol=1e-5)
        assert not torch.allclose(held[i], (guess if chosen[i] else truth)[i], atol=1e-3)
    with pytest.raises(ValueError, match="model.predict_regions=true"):
        load_config("smoke", ["model.teacher_regions=0.5"])


@pytest.mark.parametrize("source", ["encoder", "fused", "story"])
def test_only_the_encoder_source_keeps_the_text_out_of_the_prediction(source):
    torch.manual_seed(0)
    model = imagining(predict_regions_from=source, fusion="cmar").eval()
    torch.nn.init.normal_(model.next_regions.out.weight, std=0.05)  # not the copy it starts as
    batch = random_batch()
    other = dataclasses.replace(batch, context_tokens=random_batch(seed=1).context_tokens,
                                context_mask=random_batch(seed=1).context_mask)
    same = torch.allclose(model.encode(batch).predicted, model.encode(other).predicted,
                          atol=1e-6)
    assert same == (source == "encoder")


def test_the_visual_route_tool_trains_scores_and_diagnoses_an_imagining_run(
        shapes_cache, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "visual_route", Path(__file__).parent.parent / "tools" / "visual_route.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    row = tool.run("imagine", "smoke", [f"data.cache_dir={shapes_cache}", "train.epochs=1",
                                        "model.predict_regions=true", "model.w_regions=1",
                                        "model.teacher_regions=0.5"])
    assert set(row["plain"]) == set(row["images blanked"]) and "slot place" in row["plain"]
    assert "train_regions" in row["last epoch"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    found = tool.diagnose(str(tmp_path / "imagine"))
    for value in found["place, teacher-forced"].values():
        assert 0 <= value <= 1
    assert set(found["change left unpredicted (copy = 1)"]) == {
        "frame", "region the actor arrives", "region the actor leaves"}
    said = tool.verb(str(tmp_path / "imagine"))  # what the decoder says at the verb
    assert set(said) == {"true verb: runs", "true verb: walks"}
    assert sum(group["windows"] for group in said.values()) > 0
    for group in said.values():
        assert 0 <= group["p(runs)"] + group["p(walks)"] <= 1.001
    moved = tool.moves(str(tmp_path / "imagine"), batches=2)  # the look-ahead's moves
    assert moved["windows"]["test"] > 0
    probes = next(v for k, v in moved.items() if k.startswith("verb probe accuracy"))
    assert set(probes) == {"boxes", "pointer", "memory"}
    assert all(0 <= value <= 1 for value in probes.values())
    aimed = tool.points(str(tmp_path / "imagine"), batches=2)  # the look-ahead's pointer
    assert set(aimed) == {"train", "test"} and all(0 <= v["pointer"] <= 1 for v in aimed.values())
    with pytest.raises(SystemExit, match="without model.w_describe"):
        tool.describes(str(tmp_path / "imagine"))


def test_the_visual_route_probe_reads_a_separable_label_and_not_a_shuffled_one():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "visual_route", Path(__file__).parent.parent / "tools" / "visual_route.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    torch.manual_seed(0)
    x = torch.randn(800, 5)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0.2).long()
    assert tool._probe((x[:600], y[:600]), (x[600:], y[600:])) >= 0.97
    shuffled = y[torch.randperm(800)]
    assert tool._probe((x[:600], shuffled[:600]), (x[600:], shuffled[600:])) < 0.65


def test_motion_entries_let_the_prediction_read_how_regions_changed():
    torch.manual_seed(0)
    head = NextRegions(16, 2, dropout=0.0, motion=True).eval()
    torch.nn.init.normal_(head.out.weight)
    regions, newest = torch.randn(2, 3, 4, 16), torch.randn(2, 4, 16)
    keep = torch.ones(2, 3, 4, dtype=torch.bool)
    assert head(regions, newest, keep).shape == (2, 4, 16)
    # the entries read: k * R regions, then (k - 1) * R changes
    seen = {}

    def count_keys(module, args, out):
        seen["keys"] = args[1].shape[1]  # (B, entries, d)

    hook = head.layers.layers[0].multihead_attn.register_forward_hook(count_keys)
    head(regions, newest, keep)
    hook.remove()
    assert seen["keys"] == 3 * 4 + 2 * 4
    # a region masked in either of two frames gives no change entry for that pair
    keep[:, 0, 1] = False
    changed = regions.clone()
    changed[:, 0, 1] = 100.0
    assert torch.allclose(head(regions, newest, keep), head(changed, newest, keep), atol=1e-5)
    with pytest.raises(ValueError, match="predict_regions=true"):
        load_config("smoke", ["model.teacher_regions=0.2"])


def test_letterboxed_frames_keep_their_padding_out_of_the_imagined_frame():
    torch.manual_seed(0)
    model = imagining(size=64, region_layers=1, teacher_regions=0.5,
                      predict_regions_motion=True)
    batch = random_batch(size=64)
    band = torch.tensor([0.0, 18.0, 64.0, 45.0])  # a 575 x 240 frame letterboxed into 64 px
    batch = dataclasses.replace(batch, context_content=band.expand(4, 3, 4).clone(),
                                target_content=band.expand(4, 4).clone())
    out = model(batch)
    keep = model.region_mask(batch.context_content)[:, -1]  # (B, R) frame k's picture rows
    assert not keep.all() and keep.any()
    r = model.image_encoder.n_regions
    assert torch.equal(out.encoded.memory_mask[:, -r:], keep)
    assert torch.isfinite(out.losses["regions"])
    # what the padding regions of the true frame hold does not move the loss
    changed = batch.target_image.clone()
    changed[..., :8, :] += 5.0  # the top band: padding only
    torch.manual_seed(1)
    first = model.eval()(batch).losses["regions"]
    second = model(dataclasses.replace(batch, target_image=changed)).losses["regions"]
    assert torch.allclose(first, second, atol=1e-5)
