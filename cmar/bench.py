"""Benchmarks, run side by side on the same machine: ``cmar bench TARGET`` prints a table and
writes ``TARGET.json``; ``cmar bench all`` runs every target at sizes that fit 10 minutes on a
2-core CPU.

Timings are reported as median and spread over repeats, never asserted in unit tests.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmar.data.prepare import StoryData


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
        "windows_per_s_median": round(statistics.median(rates), 1),
        "windows_per_s_min": round(min(rates), 1),
        "windows_per_s_max": round(max(rates), 1),
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

    from cmar.metrics import caption_scores

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
    return {"items": n, "seconds_median": round(statistics.median(times), 2),
            "seconds_min": round(min(times), 2), "seconds_max": round(max(times), 2)}


def bench_cost(model_cfg, data_cfg, tokenizer, batch, fusions=("concat", "cross", "cmar")) -> dict:
    """FLOPs of one training step (forward + backward) per 1,000 windows, for each fusion,
    counted with torch's FlopCounterMode; ``ratio_to_concat`` answers "does CMAR increase
    training complexity?" as a number."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cmar.models import build_model

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


def bench_train(cfg, steps: int = 20, cache_dir=None) -> dict:
    """Training windows per second (forward, backward, AdamW step) and the share of each step
    spent waiting for the DataLoader; with ``cache_dir`` and a frozen encoder, the same steps
    again after attaching the feature cache (its one-off build time reported apart)."""
    import torch

    from cmar.data import prepare_data
    from cmar.models import build_model

    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg.data, splits=("train",), progress=False)
    model = build_model(cfg.model, data.tokenizer, cfg.data).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

    def run() -> dict:
        iterator = iter(data.loader("train", shuffle=True, seed=cfg.seed))
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
        return {"windows_per_s": round(windows / (wait + busy), 1),
                "data_wait_share": round(wait / (wait + busy), 3)}

    result = {"image_encoder": cfg.model.image_encoder, "image_size": cfg.data.image_size,
              "frozen": cfg.model.freeze_image_encoder, "steps": steps,
              "batch_size": cfg.data.batch_size, "images": run()}
    if cache_dir is not None and cfg.model.freeze_image_encoder:
        from cmar.models.feature_cache import attach_feature_cache

        start = time.perf_counter()
        attach_feature_cache(data, model, cache_dir, progress=False)
        result["cache_build_s"] = round(time.perf_counter() - start, 1)
        result["cached_features"] = run()
        result["speedup"] = round(result["cached_features"]["windows_per_s"]
                                  / result["images"]["windows_per_s"], 1)
    return result


def bench_decode_images(data: StoryData, split: str = "train", repeats: int = 3) -> dict:
    """Images decoded (and resized) per second when an ImageStore is built, no disk cache."""
    from cmar.data.images import ImageStore

    stories = data.stories[split]
    frames = sum(len(s) for s in stories)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        ImageStore(stories, data.cfg.image_size, cache_dir=None, progress=False)
        rates.append(frames / (time.perf_counter() - start))
    return {"frames": frames, "images_per_s_median": round(statistics.median(rates), 1),
            "images_per_s_min": round(min(rates), 1), "images_per_s_max": round(max(rates), 1)}


# --- memory -------------------------------------------------------------------------------

# A frozen ResNet-18 at 224 px reading the feature cache: the storyreasoning preset's shape.
FROZEN_RESNET = ["model.image_encoder=resnet18", "model.freeze_image_encoder=true",
                 "model.pretrained=false", "data.image_size=224"]
MEMORY_WORKLOADS = {
    # make demo's pipeline (its peak does not grow with epochs: one is measured)
    "demo": ["train.epochs=1"],
    # StoryReasoning's size: 4,000 stories, 9-14 frames (about 46,000 frames), 224 px
    "storyreasoning-sized": [*FROZEN_RESNET, "data.n_stories=4000",
                             "data.shapestories_knobs.min_frames=9",
                             "data.shapestories_knobs.max_frames=14", "train.epochs=1",
                             "eval.retrieval_windows=200"],
}


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of a live process in bytes (Linux; {} elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def peak_memory(argv: list[str], interval: float = 0.05, env: dict | None = None) -> dict:
    """Run ``argv`` to completion and report its peak resident memory.

    ``peak_rss_mb`` is the kernel's high-water mark of the process (VmHWM: every resident
    page, memory-mapped cache files included, which the kernel may drop under pressure);
    ``peak_anon_mb`` is the sampled peak of anonymous memory (heap, tensors), the part that
    must fit in RAM. Both are read from /proc every ``interval`` seconds (Linux); elsewhere
    the first falls back to ``ru_maxrss`` and the second is None.
    """
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        peak_anon = peak_rss = None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            sample = _proc_status(child.pid)
            if "RssAnon" in sample:
                peak_anon = max(peak_anon or 0, sample["RssAnon"])
                peak_rss = max(peak_rss or 0, sample["VmHWM"])
            time.sleep(interval)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({child.returncode}): {tail}")
    if peak_rss is None:  # no /proc: ru_maxrss, which also counts the parent's pages at fork
        peak_rss = usage.ru_maxrss * (1 if platform.system() == "Darwin" else 1024)
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(peak_rss / 2**20),
            "peak_anon_mb": None if peak_anon is None else round(peak_anon / 2**20)}


