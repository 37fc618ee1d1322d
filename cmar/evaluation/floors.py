"""Floors every score is printed beside: what a model must beat for its number to mean much.

- ``copy_last``: the last context caption, unchanged;
- ``most_frequent``: the most frequent training target caption, for every window;
- ``nearest_neighbour``: the target of the training window whose context captions are most
  similar (TF-IDF cosine) to this window's;
- on ShapeStories, the oracle (the ceiling) and the same rules fed one modality, from
  :mod:`cmar.data.shapes_oracle`. The one-modality rows are NOT ceilings for one-modality
  models: "rules on text only" guesses the place and the meeting a fixed way, and a text-only
  caption that simply leaves the meeting out scores higher (BLEU-4 0.626 vs 0.615 on the
  default test split). They show what each modality alone gives these rules; image use is
  read from the place slot against its chance level and from blanking the images.

Each returns ``{window_id: caption}`` over every window of the split.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
from tqdm.auto import tqdm

from cmar.data.prepare import StoryData, shapestories_options
from cmar.data.windows import window_id

_WORD = re.compile(r"\w+")


def windows_text(data: StoryData, split: str) -> list[tuple[str, list[str], str]]:
    """(window id, context captions, target caption) for every window of ``split``."""
    stories = data.stories[split]
    return [(window_id(stories[w.story].story_id, w.t),
             [stories[w.story].captions[t] for t in w.context], stories[w.story].captions[w.t])
            for w in data.datasets[split].windows]


def copy_last(data: StoryData, split: str) -> dict[str, str]:
    return {wid: context[-1] for wid, context, _ in windows_text(data, split)}


def most_frequent(data: StoryData, split: str) -> dict[str, str]:
    caption = Counter(target for _, _, target in windows_text(data, "train")).most_common(1)[0][0]
    return {wid: caption for wid, _, _ in windows_text(data, split)}


class TfIdf:
    """TF-IDF over lower-cased words, the IDF of each word fitted on ``documents``; the one
    text-similarity every floor that reads text uses (here and in the alignment floors)."""

    def __init__(self, documents: list[str]):
        counts = Counter(w for text in documents for w in set(_WORD.findall(text.lower())))
        self.vocab = {w: i for i, w in enumerate(sorted(counts))}
        self.idf = torch.tensor([math.log((1 + len(documents)) / (1 + counts[w])) + 1
                                 for w in self.vocab])

    def matrix(self, texts: list[str]) -> torch.Tensor:
        """Sparse (len(texts), V) L2-normalised TF-IDF rows."""
        rows, cols, vals = [], [], []
        for i, text in enumerate(texts):
            counts = Counter(w for w in _WORD.findall(text.lower()) if w in self.vocab)
            weights = {self.vocab[w]: c * self.idf[self.vocab[w]].item()
                       for w, c in counts.items()}
            norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
            for j, v in weights.items():
                rows.append(i)
                cols.append(j)
                vals.append(v / norm)
        return torch.sparse_coo_tensor([rows, cols], vals, (len(texts), len(self.vocab)),
                                       check_invariants=True).coalesce()

    def scores(self, queries: list[str], keys: list[str], index: torch.Tensor,
               chunk: int = 256) -> torch.Tensor:
        """(N, C) cosine of query text i with key texts ``index[i]``."""
        if not self.vocab:
            return torch.zeros(index.shape)
        key_matrix = self.matrix(keys)  # (F, V) sparse
        out = []
        for start in range(0, len(queries), chunk):
            query = self.matrix(queries[start:start + chunk]).to_dense()  # (c, V)
            part = index[start:start + chunk]
            rows = torch.arange(len(part)).unsqueeze(1).expand_as(part)
            sims = torch.sparse.mm(key_matrix, query.T)  # (F, c)
            out.append(sims[part, rows])
        return torch.cat(out)


def nearest_neighbour(data: StoryData, split: str, chunk: int = 512) -> dict[str, str]:
    """Target of the most similar training context (TF-IDF over the k context captions)."""
    train = windows_text(data, "train")
    train_texts = [" ".join(context) for _, context, _ in train]
    tfidf = TfIdf(train_texts)
    train_matrix = tfidf.matrix(train_texts)  # (N_train, V)
    queries = windows_text(data, split)
    out = {}
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        query = tfidf.matrix([" ".join(c) for _, c, _ in part]).to_dense()  # (c, V)
        best = torch.sparse.mm(train_matrix, query.T).argmax(0)  # (c,)
        for (wid, _, _), j in zip(part, best.tolist(), strict=True):
            out[wid] = train[j][2]
    return out


def shapestories_floors(data: StoryData, split: str) -> dict[str, dict[str, str]]:
    """The oracle and its one-modality versions on the windows of ``split``. The oracle reads
    whose turn it is from the last k captions: with k below the cast (data.k=2 among 3
    characters) it has no answer and is left out."""
    from cmar.data.loading import open_source
    from cmar.data.shapes_oracle import oracle_predictions
    from cmar.data.shapes_world import Knobs

    cfg = data.cfg
    rows = open_source("shapestories", cache_dir=cfg.cache_dir, **shapestories_options(cfg))
    rows = rows["train"]
    wanted = {s.story_id for s in data.stories[split]}
    rows = rows.select([i for i, sid in enumerate(rows["story_id"]) if sid in wanted])
    cast = Knobs.from_difficulty(cfg.difficulty, **cfg.shapestories_knobs).n_characters
    return {name: oracle_predictions(rows, cfg.k, cfg.mode, modalities)[0]
            for name, modalities in SOLVERS.items()
            if cfg.k >= cast or set(modalities) != set(ORACLE)}


SOLVERS = {"rules on text only (not a ceiling)": ("text",),
           "rules on images only (not a ceiling)": ("image",),
           "oracle (ceiling)": ("text", "image")}
ORACLE = SOLVERS["oracle (ceiling)"]


def all_floors(data: StoryData, split: str, progress: bool = False) -> dict[str, dict[str, str]]:
    """Every floor (and on ShapeStories the rule solvers) on the windows of ``split``."""
    makers = {"copy last caption": copy_last, "most frequent caption": most_frequent,
              "nearest neighbour (TF-IDF)": nearest_neighbour}
    floors = {name: make(data, split) for name, make in tqdm(
        makers.items(), desc="floors", disable=not progress)}
    if data.cfg.source == "shapestories":
        floors.update(shapestories_floors(data, split))
    return floors
