"""The ablation study: fusion x decoder x decoder memory x seed (x mode), each run trained,
evaluated with free-running decoding at corpus level, and summarised as mean and spread beside
the floors and the oracle, plus modality ablations of the best model. ``cmar study``.

The memory axis (``MEMORIES``) decides what the decoder attends over. With the words and
regions of every context frame in its memory the decoder can read them directly and bypass
the fused frame vector, so the fusions are compared fairly only with the story states alone
(``"story"``); the ``v2`` grid sets that beside today's ``"full"`` memory.

Runs are cached by folder: a run whose ``metrics.json`` exists and whose saved config equals
the requested one is read back, not retrained, so an interrupted study continues where it
stopped and two processes can share a grid (``--only-mode``). ``runs_dir`` is left out of
that comparison: a run folder copied into another study is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from pathlib import Path

from cmar.config import Config, load_config
from cmar.evaluation.report import SHOWN

FUSIONS = ("concat", "cross", "cmar")
DECODERS = ("lstm", "gru", "transformer")
# What the decoder attends over: (model.memory_tokens, model.memory_regions). The story
# states are always there; "full" is the model's default and every study before v2.
MEMORIES = {"story": (False, False), "words": (True, False), "full": (True, True)}
MEMORY_TEXT = {"story": "the story states only (the context reaches it through the fused frames)",
               "words": "the story states + every context frame's fused words",
               "full": "the story states + every context frame's fused words and regions"}
# Per-cell table columns: the caption score, how much of it needs the images (ShapeStories
# places are only in the images), the fusion's word-to-region grounding, then the rest.
METRICS = ("BLEU-4", "BLEU-4 images blanked", "slot place", "slot place images blanked",
           "grounding", "CIDEr", "caption R@1", "context gap")
HEADERS = {"CIDEr": "CIDEr-D", "BLEU-4 images blanked": "BLEU-4, images blanked",
           "slot place": "place", "slot place images blanked": "place, images blanked"}

# Student's t, 0.975 quantile (a two-sided 95% interval), by degrees of freedom: scipy is not
# a dependency. Between entries the next lower df is used (a slightly wider interval).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
         23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
         30: 2.042, 40: 2.021, 60: 2.000, 80: 1.990, 100: 1.984, 120: 1.980}


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a study trains: every (mode, memory, fusion, decoder, seed) of the lists."""

    config: str = "default"
    fusions: tuple[str, ...] = FUSIONS
    decoders: tuple[str, ...] = DECODERS
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("next", "grounded")
    memories: tuple[str, ...] = ("full",)  # keys of MEMORIES
    epochs: int | None = None  # None: the preset's own
    overrides: tuple[str, ...] = ()


GRIDS = {
    # 2 runs, seconds: tests and nbval
    "smoke": Grid("smoke", fusions=("concat", "cmar"), decoders=("gru",), seeds=(0,),
                  modes=("next",), epochs=1),
    # 54 runs (3 fusions x 3 decoders x 3 seeds x 2 modes), the README's study on a 2-core
    # CPU: every cell of the grid, 3 epochs not 10
    "readme": Grid(epochs=3),
    # the same 54 runs at the preset's 10 epochs: hours on a CPU, minutes on a GPU
    "full": Grid(),
    # 90 runs (2 memories x 3 fusions x 3 decoders x 5 seeds), next mode, 3 epochs: the fusions
    # compared with the story states as the decoder's only memory, beside the full memory
    "v2": Grid(memories=("story", "full"), seeds=(0, 1, 2, 3, 4), modes=("next",), epochs=3),
}


def run_name(mode: str, memory: str, fusion: str, decoder: str, seed: int) -> str:
    """``next-cmar-gru-s0`` for the full memory (the name every study before v2 used, so
    their run folders are read back), ``next-story-cmar-gru-s0`` otherwise."""
    if memory == "full":
        return f"{mode}-{fusion}-{decoder}-s{seed}"
    return f"{mode}-{memory}-{fusion}-{decoder}-s{seed}"


