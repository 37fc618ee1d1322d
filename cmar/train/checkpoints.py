"""Checkpoints and exact resume: what a run folder holds so an interrupted run ends with the
weights of an uninterrupted one.

- ``best.pt``: the model of the best epoch so far (by ``train.select``);
- ``last.pt`` (and ``last.pt.prev``, the one before): the model plus the optimiser, scheduler,
  gradient-scaler and random states of every process, the history, and, when a signal stopped
  an epoch part-way, that epoch's steps so far (``partial``);
- ``history.json`` and ``loss_curves.png``: one row per finished epoch.

Each epoch's data order comes from (seed, epoch) alone, so restoring these states is enough
for a resumed run to take the same steps.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmar.models.checkpoint import CheckpointError, load_model, save_model
from cmar.plots import plot_loss_curves
from cmar.processes import decide_on_main, gather, rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) random states, as plain objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def this_process(saved: list | dict) -> dict:
    """This process's entry of what a checkpoint holds for every process (random states,
    partial loss sums; a list in rank order).

    A checkpoint written before these were saved per process holds one dict; one written by
    fewer processes gives the extra processes the main process's entry (a resume is exact
    only with the same number of processes).
    """
    if isinstance(saved, dict):
        return saved
    index = rank()
    return saved[index] if index < len(saved) else saved[0]


@dataclass
class RunProgress:
    """Where a run stands, besides its weights and optimiser: what ``last.pt`` restores."""

    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    best: float = float("inf")  # the best value of train.select so far
    start_epoch: int = 1  # the next epoch to train
    partial: dict | None = None  # an epoch stopped part-way by a signal, to finish first


class Checkpoints:
    """The checkpoints of one run folder, written by the main process (the others only join
    the collectives), read back by every process on resume."""

    def __init__(self, run_dir: Path, accelerator, select: str, frozen_weights: bool = False):
        self.run_dir, self.accelerator = run_dir, accelerator
        self.select, self.frozen_weights = select, frozen_weights

    def save(self, model, optimizer, scheduler, progress: RunProgress, epoch: int,
             improved: bool, partial: dict | None = None) -> None:
        """Checkpoint after ``epoch`` complete epochs (and ``partial``: steps of the next)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        rng = gather(rng_state())  # every process's, in rank order
        if not accelerator.is_main_process:
            return
        model = accelerator.unwrap_model(model)
        # best.pt before last.pt: a run killed between the two redoes this epoch on resume and
        # writes best.pt again, instead of trusting a last.pt whose best was never saved
        if improved and partial is None:
            save_model(model, self.run_dir / "best.pt",
                       extra={"epoch": epoch, self.select: progress.best},
                       frozen_weights=self.frozen_weights)
        state = {"epoch": epoch, "best": progress.best, "history": progress.history,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng, "partial": partial}
        if accelerator.scaler is not None:  # fp16: the loss scale it has learned
            state["scaler"] = accelerator.scaler.state_dict()
        save_model(model, self.run_dir / "last.pt", extra=state, keep_previous=True,
                   frozen_weights=self.frozen_weights)
        if partial is None:
            self.write_history(progress.history)

    def write_history(self, history: list[dict]) -> None:
        """history.json and the loss curves, from the history the checkpoint holds."""
        (self.run_dir / "history.json").write_text(json.dumps(history, indent=2))
        if history:
            plot_loss_curves(history, self.run_dir / "loss_curves.png")

    def _pick(self, loaded: list) -> Path | None:
        """On the main process only: the checkpoint to resume from (``last.pt``, or
        ``last.pt.prev`` when ``last.pt`` cannot be read), or None before the first one.
        What it read is left in ``loaded``, so the main process does not read it twice."""
        if not any((self.run_dir / name).exists() for name in ("last.pt", "last.pt.prev")):
            # stopped before its first checkpoint: the seeded start is the same as a fresh run's
            print(f"{self.run_dir} has no checkpoint yet: starting from epoch 1", flush=True)
            return None
        path = self.run_dir / "last.pt"
        try:
            loaded.append(load_model(path))
        except CheckpointError as error:  # e.g. the disk filled up or the copy was cut short
            path = self.run_dir / "last.pt.prev"
            if not path.exists():
                raise
            print(f"warning: {error} Resuming from the previous checkpoint, {path}.",
                  flush=True)
            loaded.append(load_model(path))
        return path

    def restore(self, model, optimizer, scheduler) -> RunProgress:
        """Load the latest checkpoint into ``model``, ``optimizer`` and ``scheduler`` and the
        random states; returns where the run stands (a fresh start if there is none yet)."""
        accelerator = self.accelerator
        loaded: list = []
        path = decide_on_main(lambda: self._pick(loaded))  # one choice for all processes
        if path is None:
            return RunProgress()
        saved_model, state = loaded[0] if loaded else load_model(path)
        accelerator.unwrap_model(model).load_state_dict(saved_model.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        saved = state["rng"]
        if accelerator.is_main_process and isinstance(saved, list) \
                and len(saved) != accelerator.num_processes:
            print(f"warning: {path} was written by {len(saved)} processes, resumed by "
                  f"{accelerator.num_processes}: the random states cannot all be restored, "
                  "so the run will not end exactly as an uninterrupted one", flush=True)
        set_rng_state(this_process(saved))
        progress = RunProgress(history=state["history"], best=state["best"],
                               start_epoch=state["epoch"] + 1, partial=state.get("partial"))
        if accelerator.is_main_process:  # a run killed after its checkpoint, before history
            self.write_history(progress.history)
        return progress
