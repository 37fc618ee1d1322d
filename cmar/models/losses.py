"""The loss terms of a StoryModel: caption cross-entropy, the symmetric InfoNCE of the
alignment and next-frame objectives, and the grounding loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cmar.data.mentions import box_regions


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position: logits (B, L, V), targets (B, L) -> (B, L)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.1,
             ids: torch.Tensor | None = None, extra: torch.Tensor | None = None,
             extra_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: row i of a (N, d) must match row i of b (N, d).

    a -> b: row i of ``a`` picks its match among the N rows of ``b`` and, when given, the E
    rows of ``extra`` (E, d), negatives only. b -> a: row i of ``b`` picks among the N rows of
    ``a``. ``ids`` (N,) names the item of each pair and ``extra_ids`` (E,) that of each extra
    row: a candidate other than the match that is the same item (one frame in two overlapping
    windows) is not a negative, so it is left out instead of pushed away.
    """
    candidates = b if extra is None else torch.cat([b, extra])
    logits = F.normalize(a, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    n = len(a)
    labels = torch.arange(n, device=a.device)
    if ids is not None:
        every = ids if extra is None else torch.cat([ids, extra_ids])
        duplicate = ids[:, None] == every[None, :]  # (N, N + E)
        duplicate[labels, labels] = False
        logits = logits.masked_fill(duplicate, float("-inf"))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :n].T, labels)) / 2


def grounding_loss(attention: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                   image_size: int) -> torch.Tensor:
    """Minus the log of the attention mass a tagged mention (a character's name, or with
    ``model.ground_mentions=all`` an object or place too) puts on the regions its box covers,
    averaged over the mentions in the batch and the fusion's rounds.

    attention (B, k, rounds, Lc, R) word-to-region weights over a square grid of R regions
    (:mod:`cmar.data.mentions`); boxes (B, k, Lc, 4) in the S x S frame's pixels, NaN where a
    token names no one (``Batch.context_boxes``); mask (B, k, Lc) True on real tokens. A batch
    that names no one gives 0, still attached to the graph.
    """
    regions = attention.shape[-1]
    side = math.isqrt(regions)
    if side * side != regions:
        raise ValueError(f"the grounding loss needs a square grid of regions, got R={regions}")
    covered = box_regions(boxes, side, image_size / side)  # (B, k, Lc, R)
    named = mask & covered.any(-1)  # (B, k, Lc): a NaN box covers nothing
    mass = (attention * covered[:, :, None].to(attention.dtype)).sum(-1)  # (B, k, rounds, Lc)
    which = named[:, :, None].expand_as(mass)
    if not which.any():
        return attention.sum() * 0
    return -torch.log(mass[which].float().clamp_min(1e-6)).mean()
