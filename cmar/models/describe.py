"""The describe objective: the regions under each boxed entity say what that entity looks like.

``chain_of_thought`` describes every character, object and landmark of a frame with its box
(StoryReasoning: "young woman in a red coat"; ShapeStories: "red circle at the pond, facing
the tree"). The caption loss alone never asks the image encoder to keep such details: on
ShapeStories it erases the facing dot within an epoch, although the next caption depends on
it. This objective keeps them. For each described entity of a context frame:

    regions (N, R, d) --mean over the regions its box covers--> entity vector v (d,)
    v --small GRU, teacher-forced--> the description's tokens

and the loss is their mean cross-entropy. It reads the image encoder's regions (after the
region encoder, before the fusion): the captions never reach what it supervises. Training
only: the model never reads ``chain_of_thought`` when it predicts. Weight:
``model.w_describe``; which entities: ``model.describe_entities``; targets:
:mod:`cmar.data.descriptions`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmar.data.mentions import box_regions
from cmar.models.losses import token_nll


class RegionDescriber(nn.Module):
    """Entity vectors (M, d) -> logits (M, L, V) of their descriptions, teacher-forced.

    Step j reads token j - 1 (a learned start vector at j = 0) plus the entity vector; a
    one-layer GRU starts from a projection of that vector.
    """

    def __init__(self, vocab_size: int, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.start = nn.Parameter(torch.zeros(d_model))
        self.condition = nn.Linear(d_model, d_model)
        self.init_state = nn.Linear(d_model, d_model)
        self.gru = nn.GRU(d_model, d_model, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, vectors: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """vectors (M, d), tokens (M, L) the descriptions -> logits (M, L, V) of token j given
        the tokens before it."""
        previous = torch.cat([self.start.expand(len(tokens), 1, -1), self.embed(tokens[:, :-1])],
                             1)  # (M, L, d)
        inputs = self.drop(previous + self.condition(vectors)[:, None])
        state = torch.tanh(self.init_state(vectors))[None]  # (1, M, d)
        hidden, _ = self.gru(inputs, state.contiguous())
        return self.out(self.drop(hidden))

    def entities(self, regions: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor,
                 mask: torch.Tensor, image_size: int, region_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each described entity's vector (M, d): the mean of the regions its box covers; with
        its description's tokens and mask (M, L). Arguments as in :meth:`loss`."""
        side = math.isqrt(regions.shape[1])
        if side * side != regions.shape[1]:
            raise ValueError("the describe loss needs a square grid of regions, got "
                             f"R={regions.shape[1]}")
        covered = box_regions(boxes, side, image_size / side)  # (N, E, R)
        if region_mask is not None:
            covered = covered & region_mask[:, None]
        described = covered.any(-1) & mask.any(-1)  # (N, E)
        weights = covered[described].to(regions.dtype)  # (M, R)
        frame = described.nonzero()[:, 0]  # (M,) the frame of each entity
        vectors = (weights[:, :, None] * regions[frame]).sum(1) / weights.sum(1, keepdim=True)
        return vectors, tokens[described], mask[described]

    def loss(self, regions: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor,
             mask: torch.Tensor, image_size: int,
             region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of every described entity's description given its regions.

        regions (N, R, d) a square grid per frame (:mod:`cmar.data.mentions`); boxes (N, E, 4)
        in frame pixels, NaN for no entity; tokens and mask (N, E, L) (``Batch.
        context_descriptions`` and ``context_description_mask``, flattened to N = B * k);
        region_mask (N, R) True on regions that see picture, or None. A batch that describes
        no one gives 0, still attached to the graph.
        """
        vectors, said, real = self.entities(regions, boxes, tokens, mask, image_size,
                                            region_mask)
        if not len(vectors):
            return regions.sum() * 0
        real = real.to(regions.dtype)  # (M, L)
        return (token_nll(self(vectors, said), said) * real).sum() / real.sum()
