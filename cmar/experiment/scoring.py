"""Score a trained run as-is and under controls, with one pipeline for both: free-running
generation over the whole split scored at corpus level, and the true caption's likelihood.

Every row holds the same columns (:data:`SCORES`), so a control's paired drop from the plain
run is a subtraction. The plain row also carries the run's alignment scores from its
``metrics.json``; those are not measured under controls (NaN there).

Rows are cached in the run folder's ``controls.json``, keyed by split, decoding and the
control's source code: a control edited in a notebook is measured again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmar.config import Config, load_config
from cmar.data import StoryData, decode
from cmar.data.batches import Collate
from cmar.evaluation.alignment import per_window_caption_loss
from cmar.evaluation.inputs import context_unk_id
from cmar.evaluation.metrics import caption_scores
from cmar.evaluation.run import device_for, load_run, run_data, scored_texts
from cmar.evaluation.slots import SLOTS, slot_accuracy
from cmar.evaluation.text_stats import name_scores
from cmar.experiment.controls import NONE, SplitWindows

CAPTION_SCORES = ("BLEU-4", "CIDEr-D", "names F1", "caption NLL")
SLOT_SCORES = tuple(f"slot {slot}" for slot in SLOTS)  # ShapeStories only
# from the plain run's metrics.json: (column, group, key)
ALIGNMENT_SCORES = (("next-frame R@1", "next-frame retrieval", "R@1"),
                    ("caption R@1", "next-caption retrieval", "R@1"),
                    ("context gap", "context sensitivity", "gap"),
                    ("grounding", "grounding", "accuracy"))
SCORES = (*CAPTION_SCORES, *SLOT_SCORES, *(column for column, _, _ in ALIGNMENT_SCORES))
def control_key(label: str, control: Callable | None, split: str, strategy: str) -> str:
    """The cache key of a control's row: its label, split, decoding and source code."""
    source = ""
    if control is not None:
        function = getattr(control, "func", control)  # a functools.partial's function
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):  # defined where no source is kept
            source = repr(function)
        source += repr(getattr(control, "keywords", ""))
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{split}|{strategy}|{label}|{digest}"


def alignment_columns(metrics: dict, split: str) -> dict[str, float]:
    """The plain run's alignment scores from its metrics.json (NaN where a group is
    skipped or absent, or where the run was evaluated on another split)."""
    groups = metrics.get("alignment", {}) if metrics.get("split") == split else {}
    return {column: float(groups.get(group, {}).get(key, math.nan))
            for column, group, key in ALIGNMENT_SCORES}


@dataclass
class RunInputs:
    """A trained run loaded for scoring on one split: its model (on the run's device), data,
    the split's windows as text, the references cut as trained, the names they tag, and the
    :class:`SplitWindows` its controls borrow from."""

    cfg: Config
    model: torch.nn.Module
    data: StoryData
    texts: list
    references: dict[str, list[str]]
    names: tuple
    windows: SplitWindows


def load_inputs(run_dir: str | Path, split: str = "test", seed: int = 0,
                progress: bool = True) -> RunInputs:
    """Load a run folder for scoring on ``split`` (the train split too: the names it knows)."""
    cfg, tokenizer, model = load_run(run_dir)
    model.to(device_for(cfg.device))
    data = run_data(cfg, tokenizer, model, ("train", split), progress)
    texts, references, names = scored_texts(data, split, cfg)
    dataset = data.datasets[split]
    collate = Collate(model.pad_id, model.bos_id, model.eos_id, dataset.context_pad_id)
    windows = SplitWindows(dataset, collate, context_unk_id(data.context_tokenizer), seed)
    return RunInputs(cfg, model, data, texts, references, names, windows)


@torch.no_grad()
def captions_and_nll(run: RunInputs, batch) -> tuple[list[str], torch.Tensor]:
    """The free-running captions of ``batch`` (decoded as the run's ``eval`` section says)
    and each window's caption NLL (B,), on the CPU."""
    ev, model = run.cfg.eval, run.model
    ids = model.generate(batch, ev.strategy, beam_size=ev.beam_size)
    captions = [decode(run.data.tokenizer, row) for row in ids.cpu()]
    return captions, per_window_caption_loss(model(batch).logits, batch).float().cpu()


class ScoredRun:
    """A trained run scored on ``split`` as-is and under controls: ``rows(controls)`` ->
    {label: {score: value}}, ``"none"`` (the plain run) first. The model and data are loaded
    only when a row is missing from the run's controls.json."""

    def __init__(self, run_dir: str | Path, split: str = "test", seed: int = 0,
                 progress: bool = True):
        self.run_dir, self.split, self.seed, self.progress = Path(run_dir), split, seed, progress
        self.cfg = load_config(self.run_dir / "config.yaml")

    @cached_property
    def inputs(self) -> RunInputs:
        return load_inputs(self.run_dir, self.split, self.seed, self.progress)

    def _pass(self, change: Callable | None) -> tuple[dict[str, str], float]:
        """Free-running captions and the mean caption NLL over the split's windows."""
        run = self.inputs
        device = next(run.model.parameters()).device
        loader = run.data.loader(self.split, shuffle=False, batch_size=self.cfg.eval.batch_size,
                                 num_workers=0)
        captions, losses = {}, []
        for batch in tqdm(loader, desc="windows", leave=False, disable=not self.progress):
            batch = batch.to(device)
            if change is not None:
                batch = change(batch, run.windows)
            said, nll = captions_and_nll(run, batch)
            captions.update(zip(batch.window_ids, said, strict=True))
            losses.append(nll)
        return captions, torch.cat(losses).mean().item()

    def score(self, change: Callable | None) -> dict[str, float]:
        """The caption scores of one pass (``change``: a control, None for the plain run)."""
        predictions, nll = self._pass(change)
        references = self.inputs.references
        scores = caption_scores(predictions, references, tokenizer=self.cfg.eval.tokenizer)
        wanted, known = self.inputs.names
        names = (name_scores(predictions, wanted, known)["F1"] if any(wanted.values())
                 else math.nan)
        row = {"BLEU-4": scores["BLEU-4"], "CIDEr-D": scores["CIDEr"], "names F1": names,
               "caption NLL": nll}
        slots = (slot_accuracy(predictions, references)
                 if self.cfg.data.source == "shapestories" else {})
        row.update({f"slot {s}": math.nan if slots.get(s) is None else slots[s]
                    for s in SLOTS})
        return row

    def rows(self, controls: dict[str, Callable]) -> dict[str, dict[str, float]]:
        """{label: scores} for the plain run and each control, read from or added to the
        run's controls.json."""
        cache_file = self.run_dir / "controls.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        strategy = self.cfg.eval.strategy
        out = {}
        for label, control in {NONE: None, **controls}.items():
            key = control_key(label, control, self.split, strategy)
            if key not in cache:
                cache[key] = self.score(control)
                cache_file.write_text(json.dumps(cache, indent=2))
            out[label] = dict(cache[key])
        metrics = json.loads((self.run_dir / "metrics.json").read_text())
        for label, row in out.items():
            plain = alignment_columns(metrics, self.split) if label == NONE else {}
            row.update({column: plain.get(column, math.nan)
                        for column, _, _ in ALIGNMENT_SCORES})
        return out

