"""caption_scores: corpus level, refuses what would be meaningless."""

import math

import pytest

from cmar.evaluation.metrics import caption_scores, simple_tokenize

REFS = {"a": ["Ann the red circle walks to the tree."],
        "b": ["Bob the blue square runs to the pond and meets Ann."],
        "c": ["Cid the green triangle walks to the house."]}


def test_identical_predictions_score_the_maximum():
    scores = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    assert scores["BLEU-4"] == pytest.approx(1.0) and scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0)  # CIDEr-D's ceiling
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr", "ROUGE-L"}


def test_a_wrong_word_lowers_every_score():
    preds = {k: v[0] for k, v in REFS.items()}
    preds["a"] = "Ann the red circle runs to the pond."
    scores = caption_scores(preds, REFS)
    assert 0.5 < scores["BLEU-4"] < 1.0 and scores["CIDEr"] < 10.0 and scores["ROUGE-L"] < 1.0


def test_refuses_single_items_and_mismatched_ids():
    with pytest.raises(ValueError, match="at least 2"):
        caption_scores({"a": "x"}, {"a": ["x"]})
    with pytest.raises(ValueError, match="ids differ"):
        caption_scores({"a": "x", "z": "y"}, {"a": ["x"], "b": ["y"]})


def test_python_tokenizer_drops_punctuation_and_case():
    assert simple_tokenize("Ann, the RED circle walks!") == "ann the red circle walks"


def test_exact_match_counts_whole_captions():
    from cmar.evaluation.metrics import exact_match

    preds = {"a": "ann the RED circle walks to the tree", "b": "Bob", "c": "nothing"}
    assert exact_match(preds, REFS) == pytest.approx(1 / 3)


def test_bleu_brevity_penalty_by_hand():
    # every n-gram of the hypothesis is in the reference, but it is 4 words for 5: BP = e^(1-5/4)
    refs = {"a": ["w x y z v"], "b": ["p q r s t"]}
    preds = {"a": "w x y z", "b": "p q r s"}
    scores = caption_scores(preds, refs)
    assert scores["BLEU-1"] == pytest.approx(math.exp(1 - 10 / 8), rel=1e-6)
    assert scores["BLEU-4"] == pytest.approx(math.exp(1 - 10 / 8), rel=1e-6)


def test_bleu_clipped_precision_by_hand():
    # "the the the" against "the cat": clipped unigram precision 1/3, length 3 >= 2 so BP = 1
    scores = caption_scores({"a": "the the the", "b": "a dog"}, {"a": ["the cat"],
                                                                  "b": ["a dog"]})
    assert scores["BLEU-1"] == pytest.approx((1 + 2) / (3 + 2), rel=1e-6)


def test_cider_matches_the_scorer_called_directly_on_tokenized_text():
    from pycocoevalcap.cider.cider import Cider

    preds = {"a": "Ann walks to the Tree.", "b": "Bob runs to the pond!", "c": "Cid waits."}
    refs = {"a": ["ann walks to the tree"], "b": ["bob walks to the pond"],
            "c": ["cid runs to the house"]}
    direct, _ = Cider().compute_score(refs, {k: [simple_tokenize(v)] for k, v in preds.items()})
    assert caption_scores(preds, refs)["CIDEr"] == pytest.approx(direct)
    assert 0 < direct < 10


def test_slot_accuracy_names_the_wrong_part():
    from cmar.evaluation.slots import slot_accuracy

    refs = {"a": ["Ann the red circle walks to the tree and meets Bob."],
            "b": ["Bob the blue square runs to the pond."]}
    preds = {"a": "ann the red circle walks to the pond and meets bob.", "b": "nonsense"}
    out = slot_accuracy(preds, refs)
    assert out == {"parsed": 0.5, "who": 0.5, "look": 0.5, "verb": 0.5, "place": 0.0, "met": 0.5}


needs_java = pytest.mark.skipif(__import__("shutil").which("java") is None, reason="no Java")


@needs_java
def test_ptb_tokenizer_and_meteor_with_java():
    preds = {k: v[0] for k, v in REFS.items()}
    scores = caption_scores(preds, REFS, tokenizer="ptb", meteor=True)
    assert scores["BLEU-4"] == pytest.approx(1.0) and scores["METEOR"] > 0.95
    preds["a"] = "Zed the pink star sleeps."
    assert caption_scores(preds, REFS, meteor=True)["METEOR"] < scores["METEOR"]


def test_meteor_without_java_says_so(monkeypatch):
    import cmar.evaluation.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java"):
        caption_scores({k: v[0] for k, v in REFS.items()}, REFS, meteor=True)
