"""The study's report: its tables as Markdown and its chart, from the rows of
:func:`cmar.research.study.grid.run_study`."""

from __future__ import annotations

import math
from pathlib import Path

from cmar.evaluation.report import SHOWN
from cmar.research.study.table import (
    HEADERS,
    MEMORY_TEXT,
    METRICS,
    PAIRED,
    fusion_means,
    paired_differences,
    rows_in,
    section,
    sections_of,
    summarise,
)


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _interval(low_high: list[float] | None) -> str:
    return "–" if low_high is None else f"[{low_high[0]:+.3f}, {low_high[1]:+.3f}]"


def markdown(rows: list[dict], ablations: dict[str, dict]) -> str:
    """The study's tables for every (mode, memory): each cell (mean ± sd over seeds), fusions
    pooled with the paired difference to concat and its 95% interval, floors, and the modality
    ablations of the best run."""
    parts = []
    table = summarise(rows)
    for mode, memory in sections_of(rows):
        entries = [e for e in table if e["mode"] == mode and e["memory"] == memory]
        lines = [f"### `{mode}` mode, `{memory}` decoder memory: test split, mean ± sd over seeds",
                 "", f"Decoder memory: {MEMORY_TEXT[memory]}"
                 + (", + the target frame's regions (grounded mode)." if mode == "grounded"
                    else "."), "",
                 "| fusion | decoder | seeds | "
                 + " | ".join(HEADERS.get(m, m) for m in METRICS) + " |",
                 "|---|---|---|" + "---|" * len(METRICS)]
        for e in entries:
            lines.append(f"| {e['fusion']} | {e['decoder']} | {e['seeds']} | " + " | ".join(
                _fmt(e[k], e[k + " sd"], 0 if k == "train seconds" else 3) for k in METRICS)
                + " |")
        for key in PAIRED:
            name = HEADERS.get(key, key)
            lines += ["", f"Pooled over decoders and seeds ({name}); the difference to concat "
                      "is paired by decoder and seed, with the t interval of its mean:", "",
                      f"| fusion | runs | {name} | minus concat | 95% interval | "
                      "runs above concat |", "|---|---|---|---|---|---|"]
            paired = paired_differences(rows, mode, memory, key=key)
            for fusion, (mean, sd, n) in fusion_means(rows, mode, memory, key=key).items():
                if fusion in paired:
                    p = paired[fusion]
                    versus = (f"{p['mean']:+.3f} ± {p['sd']:.3f} | {_interval(p['ci95'])} | "
                              f"{p['wins']} of {p['n']}")
                else:
                    versus = "(baseline) | – | –"
                lines.append(f"| {fusion} | {n} | {_fmt(mean, sd)} | {versus} |")
        floors = rows_in(rows, mode, memory)[0]["floors"]  # the same windows in every run
        lines += ["", "Floors and the oracle on the same windows:", "",
                  "| system | BLEU-4 | CIDEr-D |", "|---|---|---|"]
        lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                  for name, s in floors.items()]
        best = ablations.get(section(mode, memory))
        if best:
            lines += ["", f"Modality ablation of the best run, `{Path(best['run']).name}` "
                      "(no retraining):", "", "| input | BLEU-4 | CIDEr-D |", "|---|---|---|"]
            lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                      for name, s in best["scores"].items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: str | Path, key: str = "BLEU-4") -> Path:
    """One panel per (mode, memory): a bar per (fusion, decoder) with its spread, floors as
    lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = sections_of(rows)
    table = summarise(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False,
                             sharey=True)
    for ax, (mode, memory) in zip(axes[0], panels, strict=True):
        entries = [e for e in table if e["mode"] == mode and e["memory"] == memory]
        colours = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(e["fusion"] for e in entries))}
        ax.bar(range(len(entries)), [e[key] for e in entries],
               yerr=[e[key + " sd"] for e in entries], capsize=3,
               color=[colours[e["fusion"]] for e in entries])
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([f"{e['fusion']}\n{e['decoder']}" for e in entries], fontsize=8)
        floors = rows_in(rows, mode, memory)[0]["floors"]
        for i, name in enumerate(("nearest neighbour (TF-IDF)",
                                  "rules on text only (not a ceiling)",
                                  "rules on images only (not a ceiling)")):
            if name in floors:
                ax.axhline(floors[name][key], linestyle="--", color="0.3", alpha=0.4 + 0.2 * i,
                           label=f"{name}: {floors[name][key]:.3f}")
        ax.set_title(f"{mode} mode, {memory} memory ({entries[0]['seeds']} seeds)")
        ax.set_ylabel(f"{SHOWN.get(key, key)} (test)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
