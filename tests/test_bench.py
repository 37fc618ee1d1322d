"""The benchmarks run and report what they claim (no timing is asserted: speed is measured by
`cmar bench`, not by tests)."""

from cmar.bench import bench_cost, bench_metrics
from cmar.config import load_config
from cmar.data import prepare_data


def test_cost_counts_flops_for_every_fusion(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    batch = next(iter(data.loader("train", shuffle=False)))
    cost = bench_cost(cfg.model, cfg.data, data.tokenizer, batch)
    assert set(cost) == {"concat", "cross", "cmar"}
    assert cost["concat"]["ratio_to_concat"] == 1.0
    assert cost["cmar"]["gflops_per_1000_windows"] > cost["concat"]["gflops_per_1000_windows"]


def test_metrics_bench_scores_the_requested_number_of_items():
    out = bench_metrics(n=50, repeats=1)
    assert out["items"] == 50 and out["seconds_median"] >= 0


def test_decode_images_counts_every_frame(shapes_cache):
    from cmar.bench import bench_decode_images

    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    out = bench_decode_images(data, repeats=1)
    assert out["frames"] == sum(len(s) for s in data.stories["train"])
