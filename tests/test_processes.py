"""Several processes (2 on the CPU, gloo) from an empty folder: each cache is built once, one run
folder is written, every window is seen once, every process agrees on the run folder, and a
stopped run resumes to the weights of an uninterrupted one with every process's random state.
"""

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
from accelerate.utils import InitProcessGroupKwargs
from test_training import smoke

import cmar.train.launch
from cmar.config import load_config
from cmar.data import prepare_data
from cmar.models import load_model
from cmar.processes import publish, temporary_path
from cmar.train import Trainer

# CPU processes (gloo) even where a GPU is visible: two processes cannot share one GPU
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "CUDA_VISIBLE_DEVICES": ""}
TINY = ["data.n_stories=24", "train.epochs=1"]  # 18 training stories, 58 windows
FROZEN = ["model.image_encoder=resnet18", "model.freeze_image_encoder=true",
          "data.image_size=64"]  # no pretrained weights: a ResNet made locally


def torchrun(*args, timeout=300):
    """``torchrun --standalone --nproc_per_node 2`` (a free port of its own) with ``args``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def sets(values):
    return [arg for value in values for arg in ("--set", value)]


def windows_of_one_process(cache, *extra):
    cfg = load_config("smoke", [f"data.cache_dir={cache}", *TINY, *extra])
    return len(prepare_data(cfg.data, splits=("train",), progress=False).datasets["train"])


def check_caches_built_once(cache, frozen):
    """One ShapeStories dataset, one frame file (and sizes file) per split, one feature file
    per split with a frozen encoder, and no temporary file left anywhere."""
    assert len(list((cache / "shapestories").iterdir())) == 1
    frames = sorted(p.name for p in (cache / "frames").iterdir())
    assert len(frames) == 4 and sum(name.endswith("-sizes.npy") for name in frames) == 2, frames
    features = sorted((cache / "features").glob("*")) if frozen else []
    assert len(features) == (2 if frozen else 0), features
    leftovers = [p for p in cache.rglob("*") if "partial" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("frozen", [False, True], ids=["small_cnn", "frozen_resnet18"])
def test_two_processes_from_an_empty_cache_build_each_cache_once(frozen, tmp_path):
    cache = tmp_path / "cache"  # does not exist: both processes start from nothing
    extra = FROZEN if frozen else []
    done = torchrun("-m", "cmar", "train", "--config", "smoke", *sets(
        [f"runs_dir={tmp_path / 'runs'}", f"data.cache_dir={cache}", *TINY, *extra]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["smoke"]
    check_caches_built_once(cache, frozen)
    history = json.loads((tmp_path / "runs" / "smoke" / "history.json").read_text())
    assert [row["windows_seen"] for row in history] == [windows_of_one_process(cache, *extra)]


def test_two_processes_agree_to_refuse_an_existing_run_folder(tmp_path):
    """Only the main process looks; both stop with its error, neither waits for the other."""
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "history.json").write_text("[]")
    done = torchrun("-m", "cmar", "train", "--config", "smoke", *sets(
        [f"runs_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", *TINY]), timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("holds a run already: continue it with --resume") == 2
    assert not (tmp_path / "cache").exists()  # refused before any data was made


HELPERS = """
import sys
from pathlib import Path

import torch.distributed as dist

from cmar.processes import decide_on_main, gather, main_process_first, rank

dist.init_process_group("gloo")
folder = Path(sys.argv[1])
answers = []
with main_process_first():  # the main process writes, the other finds it written
    if rank() == 0:
        (folder / "built").write_text("by the main process")
    else:
        answers.append((folder / "built").read_text())
answers.append(decide_on_main(lambda: f"decided by {rank()}"))
answers.append(gather(rank()))
try:
    with main_process_first():
        if rank() == 0:
            raise OSError("disk full")
        answers.append("the block ran after the main process failed")
except OSError as error:
    answers.append(f"{type(error).__name__}: {error}")
