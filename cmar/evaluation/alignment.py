"""Sequence-level alignment scores, each beside the floor that learns nothing (and its chance).

Retrieval (R@1, R@5, MRR; candidates and floors in :mod:`cmar.evaluation.retrieval`), each in
two variants: candidates from *other* stories (easy: style alone finds the story), and
candidates from the *same* story, minus the window's context frames ("which of this story's
frames comes next?"):

- ``next-frame retrieval``: cosine of the predicted next-frame embedding to each candidate
  frame's encoder embedding. Floors: the last context frame as the prediction, in pixel space
  (ImageNet-normalised pixels pooled to 16 x 16) and in the encoder's space.
- ``next-caption retrieval``: the model's length-normalised log-likelihood of each candidate
  caption given the context. Floors: TF-IDF cosine (IDF fitted on the train split's captions)
  of each candidate to the k context captions joined, and to the last context caption.
  The costly part of an evaluation: one teacher-forced decoding per (window, candidate) pair,
  ``eval.retrieval_windows`` x (``eval.candidates`` + the story's other frames) of them.
  Each window is encoded once; the pairs go through the decoder sorted by caption length, in
  passes of bounded size (:data:`ELEMENTS_PER_PASS`), each cut after its longest caption
  (:func:`pair_likelihoods`; what each part costs: docs/evaluation-cost.md).

The groups with candidates from other stories also report each size n of
``eval.candidate_sets`` (R@1, R@5, mean rank, chance and the strongest floor), on the first n
of their candidates: no extra scoring.

- ``image-text alignment``: cosine of each context frame's matched image/text vectors against
  a shuffle that pairs every frame's image with the text of a frame of a *different* story.
- ``context sensitivity``: caption loss with the true context vs the context of a window of
  another story, drawn over the whole split (near-zero gap: the decoder ignores its input).
- ``grounding`` (any dataset with entity boxes and an attention fusion):
  :func:`cmar.evaluation.grounding.grounding_scores`.

A group the split cannot support (one story; fewer than 2 candidates) is
``{"skipped": reason}``. Every random choice is seeded: two evaluations give the same numbers.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cmar.data.batches import Batch, Collate, pad_targets
from cmar.evaluation.floors import TfIdf
from cmar.evaluation.frames import SplitFrames, frame_vectors
from cmar.evaluation.grounding import grounding_scores
from cmar.evaluation.inputs import with_context_of
from cmar.evaluation.retrieval import (  # noqa: F401  (re-exported: the public names)
    by_size,
    candidate_index,
    cosine_scores,
    cross_story_permutation,
    other_story,
    pad_candidates,
    ranking_scores,
    ranks,
    same_story_candidates,
    usable_candidates,
    with_floors,
)
from cmar.models.losses import token_nll

ONE_STORY = "needs windows of at least two stories"
CAPTION_RANKING_OFF = "eval.retrieval_windows is 0: no caption ranking"
GROUPS = ("next-frame retrieval", "next-frame retrieval (same story)", "next-caption retrieval",
          "next-caption retrieval (same story)", "image-text alignment", "context sensitivity")


def image_text_alignment(image: torch.Tensor, text: torch.Tensor, story_ids: list[str],
                         seed: int = 0) -> dict:
    """image, text (N, d) of the same N frames, ``story_ids`` their stories. The control pairs
    image i with text p[i] of another story (:func:`cross_story_permutation`); when one story
    holds over half of the frames no such permutation exists and p[i] is drawn per frame among
    the other stories' frames instead (:func:`other_story`)."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    matched = (image * text).sum(-1).mean().item()
    if len(set(story_ids)) < 2:
        return {"matched cosine": matched, "skipped": "the shuffle " + ONE_STORY}
    perm = cross_story_permutation(story_ids, seed)
    floor = {"name": "shuffled across stories"}
    if perm is None:
        perm = other_story(story_ids, seed)
        floor["note"] = "one story holds over half the frames: drawn with replacement"
    shuffled = (image * text[perm]).sum(-1).mean().item()
    return {"matched cosine": matched, "shuffled cosine": shuffled, "gap": matched - shuffled,
            "floor": {**floor, "cosine": shuffled}}


def per_window_caption_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B,) mean token cross-entropy of each window's target."""
    return (token_nll(logits, batch.target_out) * batch.target_mask).sum(1) \
        / batch.target_mask.sum(1)


