"""The study's table: its columns, and the rows of many runs summed up over seeds and paired
against concat (mean, spread, 95% t interval)."""

from __future__ import annotations

from cmar.evaluation.stats import ci95, mean_sd

# What the decoder attends over: (model.memory_tokens, model.memory_regions). The story
# states are always there; "full" is the model's default and every study before v2.
MEMORIES = {"story": (False, False), "words": (True, False), "full": (True, True)}
MEMORY_TEXT = {"story": "the story states only (the context reaches it through the fused frames)",
               "words": "the story states + every context frame's fused words",
               "full": "the story states + every context frame's fused words and regions"}
# Per-cell table columns: the caption score, how much of it needs the images (ShapeStories
# places are only in the images), the fusion's word-to-region grounding, then the rest.
METRICS = ("BLEU-4", "BLEU-4 images blanked", "slot place", "slot place images blanked",
           "grounding", "CIDEr", "caption R@1", "context gap", "train seconds")
HEADERS = {"CIDEr": "CIDEr-D", "BLEU-4 images blanked": "BLEU-4, images blanked",
           "slot place": "place", "slot place images blanked": "place, images blanked",
           "train seconds": "training s"}
# The paired comparisons with concat that the report and study.json give: the caption score
# and the slot that only the images tell.
PAIRED = ("BLEU-4", "slot place")


def section(mode: str, memory: str) -> str:
    """The key of a (mode, memory) in ``study.json``'s per-section dicts, named like runs."""
    return mode if memory == "full" else f"{mode}-{memory}"


def rows_in(rows: list[dict], mode: str, memory: str) -> list[dict]:
    return [r for r in rows if r["mode"] == mode and r["memory"] == memory]


def sections_of(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["mode"], r["memory"]) for r in rows))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of every (mode, memory, fusion, decoder)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["mode"], row["memory"], row["fusion"], row["decoder"])
        groups.setdefault(key, []).append(row)
    table = []
    for (mode, memory, fusion, decoder), group in groups.items():
        entry = {"mode": mode, "memory": memory, "fusion": fusion, "decoder": decoder,
                 "seeds": len(group)}
        for key in METRICS:
            entry[key], entry[key + " sd"] = mean_sd([r[key] for r in group])
        table.append(entry)
    return table


def fusion_means(rows: list[dict], mode: str, memory: str = "full",
                 key: str = "BLEU-4") -> dict[str, tuple]:
    """{fusion: (mean, sd, n)} pooled over decoders and seeds, for the headline comparison."""
    rows = rows_in(rows, mode, memory)
    out = {}
    for fusion in dict.fromkeys(r["fusion"] for r in rows):
        values = [r[key] for r in rows if r["fusion"] == fusion]
        out[fusion] = (*mean_sd(values), len(values))
    return out


def paired_differences(rows: list[dict], mode: str, memory: str = "full", key: str = "BLEU-4",
                       base: str = "concat") -> dict[str, dict]:
    """Each fusion minus ``base`` on the runs of one mode and one memory that share a decoder
    and a seed.

    Returns {fusion: {"mean", "sd", "n", "wins", "ci95"}}: the mean and sample sd of the n
    paired differences, how many of them are above zero, and the 95% t interval of their mean
    ([low, high]; None when n is 1). Pairing removes the decoder and the seed from the
    comparison, which pooled means do not.
    """
    by_cell = {(r["fusion"], r["decoder"], r["seed"]): r[key] for r in rows_in(rows, mode, memory)}
    out = {}
    for fusion in dict.fromkeys(f for f, _, _ in by_cell):
        if fusion == base:
            continue
        diffs = [value - by_cell[(base, d, s)] for (f, d, s), value in by_cell.items()
                 if f == fusion and (base, d, s) in by_cell]
        if diffs:
            mean, sd = mean_sd(diffs)
            out[fusion] = {"mean": mean, "sd": sd, "n": len(diffs),
                           "wins": sum(d > 0 for d in diffs), "ci95": ci95(diffs)}
    return out
