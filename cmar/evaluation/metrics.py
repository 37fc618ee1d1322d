"""Corpus-level caption metrics through pycocoevalcap's scorers: BLEU-1..4, CIDEr-D, ROUGE-L
and, when asked, METEOR.

Scores are computed over a whole split of free-running predictions at once (never per batch,
never per sample: CIDEr-D's idf weights come from the corpus, so a single item scores 0).

- BLEU-n: corpus level (n-gram matches and lengths summed over the split, closest reference
  length for the brevity penalty).
- CIDEr-D: pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts and a Gaussian length
  penalty, scaled by 10); its key is ``"CIDEr"`` and every table prints it as CIDEr-D.
- ROUGE-L: the mean over windows of each window's LCS-based F-measure (beta 1.2), as
  pycocoevalcap computes it: a per-item mean, not a corpus-level statistic.
- METEOR: pycocoevalcap's meteor-1.5.jar (Java), corpus level.

The default tokenizer is pure Python (NFKC, lowercase, words and numbers, punctuation dropped,
as the PTB tokenizer of the COCO toolkit does); ``tokenizer="ptb"`` uses the Java PTB tokenizer.
"""

from __future__ import annotations

import re
import shutil
import unicodedata

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

# a word: a run of unicode letters or digits, with apostrophes inside kept (tom's, isn't)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def simple_tokenize(text: str) -> str:
    """NFKC, curly apostrophes made straight, lowercase, words; punctuation dropped.

    'Ann the Red circle, runs!' -> 'ann the red circle runs';
    'José’s café—isn’t it?' -> "josé's café isn't it".
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(_WORD.findall(text.lower()))


def tokenized(
    predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str = "python"
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(res, gts) in the form pycocoevalcap's scorers take: id -> [tokens joined by spaces].
    The scorers reject an empty hypothesis, so an empty prediction becomes one unknown word."""
    res, gts = _tokenized(predictions, references, tokenizer)
    return {key: [hyp[0] or "<empty>"] for key, hyp in res.items()}, gts


def _tokenized(predictions, references, tokenizer):
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
        (and ``"METEOR"``), each in [0, 1] except CIDEr (CIDEr-D, 0 to 10). ROUGE-L is the
        mean of per-window F-measures.
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
    res, gts = tokenized(predictions, references, tokenizer)
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
