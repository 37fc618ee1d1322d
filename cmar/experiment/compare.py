"""compare(): arms x seeds trained (or read back), each run scored as-is and under controls,
in one table, with paired differences and a figure.

    from cmar.config import load_config
    from cmar.experiment import compare

    result = compare({"concat": load_config("default", ["model.fusion=concat"]),
                      "cmar": load_config("default", ["model.fusion=cmar"])},
                     seeds=[0, 1, 2], controls=["images_blanked"], vary=["model.fusion"])
    result.table                       # one row per (arm, seed, control)
    result.paired("concat", "BLEU-4")  # each arm minus concat, paired by seed
    result.drops("BLEU-4")             # each control minus the plain run, paired by seed
    result.plot()

Every arm trains with the same seeds, data and budget unless its config says otherwise, and
``vary=`` makes that a check: arms that differ in any other key are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from cmar.config import Config
from cmar.evaluation.stats import ci95, mean_sd
from cmar.experiment.controls import NONE, resolve
from cmar.experiment.runs import history_of, trained_run
from cmar.experiment.scoring import SCORES, ScoredRun

# keys that name where and as which run an arm's config ran, never what it trains
RUN_KEYS = ("name", "seed", "runs_dir", "device")


def flat_config(cfg: Config) -> dict[str, object]:
    """``{"model.fusion": "cmar", ...}``: a config as dotted keys (the keys ``--set`` takes)."""
    out = {}
    for section, values in dataclasses.asdict(cfg).items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            out[section] = values
    return out


def differences(arms: Mapping[str, Config]) -> dict[str, dict[str, object]]:
    """{dotted key: {arm: value}} of every key whose value is not the same in all arms
    (the run keys :data:`RUN_KEYS` left out)."""
    flat = {name: flat_config(cfg) for name, cfg in arms.items()}
    keys = dict.fromkeys(key for f in flat.values() for key in f)
    out = {}
    for key in keys:
        if key in RUN_KEYS:
            continue
        values = {name: f.get(key) for name, f in flat.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            out[key] = values
    return out


def check_fair(arms: Mapping[str, Config], vary: Iterable[str] | None) -> dict[str, dict]:
    """The arms' differences; with ``vary``, a ValueError naming every other key they differ
    in (a key of ``vary`` may name a section: ``"model"`` allows every ``model.*`` key)."""
    found = differences(arms)
    if vary is None:
        return found
    allowed = tuple(vary)
    unfair = [key for key in found
              if not any(key == v or key.startswith(v + ".") for v in allowed)]
    if unfair:
        detail = "; ".join(f"{key}: {found[key]}" for key in unfair)
        raise ValueError(f"the arms differ in keys outside vary={list(allowed)}: {detail}. "
                         "Make them equal, or add the key to vary if the difference is the "
                         "intervention")
    return found


def arm_config(cfg: Config, arm: str, seed: int, runs_dir: str | Path) -> Config:
    """One arm's config for one seed, in its own run folder ``runs_dir/<arm>-s<seed>``."""
    return dataclasses.replace(cfg, name=f"{arm}-s{seed}", seed=seed, runs_dir=str(runs_dir))


@dataclasses.dataclass
class Comparison:
    """What :func:`compare` returns.

    - ``table``: one row per (arm, seed, control): columns ``arm``, ``seed``, ``control``
      (``"none"`` for the plain run), one per score (:data:`cmar.experiment.scoring.SCORES`),
      ``train seconds`` and ``run`` (the run folder);
    - ``floors``: the floors' BLEU-4 and CIDEr-D on the same windows (systems that learn
      nothing; a score is a result only above them);
    - ``differences``: {config key: {arm: value}} where the arms differ.
    """

    table: pd.DataFrame
    floors: pd.DataFrame
    differences: dict[str, dict[str, object]]

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(self.table["arm"]))

    @property
    def controls(self) -> list[str]:
        return list(dict.fromkeys(self.table["control"]))

    def _values(self, arm: str, metric: str, control: str = NONE) -> dict[int, float]:
        rows = self.table[(self.table["arm"] == arm) & (self.table["control"] == control)]
        if rows.empty:
            raise KeyError(f"no rows for arm {arm!r} under control {control!r}; arms: "
                           f"{self.arms}, controls: {self.controls}")
        return dict(zip(rows["seed"], rows[metric], strict=True))

    def _drop(self, arm: str, metric: str, control: str) -> dict[int, float]:
        plain, under = self._values(arm, metric), self._values(arm, metric, control)
        return {seed: under[seed] - plain[seed] for seed in under if seed in plain}

    def paired(self, reference: str, metric: str = "BLEU-4", control: str = NONE,
               drop: bool = False) -> pd.DataFrame:
        """Each other arm minus ``reference`` on ``metric``, paired by seed: one row per arm
        with the mean difference, the sample sd, the 95% t interval of the mean (NaN with one
        seed), the seeds paired and how many of them are above the reference.

        ``control``: compare the runs under that control instead of the plain runs.
        ``drop=True``: compare each run's change under ``control`` (control minus plain), so
        "does this arm lose more than the reference without its images?" is one call:
        ``paired("concat", "BLEU-4", "images_blanked", drop=True)``."""
        if metric not in self.table:
            raise KeyError(f"no score {metric!r}; scores: {list(SCORES)}")
        if drop and control == NONE:
            raise ValueError("drop=True needs a control: the change under it is compared")

        def values(arm: str) -> dict[int, float]:
            return (self._drop(arm, metric, control) if drop
                    else self._values(arm, metric, control))

        base = values(reference)
        rows = [_paired_row(arm, values(arm), base, metric) for arm in self.arms
                if arm != reference]
        return pd.DataFrame(rows)

    def drops(self, metric: str = "BLEU-4") -> pd.DataFrame:
        """Each control minus the plain run on ``metric``, paired by seed, for every arm: a
        drop below zero means the input the control removed was used."""
        rows = []
        for arm in self.arms:
            plain = self._values(arm, metric)
            for control in self.controls:
                if control != NONE:
                    row = _paired_row(arm, self._values(arm, metric, control), plain, metric)
                    rows.append({"control": control, **row})
        return pd.DataFrame(rows)

    def means(self, metrics: Iterable[str] = ("BLEU-4", "CIDEr-D", "caption NLL")
              ) -> pd.DataFrame:
        """Mean and sample sd over seeds of ``metrics`` for every (arm, control)."""
        metrics = list(metrics)
        grouped = self.table.groupby(["arm", "control"], sort=False)[metrics]
        out = grouped.agg(["mean", "std"])
        out.columns = [f"{metric} {stat if stat == 'mean' else 'sd'}"
                       for metric, stat in out.columns]
        return out

    def plot(self, metric: str = "BLEU-4"):
        """A figure to paste: ``metric`` for every arm (bars: mean over seeds, dots: seeds),
        one bar per control, the floors as dashed lines. Returns the matplotlib figure."""
        from cmar.plots import comparison_figure

        floors = {} if metric not in self.floors else dict(zip(self.floors["floor"],
                                                                self.floors[metric],
                                                                strict=True))
        return comparison_figure(self.table, metric, self.arms, self.controls, floors)


