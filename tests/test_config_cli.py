"""Presets, overrides, the `cmar data` summary and the data pipeline from a config."""

import json
import re

import pytest

from cmar.cli import main
from cmar.config import Config, load_config, save_config
from cmar.data import decode, encode, prepare_data


def test_presets_load_and_overrides_apply():
    for preset in ("smoke", "default", "storyreasoning", "storyreasoning-clip"):
        assert isinstance(load_config(preset), Config)
    cfg = load_config("smoke", ["data.k=4", "seed=7", "data.limit=null", "data.mode=grounded"])
    assert (cfg.data.k, cfg.seed, cfg.data.limit, cfg.data.mode) == (4, 7, None, "grounded")


def test_unknown_keys_are_errors_not_silently_ignored():
    with pytest.raises(KeyError, match="unknown config key.*'kk'"):
        load_config("smoke", ["data.kk=4"])
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("no-such-preset")


def test_old_keys_name_their_replacement():
    with pytest.raises(KeyError, match="model.temperature was renamed to model.infonce_temperat"):
        load_config("smoke", ["model.temperature=0.2"])
    with pytest.raises(KeyError, match="data.max_caption_tokens was removed; use data.max_tok"):
        load_config("smoke", ["data.max_caption_tokens=20"])


def test_encoder_and_decoder_depths_are_set_apart():
    from model_helpers import tiny_model

    deep_decoder = tiny_model(decoder="transformer", decoder_layers=2)
    deep_encoders = tiny_model(decoder="transformer", text_encoder="transformer",
                               story_encoder="transformer", encoder_layers=3)
    assert len(deep_decoder.decoder.blocks) == 2
    assert len(deep_decoder.text_encoder.encoder.rnn.all_weights) == 1  # GRU of one layer
    assert len(deep_encoders.decoder.blocks) == 1
    assert len(deep_encoders.text_encoder.encoder.layers.layers) == 3
    assert len(deep_encoders.story_encoder.encoder.layers.layers) == 3


