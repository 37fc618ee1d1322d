"""Command line: ``cmar train``, ``cmar evaluate``, ``cmar generate``, ``cmar data`` (dataset
summary), ``cmar model`` (parameter counts), ``cmar bench TARGET|all`` (speed, memory and
FLOPs), ``cmar study`` (the ablation study), ``cmar probe`` (can the facing dot be read?).

Every command takes ``--config PRESET_OR_FILE`` and any number of ``--set key.sub=value``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cmar.config import DEVICES, METRIC_TOKENIZERS, MODES, STRATEGIES, load_config
from cmar.research.bench.runner import TARGETS as BENCH_TARGETS

# `cmar study --grid`: no default, since all but smoke train for hours
STUDY_GRIDS = {"smoke": "2 runs, seconds",
               "readme": "the README's study, 54 runs of 3 epochs",
               "full": "the same 54 at the preset's epochs (8)",
               "v2": "90 runs of next mode, 3 epochs, decoder memory story vs full, 5 seeds",
               "v3": "15 runs of next mode, 8 epochs, story-only memory, the look-ahead before "
                     "the fusion, 5 seeds"}
STUDY_GRIDS_HELP = "; ".join(f"{name}: {what}" for name, what in STUDY_GRIDS.items()) + "."


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose error for a missing required argument ends with
    ``missing_hint`` (e.g. the choices of ``cmar study --grid``, which has no default)."""

    missing_hint = ""

    def error(self, message: str):
        if self.missing_hint and message.startswith("the following arguments are required"):
            message = f"{message}; {self.missing_hint}"
        super().error(message)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="The preset (smoke, default, long, storyreasoning or "
                             "storyreasoning-clip) or YAML file to read the config from "
                             "(default: %(default)s).")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Override one config value, e.g. data.k=4 or "
                                                  "device=cpu; repeat it for several.")


def _add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", dest="plugins", action="append", default=[],
                        metavar="FILE.py",
                        help="Import this Python file first, so the parts it registers (e.g. "
                             "@FUSIONS.register(\"film\")) can be named in the config; "
                             "repeat it for several.")


def load_plugins(paths: list[str]) -> list[str]:
    """Import each file of ``paths`` as a module, in order, so the parts it registers exist
    before the config is checked; a file already imported (``main`` called twice in one
    process) is not imported again. Returns the module names."""
    import hashlib
    import importlib.util

    names = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"--plugin {path}: no such file")
        where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"cmar_plugin_{path.stem}_{where}"
        names.append(name)
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return names


def _print_summary(summary: dict) -> None:
    print(f"source: {summary['source']}   k={summary['k']}   mode={summary['mode']}   "
          f"vocabulary: {summary['vocabulary']} tokens")
    header = f"{'split':<11}{'stories':>8}{'frames':>8}{'windows':>9}  {'frames/story':<18}"
    print(header + f"{'words/caption':>14}  skipped")
    for split, row in summary["splits"].items():
        skipped = ", ".join(f"{k}={v}" for k, v in row["skipped"].items()) or "0"
        print(f"{split:<11}{row['stories']:>8}{row['frames']:>8}{row['windows']:>9}  "
              f"{row['frames_per_story']:<18}{row['caption_words_mean']:>14}  {skipped}")
    cap = summary["max_tokens"]
    cuts = [f"{split}: {row['targets_cut']} of {row['targets']} targets cut at {cap} tokens"
            for split, row in summary["splits"].items() if row["targets_cut"]]
    print("\n".join(cuts) or f"no target is cut at {cap} tokens")


