"""Evaluate a run folder: free-running generation over a whole split, scored at corpus level
beside the floors, plus the alignment scores. Writes metrics.json, predictions.jsonl and
report.md into the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmar.config import load_config
from cmar.data import decode, load_tokenizer, prepare_data
from cmar.data.tokenizer import UNK_ID
from cmar.evaluation import alignment
from cmar.evaluation.floors import all_floors, windows_text
from cmar.evaluation.metrics import caption_scores, exact_match
from cmar.evaluation.report import write_report
from cmar.evaluation.slots import slot_accuracy
from cmar.models import load_model


def device_for() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_run(run_dir: str | Path, checkpoint: str = "best.pt"):
    """(config, tokenizer, model in eval mode) of a run folder."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    model, _ = load_model(run_dir / checkpoint)
    return cfg, load_tokenizer(run_dir / "tokenizer"), model.eval()


def run_data(cfg, tokenizer, model, splits: tuple[str, ...], progress: bool = True):
    """The StoryData a trained run is evaluated on; a frozen image encoder reads the same
    memory-mapped feature cache as training did instead of re-running the CNN."""
    data = prepare_data(cfg.data, tokenizer=tokenizer, splits=tuple(dict.fromkeys(splits)),
                        progress=progress)
    if cfg.model.freeze_image_encoder:
        from cmar.models.feature_cache import attach_feature_cache

        attach_feature_cache(data, model, Path(cfg.data.cache_dir) / "features",
                             device=next(model.parameters()).device, progress=progress)
    return data


def blank(batch, what: str | None):
    """Modality ablation: the batch with its context ``images`` (and, in grounded mode, the
    target image) replaced by zeros, or its context ``captions`` reduced to one [UNK].
    With the feature cache (a frozen encoder) the zeros replace the cached features."""
    if what is None:
        return batch
    if what == "images":
        return dataclasses.replace(batch, context_images=torch.zeros_like(batch.context_images),
                                   target_image=torch.zeros_like(batch.target_image))
    if what == "captions":
        tokens = torch.full_like(batch.context_tokens[..., :1], UNK_ID)
        return dataclasses.replace(batch, context_tokens=tokens,
                                   context_mask=torch.ones_like(tokens, dtype=torch.bool))
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
        batch = blank(batch, blank_input)
        ids = model.generate(batch.to(device), strategy, beam_size=beam_size, **options)
        out.update({wid: decode(data.tokenizer, row) for wid, row in zip(batch.window_ids,
                                                                          ids.cpu(), strict=True)})
    return out


def evaluate_run(run_dir: str | Path, split: str | None = None, strategy: str | None = None,
                 beam_size: int | None = None, progress: bool = True) -> dict:
    """Score a run on ``split`` (default: the config's eval.split) and write its reports."""
    run_dir = Path(run_dir)
    cfg, tokenizer, model = load_run(run_dir)
    ev = cfg.eval
    split, strategy = split or ev.split, strategy or ev.strategy
    beam_size = beam_size or ev.beam_size
    model.to(device_for())
    data = run_data(cfg, tokenizer, model, ("train", split), progress)
    texts = windows_text(data, split)
    references = {wid: [target] for wid, _, target in texts}
    predictions = generate_captions(model, data, split, strategy, beam_size, ev.batch_size,
                                    progress)
    systems = {"model": predictions, **all_floors(data, split)}
    captions = {name: {**caption_scores(p, references), "exact": exact_match(p, references)}
                for name, p in systems.items()}
    metrics = {"run": str(run_dir), "split": split, "strategy": strategy,
               "beam_size": beam_size if strategy == "beam" else None,
               "windows": len(references), "captions": captions,
               "alignment": alignment.alignment_scores(model, data, split, ev.candidates,
                                             ev.retrieval_windows, ev.batch_size, progress)}
    if cfg.data.source == "shapestories":
        metrics["slots"] = {name: slot_accuracy(p, references) for name, p in systems.items()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(run_dir / "predictions.jsonl", "w") as f:
        for wid, context, target in texts:
            f.write(json.dumps({"window_id": wid, "context": context, "reference": target,
                                "prediction": predictions[wid]}) + "\n")
    write_report(run_dir / "report.md", metrics, texts, predictions, ev.examples)
    return metrics
