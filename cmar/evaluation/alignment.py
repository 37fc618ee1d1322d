"""Sequence-level alignment scores, each with its chance level or its control beside it.

- ``next_frame_retrieval``: rank the true next image among ``candidates`` (it and images of
  other stories' windows) by cosine to the predicted next-frame embedding: R@1, R@5, MRR.
- ``next_caption_retrieval``: rank the true next caption among ``candidates`` (it and targets
  of other stories) by the model's length-normalised log-likelihood given the context.
- ``image_text_alignment``: cosine of each context frame's matched image/text vectors vs
  shuffled pairs, and the gap.
- ``context_sensitivity``: caption loss with the true context vs another story's context
  (near-zero gap: the decoder ignores its input).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cmar.data.batches import Batch, Collate, pad_targets
from cmar.evaluation.grounding import grounding_scores
from cmar.models.story_model import token_nll


def ranking_scores(scores: torch.Tensor) -> dict[str, float]:
    """scores (N, C) with the true candidate in column 0 -> R@1, R@5, MRR (ties count
    against the true candidate)."""
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1) + 1  # 1 = best
    return {"R@1": (rank <= 1).float().mean().item(), "R@5": (rank <= 5).float().mean().item(),
            "MRR": (1.0 / rank.float()).mean().item(),
            "chance R@1": 1.0 / scores.shape[1]}


def candidate_index(story_ids: list[str], candidates: int, seed: int = 0) -> torch.Tensor:
    """(N, C) indices: column 0 is the row itself, the others rows of *other* stories."""
    g = torch.Generator().manual_seed(seed)
    n = len(story_ids)
    codes = {s: i for i, s in enumerate(dict.fromkeys(story_ids))}
    story = torch.tensor([codes[s] for s in story_ids])
    out = torch.empty(n, candidates, dtype=torch.long)
    for i in range(n):
        pool = torch.nonzero(story != story[i]).squeeze(1)
        pick = pool[torch.randperm(len(pool), generator=g)[: candidates - 1]]
        out[i, 0], out[i, 1:len(pick) + 1] = i, pick
        if len(pick) < candidates - 1:
            raise ValueError(f"need {candidates - 1} windows of other stories, have {len(pick)}")
    return out


def usable_candidates(story_ids: list[str], wanted: int) -> int:
    """``wanted``, or fewer when a small split has fewer windows of other stories."""
    from collections import Counter

    return min(wanted, len(story_ids) - max(Counter(story_ids).values()) + 1)


def next_frame_retrieval(pred: torch.Tensor, true: torch.Tensor, story_ids: list[str],
                         candidates: int = 100) -> dict[str, float]:
    index = candidate_index(story_ids, usable_candidates(story_ids, candidates))
    pred, true = F.normalize(pred, dim=-1), F.normalize(true, dim=-1)
    scores = torch.einsum("nd,ncd->nc", pred, true[index])
    return ranking_scores(scores)


def image_text_alignment(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """image, text (N, d) of the same N frames."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    matched = (image * text).sum(-1).mean().item()
    shuffled = (image * text.roll(1, 0)).sum(-1).mean().item()
    return {"matched cosine": matched, "shuffled cosine": shuffled, "gap": matched - shuffled}


def other_story(story_ids: list[str]) -> torch.Tensor:
    """For each row, the nearest following row (cyclically) from a different story."""
    n = len(story_ids)
    out = []
    for i in range(n):
        j = next(((i + r) % n for r in range(1, n) if story_ids[(i + r) % n] != story_ids[i]),
                 None)
        if j is None:
            raise ValueError("context sensitivity needs windows of at least two stories")
        out.append(j)
    return torch.tensor(out)


def with_context_of(batch: Batch, index: torch.Tensor) -> Batch:
    """The batch with every window's context replaced by the context of window ``index[i]``."""
    return dataclasses.replace(batch, context_images=batch.context_images[index],
                               context_tokens=batch.context_tokens[index],
                               context_mask=batch.context_mask[index])


def per_window_caption_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) mean token cross-entropy of each window's target."""
    return (token_nll(logits, batch.target_out) * batch.target_mask).sum(1) \
        / batch.target_mask.sum(1)


@torch.no_grad()
def next_caption_retrieval(model, batch: Batch, candidates_out: torch.Tensor,
                           candidates_in: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-likelihood (B, C) of candidate targets ``index`` (B, C) (rows of
    candidates_in/out, (N, L)) given each window's context."""
    enc = model.encode(batch)
    b, c = index.shape
    memory = enc.memory.repeat_interleave(c, 0)  # (B*C, M, d)
    mask = enc.memory_mask.repeat_interleave(c, 0)
    target_in, target_out = candidates_in[index.flatten()], candidates_out[index.flatten()]
    logits = model.decoder(target_in, memory, mask)  # (B*C, L, V)
    logp = -token_nll(logits, target_out)
    real = target_out != model.pad_id
    return ((logp * real).sum(1) / real.sum(1)).view(b, c)


@torch.no_grad()
def alignment_scores(model, data, split: str, candidates: int = 100,
                     retrieval_windows: int = 500, batch_size: int = 64,
                     progress: bool = True) -> dict:
    """Every score of this module over ``split``."""
    device = next(model.parameters()).device
    dataset = data.datasets[split]
    preds, trues, images, texts, loss_true, loss_other, ids = [], [], [], [], [], [], []
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    for batch in tqdm(loader, desc="alignment scores", disable=not progress):
        batch = batch.to(device)
        out = model(batch)
        story_ids = [w.rsplit(":", 1)[0] for w in batch.window_ids]
        other = with_context_of(batch, other_story(story_ids).to(device))
        loss_true.append(per_window_caption_loss(out.logits, batch))
        loss_other.append(per_window_caption_loss(model(other).logits, batch))
        preds.append(out.next_pred)
        trues.append(out.next_true)
        images.append(out.encoded.fused.image)
        texts.append(out.encoded.fused.text)
        ids += story_ids
    true_loss, other_loss = torch.cat(loss_true).mean().item(), torch.cat(loss_other).mean().item()
    scores = {
        "next-frame retrieval": next_frame_retrieval(
            torch.cat(preds).cpu(), torch.cat(trues).cpu(), ids, candidates),
        "image-text alignment": image_text_alignment(torch.cat(images).cpu(),
                                                               torch.cat(texts).cpu()),
        "context sensitivity": {"caption loss, true context": true_loss,
                                "caption loss, other story's context": other_loss,
                                "gap": other_loss - true_loss},
        "next-caption retrieval": _caption_retrieval(model, dataset, ids, candidates,
                                                     retrieval_windows, device),
    }
    grounding = grounding_scores(model, data, split, batch_size, progress)
    if grounding is not None:
        scores["grounding"] = grounding
    return scores


def _caption_retrieval(model, dataset, story_ids, candidates, n_windows, device) -> dict:
    collate = Collate(model.pad_id, model.bos_id, model.eos_id)
    target_in, target_out, _ = pad_targets(
        [dataset.ids[w.story][w.t] for w in dataset.windows], model.pad_id, model.bos_id,
        model.eos_id)  # (N, L): every window's target, the candidate pool
    index = candidate_index(story_ids,
                                      usable_candidates(story_ids, candidates))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_windows]
    scores = []
    for start in range(0, len(chosen), 8):
        rows = chosen[start:start + 8]
        batch = collate([dataset[i] for i in rows.tolist()]).to(device)
        scores.append(next_caption_retrieval(
            model, batch, target_out.to(device), target_in.to(device),
            index[rows].to(device)).cpu())
    return {**ranking_scores(torch.cat(scores)), "windows": len(chosen)}