(folder / f"answers-{rank()}.json").write_text(__import__("json").dumps(answers))
dist.barrier()
dist.destroy_process_group()  # a process leaving with gloo's threads alive may abort (SIGABRT)
"""


def test_main_process_first_decide_on_main_and_gather_under_two_processes(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    main = json.loads((tmp_path / "answers-0.json").read_text())
    other = json.loads((tmp_path / "answers-1.json").read_text())
    assert main == ["decided by 0", [0, 1], "OSError: disk full"]
    assert other == ["by the main process", "decided by 0", [0, 1], "OSError: disk full"]



TIMEOUT = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cmar.config import load_config
from cmar.processes import main_process_first, rank
from cmar.train.launch import make_accelerator

make_accelerator(load_config("smoke", ["train.process_timeout=3"]))
with main_process_first():  # the other process waits here while the main one builds caches
    pass
gloo = dist.group.WORLD._get_backend(torch.device("cpu"))  # the group the waits go through
Path(sys.argv[1], f"timeout-{rank()}").write_text(str(gloo.options._timeout.total_seconds()))
dist.barrier()  # both done before either leaves: one leaving with gloo's threads alive may abort
dist.destroy_process_group()
"""


def test_two_processes_wait_for_each_other_as_long_as_train_process_timeout(tmp_path):
    """``train.process_timeout`` reaches the process group every wait goes through (the one
    in main_process_first too), not gloo's default 30 minutes (NCCL's 10)."""
    script = tmp_path / "timeout.py"
    script.write_text(TIMEOUT)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"timeout-{r}").read_text() for r in (0, 1)] == ["180.0", "180.0"]


def test_make_accelerator_passes_train_process_timeout(monkeypatch):
    made = {}
    monkeypatch.setattr(cmar.train.launch, "Accelerator", lambda **kwargs: made.update(kwargs))
    for minutes in (7, 120):
        cmar.train.launch.make_accelerator(load_config(
            "smoke", ["device=cpu", f"train.process_timeout={minutes}"]))
        [handler] = made["kwargs_handlers"]
        assert isinstance(handler, InitProcessGroupKwargs)
        # what Accelerate hands init_process_group (only what differs from its defaults)
        assert handler.to_kwargs()["timeout"] == timedelta(minutes=minutes)
    assert load_config("smoke").train.process_timeout == 120

RESUME = """
import sys
from pathlib import Path

import torch

from cmar.config import load_config
import cmar.train.trainer
from cmar.processes import rank
from cmar.train import Trainer

root = Path(sys.argv[1])


def trainer(name):
    cfg = load_config("smoke", [f"runs_dir={root / name}", f"data.cache_dir={root / 'cache'}",
                                "data.n_stories=24", "data.batch_size=8", "train.epochs=2",
                                "train.log_every=1"])  # processes agree to stop at any step
    made = Trainer(cfg, progress=False)
    torch.manual_seed(100 + rank())  # each process draws its own dropout masks from here on
    return made


trainer("whole").fit()
stopped = trainer("stopped")
calls = []
original = cmar.train.trainer.loss_terms


def losses(model, batch, cfg):  # the second process alone asks to stop, at step 2 of epoch 1
    calls.append(1)
    if rank() == 1 and len(calls) == 3:  # 1: the memory check before epoch 1
        stopped.stop.requested = True
    return original(model, batch, cfg)


cmar.train.trainer.loss_terms = losses
try:
    stopped.fit()
    raise SystemExit("the stop request was not honoured")
except KeyboardInterrupt:
    pass
at_stop = torch.get_rng_state()
if rank() == 0:  # the main process wrote last.pt before it raised (building a model to read
    from cmar.models import load_model  # it draws random numbers: after at_stop)

    partial = load_model(root / "stopped" / "smoke" / "last.pt")[1]["partial"]
    if partial["steps"] != 2:
        raise SystemExit(f"stopped after {partial['steps']} steps of epoch 1, not 2")
resumed = Trainer(None, run_dir=root / "stopped" / "smoke", resume=True, progress=False)
if not torch.equal(torch.get_rng_state(), at_stop):
    raise SystemExit(f"process {rank()} did not get its own random state back")
resumed.fit()
"""


def test_two_processes_stopped_mid_epoch_resume_to_the_uninterrupted_weights(tmp_path):
    """Every process's random state is saved and each gets its own back: stopped mid-epoch
    and resumed, two processes end with the weights and history of a run never stopped."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    done = torchrun(str(script), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    whole, stopped = (tmp_path / name / "smoke" for name in ("whole", "stopped"))
    _, state = load_model(stopped / "last.pt")
    states = state["rng"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    a, b = load_model(whole / "last.pt")[0].state_dict(), load_model(stopped / "last.pt")[0]
    assert all(torch.equal(a[k], v) for k, v in b.state_dict().items())
    drop = ("train_seconds", "windows_per_s")
    rows = [[{k: v for k, v in r.items() if k not in drop}
             for r in json.loads((run / "history.json").read_text())] for run in (whole, stopped)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


NOTEBOOK = """
import sys

