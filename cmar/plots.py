"""Figures: loss curves, story strips, attention over an image, ablation bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

TERMS = ("total", "caption", "align", "next", "ground", "regions")  # the last two where a run
#                                                                   has them


def loss_curves_figure(history: list[dict]):
    """One panel per loss term, train and validation loss against the epoch."""
    epochs = [row["epoch"] for row in history]
    terms = [t for t in TERMS if history and f"train_{t}" in history[0]] or list(TERMS[:4])
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms, strict=True):
        for split, style in (("train", "o-"), ("val", "s--")):
            key = f"{split}_{term}"
            if all(key in row for row in history):
                ax.plot(epochs, [row[key] for row in history], style, label=split)
        ax.set_title(f"{term} loss")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_loss_curves(history: list[dict], path: str | Path) -> Path:
    """Write the loss curves of ``history`` (one dict per epoch) to a PNG."""
    fig = loss_curves_figure(history)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or " "


def story_strip(images, captions: list[str], titles: list[str] | None = None,
                width: int = 28, size: float = 2.6):
    """Frames in a row with their captions underneath; ``images`` are PIL images or (H, W, 3)
    arrays."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size * 1.45), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i])
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=9)
        ax.set_xlabel(_wrap(captions[i], width), fontsize=8)
    fig.tight_layout()
    return fig


def window_strip(story, t: int, k: int, prediction: str | None = None):
    """Context frames t-k .. t-1 and the target frame t of a Story, with captions; the
    target panel shows the reference and, if given, the prediction."""
    frames = list(range(t - k, t + 1))
    captions = [story.captions[f] for f in frames[:-1]]
    target = f"reference: {story.captions[t]}"
    if prediction is not None:
        target += f"\nprediction: {prediction}"
    titles = [f"context {f + 1}" for f in frames[:-1]] + [f"target {t + 1}"]
    return story_strip([story.image(f) for f in frames], captions + [target], titles)


def attention_overlay(ax, image, weights, title: str = ""):
    """Draw region weights (R,) of a square grid over ``image`` (PIL or array) on ``ax``."""
    import numpy as np

    picture = np.asarray(image)
    side = int(round(len(weights) ** 0.5))
    grid = np.asarray(weights, dtype=float).reshape(side, side)
    ax.imshow(picture)
    ax.imshow(grid, cmap="magma", alpha=0.55, interpolation="nearest",
              extent=(0, picture.shape[1], picture.shape[0], 0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def bar_chart(labels: list[str], means: list[float], spreads: list[float] | None = None,
              floors: dict[str, float] | None = None, ylabel: str = ""):
    """Bars with error bars, and horizontal lines for floors."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(labels)), 3.6))
    ax.bar(range(len(labels)), means, yerr=spreads, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    for i, (name, value) in enumerate((floors or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{i + 1}", label=name)
    if floors:
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_figure(table, metric: str, arms: list[str], controls: list[str],
                      floors: dict[str, float] | None = None):
    """Grouped bars of ``metric`` from a comparison's table (columns arm, seed, control and
    the metric): one group per arm, one bar per control (the mean over seeds), each seed a
    dot, and the floors as dashed lines."""
    import numpy as np

    width = 0.8 / max(1, len(controls))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(arms) + 0.4 * len(controls)), 3.8))
    for j, control in enumerate(controls):
        x = np.arange(len(arms)) + (j - (len(controls) - 1) / 2) * width
        means = []
        for i, arm in enumerate(arms):
            values = table[(table["arm"] == arm) & (table["control"] == control)][metric]
            values = values.astype(float).to_numpy()
            means.append(np.nanmean(values) if np.isfinite(values).any() else np.nan)
            ax.plot(np.full(len(values), x[i]), values, "k.", markersize=4, zorder=3)
        ax.bar(x, means, width * 0.95, label=control, color=f"C{j}")
    for i, (name, value) in enumerate((floors or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{len(controls) + i}",
                   label=f"floor: {name}")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{metric}: mean over seeds (bars), each seed (dots)", fontsize=9)
    fig.tight_layout()
    return fig
