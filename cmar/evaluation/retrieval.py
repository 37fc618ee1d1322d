"""Candidate sets, rankings and the floors of the alignment scores: plain tensor functions, no
model (:mod:`cmar.evaluation.alignment` runs the model and assembles the groups).

Every index here lives in one of two spaces of a split: *windows* (row i is
``dataset.windows[i]``) or *frames* (every frame of every story, story after story, the order
of the ImageStore: frame t of story s is ``offsets[s] + t``).

Candidates of a window, the true one always first:

- ``candidate_index``: the window's own target and the targets of windows of *other* stories,
  sampled (seeded) -- the easy task: "which of these frames from other stories is next?";
- ``same_story_candidates``: the true target frame and every other frame of the *same* story
  that is not one of the window's k context frames -- the hard task: "which of this story's
  frames comes next?". Context frames are left out so that a floor which copies the last
  context frame cannot find itself among the candidates.

A floor is a scorer that learns nothing, ranked on exactly the model's candidates; a group is
``saturated`` when its strongest floor already reaches ``SATURATED`` R@1.

Candidate-set sizes (``eval.candidate_sets``): a set of n candidates is the first n columns of
the group's candidates (the true one and the first n - 1 distractors), so every size is scored
from the one set the model already ranked, at no extra cost. :func:`candidate_index` draws
the distractors of a row in a seeded random order that does not depend on ``candidates``, so
the first n columns of a 100-candidate index are exactly the index drawn with n candidates.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

SATURATED = 0.9  # floor R@1 at or above which a retrieval score measures nothing


def ranks(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) rank of column 0 (the true candidate) in ``scores`` (N, C), 1 = best; ties count
    against the true candidate; columns where ``valid`` (N, C) is False are padding."""
    beats = scores[:, 1:] >= scores[:, :1]
    if valid is not None:
        beats &= valid[:, 1:]
    return beats.sum(1) + 1


