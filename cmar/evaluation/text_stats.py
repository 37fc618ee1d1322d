"""What BLEU and CIDEr-D do not show: character names, caption length and diversity.

- ``name_scores``: does a prediction name the characters of the next frame? The names a
  reference should contain are the ``<gdo charN>`` mentions of the reference frame that are
  proper names (``Tom``, ``J. Edgar``; not ``the man`` or ``He``). A prediction names a
  character when one of the split's known names appears in it as whole words (case-insensitive,
  a possessive ``'s`` counts). Precision, recall and F1 are micro-averaged over the split.
- ``length_and_diversity``: mean words per prediction and per reference, distinct-1 and
  distinct-2 (unique n-grams over all n-grams of the predictions), the share of the most
  repeated prediction, the number of different predictions and the share of predictions
  that loop (repeat a 4-gram of their own words: ``repeated_ngram_share``).
- ``collapse_warnings``: a run that writes one caption for most windows, or captions of one
  or two words, has collapsed, and one whose captions loop ("the man is the man is ...") in
  more than ``LOOP_SHARE`` of the windows has degenerated; the evaluation table says so.
"""

from __future__ import annotations

import re
from collections import Counter

from cmar.data.markup import Mention
from cmar.evaluation.metrics import simple_tokenize

# Capitalised words that tag a character without naming it.
_NOT_NAMES = {"he", "she", "they", "it", "his", "her", "him", "them", "their", "i", "we",
              "you", "the", "a", "an", "this", "that", "someone", "everyone", "both"}
_NAME_WORD = re.compile(r"^[^\W\d_][\w'’.-]*$")
COLLAPSE_SHARE = 0.5  # one caption for at least half of the windows
COLLAPSE_WORDS = 2.0  # or a mean of at most two words per caption
LOOP_N = 4  # a prediction loops when one of its 4-grams occurs twice in it
LOOP_SHARE = 0.2  # warn when more than this share of the predictions loop


def character_names(mentions: tuple[Mention, ...], text: str) -> set[str]:
    """Proper names among the ``<gdo charN>`` mentions inside ``text``, normalised the way
    the metrics tokenize (``"Tom's"`` -> ``"tom"``)."""
    names = set()
    for mention in mentions:
        if mention.kind != "gdo" or mention.end > len(text) \
                or not any(i.startswith("char") for i in mention.ids):
            continue
        words = mention.text.split()
        if not words or words[0].lower().strip(".") in _NOT_NAMES:
            continue
        if all(_NAME_WORD.match(w) and w[0].isupper() for w in words):
            name = _without_possessive(simple_tokenize(mention.text))
            if name:
                names.add(name)
    return names


def _without_possessive(tokens: str) -> str:
    return re.sub(r"'s\b", "", tokens).strip()


def names_in(text: str, known: set[str], longest: int = 4) -> set[str]:
    """The known names that occur in ``text`` as whole words (names of up to ``longest``
    words: every run of that many words of the text is looked up, not every known name)."""
    words = _without_possessive(simple_tokenize(text)).split()
    runs = {" ".join(words[i:i + n]) for n in range(1, longest + 1)
            for i in range(len(words) - n + 1)}
    return runs & known


def name_scores(predictions: dict[str, str], reference_names: dict[str, set[str]],
                known: set[str]) -> dict[str, float | int]:
    """Micro precision, recall and F1 of the character names in ``predictions``;
    ``reference_names`` maps each window id to the names its reference frame tags."""
    true_pos = predicted = expected = 0
    longest = max((len(name.split()) for name in known), default=1)
    for key, prediction in predictions.items():
        said, wanted = names_in(prediction, known, longest), reference_names.get(key, set())
        true_pos += len(said & wanted)
        predicted += len(said)
        expected += len(wanted)
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "F1": f1,
            "names in references": expected, "names predicted": predicted}


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def loops(words: list[str], n: int = LOOP_N) -> bool:
    """Whether some n-gram of ``words`` occurs twice in them (overlaps count)."""
    grams = _ngrams(words, n)
    return len(set(grams)) < len(grams)


def repeated_ngram_share(predictions: dict[str, str], n: int = LOOP_N) -> float:
    """The share of ``predictions`` that repeat one of their own n-grams (words as the
    metrics tokenize): a model stuck in a loop writes "he is at the door he is at the door"."""
    if not predictions:
        return 0.0
    return sum(loops(simple_tokenize(p).split(), n) for p in predictions.values()) \
        / len(predictions)


def length_and_diversity(predictions: dict[str, str],
                         references: dict[str, list[str]]) -> dict[str, float | int]:
    """Caption lengths (words, as the metrics tokenize) and how varied the predictions are."""
    words = [simple_tokenize(p).split() for p in predictions.values()]
    reference_words = [len(simple_tokenize(references[k][0]).split()) for k in predictions]
    unigrams = [g for w in words for g in _ngrams(w, 1)]
    bigrams = [g for w in words for g in _ngrams(w, 2)]
    counts = Counter(" ".join(w) for w in words)
    n = max(1, len(words))
    return {
        "words per prediction": sum(map(len, words)) / n,
        "words per reference": sum(reference_words) / n,
        "distinct-1": len(set(unigrams)) / len(unigrams) if unigrams else 0.0,
        "distinct-2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "most repeated share": counts.most_common(1)[0][1] / n if counts else 0.0,
        "different predictions": len(counts),
        f"repeated {LOOP_N}-gram share": repeated_ngram_share(predictions),
    }


def collapse_warnings(stats: dict[str, float | int]) -> list[str]:
    """Plain-language warnings for collapsed predictions (empty when there are none)."""
    warnings = []
    if stats["most repeated share"] >= COLLAPSE_SHARE:
        warnings.append(f"{stats['most repeated share']:.0%} of the windows get the same "
                        "caption: the model has collapsed to one prediction")
    if stats["words per prediction"] <= COLLAPSE_WORDS:
        warnings.append(f"predictions average {stats['words per prediction']:.1f} words "
                        f"(references {stats['words per reference']:.1f}): the model stops "
                        "almost at once")
    looping = stats.get(f"repeated {LOOP_N}-gram share", 0.0)
    if looping > LOOP_SHARE:
        warnings.append(f"{looping:.0%} of the predictions repeat a {LOOP_N}-gram of their own "
                        f"(more than {LOOP_SHARE:.0%}): the model loops. Try more epochs "
                        "(train.epochs), or another decoding: eval.strategy=beam (or "
                        "`cmar evaluate --strategy beam`), or sampling with a repetition "
                        "penalty (model.generate(..., strategy='sample', "
                        "repetition_penalty=1.2))")
    return warnings
