"""Training: epochs over the training windows, validation loss per epoch, checkpoints, resume.

loss = caption cross-entropy + w_align * InfoNCE(image, text of each context frame)
                             + w_next  * InfoNCE(predicted next frame, true next frame)

Runs unchanged on one CPU, one GPU, or many processes through Hugging Face Accelerate
(``accelerate launch`` or ``torchrun``: Accelerate reads the process group from the
environment). Only the main process writes the run folder and decides whether it may (one
answer for every process, see :mod:`cmar.processes`); it also builds the data caches first,
while the others wait and then read them. Each epoch's data order comes from (seed, epoch)
alone, and ``last.pt`` holds the optimiser, scheduler, gradient-scaler and random states (those
of every process), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from cmar.config import LOSS_TERMS, Config, load_config, save_config, selectable_keys
from cmar.data import load_tokenizer, prepare_data, save_tokenizer
from cmar.devices import mps_or_cpu, resolve_device
from cmar.guards import StopRequest, check_first_step, largest_windows
from cmar.models import build_model, load_model, save_model
from cmar.models.hf.loading import tokenizers_for
from cmar.optim import parameter_groups
from cmar.plots import plot_loss_curves
from cmar.processes import decide_on_main, gather, main_process_first, rank

TERMS = LOSS_TERMS  # the loss terms of every run, then "ground" if asked


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _this_process(saved: list | dict) -> dict:
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


def _set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warmup_cosine(total_steps: int, warmup: float):
    """LR multiplier: linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Trains ``cfg`` into ``runs_dir/name`` (or continues it with ``resume=True``;
    ``overwrite=True`` deletes a run already there first)."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: bool = False,
                 progress: bool = True, overwrite: bool = False):
        self.run_dir = Path(run_dir or Path(cfg.runs_dir) / cfg.name)
        if resume:
            cfg = load_config(self.run_dir / "config.yaml")
        self.cfg, self.progress = cfg, progress
        self.terms = (*TERMS, *(("ground",) if cfg.model.w_ground > 0 else ()), "total")
        selectable = selectable_keys(cfg)  # a Config built in Python skips load_config
        if cfg.train.select not in selectable:
            raise ValueError(f"train.select must be one of {selectable}, got {cfg.train.select!r}")
        device = resolve_device(cfg.device)  # a device this machine lacks fails here, at once
        amp = cfg.train.amp and device.type == "cuda"
        bf16 = amp and torch.cuda.is_bf16_supported()
        # Several processes without CUDA (torchrun on CPUs): Accelerate needs cpu=True to join
        # the process group over gloo; otherwise every process would think it is alone. With
        # device: cpu it must not pick a GPU (CUDA or MPS) by itself.
        cpu_group = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1
        self.accelerator = Accelerator(mixed_precision="bf16" if bf16 else "fp16" if amp else "no",
                                       cpu=cpu_group or cfg.device == "cpu")
        self.main = self.accelerator.is_main_process
        decide_on_main(lambda: self._check_run_dir(resume, overwrite))
        seed_everything(cfg.seed)
        # the caption tokenizer: the run's own on resume; else a pretrained decoder's, or None
        # (a BPE is trained on the training captions)
        tokenizer = load_tokenizer(self.run_dir / "tokenizer") if resume else None
        with main_process_first():  # the main process builds the caches, the others read them
            self.data = prepare_data(cfg.data, splits=("train", "validation"),
                                     progress=progress and self.main,
                                     boxes=cfg.model.w_ground > 0,
                                     **tokenizers_for(cfg.model, tokenizer))
            self.tokenizer = self.data.tokenizer
            self.model = build_model(cfg.model, self.tokenizer, cfg.data)
            if self.accelerator.device.type == "mps" and \
                    mps_or_cpu(self.model, self._probe_step).type == "cpu":
                # Accelerate's device is fixed once chosen: start it again on the CPU (MPS
                # runs one process, so no process group is lost)
                AcceleratorState._reset_state(reset_partial_state=True)
                self.accelerator = Accelerator(mixed_precision="no", cpu=True)
            if cfg.model.freeze_image_encoder:
                from cmar.models.feature_cache import attach_feature_cache

                attach_feature_cache(self.data, self.model,
                                     Path(cfg.data.cache_dir) / "features",
                                     device=self.accelerator.device,
                                     progress=progress and self.main)
        # Batches per epoch over all processes: Accelerate steps a prepared scheduler once per
        # process at every optimiser step, so the schedule is written for one process.
        batches = math.ceil(len(self.data.datasets["train"]) / cfg.data.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accelerator.num_processes)
        optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg.train.weight_decay),
                                      lr=cfg.train.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(batches * cfg.train.epochs, cfg.train.warmup))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.model, optimizer, scheduler)
        self.history: list[dict] = []
        self.best = float("inf")
        self.start_epoch = 1
        self.partial: dict | None = None  # an epoch stopped part-way, to finish first
        self.stop = StopRequest(announce=self.main)
        if resume:
            self._restore()
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")
            save_config(cfg, self.run_dir / "config.yaml")  # last: marks a resumable folder

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        """On the main process only (see :func:`cmar.processes.decide_on_main`): delete the
        run folder if asked, refuse to train over a run already there."""
        if overwrite and not resume:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if not resume and (self.run_dir / "history.json").exists():
            raise FileExistsError(f"{self.run_dir} holds a run already: continue it with "
                                  "--resume, or pick another name with --set name=...")

    def _probe_step(self, model, device: torch.device) -> None:
        """One training step on two windows on ``device``, leaving no trace (see
        :func:`cmar.devices.mps_or_cpu`: an op missing there raises NotImplementedError)."""
        dataset = self.data.datasets["train"]
        collate = self.data.loader("train", shuffle=False, num_workers=0).collate_fn
        batch = collate([dataset[i] for i in range(min(2, len(dataset)))])
        check_first_step(model.to(device), lambda b: self._losses(b)["total"], batch.to(device),
                         "data.batch_size")

    # -- one epoch --------------------------------------------------------------------------
    def _loader(self, split: str, epoch: int = 0):
        seed = self.cfg.seed * 10_000 + epoch  # the order depends on (seed, epoch) only
        loader = self.data.loader(split, shuffle=split == "train", seed=seed)
        return self.accelerator.prepare_data_loader(loader)

    def _losses(self, batch) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        t = self.cfg.train
        losses = dict(out.losses)
        losses["total"] = (losses["caption"] + t.w_align * losses["align"]
                           + t.w_next * losses["next"])
        if "ground" in self.terms:
            losses["total"] = losses["total"] + self.cfg.model.w_ground * losses["ground"]
        return losses

    def _stop_requested(self) -> bool:
        """Whether any process got Ctrl-C or SIGTERM (all processes must stop at one step)."""
        flag = self.stop.requested
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor(
                [float(flag)], device=self.accelerator.device), reduction="sum").item())
        return flag

    def _train_epoch(self, epoch: int) -> dict:
        """One epoch. The loss terms stay on the device; every ``train.log_every`` steps (and
        at the end) they come to the host in one transfer, are checked for NaN and added up,
        and several processes agree on whether to stop (one collective)."""
        self.model.train()
        sums = {term: 0.0 for term in self.terms}
        seen, seen_last, steps, earlier = 0, 0, 0, 0.0
        loader = self._loader("train", epoch)
        if self.partial is not None and self.partial["epoch"] == epoch:
            # finish an epoch stopped part-way: the order depends on (seed, epoch) only, so the
            # sampler skips the batches it had done (without loading them); then take back its
            # sums, windows and random state
            part, self.partial = self.partial, None
            loader = self.accelerator.skip_first_batches(loader, part["steps"])
            steps, earlier, seen_last = part["steps"], part["seconds"], part.get("seen_last", 0)
            sums, seen = _this_process(part["sums"]), _this_process(part["seen"])
            _set_rng_state(_this_process(part["rng"]))
        start = time.perf_counter() - earlier
        bar = tqdm(loader, desc=f"epoch {epoch}/{self.cfg.train.epochs}", initial=steps,
                   total=self.steps_per_epoch, disable=not (self.progress and self.main),
                   leave=False)
        alone = self.accelerator.num_processes == 1
        pending: list[torch.Tensor] = []  # (terms,) per step since the last sync, on the device
        for step, batch in enumerate(bar, start=steps + 1):
            losses = self._losses(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(losses["total"])
            if self.cfg.train.grad_clip > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            pending.append(torch.stack([losses[term].detach() for term in sums]))
            steps += 1
            last = self.accelerator.gradient_state.end_of_dataloader
            if last and not alone:
                # the last batch may repeat windows to even out the processes: count it once
                seen_last = int(self.accelerator.gather_for_metrics(
                    torch.ones(len(batch), device=self.accelerator.device)).sum().item())
            else:
                seen += len(batch)
            if not (last or steps % self.cfg.train.log_every == 0
                    or (alone and self.stop.requested)):
                continue
            self._add_pending(pending, sums, epoch, step, bar)
            pending = []
            if self._stop_requested():
                bar.close()
                self._save(epoch - 1, improved=False, partial={
                    "epoch": epoch, "steps": steps, "sums": gather(sums), "seen": gather(seen),
                    "seen_last": seen_last, "seconds": time.perf_counter() - start,
                    "rng": gather(_rng_state())})
                raise KeyboardInterrupt
        seconds = time.perf_counter() - start
        totals = self._sum_over_processes([*sums.values(), steps, seen])
        seen = int(totals[-1]) + seen_last
        means = {term: value / totals[-2] for term, value in zip(sums, totals, strict=False)}
        return {**{f"train_{k}": v for k, v in means.items()}, "windows_seen": seen,
                "train_seconds": round(seconds, 2), "windows_per_s": round(seen / seconds, 1),
                "lr": self.scheduler.get_last_lr()[0]}

    def _add_pending(self, pending: list[torch.Tensor], sums: dict, epoch: int, step: int,
                     bar) -> None:
        """Bring the loss terms of the steps ``step - len(pending) + 1 .. step`` to the host
        (one transfer), stop on a NaN or infinite one naming its step, and add them up."""
        rows = torch.stack(pending).double().cpu().tolist()  # (steps, terms)
        first = step - len(rows) + 1
        for offset, row in enumerate(rows):
            if not all(math.isfinite(value) for value in row):
                at = first + offset
                raise FloatingPointError(
                    f"loss is {row[-1]} at epoch {epoch}, step {at} (global step "
                    f"{(epoch - 1) * self.steps_per_epoch + at}); terms: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in zip(sums, row, strict=True))
                    + ". Lower train.lr (or a loss weight: train.w_align, train.w_next, "
                    "model.w_ground), or check the input data.")
            for term, value in zip(sums, row, strict=True):
                sums[term] += value
        bar.set_postfix(loss=f"{rows[-1][-1]:.3f}")

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (one collective; itself in one process)."""
        if self.accelerator.num_processes == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    @torch.no_grad()
    def validate(self) -> dict:
        """Every loss term over the whole validation split: the mean of the per-batch values,
        as in training (brought to the host once)."""
        self.model.eval()
        terms = self.terms
        rows = [torch.stack([losses[term] for term in terms])
                for losses in map(self._losses, self._loader("validation"))]
        values = torch.stack(rows).double().sum(0).tolist() if rows else [0.0] * len(terms)
        totals = self._sum_over_processes([*values, len(rows)])
        return {f"val_{term}": total / totals[-1]
                for term, total in zip(terms, totals, strict=False)}

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train to ``train.epochs`` (or only ``stop_after`` more epochs, for tests of resume).

        Returns the history: one dict per epoch.
        """
        end = self.cfg.train.epochs
        if stop_after is not None:
            end = min(end, self.start_epoch + stop_after - 1)
        if self.start_epoch <= end:
            self._check_memory()
        with self.stop:
            for epoch in range(self.start_epoch, end + 1):
                try:
                    row = {"epoch": epoch, **self._train_epoch(epoch), **self.validate()}
                except KeyboardInterrupt:
                    # Stopped by a signal: last.pt holds this epoch's steps so far with every
                    # random state. Stopped harder: last.pt holds the previous epoch's end, and
                    # resuming redoes this epoch. Either way the resumed run ends with the
                    # weights of an uninterrupted one.
                    if self.main:
                        print(f"\ninterrupted in epoch {epoch}; continue with: cmar train "
                              f"--resume {self.run_dir}", flush=True)
                    raise
                if self._end_epoch(epoch, row):
                    break
        self.accelerator.wait_for_everyone()
        return self.history

    def _check_memory(self) -> None:
        """One step on the largest batch before the first epoch (see cmar.guards)."""
        dataset = self.data.datasets["train"]
        collate = self.data.loader("train", shuffle=False, num_workers=0).collate_fn
        batch = collate([dataset[i] for i in largest_windows(dataset, self.cfg.data.batch_size)])
        d, m = self.cfg.data, self.cfg.model
        check_first_step(self.model, lambda b: self._losses(b)["total"],
                         batch.to(self.accelerator.device),
                         f"data.batch_size (now {d.batch_size}), data.image_size "
                         f"({d.image_size}) or model.d_model ({m.d_model})")

    def _end_epoch(self, epoch: int, row: dict) -> bool:
        """Record, checkpoint and print an epoch; True when early stopping ends the run."""
        patience = self.cfg.train.patience
        self.history.append(row)
        improved = row[self.cfg.train.select] < self.best
        if improved:
            self.best = row[self.cfg.train.select]
        self._save(epoch, improved)
        if self.main:
            shown = (k for k in row if k.startswith(("epoch", "train_", "val_")))
            print(" ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float)
                           else f"{k}={row[k]}" for k in shown), flush=True)
        # epochs since the best one, counted from the history so a resumed run agrees
        select = [r[self.cfg.train.select] for r in self.history]
        waited = len(select) - 1 - select.index(min(select))
        if patience and waited >= patience:
            if self.main:
                print(f"early stop: {self.cfg.train.select} did not improve for {patience} "
                      "epochs")
            return True
        return False

    def _save(self, epoch: int, improved: bool, partial: dict | None = None) -> None:
        """Checkpoint after ``epoch`` complete epochs (and ``partial``: steps of the next)."""
        self.accelerator.wait_for_everyone()
        rng = gather(_rng_state())  # every process's, in rank order
        if not self.main:
            return
        model = self.accelerator.unwrap_model(self.model)
        # best.pt before last.pt: a run killed between the two redoes this epoch on resume and
        # writes best.pt again, instead of trusting a last.pt whose best was never saved
        if improved and partial is None:
            save_model(model, self.run_dir / "best.pt",
                       extra={"epoch": epoch, self.cfg.train.select: self.best},
                       frozen_weights=self.cfg.train.save_frozen_weights)
        state = {"epoch": epoch, "best": self.best, "history": self.history,
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng,
                 "partial": partial}
        if self.accelerator.scaler is not None:  # fp16: the loss scale it has learned
            state["scaler"] = self.accelerator.scaler.state_dict()
        save_model(model, self.run_dir / "last.pt", extra=state, keep_previous=True,
                   frozen_weights=self.cfg.train.save_frozen_weights)
        if partial is None:
            self._write_history()

    def _write_history(self) -> None:
        """history.json and the loss curves, from the history the checkpoint holds."""
        (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=2))
        if self.history:
            plot_loss_curves(self.history, self.run_dir / "loss_curves.png")

    def _pick_checkpoint(self, loaded: list) -> Path | None:
        """On the main process only: the checkpoint to resume from (``last.pt``, or
        ``last.pt.prev`` when ``last.pt`` cannot be read), or None before the first one.
        What it read is left in ``loaded``, so the main process does not read it twice."""
        from cmar.models.checkpoint import CheckpointError

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

    def _restore(self) -> None:
        loaded: list = []
        path = decide_on_main(lambda: self._pick_checkpoint(loaded))  # one choice for all
        if path is None:
            return
        model, state = loaded[0] if loaded else load_model(path)
        self.accelerator.unwrap_model(self.model).load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.history, self.best = state["history"], state["best"]
        self.start_epoch = state["epoch"] + 1
        self.partial = state.get("partial")
        saved = state["rng"]
        if self.main and isinstance(saved, list) and len(saved) != self.accelerator.num_processes:
            print(f"warning: {path} was written by {len(saved)} processes, resumed by "
                  f"{self.accelerator.num_processes}: the random states cannot all be "
                  "restored, so the run will not end exactly as an uninterrupted one",
                  flush=True)
        _set_rng_state(_this_process(saved))
        if self.main:  # a run killed after its checkpoint but before history.json
            self._write_history()


def train(cfg: Config, resume_dir: str | Path | None = None, progress: bool = True,
          overwrite: bool = False) -> Path:
    """Train (or resume) a run; returns its folder. ``overwrite`` deletes a run already in the
    folder first (on the main process, before any process reads it)."""
    trainer = Trainer(cfg, run_dir=resume_dir, resume=resume_dir is not None, progress=progress,
                      overwrite=overwrite)
    trainer.fit()
    return trainer.run_dir
