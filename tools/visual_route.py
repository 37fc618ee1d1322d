"""The measurements behind docs/visual-route.md: does a recipe make the model read the images?

    python tools/visual_route.py run NAME PRESET [KEY=VALUE ...]   # train, then score
    python tools/visual_route.py diagnose RUN_DIR                  # where an imagining run fails

``run`` trains the preset with the overrides into ``runs/visual-route/NAME`` and scores the
test split free-running, as it is and with the context images blanked (the pipeline of
:func:`cmar.experiment.compare`), appending one JSON line to
``runs/visual-route/results.jsonl``.

``diagnose`` reads a run with ``model.predict_regions``: the teacher-forced accuracy of the
place word's first token with the predicted regions and with the true next frame in their
slot (can the decoder read the slot at all?), and the share of frame k+1's change the
prediction leaves unpredicted, overall and at the regions the actor leaves and arrives in
(does the prediction know who moves, and where to?).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path("runs/visual-route")


def run(name: str, preset: str, overrides: list[str]) -> dict:
    from cmar.config import load_config
    from cmar.experiment.controls import CONTROLS
    from cmar.experiment.scoring import ScoredRun
    from cmar.train import train

    cfg = load_config(preset, [f"name={name}", f"runs_dir={ROOT}", *overrides])
    start = time.time()
    train(cfg, progress=False, overwrite=True)
    seconds = time.time() - start
    scored = ScoredRun(ROOT / name, progress=False)
    history = json.loads((ROOT / name / "history.json").read_text())
    row = {"name": name, "preset": preset, "overrides": overrides, "train_s": round(seconds),
           "plain": scored.score(None), "images blanked": scored.score(CONTROLS["images_blanked"]),
           "last epoch": history[-1]}
    with open(ROOT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _place_positions(tokenizer, target_out: torch.Tensor) -> list[int | None]:
    """For each caption (B, L), the position of the first token after "to the"."""
    from cmar.data import decode

    out = []
    for ids in target_out.tolist():
        text, found = "", None
        for j, token in enumerate(ids):
            word = decode(tokenizer, [token]).strip()
            if text.endswith(" to the") and word:
                found = j
                break
            text += " " + word
        out.append(found)
    return out


@torch.no_grad()
def diagnose(run_dir: str) -> dict:
    from cmar.data.windows import window_frame
    from cmar.experiment.scoring import load_inputs
    from cmar.models.imagine import next_regions_loss

    inputs = load_inputs(run_dir, "test", progress=False)
    model, tokenizer = inputs.model.eval(), inputs.data.tokenizer
    if model.next_regions is None:
        raise SystemExit(f"{run_dir} was trained without model.predict_regions")
    stories = {s.story_id: s for s in inputs.data.stories["test"]}
    size, (rows, cols) = inputs.cfg.data.image_size, model.image_encoder.grid
    teacher = model.cfg.teacher_regions

    def cell(box) -> int:
        x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return int(y // (size / rows)) * cols + int(x // (size / cols))

    hits = {"predicted": [0, 0], "true frame": [0, 0]}
    losses, moved = [], {"arrives": [0.0, 0.0], "leaves": [0.0, 0.0]}
    for batch in inputs.data.loader("test", shuffle=False, batch_size=64, num_workers=0):
        places = _place_positions(tokenizer, batch.target_out)
        for label, oracle in (("predicted", False), ("true frame", True)):
            model.cfg.teacher_regions = 1.0 if oracle else 0.0
            model.training = oracle  # the model's own flag only: its parts stay in eval mode
            guess = model(batch).logits.argmax(-1)
            for i, j in enumerate(places):
                if j is not None:
                    hits[label][0] += int(guess[i, j] == batch.target_out[i, j])
                    hits[label][1] += 1
        model.training, model.cfg.teacher_regions = False, teacher
        enc = model.encode(batch)
        true, _ = model.encode_grid(batch.target_image, batch.target_features)
        losses.append(next_regions_loss(enc.predicted, true, enc.newest).item())
        error = ((true - enc.predicted) ** 2).sum(-1)
        change = ((true - enc.newest) ** 2).sum(-1)
        for i, window in enumerate(batch.window_ids):
            story_id, t = window_frame(window)
            story = stories[story_id]
            actor = next(m.ids[0] for m in story.mentions[t] if m.kind == "gdo")
            arrives, leaves = cell(story.entities[t][actor]), cell(story.entities[t - 1][actor])
            if arrives == leaves:
                continue
            for key, r in (("arrives", arrives), ("leaves", leaves)):
                moved[key][0] += error[i, r].item()
                moved[key][1] += change[i, r].item()
    return {"place, teacher-forced": {k: round(a / max(n, 1), 3) for k, (a, n) in hits.items()},
            "change left unpredicted (copy = 1)": {
                "frame": round(sum(losses) / len(losses), 3),
                **{f"region the actor {k}": round(a / b, 3) for k, (a, b) in moved.items()}}}


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["--help"]
    if command == "run" and len(rest) >= 2:
        print(json.dumps(run(rest[0], rest[1], rest[2:])))
    elif command == "diagnose" and len(rest) == 1:
        print(json.dumps(diagnose(rest[0]), indent=2))
    else:
        print(__doc__)
