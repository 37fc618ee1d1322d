"""The measurements behind docs/visual-route.md: does a recipe make the model read the images?

    python tools/visual_route.py run NAME PRESET [KEY=VALUE ...]   # train, then score
    python tools/visual_route.py diagnose RUN_DIR                  # where an imagining run fails
    python tools/visual_route.py describes RUN_DIR                 # what a describing run's
    #                                                                regions say of each character
    python tools/visual_route.py points RUN_DIR                    # a look-ahead run's pointer
    python tools/visual_route.py verb RUN_DIR                      # what the decoder says at
    #                                                                the verb, by the true verb
    python tools/visual_route.py moves RUN_DIR                     # does the look-ahead hold
    #                                                                how far the actor goes?
    python tools/visual_route.py relation PHASES [KEY=VALUE ...]  # e.g. kind:4 or
    #                                                                direction:2,kind:3

``run`` trains the preset with the overrides into ``runs/visual-route/NAME`` and scores the
test split free-running, as it is and with the context images blanked (the pipeline of
:func:`cmar.experiment.compare`), appending one JSON line to
``runs/visual-route/results.jsonl``.

``diagnose`` reads a run with ``model.predict_regions``: the teacher-forced accuracy of the
place word's first token with the predicted regions and with the true next frame in their
slot (can the decoder read the slot at all?), and the share of frame k+1's change the
prediction leaves unpredicted, overall and at the regions the actor leaves and arrives in
(does the prediction know who moves, and where to?).

``verb`` reads any run: on the test split, teacher-forced, the decoder's mean probability of
"runs" and of "walks" at the verb of each caption, grouped by the true verb. A model that
reads how far the actor goes gives "runs" more probability where the actor runs; one that has
learned only the verb's frequency gives the same numbers in both groups.

``moves`` reads a look-ahead run: for the actor of each window (the character that moves
between the newest context frame and the target frame), where the pointer of the regions under
it says it lands, and three logistic probes of the verb (fitted on the first batches of the
train split, scored on the test split): from the true start and end of the move (what the
boxes give: the ceiling), from the regions' cell centres and the pointer's expected end point
(what the look-ahead's ``where`` MLP reads), and from the memory entries the decoder reads
there (the look-ahead's output, averaged over the actor's regions). A verb that the first two
read and the decoder does not is a verb the decoder fails to read; one that the pointer's end
point does not give is a verb the pointer does not hold.

``describes`` reads a run with ``model.w_describe``: on the test split, the teacher-forced
accuracy of its describer at the landmark after "at the" (where the character stands: local in
the picture) and after "facing the" (the landmark its dot points at: the place of its next
move, a relation of two places in the picture).

``relation`` trains the image side alone (image encoder, region encoder, describer) of the
``default`` preset on the describe loss of the characters, phase after phase, and prints after
each epoch the validation accuracy at the word after "facing the" (of that phase's target).
``kind``: the descriptions as written ("... facing the tree"). ``direction``: the faced
landmark's name replaced by its ring direction ("... facing the north", from the landmark
table of the same frame): the dot alone, no relation. Perception against relation: can the
encoder see the dot, and can it find what the dot points at? ``direction:2,kind:3`` asks
whether the relation is learnable once the dot's direction is encoded. With
``model.look_ahead=true`` the look-ahead (:mod:`cmar.models.look_ahead`) joins the image side
and the describer reads its regions; with ``model.w_look_ahead`` its pointer is also trained
on where each moving character goes next, and the row gives the share of the regions under a
mover whose pointer's top cell lies under the mover's next box (``pointer``).
"""

from __future__ import annotations

import json
import math
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


def _load_run(run_dir: str, part: str, key: str, splits: tuple[str, ...], **prepare):
    """A trained run's config, model (eval mode), tokenizer and data (``splits``, prepared with
    ``prepare``); SystemExit when the model has no ``part`` (trained without ``key``)."""
    from cmar.config import load_config
    from cmar.data import prepare_data
    from cmar.data.tokenizer import load_tokenizer
    from cmar.models.checkpoint import load_model

    cfg = load_config(f"{run_dir}/config.yaml")
    model = load_model(f"{run_dir}/best.pt")[0].eval()
    if getattr(model, part) is None:
        raise SystemExit(f"{run_dir} was trained without {key}")
    tokenizer = load_tokenizer(f"{run_dir}/tokenizer")
    data = prepare_data(cfg.data, tokenizer=tokenizer, splits=splits, progress=False, **prepare)
    return cfg, model, tokenizer, data


def _verb_ids(tokenizer, run_dir: str) -> dict[str, int]:
    """The token of " runs" and of " walks"; SystemExit when the tokenizer splits either."""
    ids = {word: tokenizer.convert_tokens_to_ids("\u0120" + word) for word in ("runs", "walks")}
    if tokenizer.unk_token_id in ids.values():
        raise SystemExit(f"{run_dir}: its tokenizer splits 'runs' or 'walks' into pieces")
    return ids


