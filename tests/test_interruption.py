"""Killed runs resume to the same weights; damaged checkpoints are detected, not trusted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_training import smoke

import cmar.train.trainer
from cmar.models import load_model
from cmar.models.checkpoint import CheckpointError
from cmar.train import Trainer


def weights(path):
    return load_model(path)[0].state_dict()


# Trials per signal: 2 in make test; CMAR_KILL_TRIALS=20 gave RELIABILITY.md's counts.
TRIALS = int(os.environ.get("CMAR_KILL_TRIALS", "2"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _args(cache):
    return ["--config", "smoke", "--set", f"data.cache_dir={cache}", "--set", "train.epochs=3"]


@pytest.fixture(scope="module")
def uninterrupted(shapes_cache, tmp_path_factory):
    """The reference: the same command never interrupted, and how long it took."""
    runs = tmp_path_factory.mktemp("whole")
    subprocess.run([sys.executable, "-m", "cmar", "train", *_args(shapes_cache),
                    "--set", f"runs_dir={runs}"], env=ENV, check=True, capture_output=True,
                   timeout=300)
    run = runs / "smoke"
    # training time: from the run folder's creation (config.yaml) to its last history write
    return run, (run / "history.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGKILL", "SIGINT", "SIGTERM"])
@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_run_stopped_at_a_random_moment_resumes_to_the_uninterrupted_weights(
        signum, trial, uninterrupted, shapes_cache, tmp_path):
    """A real process sent SIGKILL (nothing saved: back to the last epoch's checkpoint) or
    Ctrl-C / SIGTERM (a checkpoint at the next step) at a seeded random moment of its run,
    then ``cmar train --resume``: the same weights and loss history as never stopping."""
    import random

    whole, duration = uninterrupted
    delay = random.Random(f"{signum}-{trial}").uniform(0.0, 0.9) * duration
    process = subprocess.Popen([sys.executable, "-m", "cmar", "train", *_args(shapes_cache),
                                "--set", f"runs_dir={tmp_path}"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    run = tmp_path / "smoke"
    deadline = time.time() + 240
    while not (run / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)  # a random moment of the training itself
    process.send_signal(signum)
    out, _ = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip(f"the run ended before the signal at {delay:.1f} s")
    epochs = len(json.loads((whole / "history.json").read_text()))
    done = (run / "history.json").exists() and \
        len(json.loads((run / "history.json").read_text())) == epochs
    if process.returncode == -signum and done:  # after the last epoch: no stop to handle
        pytest.skip(f"the signal at {delay:.1f} s came after the last epoch, while exiting")
    if signum != signal.SIGKILL and (run / "last.pt").exists():
        assert process.returncode == 130 and "--resume" in out
    resumed = subprocess.run([sys.executable, "-m", "cmar", "train", "--resume", str(run)],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("last.pt", "best.pt"):
        a, b = weights(whole / name), weights(run / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    drop = ("train_seconds", "windows_per_s")
    history = [{k: v for k, v in r.items() if k not in drop}
               for r in json.loads((run / "history.json").read_text())]
    reference = [{k: v for k, v in r.items() if k not in drop}
                 for r in json.loads((whole / "history.json").read_text())]
    assert history == reference


def test_ctrl_c_mid_epoch_saves_the_steps_done(shapes_cache, tmp_path, monkeypatch):
    """The graceful stop, in process: a stop request during epoch 2 leaves a checkpoint with
    epoch 1 complete and the steps of epoch 2 so far, and resuming finishes epoch 2 first."""
    import math

    trainer = Trainer(smoke(shapes_cache, tmp_path, "train.epochs=2"), progress=False)
    original = cmar.train.trainer.loss_terms
    calls = []
    val_batches = math.ceil(len(trainer.data.datasets["validation"]) / 16)
    # the memory check's step, epoch 1 and its validation, then 3 steps of epoch 2
    stop_at = 1 + trainer.steps_per_epoch + val_batches + 3

    def counting(model, batch, cfg):
        calls.append(1)
        if len(calls) == stop_at:
            trainer.stop.requested = True
        return original(model, batch, cfg)

    monkeypatch.setattr(cmar.train.trainer, "loss_terms", counting)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    _, state = load_model(trainer.run_dir / "last.pt")
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2
    assert state["partial"]["steps"] == 3
    resumed = Trainer(None, run_dir=trainer.run_dir, resume=True, progress=False)
    assert resumed.state.start_epoch == 2 and resumed.state.partial["steps"] == 3
    assert [r["epoch"] for r in resumed.fit()] == [1, 2]


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(shapes_cache, tmp_path):
    trainer = Trainer(smoke(shapes_cache, tmp_path, "train.epochs=3"), progress=False)
    trainer.fit(stop_after=2)
    run = trainer.run_dir
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt.*truncated or corrupt"):
        load_model(run / "last.pt")
    resumed = Trainer(None, run_dir=run, resume=True, progress=False)
    assert resumed.state.start_epoch == 2  # last.pt.prev holds epoch 1
