"""The same config and seed give the same loss curves and the same metrics."""

import json

from test_training import smoke

from cmar.evaluation.run import evaluate_run
from cmar.train import Trainer


def test_same_seed_same_curves_and_same_metrics(shapes_cache, tmp_path):
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(smoke(shapes_cache, tmp_path / name), progress=False)
        trainer.fit()
        runs.append(trainer.run_dir)
    curves = [json.loads((run / "history.json").read_text()) for run in runs]
    losses = [[{k: v for k, v in row.items() if k.startswith(("train_", "val_"))
                and k != "train_seconds"} for row in curve] for curve in curves]
    assert losses[0] == losses[1]
    first, again = evaluate_run(runs[0], progress=False), evaluate_run(runs[0], progress=False)
    assert first == again
    other = evaluate_run(runs[1], progress=False)
    assert other["captions"] == first["captions"]
