"""The table ``cmar bench`` prints for each benchmark's result."""

from __future__ import annotations

import json


def _rows(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _spread(row: dict, key: str) -> str:
    return f"{row[key + '_median']} ({row[key + '_min']}-{row[key + '_max']})"


def _decoders_table(r: dict) -> str:
    return _rows(["decoder (untrained)", "greedy windows/s", "runs",
                  f"beam {r['beam_size']} windows/s", "runs", "greedy tokens"],
                 [[d["decoder"], d["greedy_windows_per_s"], d["spread"]["greedy"],
                   d["beam_windows_per_s"], d["spread"]["beam"], d["greedy_output_tokens"]]
                  for d in r["decoders"]])


def _cache_line(c: dict) -> str:
    g, b = c["greedy"], c["beam"]
    return (f"cached / uncached: {g['ratio_median']}x ({g['ratio_min']}-{g['ratio_max']}) "
            f"greedy, {b['ratio_median']}x ({b['ratio_min']}-{b['ratio_max']}) beam "
            f"{c['beam_size']} (target >= 5x); Transformer decoder, {c['what']}: d "
            f"{c['d_model']}, vocabulary {c['vocab']}, memory {c['memory']}, {c['windows']} "
            f"windows, up to {c['max_len']} tokens ({g['output_tokens']} generated); "
            f"identical outputs: {c['identical_outputs']}")


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

        def row(what: str, r: dict) -> list[str]:
            wait = [f"{100 * r['data_wait_share_' + k]:.1f}" for k in ("median", "min", "max")]
            return [what, _spread(r, "windows_per_s"), f"{wait[0]}% ({wait[1]}-{wait[2]}%)"]

        rows = [row(f"{t['image_encoder']} trainable, {t['image_size']} px", t["images"]),
                row(f"{f['image_encoder']} frozen, {f['image_size']} px, re-encoding",
                    f["images"])]
        if "cached_features" in f:
            rows.append(row(f"{f['image_encoder']} frozen, {f['image_size']} px, feature cache",
                            f["cached_features"]))
        body = _rows(["training step", "windows/s, median (min-max)",
                      "waiting for data (target < 10%)"], rows)
        body += f"\n{t['repeats']} passes of {t['steps']} / {f['steps']} steps, batch " \
                f"{t['batch_size']}"
        if "speedup" in f:
            body += (f"\nfeature cache / re-encoding: {f['speedup']}x per epoch (target >= 10x)"
                     f"; cache built once in {f['cache_build_s']} s")
        if "profile" in t:
            prof = t["profile"]
            shares = sorted(prof["shares"].items(), key=lambda item: -item[1])
            body += (f"\n\nwhere a training step's time goes ({t['image_encoder']} trainable, "
                     f"{prof['steps']} profiled steps, {prof['step']:.0f} ms a step):\n")
            body += _rows(["phase", "share of the step"],
                          [[phase, f"{100 * share:.1f}%"] for phase, share in shares])
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
        if "decoders" in r:
            body += "\n\n" + _decoders_table(r)
        for c in r.get("cache", []):
            body += "\n" + _cache_line(c)
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
            for phase in ("data", "train", "evaluate"):
                p = w[phase]
                rows.append([w["workload"], phase, p["peak_rss_mb"], p["peak_anon_mb"],
                             p["seconds"]])
        body = _rows(["workload", "process", "peak RSS MB", "peak anonymous MB", "seconds"],
                     rows)
        for w in result["workloads"]:
            body += (f"\n{w['workload']}: {w['stories']} stories, {w['frames']} frames, "
                     f"{w['train_windows']} training windows; frame cache "
                     f"{w['frame_cache_mb']} MB, feature cache {w['feature_cache_mb']} MB on "
                     f"disk (memory-mapped); {w['data_disk_mb']} MB of data in all, "
                     + ("kept" if w["data_kept"] else "deleted after measuring"))
    elif target == "pretrained":
        from cmar.research.bench.pretrained import render_pretrained

        body = render_pretrained(result)
    else:
        body = json.dumps(result, indent=2)
    return f"{title}\n{body}"
