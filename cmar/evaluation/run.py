"""Evaluate a run folder: free-running generation over a whole split, scored at corpus level
beside the floors, plus the alignment scores. Writes metrics.json, predictions.jsonl and
report.md into the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmar.config import load_config
from cmar.data import decode, load_tokenizer, prepare_data
from cmar.data.tokenizer import UNK_ID, target_text
from cmar.devices import mps_or_cpu, resolve_device
from cmar.evaluation.alignment import alignment_scores
from cmar.evaluation.bootstrap import mean_with_interval
from cmar.evaluation.captions import caption_section, image_use, reference_names, score_system
from cmar.evaluation.floors import all_floors, windows_text
from cmar.evaluation.inputs import blank_captions, blank_images, context_unk_id
from cmar.evaluation.report import write_report
from cmar.evaluation.slots import slot_accuracy
from cmar.models import load_model
from cmar.models.hf.loading import tokenizers_for


def device_for(name: str = "auto") -> torch.device:
    """The device a run's config key ``device`` (``name``) stands for on this machine
    (:func:`cmar.devices.resolve_device`; a device this machine lacks is an error)."""
    return resolve_device(name)


def load_run(run_dir: str | Path, checkpoint: str = "best.pt"):
    """(config, tokenizer, model in eval mode) of a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"no run folder at {run_dir} (it has no config.yaml); "
                                "train one with `cmar train` first")
    if not (run_dir / checkpoint).exists():
        raise FileNotFoundError(f"{run_dir} holds no {checkpoint}: its training never finished "
                                f"an epoch. Continue it with `cmar train --resume {run_dir}`")
    cfg = load_config(run_dir / "config.yaml")
    model, _ = load_model(run_dir / checkpoint)
    return cfg, load_tokenizer(run_dir / "tokenizer"), model.eval()


def run_data(cfg, tokenizer, model, splits: tuple[str, ...], progress: bool = True):
    """The StoryData a trained run is evaluated on; a frozen image encoder reads the same
    memory-mapped feature cache as training did instead of re-running the CNN."""
    data = prepare_data(cfg.data, splits=tuple(dict.fromkeys(splits)), progress=progress,
                        **tokenizers_for(cfg.model, tokenizer))
    if cfg.model.freeze_image_encoder:
        from cmar.models.feature_cache import attach_feature_cache

        attach_feature_cache(data, model, Path(cfg.data.cache_dir) / "features",
                             device=next(model.parameters()).device, progress=progress)
    return data


def blank(batch, what: str | None, unk_id: int = UNK_ID):
    """Modality ablation: the batch with every image it holds (the context frames' and, in
    grounded mode, the target's) replaced by zeros, or its context ``captions`` reduced to
    one [UNK] each (``unk_id``: the context tokenizer's). With the feature cache (a frozen
    encoder) the zeros replace the cached features. :mod:`cmar.experiment.controls` names
    these and more."""
    if what is None:
        return batch
    if what == "images":
        return blank_images(batch, target=True)
    if what == "captions":
        return blank_captions(batch, unk_id)
    raise ValueError(f"blank must be None, 'images' or 'captions', got {what!r}")


@torch.no_grad()
def generate_captions(model, data, split: str, strategy: str = "greedy", beam_size: int = 5,
                      batch_size: int = 64, progress: bool = True, blank_input: str | None = None,
                      **options) -> dict[str, str]:
    """{window id: generated caption} for every window of ``split`` (free-running);
    ``blank_input`` ("images" / "captions") runs a modality ablation."""
    device = next(model.parameters()).device
    loader = data.loader(split, shuffle=False, batch_size=batch_size, num_workers=0)
    out = {}
    for batch in tqdm(loader, desc=f"generating ({strategy})", disable=not progress):
        batch = blank(batch, blank_input, context_unk_id(data.context_tokenizer))
        ids = model.generate(batch.to(device), strategy, beam_size=beam_size, **options)
        out.update({wid: decode(data.tokenizer, row) for wid, row in zip(batch.window_ids,
                                                                          ids.cpu(), strict=True)})
    return out


@torch.no_grad()
def generate_one(model, data, split: str, device: torch.device) -> None:
    """A greedy caption for the first window of ``split`` on ``device`` (``model`` moved
    there): a probe for an op missing on MPS (:func:`cmar.devices.mps_or_cpu`)."""
    batch = data.loader(split, shuffle=False, batch_size=1, num_workers=0).collate_fn(
        [data.datasets[split][0]])
    model.to(device).generate(batch.to(device), "greedy")


def scored_texts(data, split: str, cfg) -> tuple[list, dict[str, list[str]], tuple]:
    """The split's windows as text (window id, context captions, target caption), the
    references (each target cut at ``data.max_tokens`` tokens, as the model was trained on
    it) and the names they tag with every name known from the train and scored splits (see
    :func:`cmar.evaluation.captions.reference_names`)."""
    texts = windows_text(data, split)
    references = {wid: [target_text(data.tokenizer, target, cfg.data.max_tokens)]
                  for wid, _, target in texts}
    stories = {s.story_id: s for s in data.stories[split]}
    names = reference_names(stories, references,
                            [*data.stories.get("train", []), *stories.values()])
    return texts, references, names