def cmd_data(args: argparse.Namespace) -> int:
    from cmar.data import prepare_data
    from cmar.data.prepare import cut_targets_warning
    from cmar.models.hf import tokenizers_for

    cfg = load_config(args.config, args.overrides)
    data = prepare_data(cfg.data, **tokenizers_for(cfg.model))
    summary = data.summary()
    warning = cut_targets_warning(summary, cfg.data.caption_policy)
    if args.json:
        print(json.dumps(summary, indent=2))
        if warning:  # stdout stays JSON
            print(f"WARNING: {warning}", file=sys.stderr)
    else:
        _print_summary(summary)
        if warning:
            print(f"WARNING: {warning}")
        example = data.datasets["train"][0]
        story = data.stories["train"][0]
        print(f"\nexample window {example['window_id']}:")
        for t in range(cfg.data.k):
            print(f"  context frame {t + 1}: {story.captions[t]}")
        print(f"  target  frame {cfg.data.k + 1}: {story.captions[cfg.data.k]}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cmar.processes import leave_process_group
    from cmar.train import train

    try:
        if args.resume:
            run_dir = train(None, resume_dir=args.resume)
        else:
            cfg = load_config(args.config, args.overrides)
            run_dir = train(cfg, overwrite=args.overwrite)
    finally:
        leave_process_group()  # under torchrun: every process leaves the group before exiting
    if int(os.environ.get("RANK", 0)) == 0:  # one line, not one per process
        print(f"run folder: {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cmar.evaluation.report import render
    from cmar.evaluation.run import evaluate_run

    run_dir = Path(args.run_dir)
    metrics = evaluate_run(run_dir, split=args.split, strategy=args.strategy,
                           beam_size=args.beam, meteor=args.meteor, tokenizer=args.tokenizer,
                           bootstrap=args.bootstrap, device=args.device)
    print(render(metrics))
    print(f"\nwritten: {run_dir / 'metrics.json'}, predictions.jsonl, report.md")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cmar.data import decode, prepare_data
    from cmar.evaluation.run import load_run
    from cmar.models.hf import tokenizers_for

    cfg, tokenizer, model = load_run(args.run_dir)
    # decoded as `cmar evaluate` decodes: the run's eval section, unless told otherwise
    strategy = args.strategy or cfg.eval.strategy
    beam = args.beam or cfg.eval.beam_size
    if args.images or args.captions:
        from cmar.evaluation.own_story import own_story_caption

        caption = own_story_caption(cfg, tokenizer, model, args.images or [],
                                    args.captions or [], strategy, beam)
        for t, (image, text) in enumerate(zip(args.images, args.captions, strict=True)):
            print(f"  frame {t + 1} ({image}): {text}")
        print(f"  predicted frame {len(args.images) + 1}: {caption}")
        _note_empty(caption, strategy)
        return 0
    data = prepare_data(cfg.data, splits=(args.split,), progress=False,
                        **tokenizers_for(cfg.model, tokenizer))
    dataset = data.datasets[args.split]
    stories = data.stories[args.split]
    index = args.window % len(dataset)
    window = dataset.windows[index]
    batch = data.loader(args.split, shuffle=False, batch_size=1, num_workers=0)
    batch = batch.collate_fn([dataset[index]])
    ids = model.generate(batch, strategy, beam_size=beam)[0]
    story = stories[window.story]
    print(f"story {story.story_id}, predicting frame {window.t + 1} from frames "
          f"{window.t - window.k + 1}..{window.t}:")
    for t in window.context:
        print(f"  frame {t + 1}: {story.captions[t]}")
    caption = decode(tokenizer, ids)
    print(f"  predicted: {caption}")
    print(f"  reference: {story.captions[window.t]}")
    _note_empty(caption, strategy)
    return 0


def _note_empty(caption: str, strategy: str) -> None:
    """A note under an empty prediction, which would otherwise print as nothing at all."""
    if not caption.strip():
        print(f"note: the model predicted an empty caption ({strategy} decoding ended it at "
              "once, or it holds only tokens that decode to nothing): a run trained too briefly "
              "often does. Train longer (train.epochs) or try another --strategy.")


def cmd_model(args: argparse.Namespace) -> int:
    import dataclasses

    from cmar.data import prepare_data
    from cmar.models import FUSIONS, build_model
    from cmar.models.hf import tokenizers_for

    cfg = load_config(args.config, args.overrides)
    data = prepare_data(cfg.data, splits=("train",), progress=False, **tokenizers_for(cfg.model))
    model = build_model(cfg.model, data.tokenizer, cfg.data)
    print(f"model: {cfg.model.image_encoder} + {cfg.model.text_encoder} text + "
          f"{cfg.model.fusion} fusion + {cfg.model.story_encoder} story + "
          f"{cfg.model.decoder} decoder, d_model={cfg.model.d_model}, mode={cfg.data.mode}")
    for part, count in model.parameter_counts().items():
        print(f"  {part:<15}{count:>12,}")
    print("fusion parameter budgets (matched to cmar):")
    for name in sorted(FUSIONS):
        other = build_model(dataclasses.replace(cfg.model, fusion=name), data.tokenizer, cfg.data)
        print(f"  {name:<15}{other.parameter_counts()['fusion']:>12,}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cmar.research.bench.runner import bench_all, render, run_target

    if args.target == "all":
        bench_all(args.out, repeats=args.repeats)
        print(f"written: {Path(args.out) / '*.json'}")
        return 0
    result = run_target(args.target, args.config, args.overrides, batches=args.batches,
                        repeats=args.repeats, workers=args.workers, beam=args.beam,
                        batch_size=args.batch_size, checkpoint=args.checkpoint,
                        workloads=args.workload, out_dir=args.out, keep_data=args.keep_data)
    print(render(result))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    import dataclasses

    from cmar.research.study.grid import GRIDS, run_study

    grid = GRIDS[args.grid]
    changes = {k: tuple(v) for k, v in (("fusions", args.fusions), ("decoders", args.decoders),
                                         ("memories", args.memories), ("seeds", args.seeds))
               if v}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    # the grid's own overrides first (v3's), then the command line's
    grid = dataclasses.replace(grid, **changes,
                               overrides=(*grid.overrides, *args.overrides))
    result = run_study(grid, args.runs_dir, modes=tuple(args.only_mode or ()),
                       ablate=not args.no_ablation)
    print((Path(args.runs_dir) / "study.md").read_text())
    print(f"{len(result['rows'])} runs; written: {Path(args.runs_dir) / 'study.json'}, study.md, "
          "study.png")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from cmar.research.probes.facing import DEFAULT_EPOCHS, render_result, run_probe, save_result

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_dir:
        from cmar.research.probes.region import render_region_probe, run_region_probe

        result = run_region_probe(args.run_dir, seed=args.seed)
        print(render_region_probe(result))
        out = Path(args.run_dir) / "region_probe.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"written: {out}")
        return 0
    epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
    result = run_probe(args.config, args.overrides, image_size=args.image_size,
                       epochs=epochs, seed=args.seed)
    print(render_result(result))
    print(f"written: {save_result(result, args.out)}")
    return 0


def _command(commands, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows ``description`` as written (its examples too)."""
    parser = commands.add_parser(name, help=help, description=description, add_help=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmar", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, evaluate and inspect CMAR models, which write the next caption of a\n"
                    "visual story from its first k frames and their captions. Each command\n"
                    "that reads a config takes --config PRESET_OR_FILE and any number of\n"
                    "--set key.sub=value; `cmar COMMAND --help` describes a command.")
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Log at INFO level (by default only warnings are shown).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser,
                                     help="The command to run, one of those below.")

    data = _command(commands, "data", "Load every split and print the dataset summary.", """\
Load every split of the configured dataset (generating or downloading it on
first use) and print its summary: stories, frames, windows and caption lengths
per split, then one example window. Nothing is written but the data cache
(data.cache_dir).

example:
  cmar data --config smoke --set data.k=4""")
    _add_config_args(data)
    data.add_argument("--json", action="store_true",
                      help="Print the summary as JSON instead of a table.")
    data.set_defaults(run=cmd_data)

    train = _command(commands, "train", "Train a model into runs/<name>/ or continue a "
                                        "stopped run.", """\
Train a model on the configured dataset into its run folder, runs_dir/name
(runs/<name>/ by default): config.yaml, the tokenizer, best.pt and last.pt,
history.json and loss_curves.png. A stopped run continues exactly where it
stopped with --resume. It runs on the config key device (auto: CUDA, else MPS,
else the CPU).

examples:
  cmar train --config smoke
  cmar train --config default --set train.epochs=12 --set device=cpu
  cmar train --resume runs/default""")
    _add_config_args(train)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="Continue the stopped run in RUN_DIR with its own config.")
    train.add_argument("--overwrite", action="store_true",
                       help="Delete an existing run folder of the same name first.")
    _add_plugin_arg(train)
    train.set_defaults(run=cmd_train)

    evaluate = _command(commands, "evaluate", "Score a trained run: its captions beside the "
                                              "floors, and its alignment.", """\
Generate the next caption of every window of a split with a trained run, score
the captions at corpus level beside the floors (copy last caption, nearest
neighbour, ...) and measure the alignment scores. Writes metrics.json,
predictions.jsonl and report.md into the run folder, and prints the report.

example:
  cmar evaluate runs/smoke --strategy beam --beam 5""")
    evaluate.add_argument("run_dir", help="The run folder to score (written by cmar train).")
    evaluate.add_argument("--split", help="The split to score (default: the run's eval.split, "
                                          "test).")
    evaluate.add_argument("--strategy", choices=STRATEGIES,
                          help="How captions are decoded (default: the run's eval.strategy).")
    evaluate.add_argument("--beam", type=int, help="The beam size for --strategy beam "
                                                   "(default: the run's eval.beam_size).")
    evaluate.add_argument("--meteor", action="store_true", default=None,
                          help="Also score METEOR, which needs Java (default: the run's "
                               "eval.meteor).")
    evaluate.add_argument("--tokenizer", choices=METRIC_TOKENIZERS,
                          help="How the metrics split words; ptb needs Java (default: the "
                               "run's eval.tokenizer).")
    evaluate.add_argument("--bootstrap", type=int, metavar="N",
                          help="Resample the stories N times for the 95%% intervals, 0 for "
                               "none (default: the run's eval.bootstrap).")
    evaluate.add_argument("--device", choices=list(DEVICES),
                          help="Run on this device instead of the one the run's config key "
                               "device names (auto: CUDA, else MPS, else the CPU).")
    _add_plugin_arg(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    generate = _command(commands, "generate", "Print the caption a run predicts for one "
                                              "window, or after your own frames.", """\
Load a trained run and print one window of a split (its context captions, the
predicted next caption and the reference), or, with --images and --captions,
the caption predicted after your own k frames. Nothing is written.

examples:
  cmar generate runs/smoke --window 3
  cmar generate runs/smoke --images 1.png 2.png 3.png --captions "A" "B" "C"
""")
    generate.add_argument("run_dir", help="The run folder to load (written by cmar train).")
    generate.add_argument("--split", default="test",
                          help="The split to take the window from (default: %(default)s).")
    generate.add_argument("--window", type=int, default=0,
                          help="The window's number in the split (default: %(default)s).")
    generate.add_argument("--strategy", choices=STRATEGIES,
                          help="How the caption is decoded (default: the run's eval.strategy, "
                               "as cmar evaluate decodes).")
    generate.add_argument("--beam", type=int,
                          help="The beam size for --strategy beam (default: the run's "
                               "eval.beam_size).")
    generate.add_argument("--images", nargs="+", metavar="IMAGE",
                          help="Your own story's k frames, in story order (any format or size "
                               "PIL reads).")
    generate.add_argument("--captions", nargs="+", metavar="CAPTION",
                          help="The k captions of those frames, in the same order.")
    _add_plugin_arg(generate)
    generate.set_defaults(run=cmd_generate)

    model = _command(commands, "model", "Build the configured model and print its parameter "
                                        "counts.", """\
Build the configured model (after training its tokenizer on the training
split) and print the parameters of each part, then the fusion part of every
fusion, whose budgets are matched to cmar's. Nothing is written but the data
cache.

example:
  cmar model --config default --set model.fusion=cross""")
    _add_config_args(model)
    _add_plugin_arg(model)
    model.set_defaults(run=cmd_model)

    study = _command(commands, "study", "Run the ablation study: fusion x decoder x decoder "
                                        "memory x seed.", """\
Train and evaluate every run of a grid (fusion x decoder x decoder memory x
seed, per mode), then the modality ablations of the best runs. Writes one run
folder per cell under --runs-dir and study.json, study.md and study.png beside
them; a run already trained with the same config is read back, not retrained.

example:
  cmar study --grid smoke --runs-dir runs/study-smoke""")
    study.add_argument("--grid", required=True, choices=list(STUDY_GRIDS),
                       help="The grid to run (required: the big ones take hours). "
                            + STUDY_GRIDS_HELP)
    study.missing_hint = f"choose one with --grid: {STUDY_GRIDS_HELP}"
    study.add_argument("--runs-dir", default="runs/study",
                       help="The folder of the study's runs and results (default: "
                            "%(default)s).")
    study.add_argument("--fusions", nargs="+", metavar="FUSION",
                       help="Use these fusions instead of the grid's: any registered fusion "
                            "(cmar, cmar_lite, cross, concat, or one of your own).")
    study.add_argument("--decoders", nargs="+", metavar="DECODER",
                       help="Use these decoders instead of the grid's: any registered decoder "
                            "(transformer, lstm, gru, or one of your own).")
    study.add_argument("--memories", nargs="+", choices=["story", "words", "full"],
                       help="Use these decoder memories instead of the grid's; they say what "
                            "the decoder attends over. story: the story states only; words: "
                            "also the context words; full: the words and the regions (every "
                            "grid's default but v2's).")
    study.add_argument("--seeds", nargs="+", type=int,
                       help="Use these seeds instead of the grid's.")
    study.add_argument("--epochs", type=int,
                       help="Train every run for this many epochs instead of the grid's.")
    study.add_argument("--only-mode", nargs="+", choices=MODES,
                       help="Train only these modes' runs, to share a grid between processes "
                            "(runs already trained are read back).")
    study.add_argument("--no-ablation", action="store_true",
                       help="Skip the modality ablations of the best runs.")
    study.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="Override a config value in every run, e.g. "
                                                 "device=cpu; repeat it for several.")
    _add_plugin_arg(study)
    study.set_defaults(run=cmd_study)

    probe = _command(commands, "probe", "Measure whether a small CNN can read the ShapeStories "
                                        "facing dot.", """\
Train a small CNN to read which way ShapeStories characters face (their dot)
and print its accuracy beside chance and the floors; with --run, probe a
trained run's region features instead. Writes the JSON result into --out, or
region_probe.json into the run folder with --run.

examples:
  cmar probe --config default --epochs 5
  cmar probe --run runs/default""")
    _add_config_args(probe)
    probe.add_argument("--image-size", type=int,
                       help="The frame size in pixels (default: the config's data.image_size).")
    probe.add_argument("--epochs", type=int, default=None,
                       help="The probe's training epochs (default: "
                            "cmar.research.probes.facing.DEFAULT_EPOCHS).")
    probe.add_argument("--seed", type=int, default=0,
                       help="The probe's random seed (default: %(default)s).")
    probe.add_argument("--threads", type=int, default=1,
                       help="Torch CPU threads, 0 for torch's default; 1 keeps the result "
                            "reproducible and the machine shared (default: %(default)s).")
    probe.add_argument("--out", default="runs/probe",
                       help="The folder for the JSON result (default: %(default)s).")
    probe.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                       help="Probe a trained run instead: do its region features under each "
                            "character hold its facing? A linear probe beside an untrained "
                            "model and the stand-only floor; the JSON goes into RUN_DIR.")
    _add_plugin_arg(probe)
    probe.set_defaults(run=cmd_probe)

    bench = _command(commands, "bench", "Measure speed, memory and FLOPs: one target, or all "
                                        "of them.", """\
Benchmark one target and print its result table, or run every target. Writes
the JSON results into --out (TARGET.json, or one file per target and all.json).

examples:
  cmar bench loader --workers 0 2
  cmar bench decode --beam 5 --checkpoint runs/smoke/best.pt
  cmar bench all""")
    bench.add_argument("target", choices=[*BENCH_TARGETS, "all"],
                       help="What to measure, or all: every table, in about 9 minutes on 2 "
                            "cores. pretrained estimates a preset's memory and time on "
                            "stand-ins of its hf: parts (its config default: "
                            "storyreasoning-clip).")
    _add_config_args(bench)
    bench.add_argument("--batches", type=int, default=50,
                       help="How many batches (loader) or training steps (train) are timed "
                            "(default: %(default)s).")
    bench.add_argument("--repeats", type=int, default=3,
                       help="How many times each measurement is repeated (default: "
                            "%(default)s).")
    bench.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                       help="The DataLoader worker counts compared side by side (loader; "
                            "default: 0 2).")
    bench.add_argument("--beam", type=int, default=5,
                       help="The beam size (decode; default: %(default)s).")
    bench.add_argument("--batch-size", type=int, default=64,
                       help="The windows per batch (decode; default: %(default)s).")
    bench.add_argument("--checkpoint",
                       help="A saved model to decode with (decode; default: an untrained one).")
    bench.add_argument("--workload", nargs="+", default=["demo"],
                       choices=["demo", "storyreasoning-sized"],
                       help="What to run in a child process and measure (memory; default: "
                            "demo).")
    bench.add_argument("--keep-data", action="store_true",
                       help="Keep the generated dataset and caches (memory; by default they "
                            "are deleted: 14 GB for the storyreasoning-sized workload).")
    bench.add_argument("--out", default="runs/bench",
                       help="The folder for the JSON results (default: %(default)s).")
    _add_plugin_arg(bench)
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        load_plugins(getattr(args, "plugins", []))
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (KeyError, ValueError, OSError, RuntimeError, FloatingPointError) as error:
        print(f"cmar: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
