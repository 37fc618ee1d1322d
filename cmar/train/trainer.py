"""Training: epochs over the training windows, the validation loss per epoch, checkpoints.

loss = caption cross-entropy + w_align * InfoNCE(image, text of each context frame)
                             + w_next  * InfoNCE(predicted next frame, true next frame)
                             (+ w_ground * grounding loss, when asked)
                             (+ w_regions * dense next-frame loss, when asked)

Training windows may lose some context captions first (``train.caption_dropout``,
``train.word_dropout``: :mod:`cmar.train.caption_dropout`), and parts may learn at their own
rates (``train.lr_groups``, ``train.frozen_epochs``: :mod:`cmar.train.optim`).

:func:`train_step` is one optimiser step; :class:`Trainer` runs it over the epochs. What a
resume needs lives beside it (:mod:`cmar.train.checkpoints`), as do the epoch's bookkeeping
(:mod:`cmar.train.tally`), the optimiser (:mod:`cmar.train.optim`), the device and process
group (:mod:`cmar.train.launch`) and the guards (:mod:`cmar.train.guards`: a graceful stop on
Ctrl-C or SIGTERM, a memory check before the first epoch).

Runs unchanged on one CPU, one GPU, or many processes through Hugging Face Accelerate. Only
the main process writes the run folder; it also builds the data caches first, while the others
wait and then read them.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cmar.config import Config, load_config, save_config, selectable_keys
from cmar.data import load_tokenizer, prepare_data, save_tokenizer
from cmar.evaluation.inputs import context_unk_id
from cmar.models import build_model
from cmar.models.hf.loading import tokenizers_for
from cmar.processes import decide_on_main, gather, main_process_first
from cmar.settings import LOSS_TERMS, loss_terms_of
from cmar.train.caption_dropout import drop_captions
from cmar.train.checkpoints import (
    Checkpoints,
    RunProgress,
    rng_state,
    seed_everything,
    set_rng_state,
    this_process,
)
from cmar.train.guards import StopRequest, check_first_step, largest_windows
from cmar.train.launch import fall_back_from_mps, make_accelerator
from cmar.train.optim import make_optimizer
from cmar.train.tally import EpochTally, sum_over_processes

TERMS = LOSS_TERMS  # the loss terms of every run; "ground" and "regions" where asked
DATA_RECORD = "data.json"  # what the run learns from: see write_data_record


def loss_terms(model, batch, cfg: Config) -> dict[str, torch.Tensor]:
    """The model's loss terms on ``batch`` (scalars) and their weighted sum, ``total``."""
    losses = dict(model(batch).losses)  # caption, align, next (ground, regions, describe,
    #                                     look_ahead, move)
    t, m = cfg.train, cfg.model
    losses["total"] = losses["caption"] + t.w_align * losses["align"] + t.w_next * losses["next"]
    for term, weight in (("ground", m.w_ground), ("regions", m.w_regions),
                         ("describe", m.w_describe), ("look_ahead", m.w_look_ahead),
                         ("move", m.w_move)):
        if term in losses and weight > 0:
            losses["total"] = losses["total"] + weight * losses[term]
    return losses


