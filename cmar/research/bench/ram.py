"""Peak memory of a workload, measured in a child process: ``cmar bench memory``.

A workload is ``cmar data``, ``cmar train`` then ``cmar evaluate`` on a config (what ``make
demo`` runs), each in a fresh process whose resident memory is sampled from /proc, so the
numbers are what a user's run would take.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
    """RssAnon and VmHWM of a live process in bytes (Linux; {} elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmHWM") and value.strip().endswith("kB"):
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
    return round(sum(f.stat().st_size for f in path.glob(pattern) if f.is_file()) / 2**20)


# Disk per frame over the raw uint8 frame (3 x S x S bytes): the dataset's images, the
# decoded-frame cache and a feature cache. Measured 14.0 GB for 45,937 frames at 224 px
# (6.6 GB of frame cache), a ratio of 2.1; 2.5 leaves room for the checkpoint and temp files.
DISK_PER_RAW_FRAME = 2.5


def expected_disk_mb(data_cfg) -> int | None:
    """Disk a ShapeStories workload will write, in MB, from its story count, frames per story
    and image size; None for other sources (their size is not known before loading)."""
    if data_cfg.source != "shapestories":
        return None
    from cmar.data.prepare import shapestories_options
    from cmar.data.shapes_world import Knobs

    options = shapestories_options(data_cfg)
    knobs = Knobs.from_difficulty(options["difficulty"], **options["knobs"])
    frames = data_cfg.n_stories * (knobs.min_frames + knobs.max_frames) / 2
    return round(frames * 3 * data_cfg.image_size ** 2 * DISK_PER_RAW_FRAME / 2**20)


def bench_memory(workload: str, config: str = "default", overrides: list[str] = (),
                 work_dir: str | Path = "runs/bench/memory", keep_data: bool = False) -> dict:
    """Peak memory of ``cmar data``, ``cmar train`` then ``cmar evaluate`` (what ``make demo``
    runs) on a workload of :data:`MEMORY_WORKLOADS`, each in a fresh process, with the cache
    sizes on disk.

    The generated data (dataset, frame and feature caches: 14 GB at StoryReasoning's size)
    is deleted after measuring unless ``keep_data``; the run folder (checkpoint, metrics)
    stays. It refuses to start when the disk has too little room for it.
    """
    from cmar.config import load_config
    from cmar.data.images import ensure_disk_space

    work_dir = Path(work_dir) / workload
    shutil.rmtree(work_dir, ignore_errors=True)
    sets = [*MEMORY_WORKLOADS[workload], *overrides, f"runs_dir={work_dir}",
            f"name={workload}", f"data.cache_dir={work_dir / 'data'}"]
    data_cfg = load_config(config, sets).data
    need_mb = expected_disk_mb(data_cfg)
    if need_mb is not None:  # a full disk half-way through breaks other work on the machine
        ensure_disk_space(work_dir, need_mb * 2**20, f"the {workload} workload",
                          elsewhere="pass --out on a bigger disk")
    cli = [sys.executable, "-m", "cmar"]
    options = ["--config", config, *(a for s in sets for a in ("--set", s))]
    data = peak_memory([*cli, "data", *options])  # as make demo: generate, decode, summarise
    train = peak_memory([*cli, "train", *options])
    evaluate = peak_memory([*cli, "evaluate", str(work_dir / workload)])
    history = json.loads((work_dir / workload / "history.json").read_text())
    summary = json.loads((work_dir / workload / "metrics.json").read_text())
    data_dir = work_dir / "data"
    out = {"workload": workload, "overrides": sets, "stories": data_cfg.n_stories,
           "frames": _frames(data_dir), "data": data, "train": train, "evaluate": evaluate,
           "train_windows": history[-1]["windows_seen"],
           "test_windows": summary["windows"],
           "frame_cache_mb": _folder_mb(data_dir, "**/frames-*.npy"),
           "feature_cache_mb": _folder_mb(data_dir, "features/*.npy"),
           "data_disk_mb": _folder_mb(data_dir, "**/*"),
           "expected_disk_mb": need_mb,
           "peak_anon_mb": max(p["peak_anon_mb"] or 0 for p in (data, train, evaluate)),
           "peak_rss_mb": max(p["peak_rss_mb"] for p in (data, train, evaluate)),
           "checkpoint": str(work_dir / workload / "best.pt"),
           "data_kept": keep_data}
    if not keep_data:
        shutil.rmtree(data_dir)
    return out