# The largest tensors of one teacher-forced pass of candidate captions, in elements: its logits
# (rows x L x V) and its memory (rows x M x d), whatever the vocabulary and the context length.
# 128 MB (float32) each on a CPU, 1 GB on a GPU: more rows a pass barely speed it up there.
ELEMENTS_PER_PASS = {"cpu": 2**25, "cuda": 2**28}


@torch.no_grad()
def pair_likelihoods(model, enc, window: torch.Tensor, target_in: torch.Tensor,
                     target_out: torch.Tensor, elements: int | None = None) -> torch.Tensor:
    """Length-normalised log-likelihood (P,) of caption p (row p of target_in/out (P, L),
    padded) given the context of window ``window[p]`` (a row of ``enc``, the windows' encoded
    memory: each window is encoded once, whatever its number of candidates).

    Pairs are sorted by caption length and decoded in passes whose logits (rows x tokens x
    vocabulary) and memory (rows x entries x d) hold at most ``elements`` each (default:
    :data:`ELEMENTS_PER_PASS` of the device), each pass cut after its longest caption: a real
    position never reads the padding after it (every decoder is causal), so the cut changes no
    score, and it spares the decoder the padding up to the longest caption of the split."""
    real = target_out != model.pad_id
    length = real.sum(1)
    order = torch.argsort(length, descending=True, stable=True)
    copy = model.copy_from(enc)
    vocab = getattr(model, "init_args", {}).get("vocab_size", 2**15)  # then the logits' own
    elements = elements or ELEMENTS_PER_PASS.get(target_in.device.type, 2**25)
    rows_by_memory = max(1, elements // enc.memory[0].numel())
    out = torch.empty(len(window), device=target_in.device)
    start = 0
    while start < len(order):
        longest = max(1, int(length[order[start]]))
        count = min(rows_by_memory, max(1, elements // (longest * vocab)))
        part = order[start:start + count]
        rows = window[part]
        t_out, mask = target_out[part, :longest], real[part, :longest]
        logits = model.decoder(target_in[part, :longest], enc.memory[rows],
                               enc.memory_mask[rows], **{k: v[rows] for k, v in copy.items()})
        vocab = logits.shape[-1]
        logp = -token_nll(logits, t_out)  # (rows, L)
        out[part] = ((logp * mask).sum(1) / mask.sum(1)).float()
        start += len(part)
    return out


@torch.no_grad()
def next_caption_retrieval(model, batch: Batch, candidates_out: torch.Tensor,
                           candidates_in: torch.Tensor, index: torch.Tensor,
                           valid: torch.Tensor | None = None,
                           elements: int | None = None) -> torch.Tensor:
    """Length-normalised log-likelihood (B, C) of candidate targets ``index`` (B, C) (rows of
    candidates_in/out, (N, L)) given each window's context: the B windows encoded once, their
    candidates decoded by :func:`pair_likelihoods`. Columns where ``valid`` (B, C) is False
    (padding) are not decoded and score -inf."""
    enc = model.encode(batch)
    b, c = index.shape
    keep = (torch.ones_like(index, dtype=torch.bool) if valid is None
            else valid.to(index.device)).flatten()
    window = torch.arange(b, device=index.device).repeat_interleave(c)[keep]
    rows = index.flatten()[keep]
    scores = torch.full((b * c,), float("-inf"), device=index.device)
    scores[keep] = pair_likelihoods(model, enc, window, candidates_in[rows],
                                    candidates_out[rows], elements)
    return scores.view(b, c)


@torch.no_grad()
def alignment_scores(model, data, split: str, candidates: int = 100,
                     retrieval_windows: int = 500, batch_size: int = 64,
                     progress: bool = True, per_window: dict | None = None,
                     seed: int = 0, candidate_sets=()) -> dict:
    """Every score of this module over ``split``, each beside its floor.

    ``per_window``, when given, receives ``{group: (story ids, R@1 hits (0/1) per window)}``
    for every retrieval group scored, for intervals that resample whole stories.
    ``candidate_sets`` (``eval.candidate_sets``): the groups with candidates from other stories
    also report R@1, R@5 and mean rank on the first n of their ``candidates`` for each size n,
    beside chance and the strongest floor (:func:`cmar.evaluation.retrieval.by_size`).
    """
    was_training = model.training
    model.eval()
    try:
        return _alignment_scores(model, data, split, candidates, retrieval_windows, batch_size,
                                 progress, per_window, seed, tuple(candidate_sets))
    finally:
        model.train(was_training)


def _alignment_scores(model, data, split, candidates, retrieval_windows, batch_size, progress,
                      per_window, seed, sizes) -> dict:
    device = next(model.parameters()).device
    dataset = data.datasets[split]
    if not len(dataset):
        return {group: {"skipped": "the split has no window"} for group in GROUPS}
    frames = SplitFrames.of(dataset)
    ids = frames.story_ids
    two_stories = len(set(ids)) >= 2
    partner = other_story(ids, seed) if two_stories else None
    collate = Collate(model.pad_id, model.bos_id, model.eos_id, dataset.context_pad_id)
    encoded, pixels = frame_vectors(model, data, split, frames, batch_size * 4, device, progress)
    preds, images, texts, loss_true, loss_other = [], [], [], [], []
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    start = 0
    for batch in tqdm(loader, desc="alignment: windows", disable=not progress):
        batch = batch.to(device)
        out = model(batch)
        preds.append(out.next_pred.float().cpu())
        images.append(out.encoded.image.float().cpu())
        texts.append(out.encoded.text.float().cpu())
        loss_true.append(per_window_caption_loss(out.logits, batch).cpu())
        if partner is not None:
            rows = partner[start:start + len(batch)].tolist()
            other = with_context_of(batch, collate([dataset[j] for j in rows]).to(device))
            loss_other.append(per_window_caption_loss(model(other).logits, batch).cpu())
        start += len(batch)
    k = dataset.windows[0].k
    scores = {}

    def record(group: str, story_ids: list[str], hits: torch.Tensor) -> None:
        if per_window is not None:
            per_window[group] = (story_ids, hits)

    # next-frame retrieval, other stories then the same story
    pred = torch.cat(preds)
    n_cand = usable_candidates(ids, candidates)
    other_index = candidate_index(ids, n_cand, seed) if n_cand >= 2 else None
    if other_index is not None:
        scores["next-frame retrieval"] = _frame_group(
            pred, encoded, pixels, frames, frames.target[other_index], None, record,
            "next-frame retrieval", ids, sizes=sizes)
    else:
        scores["next-frame retrieval"] = {"skipped": ONE_STORY}
    same = same_story_candidates(frames.lengths, dataset.windows)
    kept = [i for i, c in enumerate(same) if c is not None]
    if kept:
        index, valid = pad_candidates([same[i] for i in kept])
        story = torch.tensor([dataset.windows[i].story for i in kept])
        scores["next-frame retrieval (same story)"] = {**_frame_group(
            pred[kept], encoded, pixels, frames, frames.offsets[story].unsqueeze(1) + index,
            valid, record, "next-frame retrieval (same story)", [ids[i] for i in kept],
            torch.tensor(kept)), "windows skipped": len(same) - len(kept)}
    else:
        scores["next-frame retrieval (same story)"] = {
            "skipped": "no story has a frame outside a window's context and target",
            "windows skipped": len(same)}

    # next-caption retrieval on a seeded sample of windows
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen = chosen[:retrieval_windows]
    stories = data.stories[split]
    captions = [c for s in stories for c in s.captions]  # every frame's caption
    tfidf = TfIdf([c for s in data.stories.get("train", stories) for c in s.captions])
    ctx = [" ".join(stories[w.story].captions[t] for t in w.context) for w in dataset.windows]
    pool = pad_targets([c for ids_ in dataset.ids for c in ids_], model.pad_id, model.bos_id,
                       model.eos_id)[:2]  # every frame's caption as (in, out) token rows
    pool = tuple(p.to(device) for p in pool)
    caption = _CaptionGroup(model, dataset, collate, pool, captions, ctx, tfidf, frames, device,
                            progress, record, batch_size, sizes)
    if retrieval_windows == 0:  # caption ranking off
        scores["next-caption retrieval"] = {"skipped": CAPTION_RANKING_OFF}
        scores["next-caption retrieval (same story)"] = {"skipped": CAPTION_RANKING_OFF}
    else:
        _caption_groups(scores, caption, chosen, other_index, same, dataset, frames)

    scores["image-text alignment"] = image_text_alignment(
        torch.cat(images), torch.cat(texts), [s for s in ids for _ in range(k)], seed)
    if partner is not None:
        true_loss = torch.cat(loss_true).mean().item()
        other_loss = torch.cat(loss_other).mean().item()
        scores["context sensitivity"] = {
            "caption loss, true context": true_loss,
            "caption loss, other story's context": other_loss, "gap": other_loss - true_loss,
            "floor": {"name": "decoder that ignores its input", "gap": 0.0}}
    else:
        scores["context sensitivity"] = {"skipped": ONE_STORY}
    grounding = grounding_scores(model, data, split, batch_size, progress)
    if grounding is not None:
        scores["grounding"] = grounding
    return scores


def _caption_groups(scores, caption, chosen, other_index, same, dataset, frames) -> None:
    """The two next-caption retrieval groups of windows ``chosen``, into ``scores``."""
    if other_index is not None:
        scores["next-caption retrieval"] = caption.score(
            "next-caption retrieval", chosen, frames.target[other_index[chosen]], None)
    else:
        scores["next-caption retrieval"] = {"skipped": ONE_STORY}
    rows = [i for i in chosen.tolist() if same[i] is not None]
    if rows:
        index, valid = pad_candidates([same[i] for i in rows])
        story = torch.tensor([dataset.windows[i].story for i in rows])
        scores["next-caption retrieval (same story)"] = {**caption.score(
            "next-caption retrieval (same story)", torch.tensor(rows),
            frames.offsets[story].unsqueeze(1) + index, valid),
            "windows skipped": len(chosen) - len(rows)}
    else:
        scores["next-caption retrieval (same story)"] = {
            "skipped": "no story has a frame outside a window's context and target",
            "windows skipped": len(chosen)}


def _frame_group(pred, encoded, pixels, frames, index, valid, record, group, story_ids,
                 rows=None, sizes=()) -> dict:
    """Next-frame retrieval of windows ``rows`` (all when None) on frame candidates ``index``
    (N, C), the model beside the last-context-frame floors; with ``sizes`` (and no padding),
    also on the first n candidates for each size n."""
    last = frames.last if rows is None else frames.last[rows]
    model = cosine_scores(pred, encoded, index)
    record(group, story_ids, (ranks(model, valid) == 1).float())
    floors = {"last context frame (pixels)": cosine_scores(pixels[last], pixels, index),
              "last context frame (encoder)": cosine_scores(encoded[last], encoded, index)}
    group = with_floors(ranking_scores(model, valid),
                        {name: ranking_scores(s, valid) for name, s in floors.items()}, len(index))
    if valid is None and sizes:
        group["candidate sets"] = by_size(model, floors, sizes)
    return group


@dataclasses.dataclass
class _CaptionGroup:
    """Next-caption retrieval: the model's likelihood and the TF-IDF floors, same candidates."""

    model: object
    dataset: object
    collate: Collate
    pool: tuple[torch.Tensor, torch.Tensor]  # every frame's caption: (target_in, target_out)
    captions: list[str]  # every frame's caption text
    context: list[str]  # every window's context captions, joined
    tfidf: TfIdf
    frames: SplitFrames
    device: object
    progress: bool
    record: object
    windows_per_pass: int = 64  # windows encoded together (eval.batch_size)
    sizes: tuple[int, ...] = ()  # candidate-set sizes reported (eval.candidate_sets)

    def score(self, group: str, rows: torch.Tensor, index: torch.Tensor, valid) -> dict:
        """``rows`` (n,) windows, ``index`` (n, C) their candidate frames."""
        # windows with context captions of like length are encoded together (a shorter memory
        # to attend to); the scores go back to the order of ``rows``
        windows = [self.dataset.windows[i] for i in rows.tolist()]
        order = torch.argsort(torch.tensor([max(len(self.dataset.ids[w.story][t])
                                                for t in w.context) for w in windows]),
                              stable=True)
        model = torch.empty(index.shape)
        step = self.windows_per_pass
        for start in tqdm(range(0, len(rows), step), desc=group, disable=not self.progress):
            part = order[start:start + step]
            batch = self.collate([self.dataset[i] for i in rows[part].tolist()]).to(self.device)
            model[part] = next_caption_retrieval(
                self.model, batch, self.pool[1], self.pool[0], index[part].to(self.device),
                None if valid is None else valid[part]).float().cpu()
        self.record(group, [self.frames.story_ids[i] for i in rows.tolist()],
                    (ranks(model, valid) == 1).float())
        last = [self.captions[f] for f in self.frames.last[rows].tolist()]
        floors = {
            "TF-IDF cosine to the context captions":
                self.tfidf.scores([self.context[i] for i in rows.tolist()], self.captions, index),
            "TF-IDF cosine to the last context caption":
                self.tfidf.scores(last, self.captions, index),
        }
        group_scores = with_floors(ranking_scores(model, valid),
                                   {name: ranking_scores(s, valid) for name, s in floors.items()},
                                   len(rows))
        if valid is None and self.sizes:  # the same story's candidates have no fixed size
            group_scores["candidate sets"] = by_size(model, floors, self.sizes)
        return group_scores