def _paired_row(arm: str, values: dict[int, float], base: dict[int, float], metric: str
                ) -> dict:
    diffs = [values[s] - base[s] for s in values if s in base
             and not (math.isnan(values[s]) or math.isnan(base[s]))]
    if not diffs:
        return {"arm": arm, "metric": metric, "mean": math.nan, "sd": math.nan,
                "95% low": math.nan, "95% high": math.nan, "seeds": 0, "above": 0}
    mean, sd = mean_sd(diffs)
    low, high = ci95(diffs) or (math.nan, math.nan)
    return {"arm": arm, "metric": metric, "mean": mean, "sd": sd, "95% low": low,
            "95% high": high, "seeds": len(diffs), "above": sum(d > 0 for d in diffs)}


def _floors(metrics: dict) -> pd.DataFrame:
    rows = [{"floor": name, "BLEU-4": scores.get("BLEU-4", math.nan),
             "CIDEr-D": scores.get("CIDEr", math.nan)}
            for name, scores in metrics["captions"].items() if name != "model"]
    return pd.DataFrame(rows, columns=["floor", "BLEU-4", "CIDEr-D"])


def compare(arms: Mapping[str, Config], seeds: Iterable[int] = (0, 1, 2),
            controls: Iterable[str] = (), runs_dir: str | Path = "runs/compare",
            split: str = "test", vary: Iterable[str] | None = None,
            progress: bool = True) -> Comparison:
    """Train every arm with every seed (or read back the finished run with the same config),
    then score each run as-is and under each control on ``split``.

    ``arms``: {name: Config}; a config may name a part registered in the notebook itself.
    ``controls``: names of :data:`cmar.experiment.CONTROLS` (``"one_frame_blanked"`` expands to
    one control per context frame). ``vary``: the config keys the arms may differ in; any
    other difference is refused. Without it the differing keys are printed. Runs go to
    ``runs_dir/<arm>-s<seed>``; every score a control gives is cached there too.
    """
    arms, seeds = dict(arms), list(seeds)
    if not arms:
        raise ValueError("compare needs at least one arm: {name: Config}")
    bad = [name for name, cfg in arms.items() if not isinstance(cfg, Config)]
    if bad:
        raise TypeError(f"arms {bad} are not Config objects: build each with "
                        "cmar.config.load_config(preset, overrides)")
    if not seeds:
        raise ValueError("compare needs at least one seed")
    found = check_fair(arms, vary)
    if vary is None and found:
        print("the arms differ in:", ", ".join(f"{key} {values}" for key, values
                                               in found.items()))
    ks = {cfg.data.k for cfg in arms.values()}
    labels = resolve(controls, min(ks))
    if len(ks) > 1 and any("[" in label for label in labels):
        raise ValueError(f"per-frame controls need one data.k in every arm, got {sorted(ks)}")
    jobs = [(arm, seed, arm_config(cfg, arm, seed, runs_dir)) for arm, cfg in arms.items()
            for seed in seeds]
    bar = tqdm(jobs, desc="compare: training", disable=not progress)
    trained = []
    for arm, seed, cfg in bar:
        bar.set_postfix_str(cfg.name)
        trained.append((arm, seed, *trained_run(cfg, progress=False)))
    rows, floors = [], None
    bar = tqdm(trained, desc=f"compare: scoring {1 + len(labels)} conditions",
               disable=not progress)
    for arm, seed, run_dir, metrics in bar:
        bar.set_postfix_str(run_dir.name)
        scored = ScoredRun(run_dir, split, progress=False).rows(labels)
        history = history_of(run_dir)
        seconds = sum(e["train_seconds"] for e in history) if history else math.nan
        for control, scores in scored.items():
            rows.append({"arm": arm, "seed": seed, "control": control, **scores,
                         "train seconds": seconds, "run": str(run_dir)})
        if floors is None and metrics.get("split") == split:
            floors = _floors(metrics)
    table = pd.DataFrame(rows, columns=["arm", "seed", "control", *SCORES, "train seconds",
                                        "run"])
    if floors is None:
        floors = pd.DataFrame(columns=["floor", "BLEU-4", "CIDEr-D"])
    return Comparison(table, floors, found)
