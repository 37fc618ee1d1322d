"""Bootstrap intervals over stories, character-name scores, length and diversity, collapse
warnings: the numbers a StoryReasoning user expects beside BLEU and CIDEr-D."""

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from cmar.data.markup import parse_segments
from cmar.evaluation.bootstrap import (
    bleu_statistics,
    caption_intervals,
    corpus_bleu,
    mean_with_interval,
    story_weights,
)
from cmar.evaluation.metrics import caption_scores, tokenized
from cmar.evaluation.text_stats import (
    character_names,
    collapse_warnings,
    length_and_diversity,
    name_scores,
)

# Hand-written prose in StoryReasoning's style (not dataset rows).
REFERENCES = {
    "s1:3": ["Tom's hands shake as he slides the envelope across the counter."],
    "s1:4": ["Mrs. Alvarez looks up from the ledger, her glasses low on her nose."],
    "s2:3": ["The boy in the red cap darts between the market stalls."],
    "s2:4": ["José catches him by the collar and laughs."],
    "s3:3": ["Rain streaks the window while Renée waits by the phone."],
    "s3:4": ["She answers on the first ring, breathless."],
}
PREDICTIONS = {
    "s1:3": "Tom slides the envelope across the counter.",
    "s1:4": "Mrs. Alvarez looks up from the counter.",
    "s2:3": "The boy runs between the stalls.",
    "s2:4": "José laughs and lets go of the collar.",
    "s3:3": "Renée waits by the window in the rain.",
    "s3:4": "She answers the phone.",
}


def test_bleu_from_statistics_equals_pycocoevalcap():
    res, gts = tokenized(PREDICTIONS, REFERENCES)
    keys = sorted(PREDICTIONS)
    stats = bleu_statistics(res, gts, keys)
    direct, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert corpus_bleu(stats.sum(0)) == pytest.approx(direct[3], rel=1e-9)
    assert corpus_bleu(stats.sum(0)) == pytest.approx(
        caption_scores(PREDICTIONS, REFERENCES)["BLEU-4"], rel=1e-9)


def test_each_draw_picks_whole_stories():
    ids = ["a", "a", "a", "b", "c", "c"]
    weights = story_weights(ids, resamples=200, seed=0)
    assert weights.shape == (200, 6)
    # every window of a story carries that story's count, and each draw takes 3 stories
    assert np.all(weights[:, 0] == weights[:, 2]) and np.all(weights[:, 4] == weights[:, 5])
    assert np.all(weights[:, [0, 3, 4]].sum(1) == 3)


def test_interval_resamples_stories_not_windows():
    # story a: 20 windows all right; story b: 20 windows all wrong. Resampling windows would
    # give a narrow interval around 0.5; resampling the two stories gives [0, 1].
    ids = ["a"] * 20 + ["b"] * 20
    result = mean_with_interval(ids, [1.0] * 20 + [0.0] * 20, resamples=2000)
    assert result["value"] == pytest.approx(0.5)
    assert result["95% interval"] == [0.0, 1.0]
    assert mean_with_interval(["a", "a"], [1.0, 0.0]) is None  # one story: no interval


def test_caption_intervals_bracket_the_corpus_scores():
    scores = caption_scores(PREDICTIONS, REFERENCES)
    bounds = caption_intervals(PREDICTIONS, REFERENCES, resamples=500)
    for key in ("BLEU-4", "CIDEr"):
        low, high = bounds[key]
        assert low <= scores[key] <= high and low < high
    perfect = caption_intervals({k: v[0] for k, v in REFERENCES.items()}, REFERENCES,
                                resamples=200)
    assert perfect["BLEU-4"] == pytest.approx([1.0, 1.0])
    assert caption_intervals(PREDICTIONS, REFERENCES, resamples=0) is None


STORY = ("<gdi image1> <gdo char1>Tom</gdo> <gda char1>hands</gda> <gdo char2>Mrs. Alvarez</gdo> "
         "the keys while <gdo char3>the boy</gdo> watches; <gdo char1>He</gdo> "
         "<gda char1>nods</gda> to <gdo char4>J. Edgar's</gdo> driver. </gdi>")


def test_character_names_are_the_tagged_proper_names():
    segment = parse_segments(STORY)[0]
    assert character_names(segment.mentions, segment.text) == {"tom", "mrs alvarez",
                                                                "j edgar"}


def test_name_precision_recall_f1():
    wanted = {"w1": {"tom", "mrs alvarez"}, "w2": {"josé"}}
    known = {"tom", "mrs alvarez", "josé", "mike"}
    predictions = {"w1": "Tom's voice breaks as he turns away.", "w2": "Mike and José argue."}
    scores = name_scores(predictions, wanted, known)
    # predicted {tom} and {mike, josé}: 2 right of 3 said, 2 found of 3 wanted
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["F1"] == pytest.approx(2 / 3)
    assert name_scores({"w1": "nobody", "w2": "no one"}, wanted, known)["F1"] == 0.0


def test_length_and_diversity_and_collapse_warning():
    varied = length_and_diversity(PREDICTIONS, REFERENCES)
    assert varied["different predictions"] == 6 and varied["most repeated share"] == 1 / 6
    assert 5 < varied["words per prediction"] < 9 and 0.5 < varied["distinct-1"] <= 1.0
    assert collapse_warnings(varied) == []
    collapsed = length_and_diversity(dict.fromkeys(PREDICTIONS, "the"), REFERENCES)
    assert collapsed["most repeated share"] == 1.0 and collapsed["words per prediction"] == 1.0
    assert collapsed["distinct-2"] == 0.0
    warnings = collapse_warnings(collapsed)
    assert len(warnings) == 2 and "100% of the windows" in warnings[0]


def test_report_shows_each_candidate_set_size_beside_its_floor_and_chance():
    import torch

    from cmar.evaluation.report import alignment_table
    from cmar.evaluation.retrieval import by_size, ranking_scores, with_floors

    scores = torch.randn(40, 32, generator=torch.Generator().manual_seed(0))
    scores[:, 0] += 2.0  # the model often ranks the true caption first
    floor = torch.randn(40, 32, generator=torch.Generator().manual_seed(1))
    group = with_floors(ranking_scores(scores), {"TF-IDF": ranking_scores(floor)}, 40)
    group["candidate sets"] = by_size(scores, {"TF-IDF": floor}, [20, 32, 100])
    rows = alignment_table({"alignment": {"next-caption retrieval": group}}).splitlines()[2:]
    assert rows[0].startswith("| next-caption retrieval: R@1 |")
    twenty, thirty_two, hundred = rows[1:4]
    assert twenty.startswith("| next-caption retrieval, 1 + 19 candidates: R@1 / R@5 / mean rank")
    sizes = group["candidate sets"]
    model = " / ".join(f"{sizes['20'][k]:.3f}" for k in ("R@1", "R@5", "mean rank"))
    assert f"| {model} | TF-IDF |" in twenty
    assert "| 0.050 / 0.250 / 10.500 |" in twenty  # chance: 1/n, 5/n, (n + 1)/2
    assert "| 0.031 / 0.156 / 16.500 |" in thirty_two and "1 + 31 candidates" in thirty_two
    assert "n/a: needs 100 candidates per window, has 32" in hundred
    assert twenty.split(" | ")[-1].startswith("above its floor")  # the verdict, by R@1
