"""Imagine, then describe: predict the regions of frame k+1, and let the decoder read them.

In grounded mode the decoder reads the target frame's regions and names the place the actor
stands at. In next mode that frame is what the story is about to show, so
:class:`NextRegions` predicts it from the context frames' regions: by default those of
the image encoder, so no text reaches the prediction (``model.predict_regions_from=fused``
reads them after the fusion, where each has read its own frame's caption; ``story`` also
the story encoder's states, which know from the captions whose turn it is). The prediction
joins the decoder memory where grounded mode puts the real frame (``model.predict_regions``),
and :func:`next_regions_loss` pulls it towards the real frame's encoded regions
(``model.w_regions``)::

    context regions (B, k, R, d) --NextRegions--> change (B, R, d)
    predicted = frame k's regions (stop-gradient) + change
    memory   += region encoder(predicted), as the real frame's would be
    loss = sum_r |predicted_r - true_r|^2 / sum_r |true_r - frame k's_r|^2  (true: no gradient)

The predicted and the true regions are the image encoder's own (before the region encoder,
whose dropout would add noise to both the target and the change). Most of a frame does not
change from one step to the next, so the prediction starts as a copy of frame k and learns
only the change. The loss is the share of the frame's change left
unpredicted: 1 for copying frame k, 0 for a perfect prediction. Its denominator puts the
weight where the story moved (the region the actor left and the one it went to) and makes it
blind to the features' scale, so shrinking the encoder's features cannot lower it; and no
gradient reaches the true frame or frame k's copy, so making consecutive frames alike cannot
either. The image encoder learns from it only through what the prediction reads.
"""

from __future__ import annotations

import torch
from torch import nn


class NextRegions(nn.Module):
    """Context regions (B, k, R, d) and frame k's encoded regions (B, R, d) -> predicted
    regions of frame k+1 (B, R, d).

    The queries are the newest context regions plus a learned "one step later" vector; a
    Transformer decoder lets them attend to each other and read every context region (each
    tagged with its frame's position), and a linear layer, zero at the start, gives the
    change added to frame k's regions (stop-gradient). ``region_mask`` (B, k, R), True on
    regions that see picture, keeps letterbox padding out of the keys. ``motion``: it also
    reads how each region changed from one context frame to the next (k - 1 more entries per
    region: the later frame's region plus a projection of the difference), since which
    character moved is a difference of two frames.
    """

    def __init__(self, d_model: int, n_heads: int = 4, n_layers: int = 2, dropout: float = 0.1,
                 max_frames: int = 32, motion: bool = False):
        super().__init__()
        self.motion = nn.Linear(d_model, d_model) if motion else None
        self.frame_position = nn.Embedding(max_frames, d_model)
        self.step = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerDecoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, n_layers)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.out.weight)  # starts as a copy of frame k
        nn.init.zeros_(self.out.bias)

    def forward(self, regions: torch.Tensor, newest: torch.Tensor,
                region_mask: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """``extra`` (B, E, d): more entries to read, such as the story states (E = k)."""
        b, k, r, d = regions.shape
        where = self.frame_position.weight[:k, None]  # (k, 1, d)
        keys = (regions + where).reshape(b, k * r, d)
        padding = None if region_mask is None else ~region_mask.reshape(b, k * r)
        if self.motion is not None and k > 1:
            moved = regions[:, 1:] + self.motion(regions[:, 1:] - regions[:, :-1]) + where[1:]
            keys = torch.cat([keys, moved.reshape(b, (k - 1) * r, d)], 1)
            if padding is not None:
                both = region_mask[:, 1:] & region_mask[:, :-1]
                padding = torch.cat([padding, ~both.reshape(b, (k - 1) * r)], 1)
        if extra is not None:
            keys = torch.cat([keys, extra], 1)
            if padding is not None:
                padding = torch.cat([padding, padding.new_zeros(extra.shape[:2])], 1)
        queries = regions[:, -1] + self.step  # (B, R, d) "the newest frame, one step later"
        states = self.layers(queries, keys, memory_key_padding_mask=padding)
        return newest.detach() + self.out(self.norm(states))  # (B, R, d)


def next_regions_loss(predicted: torch.Tensor, true: torch.Tensor, newest: torch.Tensor,
                      region_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The share of frame k+1's change left unpredicted, averaged over windows: for each
    window, the squared distance of predicted (B, R, d) to the true frame k+1's regions
    (B, R, d) over that of frame k's regions ``newest`` (B, R, d) to them. Neither ``true``
    nor ``newest`` gets a gradient. ``region_mask`` (B, R), True on regions of frame k+1 that
    see picture (the others count nowhere). A scalar: 1 for a copy of frame k."""
    true, newest = true.detach(), newest.detach()
    keep = (torch.ones(true.shape[:2], dtype=true.dtype, device=true.device)
            if region_mask is None else region_mask.to(true.dtype))
    error = ((predicted - true) ** 2).sum(-1)  # (B, R)
    change = ((true - newest) ** 2).sum(-1)  # (B, R)
    return ((error * keep).sum(-1) / (change * keep).sum(-1).clamp_min(1e-6)).mean()
