"""Train a config, or read back the finished run with the same config: what the study and
:func:`cmar.experiment.compare` do for every cell, so an interrupted comparison continues where
it stopped and a second call costs only the new runs.

A run folder is finished when it holds ``config.yaml``, ``metrics.json`` (written by
:func:`cmar.evaluation.evaluate_run`) and a ``best.pt`` this cmar can load. Its config must
equal the one asked for, except where it ran (``runs_dir``, ``device``): a run folder copied
into another study is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from cmar.config import Config, load_config


def finished_metrics(run_dir: str | Path, cfg: Config) -> dict | None:
    """The metrics.json of the finished run of ``cfg`` in ``run_dir``; None when there is
    none, it was trained with another config, or its checkpoint no longer loads."""
    run_dir = Path(run_dir)
    metrics, saved = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics.exists() and saved.exists()):
        return None
    try:
        previous = load_config(saved)
    except (KeyError, ValueError):  # an older cmar's key, or a part not registered now
        return None
    if dataclasses.replace(previous, runs_dir=cfg.runs_dir, device=cfg.device) != cfg:
        return None
    from cmar.models.checkpoint import CheckpointError, load_model

    try:  # the controls load its weights: an older checkpoint format is trained again
        load_model(run_dir / "best.pt")
    except CheckpointError:
        return None
    return json.loads(metrics.read_text())


def trained_run(cfg: Config, progress: bool = False) -> tuple[Path, dict]:
    """(run folder, metrics) of ``cfg``: read back when finished, else trained and
    evaluated from scratch (a stale or half-finished folder of that name is removed first)."""
    from cmar.evaluation.run import evaluate_run
    from cmar.train import train

    run_dir = Path(cfg.runs_dir) / cfg.name
    metrics = finished_metrics(run_dir, cfg)
    if metrics is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        train(cfg, progress=progress)
        metrics = evaluate_run(run_dir, progress=progress)
    return run_dir, metrics


def history_of(run_dir: str | Path) -> list[dict] | None:
    """The run's per-epoch history.json, None if it has none."""
    path = Path(run_dir) / "history.json"
    return json.loads(path.read_text()) if path.exists() else None
