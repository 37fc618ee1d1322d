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

from cmar.bench import TARGETS as BENCH_TARGETS
from cmar.config import load_config


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="preset name (smoke, default, storyreasoning) or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. data.k=4")


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
    from cmar.models.hf import tokenizers_for

    cfg = load_config(args.config, args.overrides)
    data = prepare_data(cfg.data, **tokenizers_for(cfg.model))
    summary = data.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
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
                           bootstrap=args.bootstrap)
    print(render(metrics))
    print(f"\nwritten: {run_dir}/metrics.json, predictions.jsonl, report.md")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cmar.data import decode, prepare_data
    from cmar.evaluation.run import load_run
    from cmar.models.hf import tokenizers_for

    cfg, tokenizer, model = load_run(args.run_dir)
    if args.images or args.captions:
        from cmar.evaluation.own_story import own_story_caption

        caption = own_story_caption(cfg, tokenizer, model, args.images or [],
                                    args.captions or [], args.strategy, args.beam)
        for t, (image, text) in enumerate(zip(args.images, args.captions, strict=True)):
            print(f"  frame {t + 1} ({image}): {text}")
        print(f"  predicted frame {len(args.images) + 1}: {caption}")
        return 0
    data = prepare_data(cfg.data, splits=(args.split,), progress=False,
                        **tokenizers_for(cfg.model, tokenizer))
    dataset = data.datasets[args.split]
    stories = data.stories[args.split]
    index = args.window % len(dataset)
    window = dataset.windows[index]
    batch = data.loader(args.split, shuffle=False, batch_size=1, num_workers=0)
    batch = batch.collate_fn([dataset[index]])
    ids = model.generate(batch, args.strategy, beam_size=args.beam)[0]
    story = stories[window.story]
    print(f"story {story.story_id}, predicting frame {window.t + 1} from frames "
          f"{window.t - window.k + 1}..{window.t}:")
    for t in window.context:
        print(f"  frame {t + 1}: {story.captions[t]}")
    print(f"  predicted: {decode(tokenizer, ids)}")
    print(f"  reference: {story.captions[window.t]}")
    return 0


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
    from cmar.bench import bench_all, render, run_target

    if args.target == "all":
        bench_all(args.out, repeats=args.repeats)
        print(f"written: {args.out}/*.json")
        return 0
    result = run_target(args.target, args.config, args.overrides, batches=args.batches,
                        repeats=args.repeats, workers=args.workers, beam=args.beam,
                        batch_size=args.batch_size, checkpoint=args.checkpoint,
                        workloads=args.workload, out_dir=args.out, keep_data=args.keep_data)
    print(render(result))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    import dataclasses

    from cmar.study import GRIDS, run_study

    grid = GRIDS[args.grid]
    changes = {k: tuple(v) for k, v in (("fusions", args.fusions), ("decoders", args.decoders),
                                         ("memories", args.memories), ("seeds", args.seeds))
               if v}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    grid = dataclasses.replace(grid, **changes, overrides=tuple(args.overrides))
    result = run_study(grid, args.runs_dir, modes=tuple(args.only_mode or ()),
                       ablate=not args.no_ablation)
    print((Path(args.runs_dir) / "study.md").read_text())
    print(f"{len(result['rows'])} runs; written: {args.runs_dir}/study.json, study.md, "
          "study.png")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from cmar.probe import DEFAULT_EPOCHS, render_result, run_probe, save_result

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_dir:
        from cmar.region_probe import render_region_probe, run_region_probe

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmar", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="load every split and print the dataset summary")
    _add_config_args(data)
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(run=cmd_data)

    train = commands.add_parser("train", help="train a model into runs/<name>/")
    _add_config_args(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--overwrite", action="store_true",
                       help="delete an existing run folder of the same name first")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="score a run: captions, floors, alignment")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--split", help="default: the run's eval.split (test)")
    evaluate.add_argument("--strategy", choices=["greedy", "beam", "sample"])
    evaluate.add_argument("--beam", type=int, help="beam size for --strategy beam")
    evaluate.add_argument("--meteor", action="store_true", default=None,
                          help="also METEOR (needs Java); default: the run's eval.meteor")
    evaluate.add_argument("--tokenizer", choices=["python", "ptb"],
                          help="how the metrics split words (ptb needs Java); "
                               "default: the run's eval.tokenizer")
    evaluate.add_argument("--bootstrap", type=int, metavar="N",
                          help="story resamples for the 95%% intervals (0: none); "
                               "default: the run's eval.bootstrap")
    evaluate.set_defaults(run=cmd_evaluate)

    generate = commands.add_parser("generate", help="print one window's context and prediction, "
                                                    "or the next caption of your own frames")
    generate.add_argument("run_dir")
    generate.add_argument("--split", default="test")
    generate.add_argument("--window", type=int, default=0, help="window number in the split")
    generate.add_argument("--strategy", default="beam", choices=["greedy", "beam", "sample"])
    generate.add_argument("--beam", type=int, default=5)
    generate.add_argument("--images", nargs="+", metavar="IMAGE",
                          help="your own story: the k frames (any format or size PIL reads)")
    generate.add_argument("--captions", nargs="+", metavar="CAPTION",
                          help="... and their k captions, in the same order")
    generate.set_defaults(run=cmd_generate)

    model = commands.add_parser("model", help="build the configured model, print parameters")
    _add_config_args(model)
    model.set_defaults(run=cmd_model)

    study = commands.add_parser("study", help="fusion x decoder x decoder memory x seed "
                                             "ablation study")
    study.add_argument("--grid", default="readme", choices=["smoke", "readme", "full", "v2"],
                       help="smoke: 2 runs, seconds; readme: the README's study, 54 runs of 3 "
                            "epochs; full: the same 54 at the preset's epochs (8); v2: 90 runs "
                            "of next mode, 3 epochs, decoder memory story vs full, 5 seeds")
    study.add_argument("--runs-dir", default="runs/study")
    study.add_argument("--fusions", nargs="+", choices=["concat", "cross", "cmar", "cmar_lite"])
    study.add_argument("--decoders", nargs="+", choices=["lstm", "gru", "transformer"])
    study.add_argument("--memories", nargs="+", choices=["story", "words", "full"],
                       help="what the decoder attends over: story: the story states only; "
                            "words: + context words; full: + words and regions (every grid's "
                            "default but v2's)")
    study.add_argument("--seeds", nargs="+", type=int)
    study.add_argument("--epochs", type=int, help="override the grid's epochs")
    study.add_argument("--only-mode", nargs="+", choices=["next", "grounded"],
                       help="train only these modes' cells (to share a grid between "
                            "processes; runs already trained are read back)")
    study.add_argument("--no-ablation", action="store_true",
                       help="skip the modality ablations of the best run")
    study.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config value in every run")
    study.set_defaults(run=cmd_study)

    probe = commands.add_parser("probe", help="can a small CNN read the ShapeStories facing "
                                             "dot? accuracy beside chance and floors")
    _add_config_args(probe)
    probe.add_argument("--image-size", type=int, help="frame size in pixels (data.image_size)")
    probe.add_argument("--epochs", type=int, default=None,
                       help="training epochs (default: cmar.probe.DEFAULT_EPOCHS)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's "
                       "default); 1 keeps the result reproducible and the machine shared")
    probe.add_argument("--out", default="runs/probe", help="folder for the JSON result")
    probe.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                       help="probe a trained run instead: do its region features under each "
                       "character hold its facing? (linear probe beside an untrained model "
                       "and the stand-only floor; JSON in RUN_DIR)")
    probe.set_defaults(run=cmd_probe)

    bench = commands.add_parser("bench", help="benchmarks")
    bench.add_argument("target", choices=[*BENCH_TARGETS, "all"],
                       help="what to measure; all: every table in about 9 minutes on 2 cores "
                            "(pretrained: a preset's memory and time on stand-ins of its hf: "
                            "parts, estimated; config default: storyreasoning-clip)")
    _add_config_args(bench)
    bench.add_argument("--batches", type=int, default=50,
                       help="loader: batches timed; train: training steps timed")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                       help="loader: DataLoader worker counts to compare side by side")
    bench.add_argument("--beam", type=int, default=5, help="decode: beam size")
    bench.add_argument("--batch-size", type=int, default=64, help="decode: windows per batch")
    bench.add_argument("--checkpoint", help="decode: a saved model (default: untrained)")
    bench.add_argument("--workload", nargs="+", default=["demo"],
                       choices=["demo", "storyreasoning-sized"],
                       help="memory: what to run in a child process and measure")
    bench.add_argument("--keep-data", action="store_true",
                       help="memory: keep the generated dataset and caches (deleted by default; "
                            "14 GB for storyreasoning-sized)")
    bench.add_argument("--out", default="runs/bench", help="folder for the JSON results")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (KeyError, ValueError, OSError, RuntimeError, FloatingPointError) as error:
        print(f"cmar: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
