"""cmar probe --run: a linear probe of a trained model's region features for the facing."""

import json

import pytest
import torch

from cmar.cli import main
from cmar.config import load_config
from cmar.data import load_split
from cmar.research.probes.facing import frame_facings, frame_tables
from cmar.research.probes.region import character_cells, linear_probe, region_examples
from cmar.train import Trainer


def test_the_cell_under_a_box_centre():
    # 64 px, 4 x 4 cells of 16 px: centre (40, 8) is row 0, column 2; (63, 63) the last cell
    assert character_cells([(36, 4, 44, 12), (60, 60, 66, 66)], 64, 4) == [2, 15]
    assert character_cells([(36, 4, 44, 12)], 64, 8) == [1 * 8 + 5]  # 8 px cells: row 1


def test_the_probe_reads_informative_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (800,), generator=g)
    noise = torch.randn(800, 16, generator=g)
    informative = noise.clone()
    informative[:, :4] += 6 * torch.nn.functional.one_hot(labels, 4)
    train, test = slice(0, 600), slice(600, 800)
    good = linear_probe(informative[train], labels[train], informative[test], labels[test], 4)
    assert linear_probe(informative[train], labels[train], informative[test], labels[test], 4,
                        hidden=16) > 0.9  # the MLP probe reads it too
    bad = linear_probe(noise[train], labels[train], noise[test], labels[test], 4)
    assert good > 0.95 and bad < 0.4
    assert good == linear_probe(informative[train], labels[train], informative[test],
                                labels[test], 4)  # seeded


class CellModel(torch.nn.Module):
    """Regions that say which cell they are: region r of every frame is one-hot r."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode_frames(self, images, features):
        n, r = images.shape[0], self.side * self.side
        return torch.eye(r).expand(n, r, r), None


def test_each_example_is_the_region_under_its_character(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}"]).data
    cots = frame_tables(cfg)
    stories = load_split(cfg, "test", False)[:3]
    examples = region_examples(CellModel(4), stories, cots)
    expected_cells, expected_labels = [], []
    for story in stories:
        for facings in frame_facings(cots[story.story_id]):
            expected_cells += character_cells([f.box for f in facings], cfg.image_size, 4)
            expected_labels += [f.faces for f in facings]
    assert examples["features"].argmax(1).tolist() == expected_cells
    assert examples["labels"].tolist() == expected_labels
    assert examples["n_classes"] == 4 and len(set(expected_cells)) > 3


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_probes_a_trained_run_beside_its_floors(shapes_cache, tmp_path, capsys):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}",
                                "train.epochs=1", "model.region_layers=1"])
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    assert main(["probe", "--run", str(trainer.run_dir)]) == 0
    out = capsys.readouterr().out
    for line in ("trained", "untrained", "stand only", "chance"):
        assert line in out
    result = json.loads((trainer.run_dir / "region_probe.json").read_text())
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["examples"]["train"] > 100 and result["examples"]["test"] > 20
    for key in ("trained", "untrained", "trained MLP", "untrained MLP", "shuffled labels",
                "stand only"):
        assert 0.0 <= result[key] <= 1.0
    assert "MLP" in out and "shuffled" in out
