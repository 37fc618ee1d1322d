"""Benchmarks, run side by side on the same machine: ``cmar bench TARGET`` prints a table and
writes ``TARGET.json``; ``cmar bench all`` runs every target at sizes that fit 10 minutes on a
2-core CPU. Memory is measured in :mod:`cmar.research.bench.ram`, tables are drawn by
:mod:`cmar.research.bench.tables`.

Timings are reported as median and spread over repeats, never asserted in unit tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cmar.research.bench.ram import FROZEN_RESNET, bench_memory
from cmar.research.bench.tables import render

if TYPE_CHECKING:
    from cmar.data.prepare import StoryData


def median_spread(values: list[float], key: str, digits: int = 1) -> dict:
    """``{key}_median``, ``{key}_min`` and ``{key}_max`` of ``values``, rounded."""
    return {f"{key}_median": round(statistics.median(values), digits),
            f"{key}_min": round(min(values), digits), f"{key}_max": round(max(values), digits)}


def bench_loader(data: StoryData, split: str = "train", batches: int = 50, repeats: int = 3,
                 num_workers: int | None = None, batch_size: int | None = None) -> dict:
    """Windows per second through the DataLoader (collate and normalisation included).

    Each repeat builds a fresh loader, skips the first batch (worker start-up) and times the
    next ``batches`` batches (or the whole split, if shorter).
    """
    rates = []
    for repeat in range(repeats):
        loader = data.loader(split, shuffle=True, seed=repeat, num_workers=num_workers,
                             batch_size=batch_size)
        iterator = iter(loader)
        next(iterator)
        seen, start = 0, time.perf_counter()
        for _, batch in zip(range(batches), iterator, strict=False):
            seen += len(batch)
        elapsed = time.perf_counter() - start
        rates.append(seen / elapsed if elapsed > 0 else float("nan"))
        del iterator, loader
    return {
        "split": split,
        "batch_size": batch_size or data.cfg.batch_size,
        "num_workers": data.cfg.num_workers if num_workers is None else num_workers,
        **median_spread(rates, "windows_per_s"),
        "repeats": repeats,
    }


def _windows_per_s(fn, n_windows: int, repeats: int) -> tuple[float, list[float], object]:
    """Median windows/s of ``fn()`` over ``repeats`` runs, all rates, and the last result."""
    rates, result = [], fn()  # one unmeasured warm-up run
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        rates.append(n_windows / (time.perf_counter() - start))
    return statistics.median(rates), rates, result


def bench_decode(model, batch, beam_size: int = 5, repeats: int = 3) -> dict:
    """Greedy, batched beam and a per-window beam loop on the same windows, side by side.

    ``identical`` says whether the batched beam returned exactly the per-window sequences.
    """
    import torch

    model.eval()
    n = len(batch)
    singles = [batch.rows(slice(i, i + 1)) for i in range(n)]

    def loop():
        return [model.generate(w, "beam", beam_size=beam_size)[0] for w in singles]

    greedy, greedy_rates, _ = _windows_per_s(lambda: model.generate(batch), n, repeats)
    batched, batched_rates, batched_ids = _windows_per_s(
        lambda: model.generate(batch, "beam", beam_size=beam_size), n, repeats)
    looped, looped_rates, looped_ids = _windows_per_s(loop, n, repeats)
    width = max(batched_ids.shape[1], max(len(r) for r in looped_ids))

    def padded(row):
        return torch.nn.functional.pad(row, (0, width - len(row)), value=model.pad_id)

    identical = all(torch.equal(padded(batched_ids[i]), padded(looped_ids[i])) for i in range(n))
    return {
        "windows": n, "beam_size": beam_size, "repeats": repeats,
        "threads": torch.get_num_threads(),
        "greedy_windows_per_s": round(greedy, 1),
        "batched_beam_windows_per_s": round(batched, 1),
        "per_window_beam_windows_per_s": round(looped, 1),
        "batched_over_per_window": round(batched / looped, 2),
        "spread": {"greedy": [round(r, 1) for r in greedy_rates],
                   "batched_beam": [round(r, 1) for r in batched_rates],
                   "per_window_beam": [round(r, 1) for r in looped_rates]},
        "identical_outputs": identical,
        "mean_output_tokens": round(float((batched_ids != model.pad_id).sum(1).float().mean()),
                                    1),
    }


def bench_metrics(n: int = 5000, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds for ``caption_scores`` on ``n`` ShapeStories-like predictions."""
    import random as _random

    from cmar.evaluation.metrics import caption_scores

    rng = _random.Random(seed)
    words = ["ann", "bob", "the", "red", "blue", "circle", "square", "walks", "runs", "to",
             "tree", "pond", "house", "and", "meets"]
    references = {str(i): [" ".join(rng.choices(words, k=10))] for i in range(n)}
    predictions = {key: " ".join(rng.choices(words, k=10)) for key in references}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        caption_scores(predictions, references)
        times.append(time.perf_counter() - start)
    return {"items": n, **median_spread(times, "seconds", digits=2)}


