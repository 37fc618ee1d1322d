"""A pretrained text encoder (BERT, MiniLM, RoBERTa) for the context captions.

Same contract as :class:`cmar.models.sequence.TextEncoder`::

    encoder(tokens (N, L), mask (N, L)) -> states (N, L, d_model), pooled (N, d_model)

``tokens`` come from the encoder's own tokenizer (the run's context tokenizer), without special
tokens, so that token i is word piece i of the caption (the grounding boxes and the fusion's
word-to-region attention index them so). The encoder adds its [CLS] ... [SEP] itself, as it was
trained with them, and drops their states again. The pooled vector is the mean of the states, as
sentence-transformers pool MiniLM.
"""

from __future__ import annotations

import torch
from torch import nn

from cmar.models.hf.loading import (
    enable_checkpointing,
    freeze,
    load_pretrained,
    pretrained_tokenizer,
)
from cmar.models.sequence import masked_mean


class HFTextEncoder(nn.Module):
    def __init__(self, source: str, d_model: int, freeze_model: bool = False,
                 gradient_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.source = source
        self.model = load_pretrained(AutoModel, source, "text encoder")
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # never used: every parameter gets a gradient (DDP)
        tokenizer = pretrained_tokenizer(source)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.freeze = freeze_model
        if freeze_model:
            freeze(self.model)
        enable_checkpointing(self.model, gradient_checkpointing)
        self.project = nn.Linear(int(self.model.config.hidden_size), d_model)
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def _framed(self, tokens: torch.Tensor, mask: torch.Tensor):
        """[CLS] tokens [SEP] and its attention mask, (N, L + 2) each."""
        n, length = tokens.shape
        lengths = mask.sum(1)
        ids = tokens.new_full((n, length + 2), self.pad_id)
        ids[:, 0] = self.cls_id
        ids[:, 1:length + 1] = tokens.masked_fill(~mask, self.pad_id)
        ids[torch.arange(n, device=tokens.device), lengths + 1] = self.sep_id
        attention = torch.arange(length + 2, device=tokens.device)[None] < (lengths + 2)[:, None]
        return ids, attention

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        framed = self.cls_id is not None and self.sep_id is not None
        if framed:
            ids, attention = self._framed(tokens, mask)
        else:
            ids, attention = tokens.masked_fill(~mask, self.pad_id), mask
        states = self.model(input_ids=ids, attention_mask=attention.long()).last_hidden_state
        if framed:
            states = states[:, 1:tokens.shape[1] + 1]  # (N, L, H): [CLS] and [SEP] dropped
        states = self.norm(self.project(states))  # (N, L, d)
        return states, masked_mean(states, mask)
