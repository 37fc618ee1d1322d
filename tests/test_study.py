"""The study trains every cell, reads finished runs back instead of retraining, and its
summary is the mean and sample spread of the rows; the decoder-memory axis really changes what
the decoder attends over, and the paired fusion differences carry a t interval."""

import dataclasses
import json
import shutil

import pytest
import torch

from cmar.config import load_config
from cmar.evaluation.stats import ci95, t_975
from cmar.models import StoryModel
from cmar.models.checkpoint import CHECKPOINT_FORMAT
from cmar.research.study.grid import GRIDS, Grid, cells, run_config, run_name, run_study
from cmar.research.study.report import markdown
from cmar.research.study.table import paired_differences, summarise


def test_summary_is_mean_and_sample_sd_over_seeds():
    rows = [{"mode": "next", "memory": "full", "fusion": "cmar", "decoder": "gru", "seed": s,
             "BLEU-4": b, "BLEU-4 images blanked": 0.1, "CIDEr": 1.0, "caption R@1": 0.5,
             "context gap": 0.1, "slot place": 0.2, "slot place images blanked": 0.1,
             "grounding": float("nan"), "train seconds": 100.0}
            for s, b in enumerate((0.2, 0.4, 0.6))]
    (entry,) = summarise(rows)
    assert entry["seeds"] == 3 and entry["memory"] == "full"
    assert entry["BLEU-4"] == pytest.approx(0.4)
    assert entry["BLEU-4 sd"] == pytest.approx(0.2)  # sample sd of 0.2, 0.4, 0.6
    assert entry["CIDEr sd"] == 0.0
    assert entry["grounding"] != entry["grounding"]  # concat has none: NaN, not a crash


def test_paired_differences_match_decoder_and_seed():
    bleu = {("concat", "gru", 0): 0.50, ("concat", "gru", 1): 0.30, ("concat", "lstm", 0): 0.40,
            ("cmar", "gru", 0): 0.55, ("cmar", "gru", 1): 0.20, ("cmar", "lstm", 0): 0.60,
            ("cmar", "lstm", 9): 0.99}  # no concat partner: left out
    rows = [{"mode": "next", "memory": "full", "fusion": f, "decoder": d, "seed": s,
             "BLEU-4": b} for (f, d, s), b in bleu.items()]
    rows.append({"mode": "grounded", "memory": "full", "fusion": "concat", "decoder": "gru",
                 "seed": 0, "BLEU-4": 0.0})  # another mode: ignored
    out = paired_differences(rows, "next")
    assert set(out) == {"cmar"}
    assert out["cmar"]["n"] == 3 and out["cmar"]["wins"] == 2
    assert out["cmar"]["mean"] == pytest.approx((0.05 - 0.10 + 0.20) / 3)
    assert out["cmar"]["sd"] == pytest.approx(0.15)  # sample sd of 0.05, -0.10, 0.20
    # mean ± t(0.975, 2) * sd / sqrt(3) = 0.05 ± 4.303 * 0.15 / 1.7320508
    half = 4.303 * 0.15 / 3 ** 0.5
    assert out["cmar"]["ci95"] == pytest.approx([0.05 - half, 0.05 + half])


def test_paired_differences_pair_within_one_memory_only():
    rows = [{"mode": "next", "memory": memory, "fusion": fusion, "decoder": "gru", "seed": 0,
             "BLEU-4": b}
            for memory, fusion, b in (("story", "concat", 0.30), ("story", "cmar", 0.40),
                                      ("full", "concat", 0.50), ("full", "cmar", 0.45),
                                      ("words", "cmar", 0.90))]  # no concat in words
    story = paired_differences(rows, "next", "story")
    full = paired_differences(rows, "next", "full")
    assert story["cmar"]["mean"] == pytest.approx(0.10) and story["cmar"]["n"] == 1
    assert full["cmar"]["mean"] == pytest.approx(-0.05) and full["cmar"]["wins"] == 0
    assert story["cmar"]["ci95"] is None  # one pair: no interval
    assert paired_differences(rows, "next", "words") == {}