from accelerate import notebook_launcher

import cmar.train
from cmar.config import load_config

folder, port = sys.argv[1], sys.argv[2]
cfg = load_config("smoke", [f"runs_dir={folder}/runs", f"data.cache_dir={folder}/cache",
                            "data.n_stories=24", "train.epochs=1"])
notebook_launcher(cmar.train.train, (cfg,), num_processes=2, use_port=port)
"""


def test_the_readme_notebook_launcher_recipe_with_two_processes(tmp_path):
    """The README's ``notebook_launcher(cmar.train.train, (cfg,), num_processes=2)``, in a fresh
    interpreter as in a fresh notebook kernel: Accelerate refuses to launch from a process that
    has made an Accelerator already (every Trainer in this test session does), and forking a
    process whose torch threads have run can hang."""
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(port)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launching training on 2 " in done.stdout
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["smoke"]
    check_caches_built_once(tmp_path / "cache", frozen=False)
    history = json.loads((tmp_path / "runs" / "smoke" / "history.json").read_text())
    assert [row["windows_seen"] for row in history] == [windows_of_one_process(tmp_path / "cache")]


class ScaledAccelerator(cmar.train.launch.Accelerator):
    """An Accelerator with a gradient scaler on the CPU, as fp16 on CUDA has one; its scale
    doubles every step, so a scaler restarted from scratch ends with another scale."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, growth_interval=1)


@pytest.fixture
def one_thread():
    """One torch thread, as each torchrun process has: on a busy 2-core machine two threads
    made these tiny epochs 100 times slower (0.2 s against 24 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_gradient_scaler_state_is_saved_and_resumed(shapes_cache, tmp_path, monkeypatch,
                                                        one_thread):
    monkeypatch.setattr(cmar.train.launch, "Accelerator", ScaledAccelerator)
    tiny = ("data.n_stories=24", "train.epochs=2")
    whole = Trainer(smoke(shapes_cache, tmp_path / "a", *tiny), progress=False)
    whole.fit()
    stopped = Trainer(smoke(shapes_cache, tmp_path / "b", *tiny), progress=False)
    stopped.fit(stop_after=1)
    saved = load_model(stopped.run_dir / "last.pt")[1]["scaler"]
    assert saved["scale"] == 2.0 ** (4 + stopped.steps_per_epoch)
    resumed = Trainer(None, run_dir=stopped.run_dir, resume=True, progress=False)
    assert resumed.accelerator.scaler.state_dict() == saved
    resumed.fit()
    assert resumed.accelerator.scaler.state_dict() == whole.accelerator.scaler.state_dict()
    a, b = (load_model(run / "last.pt")[0].state_dict() for run in (whole.run_dir,
                                                                     resumed.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_writers_of_one_cache_file_never_meet(tmp_path):
    """Without any process group: each writer gets its own temporary name, the rename is
    atomic, and a folder published second leaves the first one in place."""
    target = tmp_path / "features-abc.npy"
    first, second = temporary_path(target), temporary_path(target)
    assert first != second and first.suffix == ".npy" and first.parent == tmp_path
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    publish(first, target)
    publish(second, target)
    assert target.read_bytes() == b"two" and sorted(tmp_path.iterdir()) == [target]
    folder = tmp_path / "dataset"
    for content in ("first", "second"):
        work = temporary_path(folder)
        work.mkdir()
        (work / "data").write_text(content)
        publish(work, folder)
    assert (folder / "data").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", target.name]


def test_a_temporary_file_of_a_dead_process_is_cleared_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "frames-abc.npy"
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"frames-abc.partial-{host}-{dead}-0000aaaa.npy"
    live = tmp_path / f"frames-abc.partial-{host}-{os.getpid()}-0000bbbb.npy"
    elsewhere = tmp_path / f"frames-abc.partial-other-host-{dead}-0000cccc.npy"
    for path in (stale, live, elsewhere):
        path.write_bytes(b"half")
    temporary_path(target)
    assert not stale.exists() and live.exists() and elsewhere.exists()
