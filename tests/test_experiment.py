"""cmar.experiment: controls change what they name and nothing else, paired intervals equal a
hand computation, unfair arms are refused, a fusion registered in the test goes through
compare() and through ``--plugin``, provenance hashes what it says, the shuffled-label probe
sits at chance, and an intervention swaps exactly one frame's representation."""

import dataclasses
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from model_helpers import random_batch, tiny_model

import cmar
from cmar.cli import main
from cmar.config import load_config
from cmar.data import prepare_data
from cmar.data.batches import Collate
from cmar.evaluation.stats import t_975
from cmar.experiment import CONTROLS, Comparison, SplitWindows, compare
from cmar.experiment.compare import check_fair
from cmar.experiment.controls import resolve
from cmar.experiment.probe import probe_features
from cmar.experiment.representations import donor_values, read, replaced
from cmar.models import FUSIONS

UNK = 3
GUIDE = Path(__file__).parents[1] / "CONTRIBUTING.md"


def guide_fusion_code(name: str) -> str:
    """CONTRIBUTING.md's FiLM fusion, registered under ``name``."""
    code = re.search(r"```python\n(import torch.*?)```", GUIDE.read_text(), re.S).group(1)
    return code.replace('@FUSIONS.register("film")', f'@FUSIONS.register("{name}")')


def same(a, b) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return a == b
    return a.shape == b.shape and torch.equal(a.nan_to_num(-9.0), b.nan_to_num(-9.0))


def changed_fields(before, after) -> set[str]:
    return {f.name for f in dataclasses.fields(before)
            if not same(getattr(before, f.name), getattr(after, f.name))}


# --- controls ---------------------------------------------------------------------------


class NoDonors:
    unk_id = UNK


def apply(name: str, batch, k: int = 3):
    (label, control), = resolve([name], k).items()
    return control(batch, NoDonors())


def test_images_blanked_zeros_every_image_and_leaves_the_captions():
    batch = random_batch()
    out = apply("images_blanked", batch)
    assert changed_fields(batch, out) == {"context_images", "target_image"}
    assert not out.context_images.any() and not out.target_image.any()


def test_captions_blanked_leaves_the_images_and_the_targets():
    batch = random_batch()
    out = apply("captions_blanked", batch)
    assert changed_fields(batch, out) == {"context_tokens", "context_mask"}
    assert (out.context_mask.sum(-1) == 1).all() and out.context_mask[..., 0].all()
    assert (out.context_tokens[..., 0] == UNK).all()


def test_one_frame_blanked_changes_only_that_frame():
    batch = random_batch()
    labels = resolve(["one_frame_blanked"], k=3)
    assert list(labels) == ["one_frame_blanked[0]", "one_frame_blanked[1]",
                            "one_frame_blanked[2]"]
    out = labels["one_frame_blanked[1]"](batch, NoDonors())
    assert changed_fields(batch, out) == {"context_images", "context_tokens", "context_mask"}
    for frame in (0, 2):
        assert torch.equal(out.context_images[:, frame], batch.context_images[:, frame])
        assert torch.equal(out.context_tokens[:, frame], batch.context_tokens[:, frame])
    assert not out.context_images[:, 1].any()
    assert (out.context_mask[:, 1].sum(-1) == 1).all()
    assert list(resolve(["one_frame_blanked[-1]"], k=3)) == ["one_frame_blanked[2]"]


def test_order_reversed_keeps_each_frames_image_with_its_caption():
    batch = random_batch()
    out = apply("order_reversed", batch)
    assert changed_fields(batch, out) == {"context_images", "context_tokens", "context_mask"}
    assert torch.equal(out.context_images[:, 0], batch.context_images[:, 2])
    assert torch.equal(out.context_tokens[:, 0], batch.context_tokens[:, 2])
    assert changed_fields(batch, apply("order_reversed", out)) == set()


def test_unknown_or_misplaced_controls_are_refused_with_the_choices():
    with pytest.raises(KeyError, match="registered: .*images_blanked"):
        resolve(["images_blank"], k=3)
    with pytest.raises(ValueError, match="outside the 3 context frames"):
        resolve(["one_frame_blanked[3]"], k=3)
    with pytest.raises(ValueError, match="takes no frame position"):
        resolve(["images_blanked[0]"], k=3)