def _frames(data_dir: Path) -> int:
    """Frames in the decoded-frame caches of every split (the .npy headers hold the shape)."""
    import numpy as np

    return sum(np.load(f, mmap_mode="r").shape[0] for f in data_dir.rglob("frames-*.npy"))


def _folder_mb(path: Path, pattern: str) -> int:
    return round(sum(f.stat().st_size for f in path.glob(pattern)) / 2**20)


def bench_memory(workload: str, config: str = "default", overrides: list[str] = (),
                 work_dir: str | Path = "runs/bench/memory") -> dict:
    """Peak memory of ``cmar train`` then ``cmar evaluate`` on a workload of
    :data:`MEMORY_WORKLOADS`, each in a fresh process, with the cache sizes on disk."""
    work_dir = Path(work_dir) / workload
    shutil.rmtree(work_dir, ignore_errors=True)
    sets = [*MEMORY_WORKLOADS[workload], *overrides, f"runs_dir={work_dir}",
            f"name={workload}", f"data.cache_dir={work_dir / 'data'}"]
    cli = [sys.executable, "-m", "cmar"]
    train = peak_memory([*cli, "train", "--config", config,
                         *(a for s in sets for a in ("--set", s))])
    evaluate = peak_memory([*cli, "evaluate", str(work_dir / workload)])
    history = json.loads((work_dir / workload / "history.json").read_text())
    summary = json.loads((work_dir / workload / "metrics.json").read_text())
    data_dir = work_dir / "data"
    frames_file = max(data_dir.rglob("*.npy"), key=lambda f: f.stat().st_size, default=None)
    from cmar.config import load_config

    n_stories = load_config(config, sets).data.n_stories
    return {"workload": workload, "overrides": sets, "stories": n_stories,
            "frames": _frames(data_dir), "train": train, "evaluate": evaluate,
            "train_windows": history[-1]["windows_seen"],
            "test_windows": summary["windows"],
            "frame_cache_mb": _folder_mb(data_dir, "**/frames-*.npy"),
            "feature_cache_mb": _folder_mb(data_dir, "features/*.npy"),
            "largest_cache_file": frames_file.name if frames_file else None,
            "peak_anon_mb": max(train["peak_anon_mb"] or 0, evaluate["peak_anon_mb"] or 0),
            "peak_rss_mb": max(train["peak_rss_mb"], evaluate["peak_rss_mb"]),
            "checkpoint": str(work_dir / workload / "best.pt")}


# --- one command per target, a table each ---------------------------------------------------

TARGETS = ("data", "loader", "train", "decode", "metrics", "memory", "cost")


def _data(cfg):
    from cmar.data import prepare_data

    return prepare_data(cfg.data, splits=("train",), progress=False)


