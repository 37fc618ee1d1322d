"""95% bootstrap intervals that resample whole stories, not windows.

Windows of one story share frames and captions, so they are not independent: resampling
windows would make the intervals too narrow. Each of ``resamples`` draws picks as many stories
as the split has, with replacement, and keeps every window of each drawn story (a story drawn
twice counts twice). The interval is the 2.5th and 97.5th percentile of the statistic over
the draws.

- BLEU-4 is recomputed at corpus level on every draw, from each window's sufficient
  statistics (hypothesis and closest reference length, n-gram guesses and matches), exactly as
  pycocoevalcap's ``Bleu`` sums them: on the whole split it gives pycocoevalcap's number.
- CIDEr-D is the mean of per-window scores whose document frequencies come from the whole
  split's references; a draw re-weights the windows and keeps those frequencies fixed.
- A retrieval score is the mean of per-window hits (R@1: 1 when the true candidate ranks first).
"""

from __future__ import annotations

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider

from cmar.data.windows import window_frame
from cmar.evaluation.metrics import tokenized

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's guards against 0/0


def bleu_statistics(res: dict[str, list[str]], gts: dict[str, list[str]],
                    keys: list[str], n: int = 4) -> np.ndarray:
    """(len(keys), 2 + 2n) per-window statistics of already tokenized captions: hypothesis
    length, closest reference length, then n-gram guesses and matches for orders 1..n."""
    rows = []
    for key in keys:
        comps = cook_test(res[key][0], cook_refs(gts[key], n=n), eff="closest", n=n)
        rows.append([comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(keys), 2 + 2 * n)


def corpus_bleu(stats: np.ndarray, n: int = 4) -> np.ndarray:
    """BLEU-n from summed statistics: ``stats`` (..., 2 + 2n), summed over windows -> (...)."""
    testlen, reflen = stats[..., 0], stats[..., 1]
    guess, correct = stats[..., 2:2 + n], stats[..., 2 + n:2 + 2 * n]
    precision = np.prod((correct + _TINY) / (guess + _SMALL), axis=-1)
    bleu = precision ** (1.0 / n)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, _TINY)), 1.0)
    return bleu * brevity


def story_weights(story_ids: list[str], resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, len(story_ids)) how many times each window's story was drawn."""
    codes = {s: i for i, s in enumerate(dict.fromkeys(story_ids))}
    story_of = np.array([codes[s] for s in story_ids])
    rng = np.random.default_rng(seed)
    n_stories = len(codes)
    counts = rng.multinomial(n_stories, np.full(n_stories, 1.0 / n_stories), size=resamples)
    return counts[:, story_of].astype(np.float64)


def interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def bleu4_interval(stats: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Stats (N, 10) and weights (resamples, N) -> the 95% interval of corpus BLEU-4."""
    return interval(corpus_bleu(weights @ stats))


def mean_interval(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Per-window values (N,) and weights (resamples, N) -> 95% interval of their mean."""
    return interval((weights @ values) / np.maximum(weights.sum(1), 1.0))


def mean_with_interval(story_ids: list[str], values, resamples: int = 1000,
                       seed: int = 0) -> dict[str, float | list[float]] | None:
    """``{"value": mean, "95% interval": [low, high]}`` of per-window ``values``, or None when
    fewer than two stories make an interval meaningless."""
    values = np.asarray(values, dtype=np.float64)
    if len(set(story_ids)) < 2 or resamples < 1:
        return None
    low, high = mean_interval(values, story_weights(story_ids, resamples, seed))
    return {"value": float(values.mean()), "95% interval": [low, high]}


def caption_intervals(predictions: dict[str, str], references: dict[str, list[str]],
                      tokenizer: str = "python", resamples: int = 1000,
                      seed: int = 0) -> dict[str, list[float]] | None:
    """95% intervals of corpus BLEU-4 and CIDEr-D, resampling stories (window ids are
    ``"<story_id>:<t>"``); None with fewer than two stories or ``resamples`` 0."""
    keys = sorted(predictions)
    story_ids = [window_frame(key)[0] for key in keys]
    if len(set(story_ids)) < 2 or resamples < 1:
        return None
    res, gts = tokenized(predictions, references, tokenizer)
    weights = story_weights(story_ids, resamples, seed)
    _, cider = Cider().compute_score(gts, res)  # per window, in the order of gts' keys
    cider = dict(zip(gts, np.asarray(cider, dtype=np.float64), strict=True))
    return {"BLEU-4": list(bleu4_interval(bleu_statistics(res, gts, keys), weights)),
            "CIDEr": list(mean_interval(np.array([cider[k] for k in keys]), weights))}
