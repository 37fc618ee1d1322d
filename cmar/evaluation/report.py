"""The evaluation tables (printed by ``cmar evaluate``, written to report.md): the model beside
every floor on the captions, their length and diversity, image use, and every alignment score
beside its floor, with a verdict when the floor already saturates it."""

from __future__ import annotations

from pathlib import Path

CAPTION_COLUMNS = ("BLEU-1", "BLEU-4", "CIDEr", "ROUGE-L", "METEOR", "exact")
SHOWN = {"CIDEr": "CIDEr-D"}  # the key pycocoevalcap gives, the name printed
INTERVAL_COLUMNS = ("BLEU-4", "CIDEr")
# The score each alignment group is judged by, on the model and on its floor.
PRIMARY = {"image-text alignment": "matched cosine", "context sensitivity": "gap",
           "grounding": "accuracy"}
# A score without a 95% interval is called above (or below) its floor only beyond this.
FLOOR_TOLERANCE = 0.005


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(head), "|" + "---|" * len(head), *(_row(r) for r in rows)])


def _with_interval(scores: dict, column: str) -> str:
    bounds = scores.get("95% interval", {}).get(column)
    value = _fmt(scores[column])
    return f"{value} [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else value


def caption_table(metrics: dict) -> str:
    """Markdown table: the model, then every floor, on the caption metrics (BLEU-4 and
    CIDEr-D with their 95% intervals over stories) and, on ShapeStories, the slots."""
    captions = metrics["captions"]
    scored = [s for s in captions.values() if "skipped" not in s]
    columns = [c for c in CAPTION_COLUMNS if scored and c in scored[0]]
    slots = metrics.get("slots", {})
    slot_names = list(next(iter(slots.values())))[1:] if slots else []
    head = ["system", *(SHOWN.get(c, c) + (" [95%]" if c in INTERVAL_COLUMNS else "")
                        for c in columns), *(f"slot {s}" for s in slot_names)]
    rows = []
    for name, scores in captions.items():
        if "skipped" in scores:
            rows.append([name, f"n/a: {scores['skipped']}", *[""] * (len(head) - 2)])
            continue
        row = [name, *(_with_interval(scores, c) if c in INTERVAL_COLUMNS else _fmt(scores[c])
                       for c in columns)]
        rows.append(row + [_fmt(slots[name][s]) for s in slot_names] if slots else row)
    return _table(head, rows)


def text_table(metrics: dict) -> str:
    """Length and diversity of every system's captions, and character-name P / R / F1."""
    stats, names = metrics["length and diversity"], metrics.get("names", {})
    columns = ["words per prediction", "distinct-1", "distinct-2", "most repeated share",
               "different predictions"]
    head = ["system", *columns, *(["names P", "names R", "names F1"] if names else [])]
    rows = []
    for name, values in stats.items():
        row = [name, *(_fmt(values[c]) for c in columns)]
        if names:
            row += [_fmt(names[name][c]) for c in ("precision", "recall", "F1")]
        rows.append(row)
    reference = next(iter(stats.values()))["words per reference"]
    return _table(head, rows) + f"\n\nReferences average {reference:.1f} words."


def image_use_table(metrics: dict) -> str:
    """The model with its context images blanked: the drop is how much it reads them."""
    use = metrics["image use"]
    return _table(["score", "value"], [[key, _fmt(value)] for key, value in use.items()])


def _verdict(group: dict, primary: str) -> str:
    """The model's score beside its floor's: judged by the score's 95% interval over stories
    where it has one (above only when the interval's low end is), else above or below only
    beyond FLOOR_TOLERANCE; the text says which."""
    floor = group.get("floor")
    if floor is None:
        return ""
    if group.get("saturated"):
        return "saturated: the floor already scores >= 0.9, so this measures nothing"
    value = floor.get(primary, floor.get("cosine"))
    if not isinstance(value, float | int) or not isinstance(group.get(primary), float | int):
        return ""
    diff = group[primary] - value
    interval = group.get(f"{primary} 95% interval")
    if interval:  # above only when the whole interval over stories is
        low, high = interval
        bounds = f"95% interval [{low:.3f}, {high:.3f}]"
        if low > value:
            return f"above its floor ({diff:+.3f}; its {bounds} lies above it)"
        where = "lies below it" if high < value else "contains the floor"
        return f"NOT above its floor ({diff:+.3f}; its {bounds} {where})"
    tolerance = f"tolerance {FLOOR_TOLERANCE}, no interval"
    if abs(diff) <= FLOOR_TOLERANCE:
        return f"within the tolerance of its floor ({diff:+.3f}; {tolerance})"
    return f"{'above' if diff > 0 else 'NOT above'} its floor ({diff:+.3f}; {tolerance})"