def section(mode: str, memory: str) -> str:
    """The key of a (mode, memory) in ``study.json``'s per-section dicts, named like runs."""
    return mode if memory == "full" else f"{mode}-{memory}"


def run_config(grid: Grid, mode: str, memory: str, fusion: str, decoder: str, seed: int,
               runs_dir: str | Path) -> Config:
    tokens, regions = MEMORIES[memory]
    sets = [f"name={run_name(mode, memory, fusion, decoder, seed)}", f"runs_dir={runs_dir}",
            f"seed={seed}", f"data.mode={mode}", f"model.fusion={fusion}",
            f"model.decoder={decoder}", f"model.memory_tokens={str(tokens).lower()}",
            f"model.memory_regions={str(regions).lower()}"]
    if grid.epochs is not None:
        sets.append(f"train.epochs={grid.epochs}")
    cfg = load_config(grid.config, [*sets, *grid.overrides])
    if (cfg.model.memory_tokens, cfg.model.memory_regions) != (tokens, regions):
        raise ValueError(f"an override changes the decoder memory of {cfg.name}; choose it "
                         f"with the grid's memories (--memories {' | '.join(MEMORIES)})")
    return cfg


def cells(grid: Grid) -> list[tuple[str, str, str, str, int]]:
    """Every (mode, memory, fusion, decoder, seed) of the grid, in training order."""
    return [(m, mem, f, d, s) for m in grid.modes for mem in grid.memories
            for f in grid.fusions for d in grid.decoders for s in grid.seeds]

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
    """The study's numbers from one run's metrics.json (NaN where a run has none: a group too
    small a split skips, concat's grounding, or a metrics file an older cmar wrote)."""
    model = metrics["captions"]["model"]
    alignment = metrics["alignment"]
    use = metrics.get("image use", {})
    grounding = alignment.get("grounding", {}).get("accuracy")

    def number(value) -> float:
        return float("nan") if value is None else value

    return {"BLEU-4": model["BLEU-4"], "CIDEr": model["CIDEr"],
            "BLEU-4 images blanked": number(use.get("BLEU-4, context images blanked")),
            "caption R@1": number(alignment["next-caption retrieval"].get("R@1")),
            "context gap": number(alignment["context sensitivity"].get("gap")),
            "slot place": number(metrics.get("slots", {}).get("model", {}).get("place")),
            "slot place images blanked": number(use.get("place slot, context images blanked")),
            "grounding": number(grounding)}


def run_cell(grid: Grid, cell: tuple[str, str, str, str, int], runs_dir: str | Path,
             progress: bool = False) -> dict:
    """Train and evaluate one cell (or read it back); its row of numbers and floors."""
    from cmar.evaluation.run import evaluate_run
    from cmar.train import train

    mode, memory, fusion, decoder, seed = cell
    cfg = run_config(grid, *cell, runs_dir)
    run_dir = Path(cfg.runs_dir) / cfg.name
    metrics = _cached(run_dir, cfg)
    if metrics is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale or half-finished run
        train(cfg, progress=progress)
        metrics = evaluate_run(run_dir, progress=progress)
    floors = {name: {"BLEU-4": s["BLEU-4"], "CIDEr": s["CIDEr"]}
              for name, s in metrics["captions"].items() if name != "model"}
    return {"mode": mode, "memory": memory, "fusion": fusion, "decoder": decoder, "seed": seed,
            "run": str(run_dir), **row_of(metrics), "floors": floors}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN if any value is)."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def t_975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    if df > max(T_975):
        return 1.96  # the normal quantile
    return T_975[max(d for d in T_975 if d <= df)]


def ci95(values: list[float]) -> list[float] | None:
    """[low, high] of the 95% t interval of the mean: mean ± t(0.975, n-1) * sd / sqrt(n).
    None for a single value (no spread to judge it by)."""
    if len(values) < 2:
        return None
    mean, sd = _mean_sd(values)
    half = t_975(len(values) - 1) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def _in(rows: list[dict], mode: str, memory: str) -> list[dict]:
    return [r for r in rows if r["mode"] == mode and r["memory"] == memory]


