"""The ablation study: fusion x decoder x seed (x mode), each run trained, evaluated with
free-running decoding at corpus level, and summarised as mean and spread beside the floors
and the oracle, plus modality ablations of the best model. ``cmar study``.

Runs are cached by folder: a run whose ``metrics.json`` exists and whose saved config equals
the requested one is read back, not retrained, so an interrupted study continues where it
stopped and two processes can share a grid (``--only-mode``). ``runs_dir`` is left out of
that comparison: a run folder copied into another study is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

from cmar.config import Config, load_config
from cmar.evaluation.report import SHOWN

FUSIONS = ("concat", "cross", "cmar")
DECODERS = ("lstm", "gru", "transformer")
METRICS = ("BLEU-4", "CIDEr", "caption R@1", "context gap", "slot place")


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a study trains: every (mode, fusion, decoder, seed) of the lists."""

    config: str = "default"
    fusions: tuple[str, ...] = FUSIONS
    decoders: tuple[str, ...] = DECODERS
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("next", "grounded")
    epochs: int | None = None  # None: the preset's own
    overrides: tuple[str, ...] = ()


GRIDS = {
    # seconds: tests and nbval
    "smoke": Grid("smoke", ("concat", "cmar"), ("gru",), (0,), ("next",), 1),
    # the README's study on a 2-core CPU: every cell of the grid, 3 epochs not 10
    "readme": Grid(epochs=3),
    # the whole grid at the preset's 10 epochs: hours on a CPU, minutes on a GPU
    "full": Grid(),
}


def run_name(mode: str, fusion: str, decoder: str, seed: int) -> str:
    return f"{mode}-{fusion}-{decoder}-s{seed}"


def run_config(grid: Grid, mode: str, fusion: str, decoder: str, seed: int,
               runs_dir: str | Path) -> Config:
    sets = [f"name={run_name(mode, fusion, decoder, seed)}", f"runs_dir={runs_dir}",
            f"seed={seed}", f"data.mode={mode}", f"model.fusion={fusion}",
            f"model.decoder={decoder}"]
    if grid.epochs is not None:
        sets.append(f"train.epochs={grid.epochs}")
    return load_config(grid.config, [*sets, *grid.overrides])


def cells(grid: Grid) -> list[tuple[str, str, str, int]]:
    return [(m, f, d, s) for m in grid.modes for f in grid.fusions for d in grid.decoders
            for s in grid.seeds]


def _cached(run_dir: Path, cfg: Config) -> dict | None:
    metrics, saved = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics.exists() and saved.exists()):
        return None
    try:
        previous = load_config(saved)
    except (KeyError, ValueError):  # written by an older cmar (a renamed key): train it again
        return None
    if dataclasses.replace(previous, runs_dir=cfg.runs_dir) != cfg:
        return None
    from cmar.models.checkpoint import CheckpointError, load_model

    try:  # the ablations load its weights: an older checkpoint format is trained again too
        load_model(run_dir / "best.pt")
    except CheckpointError:
        return None
    return json.loads(metrics.read_text())


def row_of(metrics: dict) -> dict:
    """The study's numbers from one run's metrics.json."""
    model = metrics["captions"]["model"]
    alignment = metrics["alignment"]
    nan = float("nan")  # a group too small a split skips has no number
    return {"BLEU-4": model["BLEU-4"], "CIDEr": model["CIDEr"],
            "caption R@1": alignment["next-caption retrieval"].get("R@1", nan),
            "context gap": alignment["context sensitivity"].get("gap", nan),
            "slot place": metrics.get("slots", {}).get("model", {}).get("place", nan)}


