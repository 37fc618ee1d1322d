"""A StoryReasoning look-alike: hand-written rows in the hub's schema and layout, no real rows.

``daniel3303/StoryReasoning`` is CC-BY-ND-4.0, so no row of it is ever committed or shipped.
This writes a small local copy in the hub's layout (``data/train-*.parquet``,
``data/test-*.parquet``) from invented movie-scene prose with the dataset's quirks: names with
titles and initials, possessives, quotes, a mis-closed tag (``<gda char1>stands</gdo>``),
575 x 240 frames, and ``chain_of_thought`` tables with boxes in original pixels. Tests and
the notebooks' second CI pass (``SOURCE`` injected) read it wherever the real dataset would go::

    python -m cmar.data.lookalike data/storyreasoning-lookalike
    python -m cmar.data.lookalike /tmp/sr-size --train 3552 --test 626 --frames 11  # full size
    cmar train --config smoke --set data.source=data/storyreasoning-lookalike
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image, ImageDraw

from cmar.data.shapestories import schema_dataset

CAST = [("Tom", "Mrs. Alvarez"), ("J. Edgar", "Renée"), ("José", "Dr. Okafor"), ("Mike", "Zoë")]
# One paragraph per frame, 45-60 words each, in the dataset's style; {a} and {b} are the cast.
PARAGRAPHS = [
    '<gdo char1>{a}</gdo> <gda char1>slides</gda> a creased envelope across <gdl bg1>the '
    'counter</gdl>. <gdo char2>{b}</gdo> doesn\'t touch it. "Not here," she whispers, glancing at '
    'the door while the rain streaks the window behind them and a radio murmurs the late news '
    'from somewhere in the back room. Neither of them moves to turn it off.',
    '<gdo char2>{b}</gdo> <gda char2>opens</gda> the envelope with a butter knife. Inside, a '
    "photograph of <gdo char1>{a}'s</gdo> brother, taken in the 1960s, curls at the edges. <gdo "
    'char1>{a}</gdo> <gda char1>stands</gdo> very still and waits for her to say something, '
    'anything, before the kettle starts to whistle. The clock above the stove ticks on, loud in '
    'the quiet kitchen.',
    '<gdo char1>{a}</gdo> <gda char1>paces</gda> beside <gdl bg2>the window</gdl>, the well-worn '
    'coat still on. "You knew him?" he asks. <gdo char2>{b}</gdo> only nods, her eyes on the '
    'street below, where a taxi idles with its wipers going and nobody gets out. He finally sits '
    'down on the arm of the old sofa.',
    'Outside, <gdo char2>{b}</gdo> <gda char2>hails</gda> the taxi while <gdo char1>{a}</gdo> '
    'locks the shop behind them. The sign on the glass reads "Closed—back at 3:15", though '
    'neither of them means to come back tonight, and the street lamps flicker as they go. A dog '
    'barks twice somewhere down the block, then stops, and the rain eases off.',
    '<gdo char1>{a}</gdo> and <gdo char2>{b}</gdo> <gda char1 char2>sit</gda> in the back of <gdo'
    ' obj1>the taxi</gdo>. The driver asks twice where they are headed. "The pier," <gdo '
    'char2>{b}</gdo> says at last, and the city slides past in long smears of orange light. '
    'Nobody speaks again until the bridge, where the traffic slows to a crawl.',
    'At <gdl bg3>the pier</gdl>, <gdo char1>{a}</gdo> <gda char1>spots</gda> a figure under the '
    'lamp. It is the man from the photograph, older, thinner, holding a suitcase. <gdo '
    'char2>{b}</gdo> takes a step back and grips the railing as the foghorn sounds. The water '
    'below is black and very calm tonight, like glass.',
]
# What the chain_of_thought's Description column says of char1 and char2 (invented, in the
# dataset's manner: what a viewer sees, never the name).
LOOKS = ("man in a rain-soaked grey coat, collar turned up",
         "woman with a red scarf and a worn leather bag")
COLOURS = [(200, 60, 60), (60, 160, 80), (60, 90, 210), (220, 190, 40), (150, 70, 180),
           (230, 120, 30)]


def frame(t: int) -> tuple[bytes, dict[str, tuple[int, int, int, int]]]:
    """A 575 x 240 frame with the two characters drawn as boxes that move with t: the first
    walks right across the frame and starts again from the left (60 px a frame, over a tenth
    of the side at any image size: a mover for the look-ahead), the second drifts left."""
    image = Image.new("RGB", (575, 240), COLOURS[t % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    x = 40 + (60 * t) % 360
    boxes = {"char1": (x, 60, x + 100, 230),
             "char2": (400 - 20 * t, 50, 500 - 20 * t, 235)}
    for name, box in boxes.items():
        draw.rectangle(box, fill=(255, 255, 255) if name == "char1" else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), boxes


def prose_row(i: int, n_frames: int) -> dict:
    a, b = CAST[i % len(CAST)]
    frames = [frame(t) for t in range(n_frames)]
    story = "\n".join(f"<gdi image{t + 1}>\n{PARAGRAPHS[(i + t) % len(PARAGRAPHS)]}\n</gdi>"
                      .format(a=a, b=b) for t in range(n_frames))
    cot = "\n\n".join(
        f"## Image {t + 1}\n### Characters\n| Character ID | Name | Description | Bounding Box "
        "|\n|---|---|---|---|\n"
        + "\n".join(f"| {cid} | {name} | {look} | {','.join(map(str, box))} |"
                    for (cid, box), name, look in zip(boxes.items(), (a, b), LOOKS,
                                                      strict=True))
        for t, (_, boxes) in enumerate(frames))
    return {"story_id": f"movie{i:02d}", "images": [{"bytes": png, "path": None}
                                                     for png, _ in frames],
            "frame_count": n_frames, "chain_of_thought": cot, "story": story}


def write_lookalike(folder: str | Path, train: int = 24, test: int = 6,
                    frames: int = 5) -> Path:
    """Write ``train`` and ``test`` stories of ``frames`` to ``frames + 1`` frames as parquet
    files in the hub's layout under ``folder`` (which then works as ``data.source``); returns
    ``folder``. StoryReasoning's own size: ``train=3552, test=626, frames=11`` (11.5 frames a
    story on average)."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    first_test = max(100, train)  # story ids never shared between the splits
    for split, rows in (("train", range(train)),
                        ("test", range(first_test, first_test + test))):
        schema_dataset([prose_row(i, frames + i % 2) for i in rows]).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmar.data.lookalike",
                                     description="Write a StoryReasoning look-alike.")
    parser.add_argument("folder")
    parser.add_argument("--train", type=int, default=24, help="train stories (default 24)")
    parser.add_argument("--test", type=int, default=6,
                        help="test stories (default 6; StoryReasoning has 626)")
    parser.add_argument("--frames", type=int, default=5,
                        help="frames of a story: FRAMES or FRAMES + 1 (default 5; "
                             "StoryReasoning averages 11.5)")
    args = parser.parse_args(argv)
    if min(args.train, args.test) < 1 or args.frames < 2:
        parser.error("--train and --test must be at least 1, --frames at least 2")
    print(write_lookalike(args.folder, args.train, args.test, args.frames))


if __name__ == "__main__":
    main()
