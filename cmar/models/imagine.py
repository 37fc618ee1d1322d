"""Imagine, then describe: predict the regions of frame k+1, and let the decoder read them.

In grounded mode the decoder reads the target frame's regions and names the place the actor
stands at. In next mode that frame is what the story is about to show, so
:class:`NextRegions` predicts it from the context frames' regions: by default those of
the image encoder, so no text reaches the prediction (``model.predict_regions_from=fused``
reads them after the fusion, where each has read its own frame's caption). The prediction
joins the decoder memory where grounded mode puts the real frame (``model.predict_regions``), and
:func:`next_regions_loss` pulls it towards the real frame's encoded regions
(``model.w_regions``)::

    context regions (B, k, R, d) --NextRegions--> predicted regions of frame k+1 (B, R, d)
    loss: 1 - cos(predicted_r, stopgrad(true_r)), each region r weighted by how much it
          changed since frame k (1 + its change / the frame's mean change)

Most of a frame does not change from one step to the next, so a prediction that copies the
newest frame is already close everywhere but where the story moved. The weights put the loss
where it did: the region the actor left and the one it went to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NextRegions(nn.Module):
    """Context regions (B, k, R, d) -> predicted regions of frame k+1 (B, R, d).

    The queries are the newest context frame's regions plus a learned "one step later"
    vector; a Transformer decoder lets them attend to each other and read every context
    region (each tagged with its frame's position), and a linear layer maps the result into
    the space of the image encoder's regions. ``region_mask`` (B, k, R), True on regions that
    see picture, keeps letterbox padding out of the keys.
    """

    def __init__(self, d_model: int, n_heads: int = 4, n_layers: int = 2, dropout: float = 0.1,
                 max_frames: int = 32):
        super().__init__()
        self.frame_position = nn.Embedding(max_frames, d_model)
        self.step = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerDecoderLayer(d_model, n_heads, 2 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, n_layers)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, regions: torch.Tensor, region_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, k, r, d = regions.shape
        where = self.frame_position.weight[:k, None]  # (k, 1, d)
        keys = (regions + where).reshape(b, k * r, d)
        padding = None if region_mask is None else ~region_mask.reshape(b, k * r)
        queries = regions[:, -1] + self.step  # (B, R, d) "the newest frame, one step later"
        states = self.layers(queries, keys, memory_key_padding_mask=padding)
        return self.out(self.norm(states))  # (B, R, d)


def next_regions_loss(predicted: torch.Tensor, true: torch.Tensor, newest: torch.Tensor,
                      region_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Change-weighted cosine distance of predicted (B, R, d) to the true frame k+1's regions
    (B, R, d), whose gradient is stopped; ``newest`` (B, R, d): frame k's regions, which only
    set the weights. ``region_mask`` (B, R), True on regions of frame k+1 that see picture
    (the others weigh 0). A scalar."""
    true, newest = true.detach(), newest.detach()
    change = 1 - F.cosine_similarity(true, newest, dim=-1)  # (B, R), in [0, 2]
    keep = (torch.ones_like(change, dtype=torch.bool) if region_mask is None
            else region_mask.to(torch.bool))
    change = change * keep
    mean = change.sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp_min(1)
    weight = (1 + change / mean.clamp_min(1e-6)) * keep  # (B, R)
    distance = 1 - F.cosine_similarity(predicted, true, dim=-1)  # (B, R)
    return (weight * distance).sum() / weight.sum().clamp_min(1e-6)
