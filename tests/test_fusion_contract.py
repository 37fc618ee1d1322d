"""The shared test template: every registered fusion must honour the fusion contract.

A new fusion registered with ``@FUSIONS.register("name")`` (and imported by
``cmar.models``, or by your test) is picked up here automatically; see CONTRIBUTING.md.
"""

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


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_contract(name):
    check_fusion(name)