def _sections(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["mode"], r["memory"]) for r in rows))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of every (mode, memory, fusion, decoder)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["mode"], row["memory"], row["fusion"], row["decoder"])
        groups.setdefault(key, []).append(row)
    table = []
    for (mode, memory, fusion, decoder), group in groups.items():
        entry = {"mode": mode, "memory": memory, "fusion": fusion, "decoder": decoder,
                 "seeds": len(group)}
        for key in METRICS:
            entry[key], entry[key + " sd"] = _mean_sd([r[key] for r in group])
        table.append(entry)
    return table


def fusion_means(rows: list[dict], mode: str, memory: str = "full",
                 key: str = "BLEU-4") -> dict[str, tuple]:
    """{fusion: (mean, sd, n)} pooled over decoders and seeds, for the headline comparison."""
    rows = _in(rows, mode, memory)
    out = {}
    for fusion in dict.fromkeys(r["fusion"] for r in rows):
        values = [r[key] for r in rows if r["fusion"] == fusion]
        out[fusion] = (*_mean_sd(values), len(values))
    return out


def paired_differences(rows: list[dict], mode: str, memory: str = "full", key: str = "BLEU-4",
                       base: str = "concat") -> dict[str, dict]:
    """Each fusion minus ``base`` on the runs of one mode and one memory that share a decoder
    and a seed.

    Returns {fusion: {"mean", "sd", "n", "wins", "ci95"}}: the mean and sample sd of the n
    paired differences, how many of them are above zero, and the 95% t interval of their mean
    ([low, high]; None when n is 1). Pairing removes the decoder and the seed from the
    comparison, which pooled means do not.
    """
    by_cell = {(r["fusion"], r["decoder"], r["seed"]): r[key] for r in _in(rows, mode, memory)}
    out = {}
    for fusion in dict.fromkeys(f for f, _, _ in by_cell):
        if fusion == base:
            continue
        diffs = [value - by_cell[(base, d, s)] for (f, d, s), value in by_cell.items()
                 if f == fusion and (base, d, s) in by_cell]
        if diffs:
            mean, sd = _mean_sd(diffs)
            out[fusion] = {"mean": mean, "sd": sd, "n": len(diffs),
                           "wins": sum(d > 0 for d in diffs), "ci95": ci95(diffs)}
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
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {sd:.3f}"


def _interval(low_high: list[float] | None) -> str:
    return "–" if low_high is None else f"[{low_high[0]:+.3f}, {low_high[1]:+.3f}]"


