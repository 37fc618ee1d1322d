"""Figures: loss curves per epoch (train vs validation, every loss term)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

TERMS = ("total", "caption", "align", "next")


def loss_curves_figure(history: list[dict]):
    """One panel per loss term, train and validation loss against the epoch."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.2), squeeze=False)
    for ax, term in zip(axes[0], TERMS, strict=True):
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
