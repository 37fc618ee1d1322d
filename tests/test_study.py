"""The study trains every cell, reads finished runs back instead of retraining, and its
summary is the mean and sample spread of the rows."""

import dataclasses
import json
import shutil

import pytest
import torch

from cmar.models.checkpoint import CHECKPOINT_FORMAT
from cmar.study import GRIDS, cells, markdown, paired_differences, run_study, summarise


def test_summary_is_mean_and_sample_sd_over_seeds():
    rows = [{"mode": "next", "fusion": "cmar", "decoder": "gru", "seed": s, "BLEU-4": b,
             "CIDEr": 1.0, "caption R@1": 0.5, "context gap": 0.1, "slot place": 0.2}
            for s, b in enumerate((0.2, 0.4, 0.6))]
    (entry,) = summarise(rows)
    assert entry["seeds"] == 3
    assert entry["BLEU-4"] == pytest.approx(0.4)
    assert entry["BLEU-4 sd"] == pytest.approx(0.2)  # sample sd of 0.2, 0.4, 0.6
    assert entry["CIDEr sd"] == 0.0


def test_paired_differences_match_decoder_and_seed():
    bleu = {("concat", "gru", 0): 0.50, ("concat", "gru", 1): 0.30, ("concat", "lstm", 0): 0.40,
            ("cmar", "gru", 0): 0.55, ("cmar", "gru", 1): 0.20, ("cmar", "lstm", 0): 0.60,
            ("cmar", "lstm", 9): 0.99}  # no concat partner: left out
    rows = [{"mode": "next", "fusion": f, "decoder": d, "seed": s, "BLEU-4": b}
            for (f, d, s), b in bleu.items()]
    rows.append({"mode": "grounded", "fusion": "concat", "decoder": "gru", "seed": 0,
                 "BLEU-4": 0.0})  # another mode: ignored
    out = paired_differences(rows, "next")
    assert set(out) == {"cmar"}
    assert out["cmar"]["n"] == 3 and out["cmar"]["wins"] == 2
    assert out["cmar"]["mean"] == pytest.approx((0.05 - 0.10 + 0.20) / 3)
    assert out["cmar"]["sd"] == pytest.approx(0.15)  # sample sd of 0.05, -0.10, 0.20


def test_grids_cover_the_issue_grid():
    readme = GRIDS["readme"]
    assert len(cells(readme)) == 3 * 3 * 3 * 2  # fusion x decoder x seed x mode
    assert readme.config == "default"


def test_smoke_study_writes_tables_and_reuses_finished_runs(tmp_path, shapes_cache):
    grid = dataclasses.replace(GRIDS["smoke"], overrides=(f"data.cache_dir={shapes_cache}",))
    result = run_study(grid, tmp_path, progress=False)
    assert [(r["fusion"], r["seed"]) for r in result["rows"]] == [("concat", 0), ("cmar", 0)]
    text = (tmp_path / "study.md").read_text()
    assert "oracle (ceiling) | 1.000" in text and "Modality ablation" in text
    assert (tmp_path / "study.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["rows"] == result["rows"]
    assert set(saved["ablations"]["next"]["scores"]) == {
        "nothing blanked", "images blanked", "captions blanked"}
    assert markdown(result["rows"], result["ablations"]) == text

    checkpoint = tmp_path / "next-cmar-gru-s0" / "best.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = run_study(grid, tmp_path, ablate=False, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp  # read back, not retrained
    assert again["rows"] == result["rows"]

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