def test_a_control_registered_by_the_student_is_resolved():
    @CONTROLS.register("first_image_blanked_test")
    def first_image_blanked(batch, split):
        from cmar.evaluation.inputs import blank_images

        return blank_images(batch, frames=0)

    try:
        out = apply("first_image_blanked_test", random_batch())
        assert not out.context_images[:, 0].any() and out.context_images[:, 1].any()
    finally:
        del CONTROLS["first_image_blanked_test"]


@pytest.fixture(scope="module")
def small_data(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", "data.n_stories=24"])
    return prepare_data(cfg.data, splits=("train", "test"), progress=False)


def test_context_from_other_story_takes_a_whole_context_of_another_story(small_data):
    dataset = small_data.datasets["test"]
    collate = Collate(0, 1, 2)
    split = SplitWindows(dataset, collate, UNK, seed=0)
    batch = collate([dataset[i] for i in range(len(dataset))])
    out = resolve(["context_from_other_story"], 3)["context_from_other_story"](batch, split)
    targets = {"target_in", "target_out", "target_mask", "target_image", "window_ids"}
    assert not targets & changed_fields(batch, out)
    donors = split.donors()
    for row, wid in enumerate(batch.window_ids):
        donor = dataset[int(donors[row])]
        assert donor["window_id"].split(":")[0] != wid.split(":")[0]
        assert torch.equal(out.context_images[row], collate([donor]).context_images[0])
    again = split.other_story_batch(batch.rows(slice(2, 5)))  # the same donors, any batching
    assert torch.equal(again.context_tokens, split.other_story_batch(batch).context_tokens[2:5])


# --- paired differences and fairness --------------------------------------------------


def hand_table() -> Comparison:
    rows = []
    for seed, (a, b) in enumerate([(0.5, 0.6), (0.4, 0.7), (0.6, 0.8)]):
        rows += [{"arm": "concat", "seed": seed, "control": "none", "BLEU-4": a},
                 {"arm": "film", "seed": seed, "control": "none", "BLEU-4": b},
                 {"arm": "film", "seed": seed, "control": "images_blanked", "BLEU-4": b - 0.1},
                 {"arm": "concat", "seed": seed, "control": "images_blanked", "BLEU-4": a}]
    return Comparison(pd.DataFrame(rows), pd.DataFrame(columns=["floor", "BLEU-4"]), {})


def test_paired_differences_equal_a_hand_computation():
    paired = hand_table().paired("concat", "BLEU-4").set_index("arm").loc["film"]
    diffs = [0.1, 0.3, 0.2]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = t_975(2) * sd / math.sqrt(3)
    assert paired["mean"] == pytest.approx(mean)
    assert paired["sd"] == pytest.approx(sd)
    assert paired["95% low"] == pytest.approx(mean - half)
    assert paired["95% high"] == pytest.approx(mean + half)
    assert (paired["seeds"], paired["above"]) == (3, 3)
    drops = hand_table().drops("BLEU-4").set_index(["arm", "control"])
    assert drops.loc[("film", "images_blanked"), "mean"] == pytest.approx(-0.1)
    assert drops.loc[("concat", "images_blanked"), "mean"] == pytest.approx(0.0)


def test_arms_that_differ_outside_vary_are_refused_naming_the_keys():
    arms = {"a": load_config("smoke", ["model.fusion=concat"]),
            "b": load_config("smoke", ["model.fusion=cmar", "train.lr=0.01"])}
    with pytest.raises(ValueError, match=r"train\.lr"):
        check_fair(arms, vary=["model.fusion"])
    assert set(check_fair(arms, vary=["model.fusion", "train"])) == {"model.fusion", "train.lr"}
    assert set(check_fair(arms, vary=None)) == {"model.fusion", "train.lr"}


# --- compare with a fusion registered here, and the same fusion through --plugin ---------


@pytest.fixture(scope="module")
def registered_fusion():
    name = "film_in_test"
    exec(compile(guide_fusion_code(name), "CONTRIBUTING.md", "exec"), {})
    yield name
    del FUSIONS[name]


def tiny(shapes_cache, *extra):
    return load_config("smoke", [f"data.cache_dir={shapes_cache}", "data.n_stories=24",
                                 "train.epochs=1", "eval.retrieval_windows=0",
                                 "eval.bootstrap=0", *extra])


@pytest.fixture(scope="module")
def comparison(registered_fusion, shapes_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("compare")
    arms = {"concat": tiny(shapes_cache, "model.fusion=concat"),
            "film": tiny(shapes_cache, f"model.fusion={registered_fusion}")}
    result = compare(arms, seeds=[0, 1], controls=["images_blanked", "one_frame_blanked"],
                     runs_dir=runs, vary=["model.fusion"], progress=False)
    return result, arms, runs


def test_compare_trains_every_arm_and_seed_and_scores_every_control(comparison):
    result, _, runs = comparison
    table = result.table
    assert list(table.columns[:3]) == ["arm", "seed", "control"]
    for column in ("BLEU-4", "CIDEr-D", "names F1", "caption NLL", "slot place",
                   "next-frame R@1", "context gap"):
        assert column in table
    assert len(table) == 2 * 2 * (1 + 1 + 3)
    assert set(table["control"]) == {"none", "images_blanked", "one_frame_blanked[0]",
                                     "one_frame_blanked[1]", "one_frame_blanked[2]"}
    plain = table[table["control"] == "none"]
    assert plain["caption NLL"].notna().all() and plain["context gap"].notna().all()
    assert table[table["control"] != "none"]["context gap"].isna().all()
    for arm in ("concat", "film"):
        for seed in (0, 1):
            assert (runs / f"{arm}-s{seed}" / "best.pt").exists()
    assert not result.floors.empty and set(result.differences) == {"model.fusion"}
    paired = result.paired("concat", "caption NLL")
    assert list(paired["arm"]) == ["film"] and paired.loc[0, "seeds"] == 2
    assert len(result.drops("caption NLL")) == 2 * 4
    figure = result.plot("BLEU-4")
    assert figure.axes and figure.axes[0].get_ylabel() == "BLEU-4"


def test_a_second_compare_reads_the_runs_and_their_scores_back(comparison):
    result, arms, runs = comparison
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/best.pt")}
    again = compare(arms, seeds=[0, 1], controls=["images_blanked", "one_frame_blanked"],
                    runs_dir=runs, progress=False)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/best.pt")} == stamps
    pd.testing.assert_frame_equal(again.table, result.table)


def test_a_fusion_from_a_plugin_file_trains_and_evaluates_from_the_command_line(
        shapes_cache, tmp_path, capsys):
    name = "film_from_plugin"
    plugin = tmp_path / "my_fusion.py"
    plugin.write_text(guide_fusion_code(name))
    sets = [f"data.cache_dir={shapes_cache}", "data.n_stories=24", "train.epochs=1",
            "eval.retrieval_windows=0", "eval.bootstrap=0", f"runs_dir={tmp_path}",
            f"model.fusion={name}", "name=plugged"]
    assert name not in FUSIONS
    try:
        assert main(["train", "--config", "smoke", *[a for s in sets for a in ("--set", s)],
                     "--plugin", str(plugin)]) == 0
        assert name in FUSIONS
        assert main(["evaluate", str(tmp_path / "plugged"), "--plugin", str(plugin)]) == 0
        assert json.loads((tmp_path / "plugged" / "metrics.json").read_text())["windows"] > 0
        study = tmp_path / "study"
        assert main(["study", "--grid", "smoke", "--fusions", name, "--runs-dir", str(study),
                     "--set", f"data.cache_dir={shapes_cache}", "--set", "data.n_stories=24",
                     "--set", "eval.retrieval_windows=0", "--no-ablation",
                     "--plugin", str(plugin)]) == 0
        rows = json.loads((study / "study.json").read_text())["rows"]
        assert [row["fusion"] for row in rows] == [name]
    finally:
        FUSIONS.pop(name, None)
        for module in [m for m in sys.modules if m.startswith("cmar_plugin_my_fusion")]:
            del sys.modules[module]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "plugged")]) == 2  # without it: a clear error
    assert "--plugin" in capsys.readouterr().err
    assert main(["train", "--plugin", str(tmp_path / "missing.py")]) == 2