def bench_cost(model_cfg, data_cfg, tokenizer, batch, fusions: tuple[str, ...] | None = None
               ) -> dict:
    """FLOPs of one training step (forward + backward) per 1,000 windows, for each fusion
    (default: every registered one), counted with torch's FlopCounterMode;
    ``ratio_to_concat`` answers "does CMAR increase training complexity?" as a number."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cmar.models import FUSIONS, build_model

    if fusions is None:
        fusions = tuple(FUSIONS)

    out = {}
    for fusion in fusions:
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(model_cfg, fusion=fusion), tokenizer, data_cfg)
        counter = FlopCounterMode(display=False)
        with counter:
            loss = sum(model(batch).losses.values())
            loss.backward()
        out[fusion] = {"gflops_per_1000_windows": round(counter.get_total_flops() / len(batch)
                                                        * 1000 / 1e9, 2),
                       "parameters": model.parameter_counts()["fusion"]}
    base = out.get("concat", next(iter(out.values())))["gflops_per_1000_windows"]
    for row in out.values():
        row["ratio_to_concat"] = round(row["gflops_per_1000_windows"] / base, 3)
    return out


def bench_train(cfg, steps: int = 20, cache_dir=None, repeats: int = 3) -> dict:
    """Training windows per second (forward, backward, AdamW step) and the share of each step
    spent waiting for the DataLoader, median and spread over ``repeats`` passes of ``steps``
    steps, each on a fresh loader with its first step a warm-up (every pass's windows/s and
    wait share are kept in ``passes``). With ``cache_dir`` and a frozen encoder, the same
    again after attaching the feature cache, its one-off build time reported apart."""
    import torch

    from cmar.data import prepare_data
    from cmar.models import build_model

    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    model = build_model(cfg.model, data.tokenizer, cfg.data).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    # a pass is one warm-up step and ``steps`` timed ones, within one epoch of the data
    steps = max(1, min(steps, len(data.loader("train", shuffle=False)) - 1))

    def one_pass(seed: int) -> tuple[float, float]:
        iterator = iter(data.loader("train", shuffle=True, seed=seed))
        wait = busy = 0.0
        windows = 0
        for step in range(steps + 1):
            start = time.perf_counter()
            batch = next(iterator)
            fetched = time.perf_counter()
            loss = sum(model(batch).losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up
                wait += fetched - start
                busy += time.perf_counter() - fetched
                windows += len(batch)
        return windows / (wait + busy), wait / (wait + busy)

    def run() -> dict:
        rates, shares = zip(*(one_pass(cfg.seed + r) for r in range(repeats)), strict=True)
        return {**median_spread(rates, "windows_per_s"),
                **median_spread(shares, "data_wait_share", digits=3),
                "passes": [[round(r, 1), round(w, 3)] for r, w in zip(rates, shares,
                                                                      strict=True)]}

    result = {"image_encoder": cfg.model.image_encoder, "image_size": cfg.data.image_size,
              "frozen": cfg.model.freeze_image_encoder, "steps": steps, "repeats": repeats,
              "batch_size": cfg.data.batch_size, "images": run()}
    if not cfg.model.freeze_image_encoder:  # where the time of a step goes
        from cmar.research.bench.profile import profile_steps

        batches = itertools.islice(data.loader("train", shuffle=True, seed=cfg.seed), steps + 1)
        result["profile"] = profile_steps(model, batches, optimizer)
    if cache_dir is not None and cfg.model.freeze_image_encoder:
        from cmar.models.feature_cache import attach_feature_cache

        start = time.perf_counter()
        attach_feature_cache(data, model, cache_dir, progress=False)
        result["cache_build_s"] = round(time.perf_counter() - start, 1)
        result["cached_features"] = run()
        result["speedup"] = round(result["cached_features"]["windows_per_s_median"]
                                  / result["images"]["windows_per_s_median"], 1)
    return result


def bench_decode_images(data: StoryData, split: str = "train", repeats: int = 3) -> dict:
    """Images decoded (and resized) per second when an ImageStore is built, no disk cache."""
    from cmar.data.images import ImageStore

    stories = data.stories[split]
    frames = sum(len(s) for s in stories)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        ImageStore(stories, data.cfg.image_size, cache_dir=None, progress=False,
                   fit=data.cfg.image_fit)
        rates.append(frames / (time.perf_counter() - start))
    return {"frames": frames, "images_per_s_median": round(statistics.median(rates), 1),
            "images_per_s_min": round(min(rates), 1), "images_per_s_max": round(max(rates), 1)}


def _timed(fn) -> tuple[float, object]:
    """Seconds ``fn()`` took (its GPU work included) and its result."""
    import torch

    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def _output_tokens(ids, pad_id: int) -> float:
    return round(float((ids != pad_id).sum(1).float().mean()), 1)


def bench_decoders(model_cfg, data_cfg, tokenizer, batch, beam_size: int = 5,
                   max_len: int = 32, repeats: int = 3) -> list[dict]:
    """Greedy and batched beam windows/s of every registered decoder (untrained, seeded), on
    the same windows and captions of up to ``max_len`` tokens."""
    import torch

    from cmar.models import DECODERS, build_model

    rows = []
    for kind in DECODERS:
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(model_cfg, decoder=kind), tokenizer,
                            data_cfg).eval()
        greedy, greedy_rates, ids = _windows_per_s(
            lambda m=model: m.generate(batch, max_len=max_len), len(batch), repeats)
        beam, beam_rates, _ = _windows_per_s(
            lambda m=model: m.generate(batch, "beam", max_len=max_len, beam_size=beam_size),
            len(batch), repeats)
        rows.append({"decoder": kind, "greedy_windows_per_s": round(greedy, 1),
                     "beam_windows_per_s": round(beam, 1),
                     "spread": {"greedy": [round(r, 1) for r in greedy_rates],
                                "beam": [round(r, 1) for r in beam_rates]},
                     "greedy_output_tokens": _output_tokens(ids, model.pad_id)})
    return rows


def bench_cache(decoder, memory, memory_mask, what: str, beam_size: int = 5,
                max_len: int = 32, repeats: int = 3) -> dict:
    """The Transformer decoder generating with its cache against re-running the prefix at
    every step, greedy and beam, timed in alternation (cached, then re-run, each repeat)
    so both see the same machine; the ratio of each repeat, and whether outputs match."""
    import torch

    decoder.eval()
    result = {"what": what, "windows": memory.shape[0], "memory": memory.shape[1],
              "d_model": memory.shape[-1], "vocab": decoder.out.out_features,
              "max_len": max_len, "beam_size": beam_size, "repeats": repeats}
    identical = True
    for strategy in ("greedy", "beam"):
        def generate(use_cache: bool, strategy=strategy):
            decoder.use_cache = use_cache
            return decoder.generate(memory, memory_mask, strategy, max_len=max_len,
                                    beam_size=beam_size)

        times = {True: [], False: []}
        outputs = {True: generate(True), False: generate(False)}  # warm-up
        for _ in range(repeats):
            for use_cache in (True, False):
                seconds, outputs[use_cache] = _timed(lambda u=use_cache: generate(u))
                times[use_cache].append(seconds)
        identical &= torch.equal(outputs[True], outputs[False])
        ratios = [u / c for c, u in zip(times[True], times[False], strict=True)]
        result[strategy] = {
            "cached_windows_per_s": round(memory.shape[0] / statistics.median(times[True]), 1),
            "uncached_windows_per_s": round(memory.shape[0] / statistics.median(times[False]),
                                            1),
            **median_spread(ratios, "ratio"),
            "output_tokens": _output_tokens(outputs[True], decoder.pad_id)}
    decoder.use_cache = True
    result["identical_outputs"] = identical
    return result


def storyreasoning_sized_decoder(vocab: int = 8000, d_model: int = 256, n_heads: int = 4,
                                 windows: int = 16, memory: int = 250, seed: int = 0):
    """An untrained Transformer decoder and a random memory at the sizes of the
    ``storyreasoning`` preset: vocabulary ~8k, d 256, a memory of ~250 entries (3 frames of
    7 x 7 regions and up to 64 tokens each, plus the story states)."""
    import torch

    from cmar.models.decoders import TransformerDecoder

    torch.manual_seed(seed)
    decoder = TransformerDecoder(vocab, d_model, n_heads, dropout=0.0, max_len=65)
    g = torch.Generator().manual_seed(seed)
    return (decoder, torch.randn(windows, memory, d_model, generator=g),
            torch.ones(windows, memory, dtype=torch.bool))


# --- one command per target, a table each ---------------------------------------------------

TARGETS = ("data", "loader", "train", "decode", "metrics", "memory", "cost", "pretrained")


def _data(cfg):
    from cmar.data import prepare_data

    return prepare_data(cfg.data, splits=("train",), progress=False)


def run_target(target: str, config: str = "default", overrides: list[str] = (),
               batches: int = 50, repeats: int = 3, workers=(0, 2), beam: int = 5,
               batch_size: int = 64, checkpoint: str | None = None,
               workloads=("demo",), out_dir: str | Path = "runs/bench",
               keep_data: bool = False, max_len: int = 32) -> dict:
    """Run one benchmark; its result as a dict (also written to ``out_dir/TARGET.json``)."""
    import torch

    from cmar.config import load_config

    if target == "pretrained" and config == "default":
        config = "storyreasoning-clip"  # the preset whose hf: parts it is about
    cfg = load_config(config, list(overrides))
    torch.manual_seed(cfg.seed)
    result: dict = {"target": target, "config": config, "overrides": list(overrides),
                    "machine": machine()}
    if target in ("data", "loader"):
        data = _data(cfg)
        if target == "data":
            result["decode"] = bench_decode_images(data, repeats=repeats)
        result["loader"] = [bench_loader(data, batches=batches, repeats=repeats,
                                         num_workers=w) for w in workers]
    elif target == "train":
        result["trainable"] = bench_train(cfg, steps=batches, repeats=repeats)
        frozen = load_config(config, [*overrides, *FROZEN_RESNET, "data.n_stories=100"])
        with tempfile.TemporaryDirectory(prefix="cmar-bench-features-") as cache:
            # a fresh folder, so the reported build time is a real build, not a reread
            result["frozen"] = bench_train(frozen, steps=max(3, batches // 4), cache_dir=cache,
                                           repeats=repeats)
    elif target == "decode":
        from cmar.models import build_model, load_model

        data = _data(cfg)
        model = (load_model(checkpoint)[0] if checkpoint
                 else build_model(cfg.model, data.tokenizer, cfg.data))
        batch = next(iter(data.loader("train", shuffle=False, batch_size=batch_size,
                                      num_workers=0)))
        result.update(bench_decode(model, batch, beam_size=beam, repeats=repeats))
        result["model"] = checkpoint or "untrained (random weights)"
        result["decoders"] = bench_decoders(cfg.model, cfg.data, data.tokenizer, batch,
                                            beam_size=beam, max_len=max_len, repeats=repeats)
        transformer = build_model(dataclasses.replace(cfg.model, decoder="transformer"),
                                  data.tokenizer, cfg.data).eval()
        with torch.no_grad():
            encoded = transformer.encode(batch)
        result["cache"] = [bench_cache(transformer.decoder, encoded.memory, encoded.memory_mask,
                                       f"{config} preset", beam, max_len, repeats)]
        # StoryReasoning sizes at 16 windows and at the preset's evaluation batch, where the
        # cached step reads the whole 8k-word output layer for more windows at once
        for windows in (16, load_config("storyreasoning").eval.batch_size):
            result["cache"].append(bench_cache(
                *storyreasoning_sized_decoder(windows=windows), "storyreasoning-sized", beam,
                max_len + 1, repeats))
    elif target == "metrics":
        result.update(bench_metrics(repeats=repeats))
    elif target == "cost":
        data = _data(cfg)
        batch = next(iter(data.loader("train", shuffle=False, num_workers=0)))
        result["fusions"] = bench_cost(cfg.model, cfg.data, data.tokenizer, batch)
    elif target == "pretrained":
        from cmar.research.bench.pretrained import bench_pretrained

        result.update(bench_pretrained(config, overrides, steps=repeats))
    elif target == "memory":
        result["workloads"] = [bench_memory(w, config, overrides, Path(out_dir) / "memory",
                                            keep_data=keep_data) for w in workloads]
    else:
        raise ValueError(f"unknown benchmark {target!r}; choose from {TARGETS} or 'all'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = target if target != "memory" else "memory-" + "+".join(workloads)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_all(out_dir: str | Path = "runs/bench", repeats: int = 3) -> list[dict]:
    """Every benchmark at a size that fits about 10 minutes on a 2-core CPU; the decode bench
    uses the checkpoint the memory bench trained. Prints each table as it finishes."""
    results = []

    def step(target, **kwargs):
        result = run_target(target, out_dir=out_dir, repeats=repeats, **kwargs)
        print(render(result) + "\n", flush=True)
        results.append(result)
        return result

    step("data", batches=30)
    step("metrics")
    step("cost")
    step("train", batches=20)
    memory = step("memory", workloads=("demo",))
    step("decode", checkpoint=memory["workloads"][0]["checkpoint"])
    # a tenth of StoryReasoning's size (the full size: cmar bench memory --workload
    # storyreasoning-sized, about half an hour on a 2-core CPU)
    step("memory", workloads=("storyreasoning-sized",), overrides=["data.n_stories=400"])
    (Path(out_dir) / "all.json").write_text(json.dumps(results, indent=2))
    return results