def _verb_at(row: torch.Tensor, ids: dict[str, int]) -> tuple[int, int] | None:
    """The position of a caption's (L,) first verb and 1 if it is "runs", 0 "walks"; None
    when it has neither."""
    where = ((row == ids["runs"]) | (row == ids["walks"])).nonzero()
    if not len(where):
        return None
    j = int(where[0, 0])
    return j, int(row[j] == ids["runs"])


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


@torch.no_grad()
def verb(run_dir: str) -> dict:
    from cmar.experiment.scoring import load_inputs

    inputs = load_inputs(run_dir, "test", progress=False)
    model, tokenizer = inputs.model.eval(), inputs.data.tokenizer
    ids = _verb_ids(tokenizer, run_dir)
    sums = {true: {"windows": 0, "p(runs)": 0.0, "p(walks)": 0.0} for true in ids}
    for batch in inputs.data.loader("test", shuffle=False, batch_size=64, num_workers=0):
        probs = model(batch).logits.softmax(-1)  # (B, L, V)
        for i, row in enumerate(batch.target_out):
            found = _verb_at(row, ids)
            if found is not None:
                j, runs = found
                true = "runs" if runs else "walks"
                sums[true]["windows"] += 1
                for word, token in ids.items():
                    sums[true][f"p({word})"] += probs[i, j, token].item()
    return {f"true verb: {true}": {k: v if k == "windows" else round(v / max(row["windows"], 1), 3)
                                   for k, v in row.items()} for true, row in sums.items()}




def _probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
           steps: int = 300) -> float:
    """Test accuracy of a logistic probe fitted on (features (n, f), labels (n,)),
    features standardised on the train split."""
    (x, y), (xt, yt) = train, test
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    with torch.random.fork_rng():  # the same start every call, the caller's RNG untouched
        torch.manual_seed(0)
        probe = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            probe(x)[:, 0], y.float()) + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return round(((probe(xt)[:, 0] > 0).long() == yt).float().mean().item(), 3)


@torch.no_grad()
def moves(run_dir: str, batches: int = 40) -> dict:
    from cmar.data.mentions import box_regions

    cfg, model, tokenizer, data = _load_run(run_dir, "look_ahead", "model.look_ahead",
                                            ("train", "test"), moves=True)
    ids = _verb_ids(tokenizer, run_dir)
    size = cfg.data.image_size
    side = math.isqrt(model.look_ahead.n_regions)
    centres = model.look_ahead.centres  # (R, 2)
    feats = {}
    for split in ("train", "test"):
        rows = {"boxes": [], "pointer": [], "memory": [], "verb": []}
        runs = {"runs": [0.0, 0], "walks": [0.0, 0]}
        loader = data.loader(split, shuffle=False, batch_size=64, num_workers=0)
        for _, batch in zip(range(batches), loader, strict=False):
            enc = model.encode(batch)
            b, k = batch.context_move_from.shape[:2]
            last = torch.arange(b) * k + k - 1  # the newest context frame of each window
            weights = enc.pointer[last].softmax(-1)  # (B, R, R)
            held = enc.fused.regions if enc.fused.regions is not None else enc.regions
            looked = held.view(b, k, *held.shape[1:])[:, -1]  # what the memory holds
            start_box, end_box = batch.context_move_from[:, -1, 0], batch.context_move_to[:, -1, 0]
            under = box_regions(start_box, side, size / side).float()  # (B, R)
            for i in range(b):
                found = _verb_at(batch.target_out[i], ids)
                if found is None or under[i].sum() == 0:
                    continue
                verb = found[1]
                share = under[i] / under[i].sum()  # (R,)
                start = share @ centres
                end = share @ (weights[i] @ centres)
                true = torch.cat([(start_box[i, :2] + start_box[i, 2:]) / (2 * size),
                                  (end_box[i, :2] + end_box[i, 2:]) / (2 * size)])
                rows["boxes"].append(torch.cat([true, (true[2:] - true[:2]).norm()[None]]))
                rows["pointer"].append(torch.cat([start, end, (end - start).norm()[None]]))
                rows["memory"].append(share @ looked[i])
                rows["verb"].append(verb)
                key = "runs" if verb else "walks"
                runs[key] = [runs[key][0] + (end - start).norm().item(), runs[key][1] + 1]
        feats[split] = {name: torch.stack(v) if name != "verb" else torch.tensor(v)
                        for name, v in rows.items()}
        if split == "test":
            distances = {f"pointer's move length, true verb {k}": round(a / max(n, 1), 3)
                         for k, (a, n) in runs.items()}
    train, test = feats["train"], feats["test"]
    majority = max(test["verb"].float().mean().item(), 1 - test["verb"].float().mean().item())
    return {"windows": {"train": len(train["verb"]), "test": len(test["verb"])},
            **distances, f"verb probe accuracy (majority {majority:.3f})": {
                name: _probe((train[name], train["verb"]), (test[name], test["verb"]))
                for name in ("boxes", "pointer", "memory")}}