def run_cell(grid: Grid, cell: tuple[str, str, str, int], runs_dir: str | Path,
             progress: bool = False) -> dict:
    """Train and evaluate one cell (or read it back); its row of numbers and floors."""
    from cmar.evaluation.run import evaluate_run
    from cmar.train import train

    mode, fusion, decoder, seed = cell
    cfg = run_config(grid, *cell, runs_dir)
    run_dir = Path(cfg.runs_dir) / cfg.name
    metrics = _cached(run_dir, cfg)
    if metrics is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale or half-finished run
        train(cfg, progress=progress)
        metrics = evaluate_run(run_dir, progress=progress)
    floors = {name: {"BLEU-4": s["BLEU-4"], "CIDEr": s["CIDEr"]}
              for name, s in metrics["captions"].items() if name != "model"}
    return {"mode": mode, "fusion": fusion, "decoder": decoder, "seed": seed,
            "run": str(run_dir), **row_of(metrics), "floors": floors}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of every (mode, fusion, decoder)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["fusion"], row["decoder"]), []).append(row)
    table = []
    for (mode, fusion, decoder), group in groups.items():
        entry = {"mode": mode, "fusion": fusion, "decoder": decoder, "seeds": len(group)}
        for key in METRICS:
            entry[key], entry[key + " sd"] = _mean_sd([r[key] for r in group])
        table.append(entry)
    return table


def fusion_means(rows: list[dict], mode: str, key: str = "BLEU-4") -> dict[str, tuple]:
    """{fusion: (mean, sd, n)} pooled over decoders and seeds, for the headline comparison."""
    out = {}
    for fusion in dict.fromkeys(r["fusion"] for r in rows if r["mode"] == mode):
        values = [r[key] for r in rows if r["mode"] == mode and r["fusion"] == fusion]
        out[fusion] = (*_mean_sd(values), len(values))
    return out


def paired_differences(rows: list[dict], mode: str, key: str = "BLEU-4",
                       base: str = "concat") -> dict[str, dict]:
    """Each fusion minus ``base`` on the runs that share a decoder and a seed.

    Returns {fusion: {"mean", "sd", "n", "wins"}}: the mean and sample sd of the n paired
    differences and how many of them are above zero. Pairing removes the decoder and the seed
    from the comparison, which pooled means do not.
    """
    by_cell = {(r["fusion"], r["decoder"], r["seed"]): r[key] for r in rows if r["mode"] == mode}
    out = {}
    for fusion in dict.fromkeys(f for f, _, _ in by_cell):
        if fusion == base:
            continue
        diffs = [value - by_cell[(base, d, s)] for (f, d, s), value in by_cell.items()
                 if f == fusion and (base, d, s) in by_cell]
        if diffs:
            mean, sd = _mean_sd(diffs)
            out[fusion] = {"mean": mean, "sd": sd, "n": len(diffs),
                           "wins": sum(d > 0 for d in diffs)}
    return out


def modality_ablation(run_dir: str | Path, split: str = "test") -> dict[str, dict]:
    """A trained run re-evaluated with nothing, its images, then its captions blanked."""
    from cmar.evaluation.floors import windows_text
    from cmar.evaluation.metrics import caption_scores
    from cmar.evaluation.run import generate_captions, load_run, run_data

    cfg, tokenizer, model = load_run(run_dir)
    data = run_data(cfg, tokenizer, model, (split,), progress=False)
    references = {w: [t] for w, _, t in windows_text(data, split)}
    out = {}
    for blanked in (None, "images", "captions"):
        predictions = generate_captions(model, data, split, progress=False,
                                        blank_input=blanked)
        scores = caption_scores(predictions, references)
        out[f"{blanked or 'nothing'} blanked"] = {"BLEU-4": scores["BLEU-4"],
                                                  "CIDEr": scores["CIDEr"]}
    return out


