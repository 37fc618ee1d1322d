"""Killed runs resume to the same weights; damaged checkpoints are detected, not trusted."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch
from test_training import smoke

import cmar.train.trainer
from cmar.models import load_model
from cmar.models.checkpoint import CheckpointError
from cmar.train import Trainer


def weights(path):
    return load_model(path)[0].state_dict()


# Trials per signal: 2 in make test; CMAR_KILL_TRIALS=N runs N (RELIABILITY.md's counts).
TRIALS = int(os.environ.get("CMAR_KILL_TRIALS", "2"))
# tqdm's own environment overrides: redraw the bar at every step, however fast, so the epoch
# bar on stderr reports each step as it ends (through a pipe tqdm redraws at most every 0.1 s)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
BAR = re.compile(rb"epoch (\d+)/(\d+):[^|]*\|[^|]*\|\s*(\d+)/(\d+)")  # "epoch 2/3: ..| 5/11"


def _args(cache):
    return ["--config", "smoke", "--set", f"data.cache_dir={cache}", "--set", "train.epochs=3"]


def _bars(stderr: bytes) -> list[tuple[int, int, int, int]]:
    """(epoch, epochs, steps done in the epoch, steps per epoch) of each epoch bar drawn."""
    return [tuple(map(int, m.groups())) for m in BAR.finditer(stderr)]


class StepWatch:
    """Reads a training process's stderr as it comes (a thread of its own) and follows its
    epoch bar: ``step`` is the global step the run has reported done,
    (epoch - 1) * steps per epoch + steps done in the epoch."""

    def __init__(self, process):
        self.stderr, self.step, self.reached = b"", 0, threading.Event()
        self.target = None
        self.thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        while chunk := os.read(stream.fileno(), 65536):  # as it arrives: no wait for a newline
            seen = len(self.stderr)
            self.stderr += chunk
            bars = _bars(self.stderr[max(0, seen - 200):])  # a bar may span two chunks
            if bars:
                epoch, _, done, per_epoch = bars[-1]
                self.step = max(self.step, (epoch - 1) * per_epoch + done)
                if self.target is not None and self.step >= self.target:
                    self.reached.set()
        self.reached.set()  # the stream ended: the process has exited

    def wait_for(self, step: int, timeout: float) -> bool:
        """Whether the run reported ``step`` done within ``timeout`` seconds."""
        self.target = step
        if self.step >= step:
            return True
        self.reached.wait(timeout)
        return self.step >= step


@pytest.fixture(scope="module")
def uninterrupted(shapes_cache, tmp_path_factory):
    """The reference: the same command never interrupted, and its steps per epoch."""
    runs = tmp_path_factory.mktemp("whole")
    done = subprocess.run([sys.executable, "-m", "cmar", "train", *_args(shapes_cache),
                           "--set", f"runs_dir={runs}"], env=ENV, check=True,
                          capture_output=True, timeout=300)
    bars = _bars(done.stderr)
    assert bars, done.stderr[-2000:]
    epochs, steps_per_epoch = bars[-1][1], bars[-1][3]
    assert {(b[1], b[3]) for b in bars} == {(epochs, steps_per_epoch)}
    assert len(json.loads((runs / "smoke" / "history.json").read_text())) == epochs
    return runs / "smoke", epochs, steps_per_epoch


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGKILL", "SIGINT", "SIGTERM"])
@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_run_stopped_at_a_random_moment_resumes_to_the_uninterrupted_weights(
        signum, trial, uninterrupted, shapes_cache, tmp_path):
    """A real process sent SIGKILL (nothing saved: back to the last epoch's checkpoint) or
    Ctrl-C / SIGTERM (a checkpoint at the next step) once it reports a seeded random step of
    every epoch but the last (at least a whole epoch of work remains), then
    ``cmar train --resume``: the same weights and loss history as never stopping."""
    import random

    whole, epochs, steps_per_epoch = uninterrupted
    at = random.Random(f"{signum}-{trial}").randint(1, (epochs - 1) * steps_per_epoch)
    process = subprocess.Popen([sys.executable, "-m", "cmar", "train", *_args(shapes_cache),
                                "--set", f"runs_dir={tmp_path}"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch = StepWatch(process)
    try:
        reached = watch.wait_for(at, timeout=240)
        if reached:
            process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    watch.thread.join(timeout=30)
    out = process.stdout.read().decode()
    assert reached, (f"the run ended (exit {process.returncode}) at step {watch.step} before "
                     f"step {at}: {watch.stderr[-2000:].decode(errors='replace')}")
    run = tmp_path / "smoke"
    done = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() \
        else []
    assert len(done) < epochs, f"the signal at step {at} came after the last epoch"
    if signum == signal.SIGKILL:
        assert process.returncode == -signum
    else:  # a stop at the next step: last.pt holds the steps done so far
        assert process.returncode == 130 and "--resume" in out, (process.returncode, out)
        assert (run / "last.pt").exists()
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
