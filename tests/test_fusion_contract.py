"""The shared test template: every registered fusion must honour the fusion contract.

A new fusion registered with ``@FUSIONS.register("name")`` (and imported by
``cmar.models``, or by your test) is picked up here automatically; see CONTRIBUTING.md.
"""

import inspect

import pytest
import torch

from cmar.models import FUSIONS, FusedFrame, count_parameters

N, R, L, D = 6, 5, 7, 32


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    regions, tokens = torch.randn(N, R, D, generator=g), torch.randn(N, L, D, generator=g)
    mask = torch.arange(L) < torch.randint(1, L + 1, (N, 1), generator=g)
    return regions, regions.mean(1), tokens, tokens.mean(1), mask


def check_fusion(name: str) -> None:
    """The contract, as one function a contributor can call on their own fusion."""
    budget = count_parameters(FUSIONS.build("cmar", d_model=D, n_heads=2))
    fusion = FUSIONS.build(name, d_model=D, n_heads=2, rounds=2, dropout=0.0, budget=budget)
    regions, image, tokens, text, mask = (x.requires_grad_(x.is_floating_point())
                                          for x in inputs())
    out = fusion(regions, image, tokens, text, mask, return_attention=True)
    assert isinstance(out, FusedFrame)
    assert out.frame.shape == (N, D) and out.tokens.shape == (N, L, D)
    assert out.regions is None or out.regions.shape == (N, R, D)
    if out.attention is not None:
        assert out.attention.shape[0] == N and out.attention.shape[-2:] == (L, R)
        assert torch.allclose(out.attention.sum(-1), torch.ones(out.attention.shape[:-1]),
                              atol=1e-5)
    out.frame.sum().backward()
    assert regions.grad is not None and tokens.grad is not None  # both modalities reach it
    assert torch.isfinite(regions.grad).all() and torch.isfinite(tokens.grad).all()
    # padding words must not matter
    changed = tokens.detach().clone()
    changed[~mask] = 100.0
    again = fusion(regions.detach(), image.detach(), changed, text.detach(), mask)
    first = fusion(regions.detach(), image.detach(), tokens.detach(), text.detach(), mask)
    assert torch.allclose(again.frame, first.frame, atol=1e-5)
    assert abs(count_parameters(fusion) / budget - 1) < 0.1, "keep within 10% of CMAR's budget"
    if "region_mask" in inspect.signature(fusion.forward).parameters:
        check_region_mask(fusion)


def check_region_mask(fusion) -> None:
    """Regions the mask drops (letterbox padding) must not matter, as padding words must not:
    no change to the frame, the words or the kept regions, and no attention weight on them;
    ``region_mask=None`` is the unmasked fusion."""
    regions, image, tokens, text, mask = inputs(seed=1)
    g = torch.Generator().manual_seed(2)
    keep = torch.arange(R) >= torch.randint(0, R, (N, 1), generator=g)  # each frame keeps >= 1
    keep[0, :2] = False  # at least one frame drops some
    moved = regions.clone()
    moved[~keep] = 100.0
    first = fusion(regions, image, tokens, text, mask, True, region_mask=keep)
    again = fusion(moved, image, tokens, text, mask, True, region_mask=keep)
    assert torch.allclose(first.frame, again.frame, atol=1e-5)
    assert torch.allclose(first.tokens, again.tokens, atol=1e-5)
    if first.regions is not None:
        assert torch.allclose(first.regions[keep], again.regions[keep], atol=1e-5)
    if first.attention is not None:
        assert (first.attention.transpose(1, 3)[~keep] == 0).all()  # (N, R, L, rounds)
    plain = fusion(regions, image, tokens, text, mask, True)
    unmasked = fusion(regions, image, tokens, text, mask, True, region_mask=None)
    assert torch.equal(plain.frame, unmasked.frame)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_contract(name):
    check_fusion(name)
