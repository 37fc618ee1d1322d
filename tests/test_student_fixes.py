"""Fixes from a student's first runs: the notebooks extra, looping predictions named, cut
targets named by `cmar data`, verdicts that do not call a tie "above", `cmar generate`
decoding as the run's eval section says (and naming an empty caption), `cmar study --grid`
required."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from test_training import smoke

from cmar.cli import STUDY_GRIDS, build_parser, main
from cmar.evaluation.captions import caption_section
from cmar.evaluation.report import FLOOR_TOLERANCE, alignment_table, header
from cmar.evaluation.text_stats import LOOP_SHARE, collapse_warnings, length_and_diversity
from cmar.models import StoryModel
from cmar.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


# 1. the notebooks extra ------------------------------------------------------------------

def test_notebooks_extra_brings_jupyterlab_and_nbconvert():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "notebooks" in extras
    names = {req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
             for req in extras["notebooks"]}
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= names


# 2. looping predictions ------------------------------------------------------------------

LOOPING = {f"s{i}:3": f"the man walks to the door and the man walks to the door {i}"
           for i in range(6)}
VARIED = {f"s{i}:4": f"caption number {i} says something new about story {i}" for i in range(4)}
REFERENCES = {key: [f"the reference caption of window {key}"] for key in {**LOOPING, **VARIED}}


def test_looping_predictions_are_counted_and_warned_about():
    stats = length_and_diversity({**LOOPING, **VARIED}, REFERENCES)
    assert stats["repeated 4-gram share"] == pytest.approx(0.6)
    assert stats["most repeated share"] < 0.5  # every caption differs: not "collapsed"
    warnings = collapse_warnings(stats)
    assert len(warnings) == 1
    assert "60% of the predictions repeat a 4-gram" in warnings[0]
    assert "train.epochs" in warnings[0] and "eval.strategy" in warnings[0]
    assert "repetition penalty" in warnings[0]
    varied = length_and_diversity(VARIED, REFERENCES)
    assert varied["repeated 4-gram share"] == 0.0 and collapse_warnings(varied) == []


def test_a_share_at_the_threshold_is_not_warned_about():
    n_varied = round(len(LOOPING) / LOOP_SHARE) - len(LOOPING)  # looping share == LOOP_SHARE
    varied = {f"v{i}:3": f"one two three four {i}" for i in range(n_varied)}
    stats = length_and_diversity({**LOOPING, **varied},
                                 dict.fromkeys([*LOOPING, *varied], ["a reference"]))
    assert stats["repeated 4-gram share"] == pytest.approx(LOOP_SHARE)
    assert not any("4-gram" in w for w in collapse_warnings(stats))


def test_the_evaluation_records_the_share_and_prints_the_warning():
    predictions = {**LOOPING, **VARIED}
    section = caption_section({"model": predictions, "floor": VARIED | dict.fromkeys(
        LOOPING, "a plain caption")}, REFERENCES, resamples=0, progress=False)
    assert section["length and diversity"]["model"]["repeated 4-gram share"] == \
        pytest.approx(0.6)
    assert section["length and diversity"]["floor"]["repeated 4-gram share"] == 0.0
    metrics = {"split": "test", "windows": len(predictions), **section}
    assert "WARNING: 60% of the predictions repeat a 4-gram" in header(metrics)


# 3. `cmar data` names the cut targets ----------------------------------------------------

def test_cmar_data_warns_when_many_targets_are_cut(shapes_cache, capsys):
    args = ["data", "--config", "smoke", "--set", f"data.cache_dir={shapes_cache}"]
    assert main(args + ["--set", "data.max_tokens=4"]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    assert "% of target captions" in warning
    assert "are cut at data.max_tokens=4 tokens (mid-sentence)" in warning
    assert "raise data.max_tokens" in warning
    assert main(args + ["--set", "data.max_tokens=4", "--set", "data.caption_policy=full"]) == 0
    assert "use data.caption_policy=first_sentence" in capsys.readouterr().out
    assert main(args) == 0  # the preset's 40 tokens cut no ShapeStories caption
    assert "WARNING" not in capsys.readouterr().out


def test_cmar_data_json_stays_json_and_warns_on_stderr(shapes_cache, capsys):
    import json

    assert main(["data", "--config", "smoke", "--json", "--set",
                 f"data.cache_dir={shapes_cache}", "--set", "data.max_tokens=4"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["max_tokens"] == 4
    assert "data.max_tokens=4" in captured.err


# 4. verdicts against the floor -----------------------------------------------------------

def _verdicts(groups: dict) -> dict[str, str]:
    rows = alignment_table({"alignment": groups}).splitlines()[2:]
    return {row.split(" | ")[0].strip("| ").split(":")[0]: row.split(" | ")[-1].strip(" |")
            for row in rows}


def test_a_tie_with_the_floor_is_not_called_above():
    verdicts = _verdicts({
        "next-caption retrieval (same story)": {  # R@1 with its interval
            "R@1": 0.3001, "R@1 95% interval": [0.25, 0.35],
            "floor": {"name": "TF-IDF", "R@1": 0.3}},
        "next-caption retrieval": {"R@1": 0.6, "R@1 95% interval": [0.55, 0.65],
                                   "floor": {"name": "TF-IDF", "R@1": 0.3}},
        "image-text alignment": {"matched cosine": 0.1001,  # no interval: the tolerance
                                 "floor": {"name": "shuffled", "cosine": 0.1}},
        "context sensitivity": {"gap": 0.5, "floor": {"name": "ignores its input", "gap": 0.0}},
        "grounding": {"accuracy": 0.1, "floor": {"name": "random region", "accuracy": 0.2}},
    })
    same_story = verdicts["next-caption retrieval (same story)"]
    assert same_story.startswith("NOT above its floor") and "95% interval" in same_story
    assert "contains the floor" in same_story
    assert verdicts["next-caption retrieval"].startswith("above its floor (+0.300")
    assert "95% interval [0.550, 0.650]" in verdicts["next-caption retrieval"]
    tie = verdicts["image-text alignment"]
    assert tie.startswith("within the tolerance of its floor (+0.000")
    assert f"tolerance {FLOOR_TOLERANCE}" in tie
    assert verdicts["context sensitivity"].startswith("above its floor (+0.500; tolerance")
    assert verdicts["grounding"].startswith("NOT above its floor (-0.100; tolerance")


def test_an_interval_below_the_floor_says_so():
    verdict = _verdicts({"next-caption retrieval": {
        "R@1": 0.2, "R@1 95% interval": [0.15, 0.25], "floor": {"name": "f", "R@1": 0.3}}})
    assert "lies below it" in verdict["next-caption retrieval"]


# 5. `cmar generate` decodes as the run's eval section says -------------------------------

@pytest.fixture(scope="module")
def run_dir(shapes_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    trainer = Trainer(smoke(shapes_cache, runs, "train.epochs=1", "eval.beam_size=3"),
                      progress=False)
    trainer.fit()
    return str(trainer.run_dir)


@pytest.fixture
def decodings(monkeypatch):
    """Every (strategy, beam_size) StoryModel.generate is called with."""
    calls = []
    real = StoryModel.generate

    def recorded(self, batch, strategy="greedy", max_len=None, **options):
        calls.append((strategy, options.get("beam_size")))
        return real(self, batch, strategy, max_len, **options)

    monkeypatch.setattr(StoryModel, "generate", recorded)
    return calls


def test_generate_decodes_with_the_runs_eval_strategy(run_dir, decodings, capsys):
    assert main(["generate", run_dir]) == 0
    assert decodings == [("greedy", 3)]  # the run's eval.strategy, as `cmar evaluate`
    assert main(["generate", run_dir, "--strategy", "beam"]) == 0
    assert decodings[-1] == ("beam", 3)  # the run's eval.beam_size
    assert main(["generate", run_dir, "--strategy", "beam", "--beam", "2"]) == 0
    assert decodings[-1] == ("beam", 2)
    assert "predicted: " in capsys.readouterr().out


def test_generate_own_frames_decodes_with_the_runs_eval_strategy(run_dir, decodings, tmp_path):
    paths = []
    for n in range(3):
        Image.new("RGB", (20, 20), 40 * n).save(tmp_path / f"{n}.png")
        paths.append(str(tmp_path / f"{n}.png"))
    assert main(["generate", run_dir, "--images", *paths, "--captions", "A", "B", "C"]) == 0
    assert decodings == [("greedy", 3)]


def test_generate_names_an_empty_prediction(run_dir, monkeypatch, capsys):
    def ends_at_once(self, batch, strategy="greedy", max_len=None, **options):
        return torch.full((batch.context_tokens.shape[0], 1), self.decoder.eos_id)

    monkeypatch.setattr(StoryModel, "generate", ends_at_once)
    assert main(["generate", run_dir]) == 0
    out = capsys.readouterr().out
    assert "the model predicted an empty caption" in out
    assert "train.epochs" in out and "--strategy" in out


# 6. `cmar study` needs --grid ------------------------------------------------------------

def test_study_without_grid_is_a_usage_error_naming_the_grids(capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["study"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--grid" in err and "required" in err
    for grid in STUDY_GRIDS:
        assert f"{grid}:" in err
    assert build_parser().parse_args(["study", "--grid", "smoke"]).grid == "smoke"


def test_the_study_grids_offered_are_the_grids_there_are():
    from cmar.research.study.grid import GRIDS

    assert set(STUDY_GRIDS) == set(GRIDS)