def run_target(target: str, config: str = "default", overrides: list[str] = (),
               batches: int = 50, repeats: int = 3, workers=(0, 2), beam: int = 5,
               batch_size: int = 64, checkpoint: str | None = None,
               workloads=("demo",), out_dir: str | Path = "runs/bench") -> dict:
    """Run one benchmark; its result as a dict (also written to ``out_dir/TARGET.json``)."""
    import torch

    from cmar.config import load_config

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
        cache = Path(cfg.data.cache_dir) / "features"
        result["trainable"] = bench_train(cfg, steps=batches)
        frozen = load_config(config, [*overrides, *FROZEN_RESNET, "data.n_stories=100"])
        result["frozen"] = bench_train(frozen, steps=max(3, batches // 4), cache_dir=cache)
    elif target == "decode":
        from cmar.models import build_model, load_model

        data = _data(cfg)
        model = (load_model(checkpoint)[0] if checkpoint
                 else build_model(cfg.model, data.tokenizer, cfg.data))
        batch = next(iter(data.loader("train", shuffle=False, batch_size=batch_size,
                                      num_workers=0)))
        result.update(bench_decode(model, batch, beam_size=beam, repeats=repeats))
        result["model"] = checkpoint or "untrained (random weights)"
    elif target == "metrics":
        result.update(bench_metrics(repeats=repeats))
    elif target == "cost":
        data = _data(cfg)
        batch = next(iter(data.loader("train", shuffle=False, num_workers=0)))
        result["fusions"] = bench_cost(cfg.model, cfg.data, data.tokenizer, batch)
    elif target == "memory":
        result["workloads"] = [bench_memory(w, config, overrides, Path(out_dir) / "memory")
                               for w in workloads]
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


def _rows(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _spread(row: dict, key: str) -> str:
    return f"{row[key + '_median']} ({row[key + '_min']}-{row[key + '_max']})"


def render(result: dict) -> str:
    """The table ``cmar bench`` prints for one result of :func:`run_target`."""
    target = result["target"]
    title = f"cmar bench {target}  (config {result['config']}, {result['machine']['cpu_count']}" \
            f" CPUs, {result['machine']['torch_threads']} torch threads" + \
            (f", {result['machine']['cuda']}" if result["machine"]["cuda"] else "") + ")"
    if target in ("data", "loader"):
        rows = [[f"DataLoader, {r['num_workers']} workers, batch {r['batch_size']}",
                 "windows/s", _spread(r, "windows_per_s")] for r in result["loader"]]
        if "decode" in result:
            d = result["decode"]
            rows.insert(0, [f"decode + resize {d['frames']} frames", "frames/s",
                            _spread(d, "images_per_s")])
        body = _rows(["what", "unit", "median (min-max)"], rows)
        if len(result["loader"]) > 1:
            a, b = result["loader"][0], result["loader"][-1]
            body += (f"\nratio {b['num_workers']} workers / {a['num_workers']}: "
                     f"{b['windows_per_s_median'] / a['windows_per_s_median']:.2f}")
    elif target == "train":
        t, f = result["trainable"], result["frozen"]
        rows = [[f"{t['image_encoder']} trainable, {t['image_size']} px", t["images"]
                 ["windows_per_s"], f"{100 * t['images']['data_wait_share']:.1f}%"],
                [f"{f['image_encoder']} frozen, {f['image_size']} px, re-encoding",
                 f["images"]["windows_per_s"], f"{100 * f['images']['data_wait_share']:.1f}%"]]
        if "cached_features" in f:
            rows.append([f"{f['image_encoder']} frozen, {f['image_size']} px, feature cache",
                         f["cached_features"]["windows_per_s"],
                         f"{100 * f['cached_features']['data_wait_share']:.1f}%"])
        body = _rows(["training step", "windows/s", "waiting for data"], rows)
        if "speedup" in f:
            body += (f"\nfeature cache / re-encoding: {f['speedup']}x per epoch (target >= 10x)"
                     f"; cache built once in {f['cache_build_s']} s")
    elif target == "decode":
        r = result
        body = _rows(["decoding", "windows/s", "runs"], [
            ["greedy", r["greedy_windows_per_s"], r["spread"]["greedy"]],
            [f"beam {r['beam_size']}, batched", r["batched_beam_windows_per_s"],
             r["spread"]["batched_beam"]],
            [f"beam {r['beam_size']}, per-window loop", r["per_window_beam_windows_per_s"],
             r["spread"]["per_window_beam"]]])
        body += (f"\nbatched / per-window: {r['batched_over_per_window']}x (target >= 5x); "
                 f"identical outputs: {r['identical_outputs']}; {r['windows']} windows, "
                 f"model: {r['model']}")
    elif target == "metrics":
        body = _rows(["what", "seconds, median (min-max)"],
                     [[f"caption_scores on {result['items']} predictions",
                       _spread(result, "seconds")]])
    elif target == "cost":
        body = _rows(["fusion", "GFLOPs / 1,000 training windows", "over concat",
                      "fusion parameters"],
                     [[name, r["gflops_per_1000_windows"], f"{r['ratio_to_concat']}x",
                       f"{r['parameters']:,}"] for name, r in result["fusions"].items()])
    elif target == "memory":
        rows = []
        for w in result["workloads"]:
            for phase in ("train", "evaluate"):
                p = w[phase]
                rows.append([w["workload"], phase, p["peak_rss_mb"], p["peak_anon_mb"],
                             p["seconds"]])
        body = _rows(["workload", "process", "peak RSS MB", "peak anonymous MB", "seconds"],
                     rows)
        for w in result["workloads"]:
            body += (f"\n{w['workload']}: {w['stories']} stories, {w['frames']} frames, "
                     f"{w['train_windows']} training windows; frame cache "
                     f"{w['frame_cache_mb']} MB, feature cache {w['feature_cache_mb']} MB on "
                     "disk (memory-mapped)")
    else:
        body = json.dumps(result, indent=2)
    return f"{title}\n{body}"


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