def test_saved_config_reads_back_identically(tmp_path):
    cfg = load_config("smoke", ["data.k=2"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_cmar_data_prints_the_summary(shapes_cache, capsys):
    code = main(["data", "--config", "smoke", "--set", f"data.cache_dir={shapes_cache}",
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    splits = summary["splits"]
    assert sum(s["stories"] for s in splits.values()) == 60
    for s in splits.values():
        assert s["windows"] > 0 and s["skipped"] == {}
    assert summary["vocabulary"] > 20


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert main(["data", "--config", "smoke", "--set", "data.mode=sideways"]) == 2
    assert "data.mode must be one of" in capsys.readouterr().err


def test_prepare_data_batches_have_the_documented_shapes(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"]).data
    data = prepare_data(cfg, progress=False)
    batch = next(iter(data.loader("train")))
    b, k, s = cfg.batch_size, cfg.k, cfg.image_size
    assert batch.context_images.shape == (b, k, 3, s, s)
    assert batch.target_image.shape == (b, 3, s, s)
    assert batch.context_tokens.shape[:2] == (b, k)
    assert batch.target_in.shape == batch.target_out.shape == batch.target_mask.shape
    # the tokenizer is trained on training captions only (byte-level BPE, pieces start with
    # "Ġ" for a leading space): a word seen only outside train is not one token of the
    # vocabulary, yet it is spelt exactly in smaller pieces, with no [UNK]
    def words(split):
        return {w for st in data.stories[split] for c in st.captions
                for w in re.findall(r"\w+", c)}

    vocab = data.tokenizer.get_vocab()
    pieces = {w.removeprefix("\u0120") for w in vocab}
    assert words("train") <= pieces  # ShapeStories words are frequent: each merged whole
    unseen = (words("validation") | words("test")) - words("train")
    assert not unseen & pieces
    for w in unseen:
        assert decode(data.tokenizer, encode(data.tokenizer, w)) == w


def test_cmar_model_prints_matched_fusion_budgets(shapes_cache, capsys):
    assert main(["model", "--config", "smoke", "--set", f"data.cache_dir={shapes_cache}"]) == 0
    out = capsys.readouterr().out
    budgets = out.split("fusion parameter budgets (matched to cmar):")[1]
    counts = {line.split()[0]: int(line.split()[1].replace(",", ""))
              for line in budgets.strip().splitlines()}
    assert set(counts) == {"cmar", "cmar_lite", "concat", "cross"}
    assert max(counts.values()) / min(counts.values()) < 1.01


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"data\.k expects int.*'three'"):
        load_config("smoke", ["data.k=three"])
    with pytest.raises(ValueError, match=r"train\.amp expects bool"):
        load_config("smoke", ["train.amp=3"])
    assert load_config("smoke", ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("setting, message", [
    ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
    ("train.epochs=-1", "train.epochs must be at least 1, got -1"),
    ("data.k=0", "data.k must be at least 1"),
    ("train.lr=0", "train.lr must be above 0"),
])
def test_values_below_their_floor_are_refused_by_name(setting, message, capsys):
    with pytest.raises(ValueError, match=message):
        load_config("smoke", [setting])
    assert main(["train", "--config", "smoke", "--set", setting]) == 2
    assert message in capsys.readouterr().err


def test_a_window_longer_than_every_story_says_to_lower_k(shapes_cache, capsys):
    assert main(["data", "--config", "smoke", "--set", f"data.cache_dir={shapes_cache}",
                 "--set", "data.k=50"]) == 2
    err = capsys.readouterr().err
    assert "no usable story" in err and "too_short" in err and "lower data.k" in err


def test_run_commands_name_a_missing_run_folder_or_checkpoint(tmp_path, capsys):
    for command in ("evaluate", "generate"):
        assert main([command, str(tmp_path / "nowhere")]) == 2
        assert "no run folder at" in capsys.readouterr().err
    save_config(load_config("smoke"), tmp_path / "config.yaml")  # a run with no epoch done
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "holds no best.pt" in capsys.readouterr().err


def _help_entries(text: str) -> list[list[str]]:
    """[invocation, help] of every argument and sub-command an argparse --help lists."""
    entries, listing = [], False
    for line in text.splitlines():
        if line in ("positional arguments:", "options:", "optional arguments:"):
            listing = True
        elif not line.strip():
            listing = False
        elif listing and len(line) - len(line.lstrip()) <= 4:  # a new argument or command
            invocation, _, help_text = line.strip().partition("  ")
            entries.append([invocation, help_text.strip()])
        elif listing:  # its help text goes on
            entries[-1][1] = f"{entries[-1][1]} {line.strip()}".strip()
    return entries


def test_every_help_text_reads_as_whole_sentences(capsys, monkeypatch):
    import argparse

    from cmar.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert {"data", "train", "evaluate", "generate", "model", "study", "probe", "bench"} <= \
        set(commands)
    for argv in ([], *([name] for name in commands)):
        with pytest.raises(SystemExit) as stopped:
            main([*argv, "--help"])
        assert stopped.value.code == 0
        text = capsys.readouterr().out
        entries = _help_entries(text)
        assert len(entries) >= 2, text  # -h and at least one more
        for invocation, help_text in entries:
            where = f"cmar {' '.join(argv)} --help: {invocation}"
            assert help_text, f"{where} has no help"
            assert help_text[0].isupper(), f"{where}: {help_text!r} starts in lower case"
            assert help_text.endswith("."), f"{where}: {help_text!r} ends without a full stop"
        if argv:  # each command says what it does, what it writes, and shows an example
            description = text.split("\n\n")[1]
            assert description[0].isupper() and description.rstrip().endswith("."), description
            assert f"\n  cmar {argv[0]} " in text, f"cmar {argv[0]} --help shows no example"
