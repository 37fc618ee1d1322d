"""intervene(): replace one context frame's representation with another story's and measure
what changes: the causal half of "decodable or used?".

For every window of the split, context frame ``position``'s ``representation`` ("image": the
image encoder's regions and vector; "fused": the fused frame vector) is swapped for the same
frame position of a window of another story (the donor, drawn once per split with ``seed``).
Everything else the model reads stays the window's own. Reported, paired window by window:

- ``caption NLL``: mean per-token negative log-likelihood of the true next caption, plain and
  swapped, and their difference with its 95% t interval over windows (above 0: the swapped
  representation carried information the model used for this caption);
- ``BLEU-4`` of the free-running captions, plain and swapped;
- on ShapeStories, the ``place`` slot: accuracy plain and swapped, the share of windows
  whose decoded place changed, and the share that now says the donor's next place.

A representation the model does not use changes nothing (difference 0, interval around 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmar.evaluation.metrics import caption_scores
from cmar.evaluation.slots import caption_place, slot_accuracy
from cmar.evaluation.stats import ci95
from cmar.experiment.representations import REPLACEABLE, check_name, donor_values, replaced
from cmar.experiment.scoring import captions_and_nll, load_inputs


@torch.no_grad()
def intervene(run: str | Path, representation: str = "image", position: int = -1,
              split: str = "test", seed: int = 0, progress: bool = True) -> dict:
    """Swap context frame ``position`` (0 the oldest, -1 the newest)'s ``representation`` for
    another story's in every window of ``split`` of the run in folder ``run``; the paired
    changes described in this module's docstring."""
    check_name(representation, REPLACEABLE)
    inputs = load_inputs(run, split, seed, progress)
    cfg, model, data = inputs.cfg, inputs.model, inputs.data
    device = next(model.parameters()).device
    dataset = data.datasets[split]
    k = dataset.windows[0].k if dataset.windows else cfg.data.k
    if not -k <= position < k:
        raise ValueError(f"position {position} is outside the {k} context frames")
    position %= k
    loader = data.loader(split, shuffle=False, batch_size=cfg.eval.batch_size, num_workers=0)
    plain_nll, swapped_nll, plain, swapped, donor_of = [], [], {}, {}, {}
    for batch in tqdm(loader, desc=f"intervene: {representation} of frame {position}",
                      disable=not progress):
        batch = batch.to(device)
        donor = inputs.windows.other_story_batch(batch)
        values = donor_values(model, donor, representation, position)
        said, nll = captions_and_nll(inputs, batch)
        plain.update(zip(batch.window_ids, said, strict=True))
        plain_nll.append(nll)
        with replaced(model, representation, position, values):
            said, nll = captions_and_nll(inputs, batch)
        swapped.update(zip(batch.window_ids, said, strict=True))
        swapped_nll.append(nll)
        donor_of.update(zip(batch.window_ids, donor.window_ids, strict=True))
    before, after = torch.cat(plain_nll), torch.cat(swapped_nll)
    change = (after - before).tolist()
    interval = ci95(change)
    references = inputs.references
    out = {"run": str(run), "representation": representation, "position": position,
           "windows": len(change),
           "caption NLL": {"plain": before.mean().item(), "swapped": after.mean().item(),
                           "change": after.mean().item() - before.mean().item(),
                           "95% interval": interval,
                           "windows worse": sum(c > 0 for c in change)},
           "BLEU-4": {"plain": _bleu(plain, references), "swapped": _bleu(swapped, references)}}
    if cfg.data.source == "shapestories":
        targets = {wid: target for wid, _, target in inputs.texts}
        out["place"] = _place_changes(plain, swapped, references, donor_of, targets)
    return out


def _bleu(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    if len(predictions) < 2:
        return math.nan
    return caption_scores(predictions, references)["BLEU-4"]


def _place_changes(plain: dict[str, str], swapped: dict[str, str], references: dict,
                   donor_of: dict[str, str], targets: dict[str, str]) -> dict:
    """The place slot before and after the swap, how often it changed, and how often it now
    names the donor window's true next place."""
    changed = follows = n = 0
    for wid, caption in plain.items():
        before, after = caption_place(caption), caption_place(swapped[wid])
        donor_place = caption_place(targets.get(donor_of[wid], ""))
        n += 1
        changed += before != after
        follows += after is not None and after == donor_place and donor_place != caption_place(
            targets[wid])
    return {"accuracy plain": slot_accuracy(plain, references)["place"],
            "accuracy swapped": slot_accuracy(swapped, references)["place"],
            "changed": changed / n if n else math.nan,
            "now the donor's place": follows / n if n else math.nan}
