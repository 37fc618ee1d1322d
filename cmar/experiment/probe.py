"""probe(): can a label be read from a named internal representation of a trained run?

A probe is a small classifier trained on the representation of the train split's windows and
scored on the test split's. It answers "is the information there (decodable)?", never "does
the model use it?" (see :mod:`cmar.experiment.intervene`). Its accuracy means something only
beside its floors, reported with it:

- ``majority``: always the train split's most frequent label (no representation at all);
- ``chance``: 1 / the number of labels;
- ``shuffled labels``: the same linear probe trained on labels shuffled across the train
  examples, scored on the true test labels. It should sit near the majority: if it does not,
  the probe finds structure in the split itself (an unbalanced test set, a leak), and the
  real probe's accuracy cannot be read as "the representation holds the label".

A target is a function ``target(story, t) -> label | None`` of a story and the frame ``t``
the representation stands for: the context frame itself for the frame-level
representations, the newest context frame for the window-level ones. None leaves the example
out. The built-in targets (:data:`TARGETS`) read ShapeStories captions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cmar.data.story import Story
from cmar.evaluation.run import device_for, load_run, run_data
from cmar.evaluation.slots import caption_place
from cmar.experiment.representations import FRAME_LEVEL, check_name, read

Target = Callable[[Story, int], object]


def place(story: Story, t: int) -> str | None:
    """The landmark caption ``t`` names ("... runs to the rock"): in its text, and where the
    actor stands in image ``t``."""
    return caption_place(story.captions[t])


def next_place(story: Story, t: int) -> str | None:
    """The landmark caption ``t + 1`` names: on ShapeStories, what the next actor faces in
    image ``t`` (a small dot on its edge), so only the images hold it. None for the last
    frame."""
    return caption_place(story.captions[t + 1]) if t + 1 < len(story) else None


TARGETS: dict[str, Target] = {"place": place, "next_place": next_place}


def examples(model, data, split: str, representation: str, target: Target,
             batch_size: int = 64, progress: bool = True) -> tuple[torch.Tensor, list]:
    """(features (N, d) on the CPU, labels) of every context frame (or window) of ``split``
    whose target is not None. Frame-level representations that do not depend on the window
    ("image", "fused") keep each frame of a story once."""
    check_name(representation)
    device = next(model.parameters()).device
    dataset = data.datasets[split]
    stories = data.stories[split]
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    features, labels, seen, start = [], [], set(), 0
    once = representation in ("image", "fused")
    for batch in tqdm(loader, desc=f"probe: {representation} of {split}", leave=False,
                      disable=not progress):
        windows = dataset.windows[start:start + len(batch)]
        start += len(batch)
        values = read(model, batch.to(device), representation).float().cpu()
        if representation in FRAME_LEVEL:
            frames = [(w.story, t) for w in windows for t in w.context]  # row b * k + i
        else:
            frames = [(w.story, w.t - 1) for w in windows]
        for row, (story, t) in enumerate(frames):
            if once and (story, t) in seen:
                continue
            seen.add((story, t))
            label = target(stories[story], t)
            if label is not None:
                features.append(values[row])
                labels.append(label)
    if not features:
        raise ValueError(f"the target gives no label on the {split} split: is it a target "
                         "for this data source?")
    return torch.stack(features), labels


def fit_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, hidden: int = 0,
                   epochs: int = 200, seed: int = 0, weight_decay: float = 1e-3) -> nn.Module:
    """A linear (``hidden=0``) or one-hidden-layer MLP classifier of standardised features,
    trained full-batch with Adam on cross-entropy (seeded)."""
    torch.manual_seed(seed)
    d = x.shape[1]
    body = (nn.Linear(d, classes) if not hidden else
            nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes)))
    model = nn.Sequential(_Standardise(x), body)
    optimiser = torch.optim.Adam(body.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(epochs):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


class _Standardise(nn.Module):
    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp(min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def probe_features(train_x: torch.Tensor, train_labels: list, test_x: torch.Tensor,
                   test_labels: list, hidden: int = 64, epochs: int = 200, seed: int = 0
                   ) -> dict:
    """The probe's scores from features and labels: accuracy of a linear and an MLP probe on
    the test examples, beside the shuffled-label control, the majority class and chance.
    Test labels never seen in training count as wrong."""
    classes = sorted(set(train_labels), key=str)
    index = {label: i for i, label in enumerate(classes)}
    y_train = torch.tensor([index[label] for label in train_labels])
    y_test = torch.tensor([index.get(label, -1) for label in test_labels])
    linear = fit_classifier(train_x, y_train, len(classes), 0, epochs, seed)
    mlp = fit_classifier(train_x, y_train, len(classes), hidden, epochs, seed)
    shuffled_y = y_train[torch.randperm(len(y_train),
                                        generator=torch.Generator().manual_seed(seed))]
    shuffled = fit_classifier(train_x, shuffled_y, len(classes), 0, epochs, seed)
    majority = Counter(train_labels).most_common(1)[0][0]
    return {"linear": accuracy(linear, test_x, y_test), "mlp": accuracy(mlp, test_x, y_test),
            "shuffled labels": accuracy(shuffled, test_x, y_test),
            "majority": sum(label == majority for label in test_labels) / len(test_labels),
            "chance": 1 / len(classes), "labels": len(classes),
            "train examples": len(train_labels), "test examples": len(test_labels)}


def probe(run: str | Path, representation: str, target: str | Target, train_split: str =
          "train", test_split: str = "test", hidden: int = 64, epochs: int = 200, seed: int = 0,
          progress: bool = True) -> dict:
    """Train a linear and an MLP probe to read ``target`` (a name of :data:`TARGETS` or a
    function ``(story, t) -> label``) from ``representation`` (see
    :mod:`cmar.experiment.representations`) of the run in folder ``run``; scored on
    ``test_split`` beside the shuffled-label control, the majority class and chance."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "target")
    if isinstance(target, str):
        if target not in TARGETS:
            raise KeyError(f"unknown target {target!r}; built in: {sorted(TARGETS)}, or pass "
                           "a function (story, t) -> label")
        target = TARGETS[target]
    cfg, tokenizer, model = load_run(run)
    model.to(device_for(cfg.device))
    data = run_data(cfg, tokenizer, model, (train_split, test_split), progress)
    batch_size = cfg.eval.batch_size
    train_x, train_y = examples(model, data, train_split, representation, target, batch_size,
                                progress)
    test_x, test_y = examples(model, data, test_split, representation, target, batch_size,
                              progress)
    scores = probe_features(train_x, train_y, test_x, test_y, hidden, epochs, seed)
    above = scores["linear"] - max(scores["majority"], scores["shuffled labels"])
    return {"run": str(run), "representation": representation, "target": name, **scores,
            "linear above its floors": above if not math.isnan(above) else None}
