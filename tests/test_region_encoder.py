"""model.region_layers: self-attention among a frame's regions after the image encoder."""

import torch
from model_helpers import random_batch, tiny_model

from cmar.models.image_encoder import RegionEncoder


def test_a_region_reads_the_other_regions_of_its_frame():
    torch.manual_seed(0)
    encoder = RegionEncoder(d_model=16, n_layers=1, n_heads=2, dropout=0.0).eval()
    regions = torch.randn(2, 5, 16)  # (N, R, d)
    out, pooled = encoder(regions)
    assert out.shape == (2, 5, 16) and pooled.shape == (2, 16)
    assert torch.allclose(pooled, out.mean(1))
    changed = regions.clone()
    changed[0, 4] = torch.randn(16)  # only region 4 of frame 0 changes
    again, _ = encoder(changed)
    assert not torch.allclose(again[0, 0], out[0, 0], atol=1e-4)  # region 0 saw it
    assert torch.allclose(again[1], out[1], atol=1e-6)  # the other frame did not


def test_the_story_model_encodes_frames_through_the_region_encoder():
    torch.manual_seed(0)
    model = tiny_model(region_layers=2).eval()
    batch = random_batch()
    plain_regions, _ = model.image_encoder(batch.context_images.flatten(0, 1))
    regions, vector = model.encode_frames(batch.context_images, None, flat=True)
    assert regions.shape == plain_regions.shape
    assert not torch.allclose(regions, plain_regions, atol=1e-3)
    assert torch.allclose(vector, regions.mean(1), atol=1e-6)
    assert len(model.region_encoder.layers.layers) == 2
    counts = model.parameter_counts()
    assert counts["region_encoder"] > 0
    model.train()
    output = model(batch)
    output.losses["caption"].backward()
    grads = [p.grad for p in model.region_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_without_region_layers_the_model_has_no_region_encoder():
    model = tiny_model()
    assert model.region_encoder is None
    assert not any(name.startswith("region_encoder") for name in model.state_dict())
    assert "region_encoder" not in model.parameter_counts()
