"""Benchmarks, run side by side on the same machine: ``cmar bench loader``.

Timings are reported as median and spread over repeats, never asserted in unit tests.
"""

from __future__ import annotations

import statistics
import time

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
