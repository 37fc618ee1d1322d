"""report.md: the metrics table with every floor beside the model, then examples."""

from __future__ import annotations

from pathlib import Path

CAPTION_COLUMNS = ("BLEU-1", "BLEU-4", "CIDEr", "ROUGE-L", "exact")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def caption_table(metrics: dict) -> str:
    """Markdown table: the model, then every floor, on the caption metrics (and slots)."""
    slots = metrics.get("slots", {})
    slot_names = list(next(iter(slots.values())))[1:] if slots else []
    head = ["system", *CAPTION_COLUMNS, *(f"slot {s}" for s in slot_names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, scores in metrics["captions"].items():
        row = [name, *(_fmt(scores[c]) for c in CAPTION_COLUMNS)]
        row += [_fmt(slots[name][s]) for s in slot_names] if slots else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def alignment_table(metrics: dict) -> str:
    lines = ["| score | value |", "|---|---|"]
    for group, values in metrics["alignment"].items():
        for key, value in values.items():
            lines.append(f"| {group}: {key} | {_fmt(value)} |")
    return "\n".join(lines)


def write_report(path: str | Path, metrics: dict, texts, predictions: dict, n_examples: int = 5):
    strategy = metrics["strategy"] + (f" (beam {metrics['beam_size']})"
                                      if metrics.get("beam_size") else "")
    parts = [
        f"# Evaluation of {metrics['run']}",
        f"Split `{metrics['split']}`, {metrics['windows']} windows, free-running {strategy} "
        "decoding, corpus-level scores (pycocoevalcap, Python tokenizer). Floors are computed "
        "on the same windows.",
        "## Captions", caption_table(metrics),
        "## Alignment", alignment_table(metrics),
        "## Examples",
    ]
    for wid, context, target in texts[:: max(1, len(texts) // max(1, n_examples))][:n_examples]:
        shown = "\n".join(f"> {c}" for c in context)
        parts.append(f"**{wid}**\n\n{shown}\n\n- reference: {target}\n- prediction: "
                     f"{predictions[wid]}")
    Path(path).write_text("\n\n".join(parts) + "\n")
