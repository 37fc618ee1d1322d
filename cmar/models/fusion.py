"""Per-frame fusion of image regions and caption words: ``concat``, ``cross`` and ``cmar``.

Contract of every fusion (register yours in ``FUSIONS``; see CONTRIBUTING.md)::

    fusion(regions, image, tokens, text, text_mask, return_attention=False,
           region_mask=None) -> FusedFrame
      regions   (N, R, d)  image regions of N frames        image (N, d)  their pooled vector
      tokens    (N, L, d)  caption token states             text  (N, d)  their pooled vector
      text_mask (N, L)     True on real tokens
      region_mask (N, R)   True on regions that see picture, or None: every region does
    FusedFrame(frame (N, d), tokens (N, L, d), attention (N, rounds, L, R) or None,
               regions (N, R, d) or None: the fusion refined none; the turn-conditioned
               look-ahead then refines the encoder's regions in their place)

``image`` and ``text`` are inputs a fusion may read (the built-in ones pool the regions and
words themselves); a fusion returns only what it computes. The alignment loss compares the
pooled vectors from before fusion, which the StoryModel keeps (``Encoded.image``/``text``).

``region_mask`` (optional; the model passes it only to a fusion whose ``forward`` takes it, and
only when some region lies wholly in letterbox padding): a masked region must change nothing
a fusion returns, as a padding word must not. It is no key of any attention (so it gets 0
weight in ``attention``) and no part of a pooled vector; its own row of ``regions`` may hold
anything, the model masks it in the decoder memory. ``None`` must take the unmasked path.

CMAR, with image regions V and word states W, repeats for r rounds::

    W <- LayerNorm(W + g_w * Attn(W, V, V)),  g_w = sigmoid(G_w [W ; Attn(W, V, V)])
    V <- LayerNorm(V + g_v * Attn(V, W, W)),  g_v = sigmoid(G_v [V ; Attn(V, W, W)])

then pools both sides and projects ``[mean V ; mean W]`` to the frame vector. ``cross`` is one
text-to-image pass; ``concat`` only concatenates the pooled vectors. Both ablations get a
feed-forward block sized so their parameter count matches CMAR's (``budget``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmar.models.registry import FUSIONS, count_parameters
from cmar.models.sequence import masked_mean


@dataclass
class FusedFrame:
    """What a fusion computes for N frames."""

    frame: torch.Tensor  # (N, d) the fused frame vector the story encoder reads
    tokens: torch.Tensor  # (N, L, d) word states after fusion (decoder memory)
    attention: torch.Tensor | None = None  # (N, rounds, L, R) word -> region weights, each
    #                                        row sums to 1 (before dropout)
    regions: torch.Tensor | None = None  # (N, R, d) regions after fusion (decoder memory)


class GatedAttention(nn.Module):
    """x <- LayerNorm(x + sigmoid(G [x ; a]) * a) with a = MultiheadAttention(x, y, y).

    ``token_gate=False``: the gate is one learned value per channel, sigmoid(g), the same for
    every token (as LayerScale): no gate projection, so 2 d^2 fewer multiply-adds per token.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, token_gate: bool = True):
        super().__init__()
        self.attend = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model) if token_gate else None
        self.channel_gate = None if token_gate else nn.Parameter(torch.zeros(d_model))
        self.norm = nn.LayerNorm(d_model)

    def probabilities(self, x, y, y_mask=None) -> torch.Tensor:
        """The attention probabilities of x (N, Lx, d) over y (N, Ly, d) with ``self.attend``'s
        projections, before dropout, averaged over heads: (N, Lx, Ly), each row sums to 1.
        ``y_mask`` (N, Ly) is True on entries that may be read."""
        n, d, heads = x.shape[0], x.shape[-1], self.attend.num_heads
        w_q, w_k, _ = self.attend.in_proj_weight.chunk(3)
        b_q, b_k, _ = self.attend.in_proj_bias.chunk(3)

        def split(z):  # (N, L, d) -> (N, heads, L, d / heads)
            return z.view(n, z.shape[1], heads, d // heads).transpose(1, 2)

        q, k = split(F.linear(x, w_q, b_q)), split(F.linear(y, w_k, b_k))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # (N, heads, Lx, Ly)
        if y_mask is not None:
            scores = scores.masked_fill(~y_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)

    def forward(self, x, y, y_mask=None, need_weights: bool = False):
        """x (N, Lx, d) attends to y (N, Ly, d); returns new x and, if asked, the weights
        (N, Lx, Ly): the probabilities before dropout (else None).

        ``nn.MultiheadAttention`` returns its weights after dropout: in training their rows
        would not sum to 1, and a weight dropped to 0 would give the grounding loss no
        gradient. So in training they are computed again, before dropout, when asked.
        """
        a, weights = self.attend(x, y, y, key_padding_mask=None if y_mask is None else ~y_mask,
                                 need_weights=True, average_attn_weights=True)
        if not need_weights:
            weights = None
        elif self.training and self.attend.dropout > 0:
            weights = self.probabilities(x, y, y_mask)
        if self.gate is not None:
            g = torch.sigmoid(self.gate(torch.cat([x, a], dim=-1)))
        else:
            g = torch.sigmoid(self.channel_gate)  # starts at 0.5 for every channel
        return self.norm(x + g * a), weights


class Pool(nn.Module):
    """[mean regions ; mean words] -> frame vector, through a feed-forward block of width
    ``hidden`` (0 for a single projection)."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        if hidden:
            self.project = nn.Sequential(nn.Linear(2 * d_model, hidden), nn.GELU(),
                                         nn.Dropout(dropout), nn.Linear(hidden, d_model))
        else:
            self.project = nn.Linear(2 * d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, regions, tokens, text_mask, region_mask=None):
        """regions (N, R, d), tokens (N, L, d), text_mask (N, L), region_mask (N, R) or None
        (every region) -> frame vectors (N, d)."""
        image = regions.mean(1) if region_mask is None else masked_mean(regions, region_mask)
        pooled = torch.cat([image, masked_mean(tokens, text_mask)], dim=-1)
        return self.norm(self.project(pooled))  # (N, d)


def hidden_for(budget: int | None, d_model: int, fixed: int) -> int:
    """Width h of the pooling MLP that brings a fusion with ``fixed`` other parameters to
    ``budget``: the MLP 2d -> h -> d holds h (3d + 1) + d parameters."""
    if budget is None:
        return 0
    return max(1, round((budget - fixed - d_model) / (3 * d_model + 1)))


@FUSIONS.register("cmar")
class CMARFusion(nn.Module):
    """Cross-Modal Attention Refinement: r rounds of text->image then image->text."""

    def __init__(self, d_model: int, n_heads: int = 4, rounds: int = 2, dropout: float = 0.1,
                 budget: int | None = None, token_gates: bool = True):
        super().__init__()
        self.text_to_image = nn.ModuleList(GatedAttention(d_model, n_heads, dropout, token_gates)
                                           for _ in range(rounds))
        self.image_to_text = nn.ModuleList(GatedAttention(d_model, n_heads, dropout, token_gates)
                                           for _ in range(rounds))
        self.pool = Pool(d_model, 0, dropout)

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False,
                region_mask=None):
        """The fusion contract (module docstring); ``image`` and ``text`` are not read."""
        maps = []
        for t2i, i2t in zip(self.text_to_image, self.image_to_text, strict=True):
            # words gather evidence from regions (not from letterbox padding)
            tokens, weights = t2i(tokens, regions, region_mask, need_weights=return_attention)
            # regions re-read the refined words; a masked region's row is read by nothing
            regions, _ = i2t(regions, tokens, text_mask)
            maps.append(weights)  # (N, L, R), or None when not asked
        return FusedFrame(self.pool(regions, tokens, text_mask, region_mask), tokens,
                          torch.stack(maps, 1) if return_attention else None, regions)


@FUSIONS.register("cmar_lite")
class CMARLiteFusion(CMARFusion):
    """A cheaper CMAR: one round (text->image, then image->text) with per-channel gates
    instead of per-token gate projections, and a pooling MLP that brings its parameters to
    CMAR's (``budget``). About a third of CMAR's fusion FLOPs (``cmar bench cost``)."""

    def __init__(self, d_model: int, n_heads: int = 4, rounds: int = 2, dropout: float = 0.1,
                 budget: int | None = None):
        super().__init__(d_model, n_heads, rounds=1, dropout=dropout, token_gates=False)
        fixed = count_parameters(self.text_to_image) + count_parameters(self.image_to_text)
        self.pool = Pool(d_model, hidden_for(budget, d_model, fixed + 2 * d_model), dropout)


@FUSIONS.register("cross")
class CrossFusion(nn.Module):
    """Ablation: one text-to-image attention pass, no refinement of the regions."""

    def __init__(self, d_model: int, n_heads: int = 4, rounds: int = 2, dropout: float = 0.1,
                 budget: int | None = None):
        super().__init__()
        self.text_to_image = GatedAttention(d_model, n_heads, dropout)
        fixed = count_parameters(self.text_to_image) + 2 * d_model  # + the pool's LayerNorm
        self.pool = Pool(d_model, hidden_for(budget, d_model, fixed), dropout)

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False,
                region_mask=None):
        """The fusion contract (module docstring); ``image`` and ``text`` are not read."""
        tokens, weights = self.text_to_image(tokens, regions, region_mask,
                                             need_weights=return_attention)
        return FusedFrame(self.pool(regions, tokens, text_mask, region_mask), tokens,
                          weights.unsqueeze(1) if return_attention else None, regions)


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """Ablation: no attention; the pooled image and text vectors are concatenated."""

    def __init__(self, d_model: int, n_heads: int = 4, rounds: int = 2, dropout: float = 0.1,
                 budget: int | None = None):
        super().__init__()
        self.pool = Pool(d_model, hidden_for(budget, d_model, 2 * d_model), dropout)

    def forward(self, regions, image, tokens, text, text_mask, return_attention=False,
                region_mask=None):
        """The fusion contract (module docstring); ``image`` and ``text`` are not read."""
        return FusedFrame(self.pool(regions, tokens, text_mask, region_mask), tokens, None,
                          regions)
