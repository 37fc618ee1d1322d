"""The frozen-encoder feature cache gives the same model outputs without re-running the CNN."""

import pytest
import torch

from cmar.config import load_config
from cmar.data import prepare_data
from cmar.models import build_model
from cmar.models.feature_cache import FeatureStore, attach_feature_cache


@pytest.fixture
def frozen(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", "model.freeze_image_encoder=true",
                                "model.d_model=32"])
    torch.manual_seed(0)
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    return cfg, data, build_model(cfg.model, data.tokenizer, cfg.data).eval()


def test_cached_features_give_the_same_logits(frozen, tmp_path):
    cfg, data, model = frozen
    images = next(iter(data.loader("train", shuffle=False)))
    attach_feature_cache(data, model, tmp_path, progress=False)
    assert isinstance(data.datasets["train"].store, FeatureStore)
    features = next(iter(data.loader("train", shuffle=False)))
    assert features.context_images is None and features.target_image is None
    assert features.context_features.shape[2] == 128  # backbone channels, under their name
    assert set(features.frames()) == {"context_features", "target_features"}
    assert set(images.frames()) == {"context_images", "target_image"}
    assert torch.allclose(model(images).logits, model(features).logits, atol=2e-2)
    for mode in ("next", "grounded"):  # the target frame, as input or next-frame target
        model.mode = mode
        assert torch.allclose(model(images).losses["next"], model(features).losses["next"],
                              atol=2e-2)


def test_cache_is_computed_once_and_keyed_by_weights(frozen, tmp_path, monkeypatch):
    cfg, data, model = frozen
    attach_feature_cache(data, model, tmp_path, progress=False)
    files = sorted(tmp_path.glob("features-*.npy"))
    assert len(files) == 1
    again = prepare_data(cfg.data, tokenizer=data.tokenizer, splits=("train",), progress=False)
    monkeypatch.setattr(model.image_encoder.backbone, "forward", lambda x: 1 / 0)
    attach_feature_cache(again, model, tmp_path, progress=False)  # reads the file, no CNN
    monkeypatch.undo()
    with torch.no_grad():
        model.image_encoder.backbone[0][0].weight.mul_(2)
    attach_feature_cache(prepare_data(cfg.data, tokenizer=data.tokenizer, splits=("train",),
                                      progress=False), model, tmp_path, progress=False)
    assert len(sorted(tmp_path.glob("features-*.npy"))) == 2  # new weights, new key


def test_trainable_encoders_cannot_be_cached(shapes_cache, tmp_path):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    with pytest.raises(ValueError, match="freeze_image_encoder"):
        attach_feature_cache(data, build_model(cfg.model, data.tokenizer, cfg.data), tmp_path)


def test_a_cache_that_cannot_fit_on_disk_is_refused_before_work(frozen, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    cfg, data, model = frozen
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OSError, match="feature cache needs .* GB .* free"):
        attach_feature_cache(data, model, tmp_path / "full", progress=False)
    assert not list((tmp_path / "full").glob("*.npy"))
