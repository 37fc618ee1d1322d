"""Training writes a complete run folder, resumes exactly, and stops loudly on NaN."""

import json
import shutil

import pytest
import torch
from PIL import Image

from cmar.cli import main
from cmar.config import load_config
from cmar.evaluation.run import evaluate_run
from cmar.models import StoryModel, load_model
from cmar.train import Trainer


def smoke(shapes_cache, tmp_path, *extra):
    return load_config("smoke", [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}",
                                 *extra])


@pytest.fixture(scope="module")
def trained_run(shapes_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    trainer = Trainer(smoke(shapes_cache, runs), progress=False)
    trainer.fit()
    return trainer


def test_smoke_run_writes_every_file(trained_run):
    run = trained_run.run_dir
    for name in ("config.yaml", "tokenizer/tokenizer.json", "best.pt", "last.pt",
                 "history.json", "loss_curves.png"):
        assert (run / name).exists(), name
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for key in ("train_caption", "train_align", "train_next", "val_caption", "val_total"):
        assert all(isinstance(row[key], float) for row in history)
    assert history[0]["windows_seen"] == len(trained_run.data.datasets["train"])
    with Image.open(run / "loss_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    assert history[-1]["train_caption"] < history[0]["train_caption"]


@pytest.fixture(scope="module")
def evaluated(trained_run):
    return evaluate_run(trained_run.run_dir, progress=False)


def test_evaluation_scores_the_whole_split_beside_the_floors(trained_run, evaluated):
    metrics = evaluated
    run = trained_run.run_dir
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == metrics["windows"] > 0
    assert set(json.loads(lines[0])) == {"window_id", "context", "reference", "prediction"}
    systems = set(metrics["captions"])
    assert {"model", "copy last caption", "most frequent caption", "nearest neighbour (TF-IDF)",
            "oracle (ceiling)"} <= systems
    assert metrics["captions"]["oracle (ceiling)"]["BLEU-4"] == pytest.approx(1.0)
    for group in ("next-frame retrieval", "next-caption retrieval", "image-text alignment",
                  "context sensitivity", "grounding"):
        assert group in metrics["alignment"]
    report = (run / "report.md").read_text()
    assert "| copy last caption |" in report and "prediction:" in report
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"


def test_evaluation_reports_intervals_names_lengths_and_image_use(trained_run, evaluated):
    metrics = evaluated
    model = metrics["captions"]["model"]
    low, high = model["95% interval"]["BLEU-4"]
    assert low <= model["BLEU-4"] <= high
    low, high = model["95% interval"]["CIDEr"]
    assert low <= model["CIDEr"] <= high
    # ShapeStories names every actor with a <gdo charN> tag: the ceiling names them all
    assert metrics["names"]["oracle (ceiling)"]["F1"] == pytest.approx(1.0)
    assert metrics["names"]["model"]["names in references"] == \
        metrics["names"]["oracle (ceiling)"]["names predicted"] > 0
    lengths = metrics["length and diversity"]
    assert lengths["most frequent caption"]["most repeated share"] == 1.0
    assert lengths["oracle (ceiling)"]["words per prediction"] == pytest.approx(
        lengths["oracle (ceiling)"]["words per reference"])
    use = metrics["image use"]
    assert use["place slot chance"] == pytest.approx(1 / 3)  # 4 landmarks: 3 to face
    assert use["BLEU-4 drop"] == pytest.approx(
        use["BLEU-4"] - use["BLEU-4, context images blanked"])
    assert metrics["references"]["cut"] == 0  # ShapeStories captions fit max_tokens
    report = (trained_run.run_dir / "report.md").read_text()
    assert "CIDEr-D [95%]" in report and "## Image use" in report and "names F1" in report


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_cmar_evaluate_flags_ask_for_meteor_and_the_ptb_tokenizer(trained_run, capsys):
    # after the tests that read this run's report: these flags rewrite it
    run = str(trained_run.run_dir)
    assert main(["evaluate", run, "--meteor", "--tokenizer", "ptb", "--bootstrap", "0"]) == 0
    metrics = json.loads((trained_run.run_dir / "metrics.json").read_text())
    model = metrics["captions"]["model"]
    assert metrics["metric tokenizer"] == "ptb" and 0.0 < model["METEOR"] <= 1.0
    assert metrics["captions"]["oracle (ceiling)"]["METEOR"] == pytest.approx(1.0, abs=1e-3)
    assert "95% interval" not in model  # --bootstrap 0: no intervals
    out = capsys.readouterr().out
    assert "| METEOR |" in out and "ptb tokenizer" in out


def test_cmar_evaluate_names_a_missing_run_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "no run folder at" in capsys.readouterr().err


def test_resume_gives_the_weights_of_an_uninterrupted_run(shapes_cache, tmp_path):
    whole = Trainer(smoke(shapes_cache, tmp_path / "a"), progress=False)
    whole.fit()
    interrupted = Trainer(smoke(shapes_cache, tmp_path / "b"), progress=False)
    interrupted.fit(stop_after=1)
    del interrupted
    resumed = Trainer(None, run_dir=tmp_path / "b" / "smoke", resume=True, progress=False)
    assert resumed.state.start_epoch == 2
    resumed.fit()
    a, _ = load_model(tmp_path / "a" / "smoke" / "last.pt")
    b, _ = load_model(tmp_path / "b" / "smoke" / "last.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    history = json.loads((tmp_path / "b" / "smoke" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]


def test_nan_loss_stops_with_the_step(shapes_cache, tmp_path, monkeypatch):
    real = StoryModel.forward
    calls = []

    def poisoned(self, batch, return_attention=False):
        out = real(self, batch, return_attention)
        calls.append(1)
        if len(calls) == 1 + 3:  # 1: the memory check's step before epoch 1
            out.losses["caption"] = out.losses["caption"] * float("nan")
        return out

    monkeypatch.setattr(StoryModel, "forward", poisoned)
    trainer = Trainer(smoke(shapes_cache, tmp_path), progress=False)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 3"):
        trainer.fit()


def test_an_existing_run_is_not_overwritten_and_bad_values_are_named(shapes_cache, tmp_path,
                                                                     capsys):
    args = ["train", "--config", "smoke", "--set", f"data.cache_dir={shapes_cache}",
            "--set", f"runs_dir={tmp_path}", "--set", "train.epochs=1"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main([*args, "--set", "train.select=val_bleu"]) == 2
    assert "train.select must be one of" in capsys.readouterr().err


def test_two_cpu_processes_under_torchrun_write_one_run_and_see_every_window(shapes_cache,
                                                                            tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "-m", "cmar", "train", "--config", "smoke", "--set", f"runs_dir={tmp_path}",
               "--set", f"data.cache_dir={shapes_cache}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["smoke"]
    history = json.loads((tmp_path / "smoke" / "history.json").read_text())
    single = load_config("smoke", [f"data.cache_dir={shapes_cache}"])
    from cmar.data import prepare_data

    windows = len(prepare_data(single.data, splits=("train",), progress=False).datasets["train"])
    assert [row["windows_seen"] for row in history] == [windows, windows]
    assert history[1]["train_caption"] < history[0]["train_caption"]  # it learned, lr > 0


def test_a_resumed_epoch_skips_the_done_batches_without_loading_them(shapes_cache, tmp_path,
                                                                     monkeypatch):
    from cmar.data.batches import WindowDataset

    cfg = smoke(shapes_cache, tmp_path, "train.epochs=1", "train.log_every=1")
    stopping = Trainer(cfg, progress=False)
    real_step = stopping.scheduler.step

    def step_then_stop(*args, **kwargs):  # Ctrl-C during the third step
        real_step(*args, **kwargs)
        stopping.stop.requested = stopping.scheduler.scheduler.last_epoch >= 3

    monkeypatch.setattr(stopping.scheduler, "step", step_then_stop)
    with pytest.raises(KeyboardInterrupt):
        stopping.fit()
    monkeypatch.undo()
    resumed = Trainer(None, run_dir=tmp_path / "smoke", resume=True, progress=False)
    train_set = resumed.data.datasets["train"]
    loaded = []
    real_item = WindowDataset.__getitem__

    def counting(self, i):
        if self is train_set:
            loaded.append(i)
        return real_item(self, i)

    monkeypatch.setattr(WindowDataset, "__getitem__", counting)
    history = resumed.fit()
    batch = cfg.data.batch_size
    memory_check = batch  # one step on the largest windows before training goes on
    assert len(loaded) == len(train_set) - 3 * batch + memory_check
    assert history[-1]["windows_seen"] == len(train_set)


def test_the_loop_syncs_with_the_host_once_per_logging_interval(shapes_cache, tmp_path,
                                                                monkeypatch):
    """Device-to-host transfers made by cmar's own code during an epoch (torch's optimiser
    reads its step counters, which live on the host, and is not counted)."""
    import sys

    cfg = smoke(shapes_cache, tmp_path, "train.epochs=1", "train.log_every=1000")
    trainer = Trainer(cfg, progress=False)
    syncs = []
    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "/cmar/" in caller.replace("\\", "/"):
                syncs.append(f"{_name} in {caller.rsplit('/', 1)[-1]}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    row = trainer._train_epoch(1)
    monkeypatch.undo()
    assert trainer.steps_per_epoch > 5
    assert syncs == ["cpu in tally.py", "tolist in tally.py"], syncs  # once, not 7 per step
    assert row["windows_seen"] == len(trainer.data.datasets["train"])


def test_generate_captions_your_own_frames_of_any_size_and_format(trained_run, tmp_path,
                                                                   capsys):
    run = str(trained_run.run_dir)
    paths = []
    for name, mode, size in (("a.jpg", "RGB", (575, 240)), ("b.png", "RGBA", (40, 90)),
                             ("c.bmp", "L", (13, 13))):
        Image.new(mode, size, 120).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    captions = ["Ada the red circle walks to the tree.", "Ada meets Bob.", "Bob waits."]
    args = ["generate", run, "--images", *paths, "--captions", *captions]
    assert main(args + ["--strategy", "greedy"]) == 0
    out = capsys.readouterr().out
    assert "frame 2 (" in out and "predicted frame 4: " in out
    assert out.split("predicted frame 4: ")[1].strip()  # a caption, not nothing
    assert main(["generate", run, "--images", *paths[:2], "--captions", *captions[:2]]) == 2
    assert "give 3 images and 3 captions" in capsys.readouterr().err
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["generate", run, "--images", *paths[:2], str(tmp_path / "notes.png"),
                 "--captions", *captions]) == 2
    assert "notes.png is not an image" in capsys.readouterr().err
