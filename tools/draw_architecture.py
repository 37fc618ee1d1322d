"""Draw the model's data flow as docs/figures/architecture.png (the README's figure):
``python tools/draw_architecture.py``. Boxes and arrows with matplotlib; no model is built."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "architecture.png"
COLOURS = {"input": "#e8eef7", "part": "#cfe0f5", "cmar": "#f7d9b5", "output": "#d8efd3"}


def box(ax, x, y, w, h, text, kind="part"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=COLOURS[kind], edgecolor="#445", linewidth=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center",
            fontsize=9 if text.count("\n") > 2 else 9.5)
    return (x, y, w, h)


def arrow(ax, start, end, label=""):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                 color="#445", linewidth=1.1))
    if label:
        ax.text((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2, label, fontsize=8,
                color="#333", va="center")


def main() -> Path:
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5.2)
    ax.axis("off")
    box(ax, 0.2, 3.6, 2.0, 0.9, "k context frames\n(image_t, caption_t)", "input")
    box(ax, 2.8, 4.2, 2.1, 0.7, "image encoder\nregions V (R x d)")
    box(ax, 2.8, 3.1, 2.1, 0.7, "text encoder\nwords W (L x d)")
    box(ax, 5.3, 3.3, 2.7, 1.5,
        "CMAR, r rounds\nW <- LN(W + g Attn(W, V))\nV <- LN(V + g Attn(V, W))\n"
        "frame = MLP[mean V; mean W]", "cmar")
    box(ax, 8.3, 3.6, 2.4, 0.9, "story encoder\nover the k frames", "part")
    box(ax, 5.5, 1.2, 2.2, 1.0, "decoder memory:\nstory states, words,\nregions", "part")
    box(ax, 8.3, 1.2, 2.4, 1.0, "caption decoder\n(Transformer, LSTM,\nGRU or GPT-2)", "part")
    box(ax, 8.3, 0.05, 2.4, 0.7, "caption of frame k+1", "output")
    box(ax, 2.8, 1.2, 2.1, 1.0, "next-frame head\npredicted image\nembedding", "output")
    arrow(ax, (2.2, 4.2), (2.8, 4.5))
    arrow(ax, (2.2, 3.9), (2.8, 3.45))
    arrow(ax, (4.9, 4.55), (5.3, 4.3))
    arrow(ax, (4.9, 3.45), (5.3, 3.7))
    arrow(ax, (8.0, 4.05), (8.3, 4.05), "")
    arrow(ax, (9.5, 3.6), (7.0, 2.2), "")
    arrow(ax, (6.6, 3.3), (6.6, 2.2))
    ax.text(6.65, 2.75, "fused words\nand regions", fontsize=8, color="#333")
    arrow(ax, (7.7, 1.7), (8.3, 1.7))
    arrow(ax, (9.5, 1.2), (9.5, 0.75))
    arrow(ax, (8.6, 3.6), (4.9, 2.0))
    ax.text(5.0, 2.55, "story summary", fontsize=8, color="#333")
    ax.text(0.2, 0.75, "loss = caption cross-entropy\n"
            "  + w_align * InfoNCE(pooled image, pooled text)\n"
            "  + w_next * InfoNCE(predicted, true next frame)", fontsize=9, va="top",
            family="monospace")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print("wrote", main())