def _facing_positions(tokenizer, tokens: torch.Tensor, after: str) -> list[tuple[int, int]]:
    """(row, position) of the first token after ``after`` in each description (M, L)."""
    from cmar.data import decode

    out = []
    for row, ids in enumerate(tokens.tolist()):
        for j in range(1, len(ids)):
            if decode(tokenizer, ids[:j]).endswith(after):
                out.append((row, j))
                break
    return out


def _describer_hits(model, batch, regions, tokenizer, size: int, after: str) -> tuple[int, int]:
    """Teacher-forced hits and count of ``model.describer`` at the word after ``after``."""
    vectors, said, _ = model.describer.entities(
        regions, batch.context_entity_boxes.flatten(0, 1),
        batch.context_descriptions.flatten(0, 1), batch.context_description_mask.flatten(0, 1),
        size)
    guess = model.describer(vectors, said).argmax(-1)
    where = _facing_positions(tokenizer, said, after)
    return sum(int(guess[r, j] == said[r, j]) for r, j in where), len(where)


@torch.no_grad()
def describes(run_dir: str, batches: int = 20) -> dict:
    cfg, model, tokenizer, data = _load_run(run_dir, "describer", "model.w_describe",
                                            ("test",), describe="characters")
    hits = {"at the": [0, 0], "facing the": [0, 0]}
    for i, batch in enumerate(data.loader("test", shuffle=False, batch_size=32, num_workers=0)):
        if i == batches:
            break
        regions = model.encode(batch).regions
        for after, tally in hits.items():
            a, n = _describer_hits(model, batch, regions, tokenizer, cfg.data.image_size, after)
            tally[0] += a
            tally[1] += n
    return {f"word after {after!r}": {"accuracy": round(a / n, 3), "n": n}
            for after, (a, n) in hits.items()}


@torch.no_grad()
def points(run_dir: str, batches: int = 20) -> dict:
    """A look-ahead run's pointer, on the first ``batches`` batches of the train and test
    splits: its loss, and the share of the regions under a mover whose top cell lies under
    the mover's next box."""
    from cmar.models.look_ahead import look_ahead_loss

    cfg, model, _, data = _load_run(run_dir, "look_ahead", "model.look_ahead",
                                    ("train", "test"), moves=True)
    size, out = cfg.data.image_size, {}
    for split in ("train", "test"):
        losses, aimed = [], [0, 0]
        loader = data.loader(split, shuffle=False, num_workers=0)
        for _, batch in zip(range(batches), loader, strict=False):
            logits = model.encode(batch).pointer
            losses.append(look_ahead_loss(logits, batch.context_move_from.flatten(0, 1),
                                          batch.context_move_to.flatten(0, 1), size).item())
            a, n = _pointer_hits(logits, batch, size)
            aimed = [aimed[0] + a, aimed[1] + n]
        out[split] = {"look-ahead loss": round(sum(losses) / len(losses), 3),
                      "pointer": round(aimed[0] / aimed[1], 3), "regions": aimed[1]}
    return out


def _say_direction(stories) -> None:
    """Each character's "facing the <landmark>" becomes "facing the <its ring direction>", as
    the same frame's landmark table gives it (ShapeStories: a landmark's Description)."""
    import re

    from cmar.data.shapes_world import LANDMARKS

    facing = re.compile(r"facing the (\w+)")
    for story in stories:
        for described in story.descriptions:
            for entity, text in list(described.items()):
                match = facing.search(text)
                if match and entity.startswith("char"):
                    landmark = f"lm{LANDMARKS.index(match.group(1)) + 1}"
                    described[entity] = f"{text[:match.start()]}facing the {described[landmark]}"


def _pointer_hits(logits: torch.Tensor, batch, size: int) -> tuple[int, int]:
    """Regions under a mover whose pointer's top cell lies under its next box, and their
    count: logits (N, R, R) of the look-ahead, the batch's move boxes."""
    from cmar.data.mentions import box_regions

    side = math.isqrt(logits.shape[1])
    start = box_regions(batch.context_move_from.flatten(0, 1), side, size / side)  # (N, E, R)
    end = box_regions(batch.context_move_to.flatten(0, 1), side, size / side)
    moving = start.any(-1) & end.any(-1)
    start, end = start[moving], end[moving]  # (M, R)
    top = logits[moving.nonzero()[:, 0]].argmax(-1)  # (M, R) each region's top cell
    return int((end.gather(1, top) & start).sum()), int(start.sum())


