"""Caption-side scores of every system (the model and each floor) on the same windows.

Each system's predictions get the corpus scores of :func:`caption_scores` (BLEU-1..4,
CIDEr-D, ROUGE-L, METEOR when asked), exact match, 95% bootstrap intervals of BLEU-4 and
CIDEr-D that resample whole stories, caption length and diversity, and, where the references
tag characters, name precision / recall / F1. A split too small for a corpus score (fewer than
two windows) gets ``{"skipped": reason}`` instead of numbers, never a crash.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from cmar.data.windows import window_frame
from cmar.evaluation.bootstrap import caption_intervals
from cmar.evaluation.metrics import caption_scores, exact_match
from cmar.evaluation.text_stats import (
    character_names,
    collapse_warnings,
    length_and_diversity,
    name_scores,
)

MIN_WINDOWS = 2  # CIDEr-D's document frequencies need a corpus


def reference_names(stories: dict, references: dict[str, list[str]],
                    known_from: list) -> tuple[dict[str, set[str]], set[str]]:
    """Names each reference frame tags (window id -> names) and every name known from the
    stories of ``known_from`` (the train split and the scored split: a name a floor copies
    from another story must be recognised, to count against its precision)."""
    wanted = {}
    for wid, refs in references.items():
        story_id, t = window_frame(wid)
        story = stories[story_id]
        mentions = story.mentions[t] if story.mentions else ()
        wanted[wid] = character_names(mentions, refs[0])
    known = {name for story in known_from for t, caption in enumerate(story.captions)
             for name in character_names(story.mentions[t] if story.mentions else (), caption)}
    return wanted, known


def score_system(predictions: dict[str, str], references: dict[str, list[str]],
                 tokenizer: str = "python", meteor: bool = False, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Corpus scores, exact match and the bootstrap intervals of one system."""
    if len(predictions) < MIN_WINDOWS:
        return {"skipped": f"corpus scores need at least {MIN_WINDOWS} windows, the split has "
                           f"{len(predictions)}"}
    scores = caption_scores(predictions, references, tokenizer=tokenizer, meteor=meteor)
    scores["exact"] = exact_match(predictions, references)
    intervals = caption_intervals(predictions, references, tokenizer, resamples, seed)
    if intervals is not None:
        scores["95% interval"] = intervals
    return scores


def caption_section(systems: dict[str, dict[str, str]], references: dict[str, list[str]],
                    names: tuple[dict[str, set[str]], set[str]] | None = None,
                    tokenizer: str = "python", meteor: bool = False, resamples: int = 1000,
                    progress: bool = True) -> dict:
    """``captions``, ``length and diversity``, ``names`` (when references tag any) and
    ``warnings`` of every system, the model's first."""
    out = {"captions": {}, "length and diversity": {}}
    for name, predictions in tqdm(systems.items(), desc="scoring captions",
                                  disable=not progress):
        out["captions"][name] = score_system(predictions, references, tokenizer, meteor,
                                             resamples)
        out["length and diversity"][name] = length_and_diversity(predictions, references)
    if names is not None and any(names[0].values()):
        out["names"] = {name: name_scores(p, names[0], names[1]) for name, p in systems.items()}
    out["warnings"] = collapse_warnings(out["length and diversity"]["model"])
    return out


def image_use(model: dict, blanked: dict, slots: dict | None, place_chance: float) -> dict:
    """How much the model's captions depend on its context images: its scores with the
    images blanked, the drop, and the place slot (which only the images decide on
    ShapeStories) beside its chance level."""
    out = {"BLEU-4": model.get("BLEU-4"), "BLEU-4, context images blanked": blanked.get("BLEU-4"),
           "CIDEr-D": model.get("CIDEr"), "CIDEr-D, context images blanked": blanked.get("CIDEr")}
    if out["BLEU-4"] is not None and out["BLEU-4, context images blanked"] is not None:
        out["BLEU-4 drop"] = out["BLEU-4"] - out["BLEU-4, context images blanked"]
    if slots is not None:
        out["place slot"] = slots["model"]["place"]
        out["place slot, context images blanked"] = slots["model, context images blanked"][
            "place"]
        out["place slot chance"] = place_chance
    return out