def _place_chance(cfg) -> float:
    """Chance of the place slot on ShapeStories: the actor faces one of the other landmarks."""
    from cmar.data import Knobs
    from cmar.data.prepare import shapestories_options

    options = shapestories_options(cfg.data)
    return 1.0 / (Knobs.from_difficulty(options["difficulty"], **options["knobs"]).n_landmarks - 1)


def evaluate_run(run_dir: str | Path, split: str | None = None, strategy: str | None = None,
                 beam_size: int | None = None, progress: bool = True,
                 meteor: bool | None = None, tokenizer: str | None = None,
                 bootstrap: int | None = None, device: str | None = None) -> dict:
    """Score a run on ``split`` and write metrics.json, predictions.jsonl and report.md.

    Unset arguments come from the run's ``eval`` config (``split``, ``strategy``,
    ``beam_size``, ``meteor``, ``tokenizer``: the metrics' python or ptb tokenizer,
    ``bootstrap``: resamples of the 95% intervals, 0 for none) and its key ``device`` (auto,
    cpu, cuda or mps; an old run without the key: auto). References are the target
    captions exactly as the model was trained on them (cut at ``data.max_tokens`` tokens), and
    every floor's captions pass through the same cut, so all systems face one text pipeline.
    """
    run_dir = Path(run_dir)
    cfg, tok, model = load_run(run_dir)
    ev = cfg.eval
    split, strategy = split or ev.split, strategy or ev.strategy
    beam_size = beam_size or ev.beam_size
    meteor = ev.meteor if meteor is None else meteor
    tokenizer = tokenizer or ev.tokenizer
    bootstrap = ev.bootstrap if bootstrap is None else bootstrap
    model.to(device_for(device or cfg.device))
    data = run_data(cfg, tok, model, ("train", split), progress)
    if next(model.parameters()).device.type == "mps":
        mps_or_cpu(model, lambda m, d: generate_one(m, data, split, d))
    texts, references, names = scored_texts(data, split, cfg)

    def as_trained(text: str) -> str:
        return target_text(tok, text, cfg.data.max_tokens)

    predictions = generate_captions(model, data, split, strategy, beam_size, ev.batch_size,
                                    progress)
    floors = {name: {wid: as_trained(c) for wid, c in p.items()}
              for name, p in all_floors(data, split, progress).items()}
    systems = {"model": predictions, **floors}
    metrics = {"run": str(run_dir), "split": split, "strategy": strategy,
               "beam_size": beam_size if strategy == "beam" else None,
               "windows": len(references), "stories": len(data.stories[split]),
               "references": {"max_tokens": cfg.data.max_tokens,
                              "cut": sum(references[w][0] != t for w, _, t in texts),
                              "scored against": "the captions as trained"},
               "metric tokenizer": tokenizer,
               **caption_section(systems, references, names, tokenizer, meteor, bootstrap,
                                 progress)}
    if cfg.data.source == "shapestories":
        blanked = generate_captions(model, data, split, strategy, beam_size, ev.batch_size,
                                    progress, blank_input="images")
        slots = {name: slot_accuracy(p, references) for name, p in systems.items()}
        metrics["slots"] = slots
        blanked_scores = score_system(blanked, references, tokenizer, resamples=0)
        metrics["image use"] = image_use(
            metrics["captions"]["model"], blanked_scores,
            {**slots, "model, context images blanked": slot_accuracy(blanked, references)},
            _place_chance(cfg))
    per_window: dict = {}
    metrics["alignment"] = alignment_scores(
        model, data, split, ev.candidates, ev.retrieval_windows, ev.batch_size, progress,
        per_window=per_window, candidate_sets=ev.candidate_sets)
    metrics["main alignment score"] = _main_alignment_interval(metrics["alignment"],
                                                               per_window, bootstrap)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(run_dir / "predictions.jsonl", "w") as f:
        for wid, context, _ in texts:
            f.write(json.dumps({"window_id": wid, "context": context,
                                "reference": references[wid][0],
                                "prediction": predictions[wid]}) + "\n")
    write_report(run_dir / "report.md", metrics, texts, predictions, ev.examples)
    return metrics


MAIN_ALIGNMENT = ("next-caption retrieval (same story)", "next-caption retrieval")


def _main_alignment_interval(scores: dict, per_window: dict, resamples: int) -> str | None:
    """Adds the 95% interval of the main alignment score's R@1 (the first group of
    MAIN_ALIGNMENT the split allows), resampling stories, to its group; returns the group."""
    for group in MAIN_ALIGNMENT:
        if group in per_window:  # filled only for the groups the split could score
            story_ids, hits = per_window[group]
            result = mean_with_interval(story_ids, hits.float().numpy(), resamples)
            if result is not None:
                scores[group]["R@1 95% interval"] = result["95% interval"]
            return group
    return None
