"""Tiny configs and random batches for model tests (nothing downloaded, seconds on a CPU)."""

import torch

from cmar.config import ModelConfig
from cmar.data import Batch
from cmar.models import StoryModel

VOCAB, PAD, BOS, EOS = 30, 0, 1, 2


def random_batch(b: int = 4, k: int = 3, size: int = 32, seed: int = 0) -> Batch:
    """Random images and tokens with real padding: captions and targets of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    lc, lt = 6, 7
    context = torch.randint(4, VOCAB, (b, k, lc), generator=g)
    lengths = torch.randint(2, lc + 1, (b, k), generator=g)
    context[torch.arange(lc) >= lengths[..., None]] = PAD
    words = torch.randint(4, VOCAB, (b, lt), generator=g)
    n = torch.randint(1, lt, (b,), generator=g)  # target words; then EOS, then padding
    target_out = torch.where(torch.arange(lt) < n[:, None], words, PAD)
    target_out[torch.arange(b), n] = EOS
    target_in = torch.cat([torch.full((b, 1), BOS), target_out[:, :-1]], 1)
    target_in[target_in == EOS] = PAD
    return Batch(
        context_images=torch.randn(b, k, 3, size, size, generator=g),
        target_image=torch.randn(b, 3, size, size, generator=g),
        context_tokens=context, context_mask=context != PAD,
        target_in=target_in, target_out=target_out, target_mask=target_out != PAD,
        window_ids=[f"w{i}" for i in range(b)],
    )


# The small model of the smoke preset (one LSTM layer, no region layers, no copy head), not the
# default preset's: the tests that build it were written for it and stay fast.
SMALL = dict(decoder="lstm", decoder_layers=1, region_layers=0, copy_tokens=False)


def tiny_model(mode: str = "next", size: int = 32, components=None, **overrides) -> StoryModel:
    cfg = ModelConfig(d_model=32, n_heads=2, dropout=0.0, **{**SMALL, **overrides})
    return StoryModel(cfg, VOCAB, size, mode=mode, max_len=12, pad_id=PAD, bos_id=BOS,
                      eos_id=EOS, components=components)


def fit_term(model: StoryModel, batch: Batch, term: str, steps: int = 30,
             lr: float = 1e-2) -> tuple[float, float]:
    """Adam steps on one loss term of ``model`` on ``batch`` alone: its first and last value."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    values = []
    for _ in range(steps):
        loss = model(batch).losses[term]
        values.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return values[0], values[-1]


class TinyFusion(torch.nn.Module):
    """A user's fusion: only the documented interface (it refines no regions, as allowed)."""

    def __init__(self, d_model):
        super().__init__()
        self.mix = torch.nn.Linear(2 * d_model, d_model)
        self.calls = 0

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False):
        from cmar.models import FusedFrame

        self.calls += 1
        return FusedFrame(self.mix(torch.cat([image, text], -1)), tokens)