# --- provenance ------------------------------------------------------------------------


def test_provenance_hashes_the_config_the_checkpoint_and_the_data(comparison, small_data):
    _, _, runs = comparison
    run = runs / "film-s0"
    record = cmar.provenance(run)
    assert record["version"] == cmar.__version__
    assert record["config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    assert record["checkpoint_sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert record["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    data = json.loads((run / "data.json").read_text())
    assert record["data_fingerprint"] == data["fingerprint"]
    assert record["data_fingerprint"] == cmar.provenance(runs / "concat-s1")["data_fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{64}", record["data_fingerprint"])
    assert small_data.fingerprint(("train",)) != small_data.fingerprint(("test",))


# --- probes and interventions ------------------------------------------------------------


def test_the_shuffled_label_probe_sits_at_chance_on_a_variable_the_features_hold():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=g)
    features = torch.nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(600, 4,
                                                                                 generator=g)
    features = torch.cat([features, torch.randn(600, 12, generator=g)], 1)
    names = [f"landmark {int(y)}" for y in labels]
    scores = probe_features(features[:400], names[:400], features[400:], names[400:])
    assert scores["linear"] > 0.8 and scores["mlp"] > 0.8  # the variable is decodable
    assert abs(scores["shuffled labels"] - 0.25) < 0.1  # the control is not
    assert scores["majority"] < 0.4 and scores["chance"] == 0.25


def test_replacing_one_frames_image_changes_that_frame_only_and_is_undone():
    model = tiny_model().eval()
    batch, donor = random_batch(seed=0), random_batch(seed=1)
    with torch.no_grad():
        before = model(batch).logits
        own = donor_values(model, batch, "image", position=1)
        with replaced(model, "image", 1, own):  # its own values: nothing changes
            assert torch.allclose(model(batch).logits, before, atol=1e-6)
        with replaced(model, "image", 1, donor_values(model, donor, "image", 1)):
            image = read(model, batch, "image").view(4, 3, -1)
            assert not torch.allclose(model(batch).logits, before)
        plain = read(model, batch, "image").view(4, 3, -1)
        assert torch.equal(image[:, [0, 2]], plain[:, [0, 2]])
        assert torch.allclose(image[:, 1], read(model, donor, "image").view(4, 3, -1)[:, 1])
        assert "encode_frames" not in vars(model)  # the model is itself again
        assert torch.equal(model(batch).logits, before)


def test_probe_and_intervene_run_on_a_trained_run(comparison):
    from cmar.experiment import intervene, probe

    _, _, runs = comparison
    result = probe(runs / "film-s0", "story", "next_place", epochs=50, progress=False)
    assert result["train examples"] > 0 and result["test examples"] > 0
    assert 0 <= result["linear"] <= 1 and result["chance"] == 1 / result["labels"]
    swap = intervene(runs / "film-s0", "fused", position=-1, progress=False)
    assert swap["position"] == 2 and swap["windows"] > 0
    assert set(swap["place"]) == {"accuracy plain", "accuracy swapped", "changed",
                                  "now the donor's place"}


def test_paired_drops_compare_what_each_arm_loses_under_a_control():
    table = hand_table()
    paired = table.paired("concat", "BLEU-4", "images_blanked", drop=True).iloc[0]
    assert paired["mean"] == pytest.approx(-0.1) and paired["above"] == 0
    assert paired["sd"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="needs a control"):
        table.paired("concat", "BLEU-4", drop=True)
    means = table.means(["BLEU-4"])
    assert means.loc[("film", "none"), "BLEU-4 mean"] == pytest.approx(0.7)


def test_scores_already_cached_load_no_model(comparison):
    from cmar.experiment.scoring import ScoredRun

    _, _, runs = comparison
    scored = ScoredRun(runs / "film-s0", progress=False)
    rows = scored.rows(resolve(["images_blanked"], 3))
    assert set(rows) == {"none", "images_blanked"}
    assert "inputs" not in vars(scored)  # every row came from controls.json