def _fmt(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def markdown(rows: list[dict], ablations: dict[str, dict]) -> str:
    """The study's tables: every cell (mean ± sd over seeds), fusions pooled, floors, and the
    modality ablations."""
    parts = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mode_rows = [r for r in rows if r["mode"] == mode]
        table = [e for e in summarise(rows) if e["mode"] == mode]
        lines = [f"### `{mode}` mode: test split, mean ± sd over seeds",
                 "| fusion | decoder | seeds | " + " | ".join(SHOWN.get(m, m) for m in METRICS)
                 + " |",
                 "|---|---|---|" + "---|" * len(METRICS)]
        for e in table:
            lines.append(f"| {e['fusion']} | {e['decoder']} | {e['seeds']} | " + " | ".join(
                _fmt(e[k], e[k + " sd"]) for k in METRICS) + " |")
        pooled = fusion_means(rows, mode)
        lines += ["", "Pooled over decoders and seeds (BLEU-4); the difference to concat is "
                  "paired by decoder and seed:", "",
                  "| fusion | runs | BLEU-4 | minus concat | runs above concat |",
                  "|---|---|---|---|---|"]
        paired = paired_differences(rows, mode)
        for fusion, (mean, sd, n) in pooled.items():
            if fusion in paired:
                p = paired[fusion]
                versus = (f"{p['mean']:+.3f} ± {p['sd']:.3f} | "
                          f"{p['wins']} of {p['n']}")
            else:
                versus = "(baseline) | –"
            lines.append(f"| {fusion} | {n} | {_fmt(mean, sd)} | {versus} |")
        floors = mode_rows[0]["floors"]  # the same windows for every run of a mode
        lines += ["", "Floors and the oracle on the same windows:", "",
                  "| system | BLEU-4 | CIDEr-D |", "|---|---|---|"]
        lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                  for name, s in floors.items()]
        if mode in ablations:
            best = ablations[mode]
            lines += ["", f"Modality ablation of the best run, `{Path(best['run']).name}` "
                      "(no retraining):", "", "| input | BLEU-4 | CIDEr-D |", "|---|---|---|"]
            lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                      for name, s in best["scores"].items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: str | Path, key: str = "BLEU-4") -> Path:
    """One panel per mode: a bar per (fusion, decoder) with its spread, floors as lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    table = summarise(rows)
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        entries = [e for e in table if e["mode"] == mode]
        colours = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(e["fusion"] for e in entries))}
        ax.bar(range(len(entries)), [e[key] for e in entries],
               yerr=[e[key + " sd"] for e in entries], capsize=3,
               color=[colours[e["fusion"]] for e in entries])
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([f"{e['fusion']}\n{e['decoder']}" for e in entries], fontsize=8)
        floors = next(r for r in rows if r["mode"] == mode)["floors"]
        for i, name in enumerate(("nearest neighbour (TF-IDF)",
                                  "rules on text only (not a ceiling)",
                                  "rules on images only (not a ceiling)")):
            if name in floors:
                ax.axhline(floors[name][key], linestyle="--", color="0.3", alpha=0.4 + 0.2 * i,
                           label=f"{name}: {floors[name][key]:.3f}")
        ax.set_title(f"{mode} mode ({entries[0]['seeds']} seeds)")
        ax.set_ylabel(f"{SHOWN.get(key, key)} (test)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_study(grid: Grid, runs_dir: str | Path = "runs/study", modes: tuple[str, ...] | None
              = None, ablate: bool = True, progress: bool = True) -> dict:
    """Train and evaluate every cell (cached runs are read back), then write
    ``study.json``, ``study.md`` and ``study.png`` into ``runs_dir``."""
    from tqdm.auto import tqdm

    if modes:
        grid = dataclasses.replace(grid, modes=tuple(m for m in grid.modes if m in modes))
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = cells(grid)
    rows = []
    bar = tqdm(todo, desc="study", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(run_name(*cell))
        rows.append(run_cell(grid, cell, runs_dir))
    ablations = {}
    if ablate:
        for mode in grid.modes:
            best = max((r for r in rows if r["mode"] == mode), key=lambda r: r["BLEU-4"])
            ablations[mode] = {"run": best["run"], "scores": modality_ablation(best["run"])}
    result = {"grid": dataclasses.asdict(grid), "rows": rows, "summary": summarise(rows),
              "versus_concat": {m: paired_differences(rows, m) for m in grid.modes},
              "ablations": ablations}
    (runs_dir / "study.json").write_text(json.dumps(result, indent=2))
    (runs_dir / "study.md").write_text(markdown(rows, ablations))
    plot(rows, runs_dir / "study.png")
    return result