def test_t_interval_uses_the_table_and_rounds_df_down():
    assert t_975(2) == 4.303 and t_975(14) == 2.145  # v2: 3 decoders x 5 seeds = 15 pairs
    assert t_975(35) == 2.042  # between 30 and 40: the lower df, a wider interval
    assert t_975(120) == 1.980 and t_975(500) == 1.96
    with pytest.raises(ValueError, match="degree of freedom"):
        t_975(0)
    low, high = ci95([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sd 1.2909944, t(3) = 3.182
    assert (low, high) == pytest.approx((2.5 - 3.182 * 1.2909944 / 2, 2.5 + 3.182 * 1.2909944 / 2))
    assert ci95([0.3]) is None


def test_grids_cover_the_issue_grid():
    readme = GRIDS["readme"]
    assert len(cells(readme)) == 3 * 3 * 3 * 2  # fusion x decoder x seed x mode
    assert readme.config == "default" and readme.memories == ("full",)
    v2 = GRIDS["v2"]
    assert len(cells(v2)) == 2 * 3 * 3 * 5 == 90  # memory x fusion x decoder x seed
    assert v2.modes == ("next",) and v2.epochs == 3
    assert {c[1] for c in cells(v2)} == {"story", "full"}
    assert len(cells(GRIDS["smoke"])) == 2


def test_v3_compares_the_fusions_with_the_look_ahead_feeding_them(tmp_path):
    v3 = GRIDS["v3"]
    assert len(cells(v3)) == 3 * 5  # fusion x seed, one decoder, story memory, next mode
    for cell in cells(v3):
        cfg = run_config(v3, *cell, tmp_path)
        assert (cfg.model.memory_tokens, cfg.model.memory_regions) == (False, False)
        # the look-ahead sits before the fusion, the only way its output reaches the caption
        assert cfg.model.look_ahead and not cfg.model.look_ahead_turn
        assert cfg.train.epochs == load_config("default").train.epochs


def test_the_command_line_keeps_the_grids_own_overrides(monkeypatch, tmp_path):
    from cmar import cli
    from cmar.research.study import grid as grid_module

    seen = {}

    def fake_study(grid, runs_dir, **kwargs):
        seen["grid"] = grid
        (tmp_path / "study.md").write_text("table")
        return {"rows": []}

    monkeypatch.setattr(grid_module, "run_study", fake_study)
    assert cli.main(["study", "--grid", "v3", "--seeds", "2", "--runs-dir", str(tmp_path),
                     "--set", "train.batch_size=8"]) == 0
    assert seen["grid"].seeds == (2,)
    assert seen["grid"].overrides == (*GRIDS["v3"].overrides, "train.batch_size=8")


def test_run_names_keep_the_old_name_for_the_full_memory():
    assert run_name("next", "full", "cmar", "gru", 0) == "next-cmar-gru-s0"
    assert run_name("next", "story", "cmar", "gru", 0) == "next-story-cmar-gru-s0"
    assert run_name("grounded", "words", "concat", "lstm", 2) == "grounded-words-concat-lstm-s2"


def test_memory_axis_sets_the_decoder_memory_flags(tmp_path):
    expected = {"story": (False, False), "words": (True, False), "full": (True, True)}
    for memory, flags in expected.items():
        cfg = run_config(Grid(), "next", memory, "cmar", "gru", 1, tmp_path)
        assert (cfg.model.memory_tokens, cfg.model.memory_regions) == flags
        assert cfg.name == run_name("next", memory, "cmar", "gru", 1)
    # the full memory is the preset's own: a folder an older study trained compares equal
    full = run_config(Grid(), "next", "full", "cmar", "gru", 1, tmp_path)
    older = load_config("default", ["name=next-cmar-gru-s1", f"runs_dir={tmp_path}", "seed=1",
                                    "data.mode=next", "model.fusion=cmar",
                                    "model.decoder=gru"])
    assert full == older
    # the default preset copies words (model.copy_tokens): a memory without them copies none,
    # and the model it configures builds
    story = run_config(Grid(), "next", "story", "cmar", "lstm", 0, tmp_path)
    assert not story.model.copy_tokens and full.model.copy_tokens
    StoryModel(story.model, vocab_size=50, image_size=32)
    clash = Grid(overrides=("model.memory_regions=false",))
    with pytest.raises(ValueError, match="--memories"):
        run_config(clash, "next", "full", "cmar", "gru", 0, tmp_path)


def test_smoke_study_writes_tables_and_reuses_finished_runs(tmp_path, shapes_cache):
    grid = dataclasses.replace(GRIDS["smoke"], overrides=(f"data.cache_dir={shapes_cache}",))
    result = run_study(grid, tmp_path, progress=False)
    assert [(r["fusion"], r["memory"], r["seed"]) for r in result["rows"]] == [
        ("concat", "full", 0), ("cmar", "full", 0)]
    text = (tmp_path / "study.md").read_text()
    assert "oracle (ceiling) | 1.000" in text and "Modality ablation" in text
    assert "BLEU-4, images blanked" in text and "95% interval" in text
    assert (tmp_path / "study.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "study.json").read_text())
    assert json.dumps(saved["rows"]) == json.dumps(result["rows"])  # NaN == NaN as text
    assert set(saved["ablations"]["next"]["scores"]) == {
        "nothing blanked", "images blanked", "captions blanked"}
    assert set(saved["versus_concat"]) == {"next"}  # the full memory keeps the mode's key
    place = saved["versus_concat_place"]["next"]["cmar"]
    assert place["n"] == 1 and place["mean"] == pytest.approx(
        result["rows"][1]["slot place"] - result["rows"][0]["slot place"])
    assert "Pooled over decoders and seeds (place)" in text
    history = json.loads((tmp_path / "next-cmar-gru-s0" / "history.json").read_text())
    assert result["rows"][1]["train seconds"] == pytest.approx(
        sum(e["train_seconds"] for e in history)) and result["rows"][1]["train seconds"] > 0
    assert markdown(result["rows"], result["ablations"]) == text
    concat, cmar = result["rows"]
    assert concat["grounding"] != concat["grounding"]  # concat has no word-to-region map
    assert 0.0 <= cmar["grounding"] <= 1.0 and 0.0 <= cmar["slot place images blanked"] <= 1.0

    checkpoint = tmp_path / "next-cmar-gru-s0" / "best.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = run_study(grid, tmp_path, ablate=False, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp  # read back, not retrained
    assert json.dumps(again["rows"]) == json.dumps(result["rows"])
    on_cpu = dataclasses.replace(grid, overrides=(*grid.overrides, "device=cpu"))
    run_study(on_cpu, tmp_path, ablate=False, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp  # where it runs is not what it is

    moved = tmp_path / "moved"  # a run folder copied into another study is read back too
    shutil.copytree(tmp_path / "next-cmar-gru-s0", moved / "next-cmar-gru-s0")
    only_cmar = dataclasses.replace(grid, fusions=("cmar",))
    copied = run_study(only_cmar, moved, ablate=False, progress=False)
    assert (moved / "next-cmar-gru-s0" / "best.pt").stat().st_mtime_ns == stamp
    assert copied["rows"][0]["BLEU-4"] == result["rows"][1]["BLEU-4"]

    config = tmp_path / "next-concat-gru-s0" / "config.yaml"  # as an older cmar wrote it
    config.write_text(config.read_text().replace("infonce_temperature", "temperature"))
    stale = run_study(dataclasses.replace(grid, fusions=("concat",)), tmp_path, ablate=False,
                      progress=False)
    assert stale["rows"][0]["fusion"] == "concat"  # trained again, not a crash
    assert "infonce_temperature" in config.read_text()

    older = tmp_path / "next-concat-gru-s0" / "best.pt"  # weights an older cmar wrote
    payload = torch.load(older, weights_only=True)
    del payload["format"]
    torch.save(payload, older)
    run_study(dataclasses.replace(grid, fusions=("concat",)), tmp_path, ablate=False,
              progress=False)
    assert torch.load(older, weights_only=True)["format"] == CHECKPOINT_FORMAT  # trained again

    changed = dataclasses.replace(grid, fusions=("cmar",), epochs=2)
    run_study(changed, tmp_path, ablate=False, progress=False)
    assert checkpoint.stat().st_mtime_ns != stamp  # another config: trained again


def test_smoke_study_with_story_only_memory(tmp_path, shapes_cache):
    grid = dataclasses.replace(GRIDS["smoke"], memories=("story",),
                               overrides=(f"data.cache_dir={shapes_cache}",))
    result = run_study(grid, tmp_path, progress=False)
    assert [(r["memory"], r["fusion"]) for r in result["rows"]] == [
        ("story", "concat"), ("story", "cmar")]
    saved = load_config(tmp_path / "next-story-cmar-gru-s0" / "config.yaml")
    assert not saved.model.memory_tokens and not saved.model.memory_regions
    assert not (tmp_path / "next-cmar-gru-s0").exists()  # the full memory's name is not used
    text = (tmp_path / "study.md").read_text()
    assert "`next` mode, `story` decoder memory" in text and "story states only" in text
    assert "| cmar | 1 |" in text  # the pooled row, beside concat
    assert set(result["ablations"]) == set(result["versus_concat"]) == {"next-story"}
    assert (tmp_path / "study.png").stat().st_size > 1000


def test_the_study_takes_any_registered_part_and_refuses_unknown_ones_before_training(
        tmp_path, monkeypatch):
    """Part names come from the registries: a fusion registered here is a grid arm like a
    built-in one (the command line no longer lists names of its own), and a name no registry
    holds is refused before the first run trains."""
    from cmar.cli import build_parser
    from cmar.models import FUSIONS, ConcatFusion
    from cmar.research.study.grid import GRIDS, cells, run_config

    args = build_parser().parse_args(["study", "--grid", "smoke", "--fusions", "film_in_a_test",
                                      "--decoders", "my_decoder"])
    assert args.fusions == ["film_in_a_test"] and args.decoders == ["my_decoder"]
    grid = dataclasses.replace(GRIDS["smoke"], fusions=("film_in_a_test",))
    with pytest.raises(ValueError, match="model.fusion must be one of .*got 'film_in_a_test'"):
        run_study(grid, tmp_path / "unknown", ablate=False, progress=False)
    assert not (tmp_path / "unknown").exists()  # nothing trained, nothing written
    monkeypatch.setitem(FUSIONS, "film_in_a_test", ConcatFusion)
    cfg = run_config(grid, *cells(grid)[0], tmp_path)
    assert cfg.model.fusion == "film_in_a_test"
