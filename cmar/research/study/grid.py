"""The ablation study: fusion x decoder x decoder memory x seed (x mode), each run trained,
evaluated with free-running decoding at corpus level, and summarised as mean and spread beside
the floors and the oracle, plus modality ablations of the best model. ``cmar study``.

The memory axis (``MEMORIES``) decides what the decoder attends over. With the words and
regions of every context frame in its memory the decoder can read them directly and bypass
the fused frame vector, so the fusions are compared fairly only with the story states alone
(``"story"``); the ``v2`` grid sets that beside today's ``"full"`` memory.

Runs are cached by folder (:func:`cmar.experiment.runs.trained_run`, as
:func:`cmar.experiment.compare` does): a run whose ``metrics.json`` exists and whose saved
config equals the requested one is read back, not retrained, so an interrupted study
continues where it stopped and two processes can share a grid (``--only-mode``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cmar.config import Config, load_config
from cmar.experiment.runs import history_of, trained_run
from cmar.research.study.report import markdown, plot
from cmar.research.study.table import (
    MEMORIES,
    paired_differences,
    rows_in,
    section,
    sections_of,
    summarise,
)

# The arms of the README's study; a grid may name any registered part instead (a fusion or
# decoder registered in a notebook included): load_config checks each name
FUSIONS = ("concat", "cross", "cmar")
DECODERS = ("lstm", "gru", "transformer")

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
    # the same 54 runs at the preset's epochs (8 for default): hours on a CPU, minutes on a GPU
    "full": Grid(),
    # 90 runs (2 memories x 3 fusions x 3 decoders x 5 seeds), next mode, 3 epochs: the fusions
    # compared with the story states as the decoder's only memory, beside the full memory
    "v2": Grid(memories=("story", "full"), seeds=(0, 1, 2, 3, 4), modes=("next",), epochs=3),
    # 15 runs (3 fusions x 5 seeds), next mode, the preset's 8 epochs, the transformer decoder:
    # the fusions with the look-ahead recipe and the story states as the only memory. The
    # look-ahead sits before the fusion there (look_ahead_turn=false): placed after the story
    # encoder it refines regions that a story-only memory never reads, so what it finds
    # reaches the caption only through the fusion under test
    "v3": Grid(fusions=FUSIONS, decoders=("transformer",), memories=("story",),
               seeds=(0, 1, 2, 3, 4), modes=("next",),
               overrides=("model.look_ahead=true", "model.look_ahead_turn=false")),
}


def run_name(mode: str, memory: str, fusion: str, decoder: str, seed: int) -> str:
    """``next-cmar-gru-s0`` for the full memory (the name every study before v2 used, so
    their run folders are read back), ``next-story-cmar-gru-s0`` otherwise."""
    if memory == "full":
        return f"{mode}-{fusion}-{decoder}-s{seed}"
    return f"{mode}-{memory}-{fusion}-{decoder}-s{seed}"


def run_config(grid: Grid, mode: str, memory: str, fusion: str, decoder: str, seed: int,
               runs_dir: str | Path) -> Config:
    tokens, regions = MEMORIES[memory]
    sets = [f"name={run_name(mode, memory, fusion, decoder, seed)}", f"runs_dir={runs_dir}",
            f"seed={seed}", f"data.mode={mode}", f"model.fusion={fusion}",
            f"model.decoder={decoder}", f"model.memory_tokens={str(tokens).lower()}",
            f"model.memory_regions={str(regions).lower()}"]
    if not tokens:  # the copy head copies the memory's words: none to copy without them
        sets.append("model.copy_tokens=false")
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

def row_of(metrics: dict, history: list[dict] | None = None) -> dict:
    """The study's numbers from one run's metrics.json and history.json (NaN where a run has
    none: a group too small a split skips, concat's grounding, or a file an older cmar wrote).
    ``train seconds`` sums the epochs' training time (wall clock: compare runs trained on the
    same machine with the same threads)."""
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
            "grounding": number(grounding),
            "train seconds": number(sum(e["train_seconds"] for e in history) if history
                                    else None)}


def run_cell(grid: Grid, cell: tuple[str, str, str, str, int], runs_dir: str | Path,
             progress: bool = False) -> dict:
    """Train and evaluate one cell (or read it back: :func:`cmar.experiment.runs.trained_run`);
    its row of numbers and floors."""
    mode, memory, fusion, decoder, seed = cell
    run_dir, metrics = trained_run(run_config(grid, *cell, runs_dir), progress=progress)
    floors = {name: {"BLEU-4": s["BLEU-4"], "CIDEr": s["CIDEr"]}
              for name, s in metrics["captions"].items() if name != "model"}
    return {"mode": mode, "memory": memory, "fusion": fusion, "decoder": decoder, "seed": seed,
            "run": str(run_dir), **row_of(metrics, history_of(run_dir)), "floors": floors}


def modality_ablation(run_dir: str | Path, split: str = "test") -> dict[str, dict]:
    """A trained run re-scored with nothing, its images, then its captions blanked: the
    controls of :mod:`cmar.experiment.controls`, scored as :func:`cmar.experiment.compare`
    scores them (free-running with the run's eval strategy, references cut as trained)."""
    from cmar.experiment.controls import resolve
    from cmar.experiment.scoring import ScoredRun

    conditions = {"nothing blanked": "none", "images blanked": "images_blanked",
                  "captions blanked": "captions_blanked"}
    rows = ScoredRun(run_dir, split, progress=False).rows(
        resolve(("images_blanked", "captions_blanked"), k=1))
    return {name: {"BLEU-4": rows[label]["BLEU-4"], "CIDEr": rows[label]["CIDEr-D"]}
            for name, label in conditions.items()}


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
    todo = cells(grid)
    for cell in todo:  # every cell's config is checked (a part name unknown to the registries
        run_config(grid, *cell, runs_dir)  # included) before the first run trains
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(todo, desc="study", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(run_name(*cell))
        rows.append(run_cell(grid, cell, runs_dir))
    ablations = {}
    if ablate:
        for mode, memory in sections_of(rows):
            best = max(rows_in(rows, mode, memory), key=lambda r: r["BLEU-4"])
            ablations[section(mode, memory)] = {"run": best["run"],
                                                "scores": modality_ablation(best["run"])}
    result = {"grid": dataclasses.asdict(grid), "rows": rows, "summary": summarise(rows),
              "versus_concat": {section(m, mem): paired_differences(rows, m, mem)
                                for m, mem in sections_of(rows)},
              "versus_concat_place": {section(m, mem): paired_differences(rows, m, mem,
                                                                          key="slot place")
                                      for m, mem in sections_of(rows)},
              "ablations": ablations}

    (runs_dir / "study.json").write_text(json.dumps(result, indent=2))
    (runs_dir / "study.md").write_text(markdown(rows, ablations))
    plot(rows, runs_dir / "study.png")
    return result
