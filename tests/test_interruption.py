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

from cmar.models import load_model
from cmar.models.checkpoint import CheckpointError
from cmar.train import Trainer


def weights(path):
    return load_model(path)[0].state_dict()


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(shapes_cache, tmp_path):
    """A real process killed with SIGKILL during epoch 2 (after epoch 1's checkpoint), then
    resumed from the command line."""
    args = ["--config", "smoke", "--set", f"data.cache_dir={shapes_cache}",
            "--set", "train.epochs=3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "cmar", "train", *args, "--set", f"runs_dir={whole}"],
                   env=env, check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cmar", "train", *args,
                                "--set", f"runs_dir={killed}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "smoke" / "history.json"
    deadline = time.time() + 240
    while not history.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(json.loads(history.read_text())) < 3, "the run finished before it was killed"
    subprocess.run([sys.executable, "-m", "cmar", "train", "--resume", str(killed / "smoke")],
                   env=env, check=True, capture_output=True, timeout=300)
    a, b = weights(whole / "smoke" / "last.pt"), weights(killed / "smoke" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(history.read_text())[-1]["epoch"] == 3


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(shapes_cache, tmp_path):
    trainer = Trainer(smoke(shapes_cache, tmp_path, "train.epochs=3"), progress=False)
    trainer.fit(stop_after=2)
    run = trainer.run_dir
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt.*truncated or corrupt"):
        load_model(run / "last.pt")
    resumed = Trainer(None, run_dir=run, resume=True, progress=False)
    assert resumed.start_epoch == 2  # last.pt.prev holds epoch 1
