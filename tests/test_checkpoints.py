"""A frozen pretrained backbone is named in a checkpoint (source and hash), not stored; loading
rebuilds it from the same weights file and refuses one that changed."""

import pytest
import torch
import torchvision
from model_helpers import random_batch, tiny_model

from cmar.models import load_model, save_model
from cmar.models.checkpoint import CHECKPOINT_FORMAT, CheckpointError


@pytest.fixture
def local_resnet_weights(tmp_path, monkeypatch):
    """ResNet-18 "ImageNet" weights where torchvision looks first (made here, not downloaded);
    returns a function that rewrites the file with other weights."""
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    file = folder / torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), file)

    write(0)
    return write


def frozen_pretrained():
    torch.manual_seed(1)
    return tiny_model(size=64, image_encoder="resnet18", pretrained=True,
                      freeze_image_encoder=True).eval()


def test_a_frozen_pretrained_backbone_is_named_not_stored(local_resnet_weights, tmp_path):
    model = frozen_pretrained()
    save_model(model, tmp_path / "light.pt")
    save_model(model, tmp_path / "full.pt", frozen_weights=True)
    light = torch.load(tmp_path / "light.pt", weights_only=True)
    assert not any(k.startswith("image_encoder.backbone.") for k in light["state_dict"])
    spec = light["named_weights"]["image_encoder.backbone"]
    assert spec["source"] == "torchvision resnet18 ResNet18_Weights.IMAGENET1K_V1"
    full_size, light_size = ((tmp_path / n).stat().st_size for n in ("full.pt", "light.pt"))
    assert light_size < full_size - 40e6  # ResNet-18's 11.2 M float32 weights
    batch = random_batch(size=64)
    for name in ("light.pt", "full.pt"):
        loaded, _ = load_model(tmp_path / name)
        assert torch.equal(loaded.eval()(batch).logits, model(batch).logits)


def test_a_changed_weights_file_is_refused_with_both_hashes(local_resnet_weights, tmp_path):
    model = frozen_pretrained()
    save_model(model, tmp_path / "light.pt")
    save_model(model, tmp_path / "full.pt", frozen_weights=True)
    local_resnet_weights(seed=5)
    sha = torch.load(tmp_path / "light.pt", weights_only=True)["named_weights"][
        "image_encoder.backbone"]["sha1"]
    with pytest.raises(CheckpointError, match=f"hash {sha}, but those loaded now hash to"):
        load_model(tmp_path / "light.pt")
    loaded, _ = load_model(tmp_path / "full.pt")  # stored weights need no file
    assert torch.equal(loaded.image_encoder.backbone[0].weight,
                       model.image_encoder.backbone[0].weight)


def test_trainable_or_random_backbones_are_stored(tmp_path):
    for options in ({"image_encoder": "resnet18"},
                    {"image_encoder": "resnet18", "freeze_image_encoder": True}):
        save_model(tiny_model(size=64, **options), tmp_path / "m.pt")
        saved = torch.load(tmp_path / "m.pt", weights_only=True)
        assert saved["named_weights"] == {}
        assert "image_encoder.backbone.0.weight" in saved["state_dict"]


def test_a_checkpoint_of_another_format_is_refused_with_a_sentence(tmp_path):
    path = tmp_path / "best.pt"
    save_model(tiny_model(), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    del payload["format"]  # as cmar wrote checkpoints before formats were numbered
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="older cmar .*format 1.*Train the run again"):
        load_model(path)
    payload["format"] = CHECKPOINT_FORMAT + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer cmar"):
        load_model(path)


def test_a_checkpoint_with_a_model_key_this_cmar_lacks_is_refused_with_a_sentence(tmp_path):
    path = tmp_path / "best.pt"
    save_model(tiny_model(), path)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["w_something_new"] = 0.0  # a key of another version of cmar
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model keys .*\['w_something_new'\].*Train the"):
        load_model(path)
