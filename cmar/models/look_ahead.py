"""Look ahead: each region points at where its content goes next, and reads what lies there.

On ShapeStories the place of the next caption is a lookup in two steps: which way the actor's
dot points, then which landmark stands that way. Trained on the caption alone neither step
starts (docs/visual-route.md). This module gives each step a part of its own, within one frame:

    regions x (N, R, d) --pointer--> logits (N, R, R): where region i's content is in the next
                                     frame (a distribution over the same grid)
    glimpse g_i = sum_j softmax(logits_i)_j * value(x_j)        what lies where i is going
    end     e_i = sum_j softmax(logits_i)_j * c_j               where it lands (2,), c the cell
                                                                centres in [0, 1]
    out x_i + proj(g_i) + where([c_i ; e_i]), layer-normalised  (N, R, d); ``where`` is a small
                                                                MLP, so a region can tell how
                                                                far it goes (runs or walks)

so the regions under a character come to carry what stands where it is heading, one attention
hop from the caption decoder, as grounded mode's target frame carries it.

The pointer has its own supervision from annotations both datasets have: the boxes of each
entity in two consecutive frames (``chain_of_thought``). For every entity that moves between
frame t and t+1 (:func:`cmar.data.moves.moves_of`), every
region under its box in frame t must point at the regions under its box in frame t+1
(:func:`look_ahead_loss`, weight ``model.w_look_ahead``). It needs no landmark names, no
directions and no captions. Training only: the model never reads the boxes when it predicts.

How far and which way the content goes (on ShapeStories the verb: it ``runs`` across the
picture, ``walks`` to a neighbouring landmark) is in ``where``'s input, and a probe reads it
there; but added to the region and normalised it is no longer linear in what the decoder
attends to, and the decoder reads its memory through linear projections. With
``model.w_move`` > 0 a linear head reads the move back from the output regions: each region
under a moving entity predicts the entity's displacement and its length, in quarters of the
image side (:func:`move_loss`), the same boxes again, so that the move stays linear in the
region.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmar.data.mentions import box_regions


class LookAhead(nn.Module):
    """Regions (N, R, d) of a (rows, cols) grid, row-major -> regions (N, R, d) that also
    hold what lies where each is going and how far that is, and the pointer's logits
    (N, R, R) (row i: where region i's content goes next)."""

    def __init__(self, d_model: int, grid: tuple[int, int], dropout: float = 0.1,
                 conditioned: bool = False, move: bool = False):
        super().__init__()
        rows, cols = grid
        self.n_regions = rows * cols
        y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols,
                              indexing="ij")
        self.register_buffer("centres", torch.stack([x, y], -1).flatten(0, 1),
                             persistent=False)  # (R, 2)
        self.pointer = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model),
                                     nn.GELU(), nn.Linear(d_model, self.n_regions))
        self.value = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.where = nn.Sequential(nn.Linear(4, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        # what the pointer also reads of each frame (the story state: whose turn it is)
        self.condition = nn.Linear(d_model, d_model) if conditioned else None
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        # how far and which way each output region's content goes (model.w_move): training only
        self.move = nn.Linear(d_model, 3) if move else None

    def logits(self, regions: torch.Tensor, region_mask: torch.Tensor | None = None,
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """regions (N, R, d), region_mask (N, R) True on regions that see picture, or None,
        condition (N, d) or None -> logits (N, R, R); a padding region is never pointed at."""
        if regions.shape[1] != self.n_regions:
            raise ValueError(f"this look-ahead points over {self.n_regions} regions, got "
                             f"{regions.shape[1]}")
        if (condition is None) != (self.condition is None):
            raise ValueError("a conditioned look-ahead needs a condition, and only it takes one")
        reads = regions if condition is None else regions + self.condition(condition)[:, None]
        logits = self.pointer(reads)
        if region_mask is not None:
            logits = logits.masked_fill(~region_mask[:, None, :], torch.finfo(logits.dtype).min)
        return logits

    def forward(self, regions: torch.Tensor, region_mask: torch.Tensor | None = None,
                condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(regions, region_mask, condition)
        weights = logits.softmax(-1)  # (N, R, R)
        glimpse = weights @ self.value(regions)  # (N, R, d)
        end = weights @ self.centres  # (N, R, 2)
        start = self.centres.expand_as(end)
        moves = self.where(torch.cat([start, end], -1))  # (N, R, d)
        return self.norm(regions + self.drop(self.proj(glimpse) + moves)), logits


def look_ahead_loss(logits: torch.Tensor, from_boxes: torch.Tensor, to_boxes: torch.Tensor,
                    image_size: int, region_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the pointer at the regions under each moving entity.

    logits (N, R, R) from :meth:`LookAhead.logits` over a square grid; from_boxes and to_boxes
    (N, E, 4): entity e's box in frame n and in the frame after it (frame pixels, NaN for no
    entity; ``Batch.context_move_from`` / ``context_move_to`` flattened to N = B * k);
    region_mask (N, R) or None. The target of each region under the first box is uniform over
    the regions under the second. A batch where no one moves gives 0, still attached.
    """
    n, r = logits.shape[:2]
    side = math.isqrt(r)
    if side * side != r:
        raise ValueError(f"the look-ahead loss needs a square grid of regions, got R={r}")
    cell = image_size / side
    start = box_regions(from_boxes, side, cell)  # (N, E, R) where it is
    end = box_regions(to_boxes, side, cell)  # (N, E, R) where it will be
    if region_mask is not None:
        start, end = start & region_mask[:, None], end & region_mask[:, None]
    moving = (start.any(-1) & end.any(-1))[..., None]  # (N, E, 1)
    start = (start & moving).to(logits.dtype)  # (N, E, R) the regions that must point
    end = end.to(logits.dtype)
    target = end / end.sum(-1, keepdim=True).clamp(min=1)  # (N, E, R) uniform where it will be
    # a padding column may hold -inf (the masked logit, the dtype's lowest value, minus the
    # log-sum-exp); it is never a target, and the clamp keeps 0 * it at 0, not NaN
    log_p = logits.log_softmax(-1).clamp(min=torch.finfo(logits.dtype).min)  # (N, R, R)
    per_region = -torch.einsum("nej,nij->nei", target, log_p)  # (N, E, R) cross-entropies
    # no boolean indexing and no branch: nothing waits for the device (one host sync a
    # logging interval); a batch where no one moves gives 0 / 1 = 0, still attached
    return (per_region * start).sum() / start.sum().clamp(min=1)


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (..., 4) as (x1, y1, x2, y2) -> their centres (..., 2)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


MOVE_UNIT = 4  # the move's target is in 1 / MOVE_UNIT of the image side: about 1 for a move


def move_loss(predicted: torch.Tensor, from_boxes: torch.Tensor, to_boxes: torch.Tensor,
              image_size: int, region_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of each moving entity's move, read at its regions.

    predicted (N, R, 3): ``LookAhead.move`` of the look-ahead's output regions; from_boxes,
    to_boxes (N, E, 4) and region_mask as in :func:`look_ahead_loss`. The target of every region
    under an entity's first box is (dx, dy, length) of the step between the centres of its two
    boxes, in quarters of the image side (a step across the picture is about 2). A batch where
    no one moves gives 0, still attached.
    """
    r = predicted.shape[1]
    side = math.isqrt(r)
    if side * side != r:
        raise ValueError(f"the move loss needs a square grid of regions, got R={r}")
    start = box_regions(from_boxes, side, image_size / side)  # (N, E, R)
    end = box_regions(to_boxes, side, image_size / side)
    if region_mask is not None:
        start, end = start & region_mask[:, None], end & region_mask[:, None]
    moving = start.any(-1) & end.any(-1)  # (N, E)
    step = (box_centres(to_boxes) - box_centres(from_boxes)) * MOVE_UNIT / image_size  # (N, E, 2)
    target = torch.cat([step, step.norm(dim=-1, keepdim=True)], -1)  # (N, E, 3)
    target = torch.nan_to_num(target).to(predicted.dtype)  # NaN where no box: never a target
    weight = (start & moving[..., None]).to(predicted.dtype)  # (N, E, R) the regions that answer
    error = ((predicted[:, None] - target[:, :, None]) ** 2).sum(-1)  # (N, E, R)
    # no boolean indexing and no branch, as in look_ahead_loss
    return (error * weight).sum() / weight.sum().clamp(min=1)