SIZE_SCORES = ("R@1", "R@5", "mean rank")  # a candidate-set size's row: these, " / " apart


def _size_rows(group: str, sizes: dict) -> list[list[str]]:
    """One row per candidate-set size of a retrieval group (``eval.candidate_sets``): R@1 /
    R@5 / mean rank of the model, its strongest floor and chance; the verdict by R@1."""
    rows = []
    for n, values in sizes.items():
        name = f"{group}, 1 + {int(n) - 1} candidates: {' / '.join(SIZE_SCORES)}"
        if "skipped" in values:
            rows.append([name, f"n/a: {values['skipped']}", "", "", "", ""])
            continue
        floor = values["floor"]
        rows.append([name, " / ".join(_fmt(values[k]) for k in SIZE_SCORES), floor["name"],
                     " / ".join(_fmt(floor[k]) for k in SIZE_SCORES),
                     " / ".join(_fmt(values["chance"][k]) for k in SIZE_SCORES),
                     _verdict(values, "R@1")])
    return rows


def alignment_table(metrics: dict) -> str:
    """Every alignment score beside its floor on the same candidates, and a verdict."""
    head = ["score", "model", "floor", "floor's value", "chance", "verdict"]
    rows = []
    for group, values in metrics["alignment"].items():
        if "skipped" in values:
            rows.append([group, f"n/a: {values['skipped']}", "", "", "", ""])
            continue
        primary = PRIMARY.get(group, "R@1")
        model = _fmt(values.get(primary, ""))
        if "R@1 95% interval" in values and primary == "R@1":
            low, high = values["R@1 95% interval"]
            model += f" [{low:.3f}, {high:.3f}]"
        floor = values.get("floor", {})
        floor_value = floor.get(primary, floor.get("cosine", ""))
        chance = values.get("chance R@1", values.get("chance", ""))
        rows.append([f"{group}: {primary}", model, floor.get("name", ""), _fmt(floor_value),
                     _fmt(chance), _verdict(values, primary)])
        rows += _size_rows(group, values.get("candidate sets", {}))
    main = metrics.get("main alignment score")
    note = f"\n\nMain alignment score: {main} R@1 (95% interval over stories)." if main else ""
    return _table(head, rows) + note


def header(metrics: dict) -> str:
    """What was scored against what, and any warning about the predictions."""
    refs = metrics.get("references", {})
    lines = [f"Split `{metrics['split']}`: {metrics['windows']} windows of "
             f"{metrics.get('stories', '?')} stories, corpus-level scores (pycocoevalcap, "
             f"{metrics.get('metric tokenizer', 'python')} tokenizer); floors on the same "
             "windows; intervals resample whole stories."]
    if refs:
        lines.append(f"References are the captions as trained: {refs['cut']} of "
                     f"{metrics['windows']} cut at {refs['max_tokens']} tokens.")
    lines += [f"WARNING: {w}" for w in metrics.get("warnings", [])]
    return "\n".join(lines)


def render(metrics: dict) -> str:
    """Every table of an evaluation, as printed by ``cmar evaluate``."""
    parts = [header(metrics), "## Captions", caption_table(metrics),
             "## Length, diversity and names", text_table(metrics)]
    if "image use" in metrics:
        parts += ["## Image use (context images blanked)", image_use_table(metrics)]
    parts += ["## Alignment", alignment_table(metrics)]
    return "\n\n".join(parts)


def write_report(path: str | Path, metrics: dict, texts, predictions: dict, n_examples: int = 5):
    strategy = metrics["strategy"] + (f" (beam {metrics['beam_size']})"
                                      if metrics.get("beam_size") else "")
    parts = [f"# Evaluation of {metrics['run']}",
             f"Free-running {strategy} decoding.", render(metrics), "## Examples"]
    for wid, context, target in texts[:: max(1, len(texts) // max(1, n_examples))][:n_examples]:
        shown = "\n".join(f"> {c}" for c in context)
        parts.append(f"**{wid}**\n\n{shown}\n\n- reference: {target}\n- prediction: "
                     f"{predictions[wid]}")
    Path(path).write_text("\n\n".join(parts) + "\n")
