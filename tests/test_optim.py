"""Weight decay reaches weight matrices only: never biases, norms, embeddings or positions."""

from model_helpers import tiny_model

from cmar.train.optim import parameter_groups


def names_in(model, group):
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_every_trainable_parameter_is_in_one_group_and_only_matrices_decay():
    model = tiny_model(decoder="transformer", image_encoder="small_cnn")
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed, kept = names_in(model, decay), names_in(model, no_decay)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert decayed | kept == trainable and not decayed & kept
    assert all(not name.endswith("bias") for name in decayed)
    for name in ("decoder.embed.weight", "frame_position.weight", "memory_kind.weight",
                 "decoder.norm.weight", "image_encoder.position", "text_encoder.embed.weight"):
        assert name in kept, name
    for name in ("decoder.out.weight", "decoder.blocks.0.self_attention.query.weight",
                 "image_encoder.backbone.0.0.weight", "text_encoder.encoder.rnn.weight_hh_l0"):
        assert name in decayed, name
    bn = [n for n in trainable if n.startswith("image_encoder.backbone.0.1.")]
    assert bn and all(n in kept for n in bn)  # BatchNorm gain and offset


def test_a_frozen_backbone_is_in_no_group():
    model = tiny_model(size=64, image_encoder="resnet18", freeze_image_encoder=True)
    grouped = set().union(*(names_in(model, g) for g in parameter_groups(model, 0.01)))
    assert not any(name.startswith("image_encoder.backbone.") for name in grouped)
    assert "image_encoder.project.weight" in grouped
