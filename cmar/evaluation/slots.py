"""ShapeStories slot accuracy: a caption parsed back into who / look / verb / place / met, so
a reader sees which part of the story a model gets wrong (names come from the text, places and
meetings from the images)."""

from __future__ import annotations

from cmar.data.shapes_oracle import parse_caption

SLOTS = ("who", "look", "verb", "place", "met")


def caption_slots(caption: str) -> dict[str, object] | None:
    """{slot: value} of a ShapeStories caption; None when it does not parse (another
    source's caption, or one cut short)."""
    try:
        said = parse_caption(caption.strip().lower())
    except ValueError:
        return None
    return {"who": said.name, "look": said.look, "verb": said.verb, "place": said.place,
            "met": tuple(sorted(said.met))}


def caption_place(caption: str) -> str | None:
    """The place slot of a ShapeStories caption (None when it does not parse)."""
    slots = caption_slots(caption)
    return None if slots is None else slots["place"]


def slot_accuracy(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """Share of windows whose predicted slot equals the reference's, per slot; a prediction
    that does not parse counts as wrong on every slot (``parsed`` gives the parse rate). A
    window whose reference does not parse (cut short by a small ``data.max_tokens``) has no
    slots to compare and is left out; with none left, every share is None."""
    right = dict.fromkeys(SLOTS, 0)
    parsed = n = 0
    for key, prediction in predictions.items():
        reference = caption_slots(references[key][0])
        if reference is None:
            continue
        n += 1
        guess = caption_slots(prediction)
        if guess is None:
            continue
        parsed += 1
        for slot in SLOTS:
            right[slot] += guess[slot] == reference[slot]
    if not n:
        return {"parsed": None, **dict.fromkeys(SLOTS)}
    return {"parsed": parsed / n, **{slot: right[slot] / n for slot in SLOTS}}
