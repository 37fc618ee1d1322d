"""The benchmarks run and report what they claim (no timing is asserted: speed is measured by
`cmar bench`, not by tests)."""

import json

import pytest

from cmar.config import load_config
from cmar.data import prepare_data
from cmar.research.bench.runner import bench_cost, bench_metrics


def test_cost_counts_flops_for_every_fusion(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    batch = next(iter(data.loader("train", shuffle=False)))
    cost = bench_cost(cfg.model, cfg.data, data.tokenizer, batch)
    assert set(cost) == {"concat", "cross", "cmar", "cmar_lite"}
    assert cost["concat"]["ratio_to_concat"] == 1.0
    flops = {name: row["gflops_per_1000_windows"] for name, row in cost.items()}
    assert flops["cmar"] > flops["cmar_lite"] > flops["concat"]  # the cheaper CMAR is cheaper


def test_metrics_bench_scores_the_requested_number_of_items():
    out = bench_metrics(n=50, repeats=1)
    assert out["items"] == 50 and out["seconds_median"] >= 0


def test_decode_images_counts_every_frame(shapes_cache):
    from cmar.research.bench.runner import bench_decode_images

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    out = bench_decode_images(data, repeats=1)
    assert out["frames"] == sum(len(s) for s in data.stories["train"])


def test_peak_memory_sees_a_child_allocation_and_reports_its_failure():
    import sys

    import pytest

    from cmar.research.bench.ram import peak_memory

    small = peak_memory([sys.executable, "-c", "import time; time.sleep(0.3)"])
    big = peak_memory([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); "
                       "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3)"])
    if big["peak_anon_mb"] is not None:  # Linux: /proc sampled
        assert big["peak_anon_mb"] - small["peak_anon_mb"] >= 280
    assert big["peak_rss_mb"] - small["peak_rss_mb"] >= 280
    with pytest.raises(RuntimeError, match="boom"):
        peak_memory([sys.executable, "-c", "raise SystemExit('boom')"])


def test_memory_bench_trains_and_evaluates_in_child_processes(tmp_path, shapes_cache):
    from cmar.research.bench.runner import render, run_target

    result = run_target("memory", "smoke", [f"data.cache_dir={shapes_cache}"],
                        out_dir=tmp_path)
    (row,) = result["workloads"]
    assert row["stories"] == 60 and row["frames"] > 60 * 4
    assert row["train_windows"] > 0 and row["test_windows"] > 0
    for phase in ("data", "train", "evaluate"):
        assert 100 < row[phase]["peak_rss_mb"] < 8000
    assert (tmp_path / "memory-demo.json").exists()
    table = render(result)
    assert "demo      train" in table and "peak anonymous MB" in table
    # the generated data is measured, then deleted; the run (checkpoint) stays
    assert row["data_disk_mb"] >= row["frame_cache_mb"] > 0 and not row["data_kept"]
    assert not (tmp_path / "memory" / "demo" / "data").exists()
    assert (tmp_path / "memory" / "demo" / "demo" / "best.pt").exists()
    assert "deleted after measuring" in table


def test_memory_bench_refuses_to_start_without_the_disk_it_needs(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import pytest

    from cmar.config import load_config
    from cmar.research.bench.ram import MEMORY_WORKLOADS, bench_memory, expected_disk_mb

    sized = load_config("default", MEMORY_WORKLOADS["storyreasoning-sized"]).data
    demo = load_config("default", MEMORY_WORKLOADS["demo"]).data
    # 4,000 stories of 9-14 frames at 224 px against 2,000 of 5-8 at 64 px
    assert expected_disk_mb(sized) > 40 * expected_disk_mb(demo) > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 0, 2**20))
    with pytest.raises(OSError, match=r"demo workload needs [\d.]+ GB in .* only 0.0 GB"
                                      r" are free; free some space or pass --out"):
        bench_memory("demo", "smoke", work_dir=tmp_path)
    assert not (tmp_path / "demo" / "data").exists()  # nothing was generated


def test_every_target_renders_a_table(tmp_path, shapes_cache):
    from cmar.research.bench.runner import render, run_target

    sets = [f"data.cache_dir={shapes_cache}"]
    expected = {"data": "DataLoader, 0 workers", "decode": "identical outputs: True",
                "cost": "cmar"}
    for target, options in (("data", {"batches": 2, "workers": (0,)}),
                            ("decode", {"batch_size": 4, "max_len": 4}), ("cost", {})):
        result = run_target(target, "smoke", sets, repeats=1, out_dir=tmp_path, **options)
        table = render(result)
        assert table.startswith(f"cmar bench {target}") and expected[target] in table
        assert "{" not in table  # a table, not a JSON dump
        assert (tmp_path / f"{target}.json").exists()
    decoders = [row["decoder"] for row in result_of(tmp_path, "decode")["decoders"]]
    assert decoders == ["lstm", "gru", "transformer"]
    cache = result_of(tmp_path, "decode")["cache"]
    assert [c["what"] for c in cache] == ["smoke preset"] + ["storyreasoning-sized"] * 2
    assert [c["windows"] for c in cache][1:] == [16, 64]
    assert cache[1]["vocab"] == 8000 and cache[1]["max_len"] == 5
    assert all(c["identical_outputs"] for c in cache)
    assert table_of(tmp_path, "decode").count("cached / uncached: ") == 3


def result_of(folder, target):
    return json.loads((folder / f"{target}.json").read_text())


def table_of(folder, target):
    from cmar.research.bench.runner import render

    return render(result_of(folder, target))


def test_train_bench_reports_the_spread_of_every_pass_and_the_cache_speedup(tmp_path,
                                                                           shapes_cache):
    from cmar.research.bench.runner import bench_train, render

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}",
                                "model.freeze_image_encoder=true"])
    out = bench_train(cfg, steps=2, cache_dir=tmp_path, repeats=2)
    for side in ("images", "cached_features"):
        r = out[side]
        assert 0 < r["windows_per_s_min"] <= r["windows_per_s_median"] <= r["windows_per_s_max"]
        assert 0 <= r["data_wait_share_min"] <= r["data_wait_share_max"] < 1
        assert len(r["passes"]) == 2  # [windows/s, wait share] of each pass, in order
    assert out["repeats"] == 2 and list(tmp_path.glob("*.npy"))  # the cache was built there
    assert out["speedup"] == round(out["cached_features"]["windows_per_s_median"]
                                   / out["images"]["windows_per_s_median"], 1)
    table = render({"target": "train", "config": "smoke", "trainable": out, "frozen": out,
                    "machine": {"cpu_count": 2, "torch_threads": 2, "cuda": None}})
    assert "feature cache / re-encoding" in table and "2 passes of 2 / 2 steps" in table


def test_train_bench_profiles_a_step_and_never_asks_for_more_steps_than_an_epoch(shapes_cache):
    from cmar.research.bench.runner import bench_train, render

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", "data.n_stories=24"])
    out = bench_train(cfg, steps=500, repeats=1)  # far more steps than the epoch holds
    assert 1 <= out["steps"] < 500
    profile = out["profile"]
    parts = {"image_encoder", "text_encoder", "fusion", "story_encoder", "decoder"}
    assert parts <= set(profile["forward"])
    assert sum(profile["shares"].values()) == pytest.approx(1, abs=0.01)
    assert profile["step"] >= profile["backward"] > 0
    table = render({"target": "train", "config": "smoke", "trainable": out, "frozen": out,
                    "machine": {"cpu_count": 2, "torch_threads": 2, "cuda": None}})
    assert "where a training step's time goes" in table and "backward" in table
