"""caption_scores: corpus level, refuses what would be meaningless."""

import pytest

from cmar.metrics import caption_scores, simple_tokenize

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
    from cmar.metrics import exact_match

    preds = {"a": "ann the RED circle walks to the tree", "b": "Bob", "c": "nothing"}
    assert exact_match(preds, REFS) == pytest.approx(1 / 3)