def markdown(rows: list[dict], ablations: dict[str, dict]) -> str:
    """The study's tables for every (mode, memory): each cell (mean ± sd over seeds), fusions
    pooled with the paired difference to concat and its 95% interval, floors, and the modality
    ablations of the best run."""
    parts = []
    table = summarise(rows)
    for mode, memory in _sections(rows):
        entries = [e for e in table if e["mode"] == mode and e["memory"] == memory]
        lines = [f"### `{mode}` mode, `{memory}` decoder memory: test split, mean ± sd over seeds",
                 "", f"Decoder memory: {MEMORY_TEXT[memory]}"
                 + (", + the target frame's regions (grounded mode)." if mode == "grounded"
                    else "."), "",
                 "| fusion | decoder | seeds | "
                 + " | ".join(HEADERS.get(m, m) for m in METRICS) + " |",
                 "|---|---|---|" + "---|" * len(METRICS)]
        for e in entries:
            lines.append(f"| {e['fusion']} | {e['decoder']} | {e['seeds']} | " + " | ".join(
                _fmt(e[k], e[k + " sd"]) for k in METRICS) + " |")
        lines += ["", "Pooled over decoders and seeds (BLEU-4); the difference to concat is "
                  "paired by decoder and seed, with the t interval of its mean:", "",
                  "| fusion | runs | BLEU-4 | minus concat | 95% interval | runs above concat |",
                  "|---|---|---|---|---|---|"]
        paired = paired_differences(rows, mode, memory)
        for fusion, (mean, sd, n) in fusion_means(rows, mode, memory).items():
            if fusion in paired:
                p = paired[fusion]
                versus = (f"{p['mean']:+.3f} ± {p['sd']:.3f} | {_interval(p['ci95'])} | "
                          f"{p['wins']} of {p['n']}")
            else:
                versus = "(baseline) | – | –"
            lines.append(f"| {fusion} | {n} | {_fmt(mean, sd)} | {versus} |")
        floors = _in(rows, mode, memory)[0]["floors"]  # the same windows for every run of a mode
        lines += ["", "Floors and the oracle on the same windows:", "",
                  "| system | BLEU-4 | CIDEr-D |", "|---|---|---|"]
        lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                  for name, s in floors.items()]
        best = ablations.get(section(mode, memory))
        if best:
            lines += ["", f"Modality ablation of the best run, `{Path(best['run']).name}` "
                      "(no retraining):", "", "| input | BLEU-4 | CIDEr-D |", "|---|---|---|"]
            lines += [f"| {name} | {s['BLEU-4']:.3f} | {s['CIDEr']:.3f} |"
                      for name, s in best["scores"].items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: str | Path, key: str = "BLEU-4") -> Path:
    """One panel per (mode, memory): a bar per (fusion, decoder) with its spread, floors as
    lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = _sections(rows)
    table = summarise(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False,
                             sharey=True)
    for ax, (mode, memory) in zip(axes[0], panels, strict=True):
        entries = [e for e in table if e["mode"] == mode and e["memory"] == memory]
        colours = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(e["fusion"] for e in entries))}
        ax.bar(range(len(entries)), [e[key] for e in entries],
               yerr=[e[key + " sd"] for e in entries], capsize=3,
               color=[colours[e["fusion"]] for e in entries])
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([f"{e['fusion']}\n{e['decoder']}" for e in entries], fontsize=8)
        floors = _in(rows, mode, memory)[0]["floors"]
        for i, name in enumerate(("nearest neighbour (TF-IDF)",
                                  "rules on text only (not a ceiling)",
                                  "rules on images only (not a ceiling)")):
            if name in floors:
                ax.axhline(floors[name][key], linestyle="--", color="0.3", alpha=0.4 + 0.2 * i,
                           label=f"{name}: {floors[name][key]:.3f}")
        ax.set_title(f"{mode} mode, {memory} memory ({entries[0]['seeds']} seeds)")
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
    ``study.json``, ``study.md`` and ``study.png`` into ``runs_dir``.

    ``versus_concat`` and ``ablations`` in ``study.json`` are keyed by :func:`section`: the
    mode for the full memory (as before v2), ``mode-memory`` otherwise."""
    from tqdm.auto import tqdm

    if modes:
        grid = dataclasses.replace(grid, modes=tuple(m for m in grid.modes if m in modes))
    unknown = sorted(set(grid.memories) - set(MEMORIES))
    if unknown:
        raise ValueError(f"unknown decoder memory {unknown}; choose from {list(MEMORIES)}")
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
        for mode, memory in _sections(rows):
            best = max(_in(rows, mode, memory), key=lambda r: r["BLEU-4"])
            ablations[section(mode, memory)] = {"run": best["run"],
                                                "scores": modality_ablation(best["run"])}
    result = {"grid": dataclasses.asdict(grid), "rows": rows, "summary": summarise(rows),
              "versus_concat": {section(m, mem): paired_differences(rows, m, mem)
                                for m, mem in _sections(rows)},
              "ablations": ablations}
    (runs_dir / "study.json").write_text(json.dumps(result, indent=2))
    (runs_dir / "study.md").write_text(markdown(rows, ablations))
    plot(rows, runs_dir / "study.png")
    return result