def relation(phases: list[tuple[str, int]], overrides: list[str] = ()) -> list[dict]:
    """``phases``: (target, epochs) in order, each target ``kind`` or ``direction``."""
    from cmar.config import load_config
    from cmar.data import prepare_data
    from cmar.models import build_model
    from cmar.models.look_ahead import look_ahead_loss
    from cmar.train.checkpoints import seed_everything

    cfg = load_config("default", ["model.w_describe=1", *overrides])
    seed_everything(cfg.seed)
    pointed = cfg.model.look_ahead and cfg.model.w_look_ahead > 0
    data = prepare_data(cfg.data, splits=("train", "validation"), progress=False,
                        describe="characters", moves=pointed)
    written = {split: [[dict(d) for d in story.descriptions] for story in data.stories[split]]
               for split in ("train", "validation")}

    def say(target: str) -> None:  # the descriptions as written, or with ring directions
        for split, stories in written.items():
            for story, descriptions in zip(data.stories[split], stories, strict=True):
                story.descriptions[:] = [dict(d) for d in descriptions]
            data.datasets[split].described.forget()
            if target == "direction":
                _say_direction(data.stories[split])

    tokenizer, size = data.tokenizer, cfg.data.image_size
    model = build_model(cfg.model, tokenizer, cfg.data)
    parts = (model.image_encoder, model.region_encoder, model.look_ahead, model.describer)
    optimizer = torch.optim.AdamW([p for part in parts if part is not None
                                   for p in part.parameters()], lr=cfg.train.lr)

    def encoded(batch):  # regions (N, R, d) after any look-ahead, and its logits or None
        regions = model.encode_frames(batch.context_images, batch.context_features, flat=True)[0]
        return regions if model.look_ahead is None else model.look_ahead(regions)

    def regions_of(batch):
        out = encoded(batch)
        return out if model.look_ahead is None else out[0]

    rows, epoch = [], 0
    for target, epochs in phases:
        for _ in range(epochs):
            say(target)
            model.train()
            start, total, total_aim, steps = time.time(), 0.0, 0.0, 0
            for batch in data.loader("train", shuffle=True, seed=cfg.seed * 10_000 + epoch):
                out = encoded(batch)
                regions, logits = out if model.look_ahead is not None else (out, None)
                loss = model.describer.loss(
                    regions, batch.context_entity_boxes.flatten(0, 1),
                    batch.context_descriptions.flatten(0, 1),
                    batch.context_description_mask.flatten(0, 1), size)
                total, steps = total + loss.item(), steps + 1
                if pointed:
                    aim = look_ahead_loss(logits, batch.context_move_from.flatten(0, 1),
                                          batch.context_move_to.flatten(0, 1), size)
                    loss = loss + cfg.model.w_look_ahead * aim
                    total_aim += aim.item()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            hits = count = 0
            aimed = [0, 0]
            with torch.no_grad():
                for batch in data.loader("validation", shuffle=False, num_workers=0):
                    out = encoded(batch)
                    regions, logits = out if model.look_ahead is not None else (out, None)
                    a, n = _describer_hits(model, batch, regions, tokenizer, size,
                                           "facing the")
                    hits, count = hits + a, count + n
                    if pointed:
                        a, n = _pointer_hits(logits, batch, size)
                        aimed = [aimed[0] + a, aimed[1] + n]
            epoch += 1
            row = {"target": target, "epoch": epoch, "train_describe": round(total / steps, 3),
                   "facing accuracy": round(hits / count, 3), "n": count,
                   **({"train_look_ahead": round(total_aim / steps, 3),
                       "pointer": round(aimed[0] / aimed[1], 3)} if aimed[1] else {}),
                   "seconds": round(time.time() - start)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    say("kind")
    return rows


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["--help"]
    if command == "run" and len(rest) >= 2:
        print(json.dumps(run(rest[0], rest[1], rest[2:])))
    elif command == "diagnose" and len(rest) == 1:
        print(json.dumps(diagnose(rest[0]), indent=2))
    elif command == "describes" and len(rest) == 1:
        print(json.dumps(describes(rest[0]), indent=2))
    elif command == "verb" and len(rest) == 1:
        print(json.dumps(verb(rest[0]), indent=2))
    elif command == "moves" and len(rest) == 1:
        print(json.dumps(moves(rest[0]), indent=2))
    elif command == "points" and len(rest) == 1:
        print(json.dumps(points(rest[0]), indent=2))
    elif command == "relation" and rest:
        phases = [(target, int(epochs)) for target, epochs in
                  (phase.split(":") for phase in rest[0].split(","))]
        if any(target not in ("kind", "direction") for target, _ in phases):
            raise SystemExit("phases are kind:EPOCHS or direction:EPOCHS, comma-separated")
        relation(phases, rest[1:])
    else:
        print(__doc__)
