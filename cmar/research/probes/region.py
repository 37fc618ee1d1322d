"""Does a trained story model *see* the facing dot? A linear probe on its own region features.

:mod:`cmar.research.probes.facing` shows that a small CNN trained for it reads the ShapeStories
facing dot (accuracy about 0.999). This module asks the question one step later: after the story
model was trained on captions, does its image encoder keep that information where the decoder can
read it? For every character of every frame, take the model's region vector (image encoder,
then region encoder if any: exactly what the fusion and the decoder get) at the grid cell under
the character's box centre, append where the character stands (one-hot ring position), and fit
a linear classifier to the ring position of the landmark it faces.

Each representation gets a linear probe and a one-hidden-layer MLP probe (``trained MLP``,
``untrained MLP``): a linear probe understates what a representation holds.

Floors on the same examples: ``stand only`` (the one-hot position alone: what not reading the
dot leaves), the same probe on an **untrained** model of the same configuration (what a
random CNN already passes on), and ``shuffled labels`` (the trained model's probe fitted to
labels shuffled across the training characters: near chance, or the probe finds structure in
the split itself). A trained model at its ``stand only`` floor has not learned to
see the dot, whatever its decoder does. ``cmar probe --run RUN_DIR``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmar.experiment.probe import accuracy, fit_classifier
from cmar.research.probes.facing import frame_facings, frame_tables


def character_cells(boxes: list[tuple[float, float, float, float]], size: int,
                    side: int) -> list[int]:
    """Row-major index of the cell of a ``side x side`` grid over a ``size`` px frame that
    holds each box's centre."""
    cell = size / side
    return [min(int((y1 + y2) / 2 // cell), side - 1) * side
            + min(int((x1 + x2) / 2 // cell), side - 1) for x1, y1, x2, y2 in boxes]


@torch.no_grad()
def region_examples(model, stories, cots: dict[str, str]) -> dict[str, torch.Tensor]:
    """The probe's examples: ``features`` (N, d) the region vector under each character,
    ``stands`` (N,) and ``labels`` (N,) ring classes, ``n_classes``; N = characters x frames."""
    from cmar.data.images import image_transform

    transform = image_transform()
    model.eval()
    features, stands, labels, n_classes = [], [], [], 0
    device = next(model.parameters()).device
    for story in stories:
        frames = frame_facings(cots[story.story_id])
        pixels = torch.stack([torch.from_numpy(np.array(story.image(t))).permute(2, 0, 1)
                              for t in range(len(story))])  # (T, 3, S, S) uint8
        regions, _ = model.encode_frames(transform(pixels).to(device), None)  # (T, R, d)
        side = math.isqrt(regions.shape[1])
        for t, facings in enumerate(frames):
            cells = character_cells([f.box for f in facings], pixels.shape[-1], side)
            features.append(regions[t, cells].float().cpu())
            stands += [f.stands for f in facings]
            labels += [f.faces for f in facings]
            n_classes = max([n_classes, *(f.ring for f in facings)])
    return {"features": torch.cat(features), "stands": torch.tensor(stands),
            "labels": torch.tensor(labels), "n_classes": n_classes}


MLP_HIDDEN = 64  # the hidden width of the MLP probe beside the linear one


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, n_classes: int, steps: int = 300, seed: int = 0,
                 hidden: int = 0) -> float:
    """Test accuracy of a softmax classifier fitted full-batch (Adam) to standardised
    features (N, F) (:func:`cmar.experiment.probe.fit_classifier`); seeded, so the same
    inputs give the same accuracy. ``hidden`` > 0: a one-hidden-layer MLP instead (a linear
    probe understates what a representation holds)."""
    classifier = fit_classifier(train_x, train_y, n_classes, hidden=hidden, epochs=steps,
                                seed=seed, weight_decay=1e-4)
    return accuracy(classifier, test_x, test_y)


def _with_stand(examples: dict, features: bool = True) -> torch.Tensor:
    stand = nn.functional.one_hot(examples["stands"], examples["n_classes"]).float()
    return torch.cat([examples["features"], stand], 1) if features else stand


def run_region_probe(run_dir: str | Path, train_stories: int = 400, test_stories: int = 200,
                     seed: int = 0, checkpoint: str = "best.pt") -> dict:
    """Probe the run's trained model and an untrained one of its configuration on the run's
    own train (first ``train_stories``) and test (first ``test_stories``) stories."""
    from cmar.config import load_config
    from cmar.data import load_split
    from cmar.models import StoryModel
    from cmar.models.checkpoint import load_model

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.data.source != "shapestories":
        raise ValueError(f"the region probe needs ShapeStories (its frame tables hold the "
                         f"facing), not data.source={cfg.data.source!r}")
    trained, _ = load_model(run_dir / checkpoint)
    torch.manual_seed(seed)
    untrained = StoryModel(trained.cfg, **trained.init_args)
    cots = frame_tables(cfg.data)
    splits = {"train": load_split(cfg.data, "train", False)[:train_stories],
              "test": load_split(cfg.data, "test", False)[:test_stories]}
    result = {"run": str(run_dir), "checkpoint": checkpoint, "seed": seed}
    examples = {name: [region_examples(model, splits[s], cots) for s in ("train", "test")]
                for name, model in (("trained", trained), ("untrained", untrained))}
    for name, (train, test) in examples.items():
        for key, hidden in ((name, 0), (f"{name} MLP", MLP_HIDDEN)):
            result[key] = linear_probe(_with_stand(train), train["labels"], _with_stand(test),
                                       test["labels"], train["n_classes"], seed=seed,
                                       hidden=hidden)
    train, test = examples["trained"]  # the controls below probe the trained model's examples
    shuffled = train["labels"][torch.randperm(len(train["labels"]),
                                              generator=torch.Generator().manual_seed(seed))]
    result["shuffled labels"] = linear_probe(_with_stand(train), shuffled, _with_stand(test),
                                             test["labels"], train["n_classes"], seed=seed)
    result["stand only"] = linear_probe(_with_stand(train, False), train["labels"],
                                        _with_stand(test, False), test["labels"],
                                        train["n_classes"], seed=seed)
    result["chance"] = 1.0 / (train["n_classes"] - 1)
    result["examples"] = {"train": len(train["labels"]), "test": len(test["labels"])}
    return result


def _mlp(result: dict, name: str) -> str:
    """The MLP column of a row (blank for a result written before the MLP probe)."""
    value = result.get(f"{name} MLP")
    return f"{value:>8.3f}" if value is not None else f"{'':>8}"


def render_region_probe(result: dict) -> str:
    """A small plain-text table of one region-probe result."""
    return "\n".join([
        f"region probe: {result['run']} ({result['checkpoint']}), {result['examples']['train']} "
        f"train / {result['examples']['test']} test characters",
        f"{'':<12}{'linear':>8}{'MLP':>8}",
        f"{'trained':<12}{result['trained']:>8.3f}{_mlp(result, 'trained')}   (its region under "
        "the character + stand)",
        f"{'untrained':<12}{result['untrained']:>8.3f}{_mlp(result, 'untrained')}   (same "
        "configuration, random weights)",
        f"{'stand only':<12}{result['stand only']:>8.3f}   (where it stands, no image)",
        *([f"{'shuffled':<12}{result['shuffled labels']:>8.3f}   (the trained model's probe "
           "fitted to shuffled labels)"] if "shuffled labels" in result else []),
        f"{'chance':<12}{result['chance']:>8.3f}   (1 / (landmarks - 1))"])
