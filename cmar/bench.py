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

    from cmar.data.batches import Batch

    model.eval()
    n = len(batch)

    def one(i: int) -> Batch:
        return Batch(**{k: v[i:i + 1] for k, v in batch.__dict__.items()})

    singles = [one(i) for i in range(n)]

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