def ranking_scores(scores: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """scores (N, C) with the true candidate in column 0 -> R@1, R@5, MRR, mean rank (1 =
    best) and chance R@1 (the mean of 1 / candidates over windows, which differ in size when
    ``valid`` pads them)."""
    rank = ranks(scores, valid).float()
    count = (valid.sum(1) if valid is not None
             else torch.full((len(scores),), scores.shape[1])).float()
    return {"R@1": (rank <= 1).float().mean().item(), "R@5": (rank <= 5).float().mean().item(),
            "MRR": (1.0 / rank).mean().item(), "mean rank": rank.mean().item(),
            "chance R@1": (1.0 / count).mean().item()}


def chance(n: int) -> dict[str, float]:
    """What a scorer that ranks n candidates at random scores on average: R@1 1/n, R@5
    min(5, n)/n, mean rank (n + 1)/2."""
    return {"R@1": 1.0 / n, "R@5": min(5, n) / n, "mean rank": (n + 1) / 2}


SIZE_KEYS = ("R@1", "R@5", "mean rank")  # what each candidate-set size reports


def by_size(model: torch.Tensor, floors: dict[str, torch.Tensor], sizes) -> dict[str, dict]:
    """Scores on candidate sets of every size n in ``sizes``: the first n columns of
    ``model`` (N, C) and of each floor's scores (N, C), true candidate first. Each size gives
    the model's R@1, R@5 and mean rank, their chance values, the strongest floor's (by R@1;
    the first on a tie) and whether it saturates; a size above C is ``{"skipped": reason}``.
    Keys are the sizes as strings (JSON's keys)."""
    out = {}
    for n in sorted(set(sizes)):
        if n > model.shape[1]:
            out[str(n)] = {"skipped": f"needs {n} candidates per window, has {model.shape[1]}"
                                      " (eval.candidates, or what the split allows)"}
            continue
        mine = ranking_scores(model[:, :n])
        theirs = {name: ranking_scores(s[:, :n]) for name, s in floors.items()}
        name = max(theirs, key=lambda f: theirs[f]["R@1"])
        out[str(n)] = {**{k: mine[k] for k in SIZE_KEYS}, "chance": chance(n),
                       "floor": {"name": name, **{k: theirs[name][k] for k in SIZE_KEYS}},
                       "saturated": theirs[name]["R@1"] >= SATURATED,
                       "above floor": mine["R@1"] - theirs[name]["R@1"]}
    return out


def story_codes(story_ids: list[str]) -> torch.Tensor:
    codes = {s: i for i, s in enumerate(dict.fromkeys(story_ids))}
    return torch.tensor([codes[s] for s in story_ids], dtype=torch.long)


def candidate_index(story_ids: list[str], candidates: int, seed: int = 0) -> torch.Tensor:
    """(N, C) indices: column 0 is the row itself, the others rows of *other* stories."""
    g = torch.Generator().manual_seed(seed)
    story = story_codes(story_ids)
    out = torch.empty(len(story_ids), candidates, dtype=torch.long)
    for i in range(len(story_ids)):
        pool = torch.nonzero(story != story[i]).squeeze(1)
        pick = pool[torch.randperm(len(pool), generator=g)[: candidates - 1]]
        if len(pick) < candidates - 1:
            raise ValueError(f"need {candidates - 1} windows of other stories, have {len(pick)}")
        out[i, 0], out[i, 1:] = i, pick
    return out


def usable_candidates(story_ids: list[str], wanted: int) -> int:
    """``wanted``, or fewer when a small split has fewer windows of other stories (below 2:
    nothing to rank)."""
    if not story_ids:
        return 0
    return min(wanted, len(story_ids) - max(Counter(story_ids).values()) + 1)


def same_story_candidates(lengths: list[int], windows) -> list[list[int] | None]:
    """Per window (``.story``, ``.t``, ``.k``): frame numbers within its story, the target t
    first, then every frame u of the story with u < t - k or u > t; None when there is no such
    u (a story of exactly k + 1 frames), since one candidate ranks nothing."""
    out = []
    for w in windows:
        others = [u for u in range(lengths[w.story]) if u < w.t - w.k or u > w.t]
        out.append([w.t, *others] if others else None)
    return out


def pad_candidates(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged candidate lists -> (index (N, C_max), valid (N, C_max)); padding repeats
    column 0 (so it indexes something real) and is False in ``valid``."""
    width = max(len(r) for r in rows)
    index = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return index, valid


def other_story(story_ids: list[str], seed: int = 0) -> torch.Tensor:
    """(N,): for each row, a row of a different story drawn uniformly (seeded) over all rows.

    Rows are grouped by story (in sorted order each story is one block [start, start + size));
    a draw r from the n - size rows outside the block maps to r, or r + size past the block.
    """
    codes = story_codes(story_ids)
    n = len(codes)
    if n == 0 or int(codes.max()) == 0:
        raise ValueError("needs rows of at least two stories")
    order = torch.argsort(codes, stable=True)
    sizes = torch.bincount(codes)
    starts = torch.cumsum(sizes, 0) - sizes
    start, size = starts[codes], sizes[codes]
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    r = (u * (n - size)).long().clamp(max=n - size - 1)
    return order[torch.where(r < start, r, r + size)]


def cross_story_permutation(story_ids: list[str], seed: int = 0) -> torch.Tensor | None:
    """A seeded permutation p of the N rows with story[p[i]] != story[i] for every i, or None
    when none exists (one story holds more than half of the rows).

    Stories are laid out in random order as blocks (rows shuffled within each), and each row is
    paired with the row ``m`` places further round the circle, m = the largest story's size:
    a block of g <= m rows can reach itself only if g + m > N, which m <= N / 2 rules out.
    """
    codes = story_codes(story_ids)
    n = len(codes)
    if n == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    sizes = torch.bincount(codes)
    m = int(sizes.max())
    if 2 * m > n:
        return None
    story_rank = torch.randperm(len(sizes), generator=g)[codes]  # random block order
    shuffled = torch.randperm(n, generator=g)
    layout = shuffled[torch.argsort(story_rank[shuffled], stable=True)]  # circle position -> row
    perm = torch.empty(n, dtype=torch.long)
    perm[layout] = layout.roll(-m)
    return perm


def cosine_scores(queries: torch.Tensor, keys: torch.Tensor, index: torch.Tensor,
                  chunk: int = 256) -> torch.Tensor:
    """(N, C) cosine of query row i (N, d) with key rows ``index[i]`` (rows of keys (F, d));
    ``chunk`` rows at a time, so that at most (chunk, C, d) key vectors are gathered."""
    queries, keys = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    return torch.cat([torch.einsum("nd,ncd->nc", queries[i:i + chunk], keys[index[i:i + chunk]])
                      for i in range(0, len(index), chunk)])


def with_floors(model: dict, floors: dict[str, dict], windows: int) -> dict:
    """A retrieval group: the model's scores, the strongest floor (by R@1; the first on a tie),
    every floor, whether the floor saturates the task, and the model's lead over it."""
    keep = ("R@1", "R@5", "MRR", "mean rank")
    name = max(floors, key=lambda f: floors[f]["R@1"])
    floor = floors[name]
    return {**model, "windows": windows,
            "floor": {"name": name, **{k: floor[k] for k in keep if k in floor}},
            "floors": {f: {k: v[k] for k in keep if k in v} for f, v in floors.items()},
            "saturated": floor["R@1"] >= SATURATED, "above floor": model["R@1"] - floor["R@1"]}