def train_step(model, batch, optimizer, scheduler, cfg: Config, accelerator) -> dict:
    """One optimiser step on ``batch``; returns its loss terms (still on the device)."""
    losses = loss_terms(model, batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(losses["total"])  # loss.backward(), scaled under fp16
    if cfg.train.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    scheduler.step()  # the learning rate of the next step
    return losses


def write_data_record(data, run_dir: Path) -> None:
    """``data.json`` in the run folder: the fingerprint of the stories the run learns from
    (:meth:`cmar.data.StoryData.fingerprint`) and each split's counts, for
    :func:`cmar.experiment.provenance`."""
    splits = tuple(data.stories)
    record = {"fingerprint": data.fingerprint(splits), "fingerprint of": list(splits),
              "splits": {split: {"stories": len(data.stories[split]),
                                 "windows": len(data.datasets[split])} for split in splits}}
    (run_dir / DATA_RECORD).write_text(json.dumps(record, indent=2))


class Trainer:
    """Trains ``cfg`` into ``runs_dir/name`` (or continues it with ``resume=True``;
    ``overwrite=True`` deletes a run already there first)."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: bool = False,
                 progress: bool = True, overwrite: bool = False):
        self.run_dir = Path(run_dir or Path(cfg.runs_dir) / cfg.name)
        if resume:
            cfg = load_config(self.run_dir / "config.yaml")
        self.cfg, self.progress = cfg, progress
        self.terms = loss_terms_of(cfg)
        selectable = selectable_keys(cfg)  # a Config built in Python skips load_config
        if cfg.train.select not in selectable:
            raise ValueError(f"train.select must be one of {selectable}, got {cfg.train.select!r}")
        self.accelerator = make_accelerator(cfg)
        self.main = self.accelerator.is_main_process
        decide_on_main(lambda: self._check_run_dir(resume, overwrite))
        seed_everything(cfg.seed)
        self._build(tokenizer=load_tokenizer(self.run_dir / "tokenizer") if resume else None)
        # Batches per epoch over all processes: Accelerate steps a prepared scheduler once per
        # process at every optimiser step, so the schedule is written for one process.
        batches = math.ceil(len(self.data.datasets["train"]) / cfg.data.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accelerator.num_processes)
        optimizer, scheduler = make_optimizer(self.model, cfg.train, batches * cfg.train.epochs,
                                              steps_per_epoch=batches)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.model, optimizer, scheduler)
        self.checkpoints = Checkpoints(self.run_dir, self.accelerator, cfg.train.select,
                                       cfg.train.save_frozen_weights)
        self.stop = StopRequest(announce=self.main)
        self.state = RunProgress()
        if resume:
            self.state = self.checkpoints.restore(self.model, self.optimizer, self.scheduler)
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")
            write_data_record(self.data, self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")  # last: marks a resumable folder

    def _build(self, tokenizer) -> None:
        """The data and the model. ``tokenizer``: the run's own on resume; else None (a
        pretrained decoder's own, or a BPE trained on the training captions)."""
        cfg = self.cfg
        with main_process_first():  # the main process builds the caches, the others read them
            self.data = prepare_data(cfg.data, splits=("train", "validation"),
                                     progress=self.progress and self.main,
                                     boxes=cfg.model.w_ground > 0,
                                     every_mention=cfg.model.ground_mentions == "all",
                                     describe=(cfg.model.describe_entities
                                               if cfg.model.w_describe > 0 else None),
                                     moves=cfg.model.look_ahead and (cfg.model.w_look_ahead > 0
                                                                     or cfg.model.w_move > 0),
                                     **tokenizers_for(cfg.model, tokenizer))
            self.tokenizer = self.data.tokenizer
            self.model = build_model(cfg.model, self.tokenizer, cfg.data)
            self.accelerator = fall_back_from_mps(self.accelerator, self.model, self._probe_step)
            if cfg.model.freeze_image_encoder:
                from cmar.models.feature_cache import attach_feature_cache

                attach_feature_cache(self.data, self.model,
                                     Path(cfg.data.cache_dir) / "features",
                                     device=self.accelerator.device,
                                     progress=self.progress and self.main)

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        """On the main process only (see :func:`cmar.processes.decide_on_main`): delete the
        run folder if asked, refuse to train over a run already there."""
        if overwrite and not resume:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if not resume and (self.run_dir / "history.json").exists():
            raise FileExistsError(f"{self.run_dir} holds a run already: continue it with "
                                  "--resume, or pick another name with --set name=...")

    def _losses(self, batch) -> dict[str, torch.Tensor]:
        return loss_terms(self.model, batch, self.cfg)

    def _first_step_check(self, model, batch, settings: str) -> None:
        """One training step on ``batch`` leaving no trace (see :mod:`cmar.train.guards`)."""
        check_first_step(model, lambda b: loss_terms(model, b, self.cfg)["total"], batch,
                         settings)

    def _probe_step(self, model, device: torch.device) -> None:
        """One step on two windows on ``device`` (an op missing there raises
        NotImplementedError: see :func:`cmar.devices.mps_or_cpu`)."""
        dataset = self.data.datasets["train"]
        collate = self.data.loader("train", shuffle=False, num_workers=0).collate_fn
        batch = collate([dataset[i] for i in range(min(2, len(dataset)))])
        self._first_step_check(model.to(device), batch.to(device), "data.batch_size")

    def _check_memory(self) -> None:
        """One step on the largest batch before the first epoch (see cmar.train.guards)."""
        dataset = self.data.datasets["train"]
        collate = self.data.loader("train", shuffle=False, num_workers=0).collate_fn
        batch = collate([dataset[i] for i in largest_windows(dataset, self.cfg.data.batch_size)])
        d, m = self.cfg.data, self.cfg.model
        self._first_step_check(self.model, batch.to(self.accelerator.device),
                               f"data.batch_size (now {d.batch_size}), data.image_size "
                               f"({d.image_size}) or model.d_model ({m.d_model})")

    def _loader(self, split: str, epoch: int = 0):
        seed = self.cfg.seed * 10_000 + epoch  # the order depends on (seed, epoch) only
        loader = self.data.loader(split, shuffle=split == "train", seed=seed)
        return self.accelerator.prepare_data_loader(loader)

    # -- one epoch --------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict:
        """One epoch of :func:`train_step`. Every ``train.log_every`` steps the loss terms come
        to the host (see :class:`EpochTally`) and the processes agree on whether to stop."""
        self.model.train()
        tally = EpochTally(self.terms, self.accelerator, self.steps_per_epoch)
        loader, steps, earlier = self._loader("train", epoch), 0, 0.0
        part = self.state.partial
        if part is not None and part["epoch"] == epoch:
            # finish an epoch stopped part-way: the order depends on (seed, epoch) only, so the
            # sampler skips the batches it had done (without loading them)
            self.state.partial = None
            loader = self.accelerator.skip_first_batches(loader, part["steps"])
            steps, earlier = part["steps"], part["seconds"]
            tally.restore(part, this_process)
            set_rng_state(this_process(part["rng"]))
        start = time.perf_counter() - earlier
        bar = tqdm(loader, desc=f"epoch {epoch}/{self.cfg.train.epochs}", initial=steps,
                   total=self.steps_per_epoch, disable=not (self.progress and self.main),
                   leave=False)
        alone = self.accelerator.num_processes == 1
        t, unk = self.cfg.train, context_unk_id(self.data.context_tokenizer)
        for step, batch in enumerate(bar, start=steps + 1):
            if t.caption_dropout > 0 or t.word_dropout > 0:
                batch = drop_captions(batch, unk, t.caption_dropout, t.word_dropout)
            losses = train_step(self.model, batch, self.optimizer, self.scheduler, self.cfg,
                                self.accelerator)
            steps += 1
            last = tally.add(losses, batch)
            if last or steps % self.cfg.train.log_every == 0 or (alone and self.stop.requested):
                bar.set_postfix(loss=f"{tally.sync(epoch, step):.3f}")
                if self._stop_requested():
                    bar.close()
                    self._save(epoch - 1, improved=False, partial={
                        "epoch": epoch, "steps": steps, **tally.state(gather),
                        "seconds": time.perf_counter() - start, "rng": gather(rng_state())})
                    raise KeyboardInterrupt
        seconds = time.perf_counter() - start
        means, seen = tally.means(steps)
        return {**{f"train_{k}": v for k, v in means.items()}, "windows_seen": seen,
                "train_seconds": round(seconds, 2), "windows_per_s": round(seen / seconds, 1),
                "lr": self.scheduler.get_last_lr()[0]}

    def _stop_requested(self) -> bool:
        """Whether any process got Ctrl-C or SIGTERM (all processes must stop at one step)."""
        flag = self.stop.requested
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor(
                [float(flag)], device=self.accelerator.device), reduction="sum").item())
        return flag

    @torch.no_grad()
    def validate(self) -> dict:
        """Every loss term over the whole validation split: the mean of the per-batch values,
        as in training (brought to the host once)."""
        self.model.eval()
        rows = [torch.stack([losses[term] for term in self.terms])
                for losses in map(self._losses, self._loader("validation"))]
        values = torch.stack(rows).double().sum(0).tolist() if rows else [0.0] * len(self.terms)
        totals = sum_over_processes(self.accelerator, [*values, len(rows)])
        return {f"val_{term}": total / totals[-1]
                for term, total in zip(self.terms, totals, strict=False)}

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train to ``train.epochs`` (or only ``stop_after`` more epochs, for tests of resume).

        Returns the history: one dict per epoch.
        """
        end = self.cfg.train.epochs
        if stop_after is not None:
            end = min(end, self.state.start_epoch + stop_after - 1)
        if self.state.start_epoch <= end:
            self._check_memory()
        with self.stop:
            for epoch in range(self.state.start_epoch, end + 1):
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

    @property
    def history(self) -> list[dict]:
        return self.state.history

    def _end_epoch(self, epoch: int, row: dict) -> bool:
        """Record, checkpoint and print an epoch; True when early stopping ends the run."""
        select, patience = self.cfg.train.select, self.cfg.train.patience
        self.history.append(row)
        improved = row[select] < self.state.best
        if improved:
            self.state.best = row[select]
        self._save(epoch, improved)
        if self.main:
            shown = (k for k in row if k.startswith(("epoch", "train_", "val_")))
            print(" ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float)
                           else f"{k}={row[k]}" for k in shown), flush=True)
        # epochs since the best one, counted from the history so a resumed run agrees
        values = [r[select] for r in self.history]
        waited = len(values) - 1 - values.index(min(values))
        if patience and waited >= patience:
            if self.main:
                print(f"early stop: {select} did not improve for {patience} epochs")
            return True
        return False

    def _save(self, epoch: int, improved: bool, partial: dict | None = None) -> None:
        self.checkpoints.save(self.model, self.optimizer, self.scheduler, self.state, epoch,
                              improved, partial)


def train(cfg: Config, resume_dir: str | Path | None = None, progress: bool = True,
          overwrite: bool = False) -> Path:
    """Train (or resume) a run; returns its folder. ``overwrite`` deletes a run already in the
    folder first (on the main process, before any process reads it)."""
    trainer = Trainer(cfg, run_dir=resume_dir, resume=resume_dir is not None, progress=progress,
                      overwrite=overwrite)
    trainer.fit()
    return trainer.run_dir
