"""Corpus-level caption metrics: BLEU-1..4, CIDEr-D and ROUGE-L through pycocoevalcap's scorers.

Scores are computed over a whole split of free-running predictions at once (never per batch,
never per sample: CIDEr-D's idf weights come from the corpus, so a single item scores 0).
The default tokenizer is pure Python (lowercase, words and numbers, punctuation dropped, as
the PTB tokenizer of the COCO toolkit does); ``tokenizer="ptb"`` uses the Java PTB tokenizer.
"""

from __future__ import annotations

import re
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def simple_tokenize(text: str) -> str:
    """'Ann the Red circle, runs!' -> 'ann the red circle runs'."""
    return " ".join(_WORD.findall(text.lower()))


def _tokenized(
    predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    if tokenizer == "python":
        res = {key: [simple_tokenize(text)] for key, text in predictions.items()}
        gts = {key: [simple_tokenize(r) for r in refs] for key, refs in references.items()}
        return res, gts
    if tokenizer == "ptb":
        if shutil.which("java") is None:
            raise RuntimeError("tokenizer='ptb' needs Java on the PATH; use tokenizer='python'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        ptb = PTBTokenizer()
        res = ptb.tokenize({k: [{"caption": v}] for k, v in predictions.items()})
        gts = ptb.tokenize({k: [{"caption": r} for r in refs] for k, refs in references.items()})
        return res, gts
    raise ValueError(f"tokenizer must be 'python' or 'ptb', got {tokenizer!r}")


def _meteor(gts: dict, res: dict) -> float:
    if shutil.which("java") is None:
        raise RuntimeError("METEOR needs Java on the PATH (it runs pycocoevalcap's "
                           "meteor-1.5.jar); install a JRE or call with meteor=False")
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts the Java process; its __del__ stops it
    score, _ = scorer.compute_score(gts, res)
    del scorer
    return float(score)


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str = "python",
    meteor: bool = False,
) -> dict[str, float]:
    """Corpus-level BLEU-1..4, CIDEr (CIDEr-D) and ROUGE-L of ``predictions``.

    Args:
        predictions: item id -> one predicted caption.
        references: item id -> one or more reference captions (same ids as predictions).
        tokenizer: ``python`` (default, no Java) or ``ptb`` (Java's PTB tokenizer).
        meteor: also compute METEOR (needs Java; a clear error without it).

    Returns:
        ``{"BLEU-1": .., "BLEU-2": .., "BLEU-3": .., "BLEU-4": .., "CIDEr": .., "ROUGE-L": ..}``
        (and ``"METEOR"``), each in [0, 1] except CIDEr (0 to 10).
    """
    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:5]
        extra = sorted(set(predictions) - set(references))[:5]
        raise ValueError(f"ids differ: missing predictions {missing}, unknown ids {extra}")
    if len(predictions) < 2:
        raise ValueError(
            f"corpus-level scores need at least 2 items, got {len(predictions)}: CIDEr-D's "
            "document frequencies are meaningless on one caption"
        )
    if any(not refs for refs in references.values()):
        raise ValueError("every item needs at least one reference caption")
    res, gts = _tokenized(predictions, references, tokenizer)
    # The scorers reject empty hypotheses; an empty prediction scores as a single unknown word.
    res = {key: [hyp[0] or "<empty>"] for key, hyp in res.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["CIDEr"] = float(cider)
    scores["ROUGE-L"] = float(rouge)
    if meteor:
        scores["METEOR"] = _meteor(gts, res)
    return scores


def exact_match(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """Share of items whose prediction equals one of its references after tokenization."""
    if not predictions:
        raise ValueError("no predictions")
    hits = sum(simple_tokenize(predictions[key]) in {simple_tokenize(r) for r in references[key]}
               for key in predictions)
    return hits / len(predictions)
