"""Writes notebooks/01..06 from the cell sources below (outputs are added by executing them:
``make notebooks``). Edit here, run ``python tools/make_notebooks.py [05_ablations ...]``
(only the named ones are rewritten, and lose their outputs), then re-execute them.

``python tools/make_notebooks.py --links`` rewrites only the Colab badge and install cell of
every notebook, outputs kept: run it after changing the repository address, which lives in one
place, ``[project.urls] Repository`` in pyproject.toml.

``python tools/make_notebooks.py --check [05_ablations ...]`` writes nothing: it exits non-zero
when a committed notebook's cells (type, source, the tags set here) differ from what this file
would write, naming each differing cell with a diff of the first; outputs and execution counts
are not compared. ``--notebooks DIR`` reads and writes DIR instead of notebooks/."""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"


def repository() -> str:
    """``owner/name`` from pyproject.toml's ``[project.urls] Repository``."""
    found = re.search(r'^Repository\s*=\s*"https://github\.com/([^"]+?)/?"',
                      (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    if not found:
        raise SystemExit("pyproject.toml has no [project.urls] Repository = "
                         "\"https://github.com/OWNER/NAME\"")
    return found.group(1)


REPO = repository()  # where the badges and the Colab install cells point


def header(number: str, title: str, teaches: str) -> list:
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{number}.ipynb)")
    install = (
        "# On Colab only: install cmar (elsewhere `make demo` or `pip install -e .` did it).\n"
        "# A cmar wheel beside the notebook (cmar-*.whl, e.g. uploaded) is installed first;\n"
        "# otherwise the repository's main branch.\n"
        "import glob\nimport importlib.util\nimport subprocess\nimport sys\n\n"
        "on_colab = importlib.util.find_spec(\"google\") is not None and \\\n"
        "    importlib.util.find_spec(\"google.colab\") is not None\n"
        "if on_colab and importlib.util.find_spec(\"cmar\") is None:\n"
        "    wheels = sorted(glob.glob(\"cmar-*.whl\"))\n"
        f"    target = wheels[-1] if wheels else \"git+https://github.com/{REPO}\"\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", target], "
        "check=True)"
    )
    return [new_markdown_cell(f"# {title}\n\n{teaches}\n\n{badge}\n\n"
                              "Outputs committed here come from a full run on ShapeStories on a "
                              "2-core CPU (`make notebooks`). CI runs every notebook in smoke "
                              "mode (`CMAR_SMOKE=1`: tiny data, seconds)."),
            new_code_cell(install)]


def parameters(source: str):
    """The tagged first cell: SMOKE and SOURCE from the environment (CI sets both), then
    ``source``."""
    cell = new_code_cell("import os\n\nSMOKE = os.environ.get(\"CMAR_SMOKE\") == \"1\"  "
                         "# CI sets it: tiny data and model, seconds\n"
                         "# the data: \"shapestories\", \"storyreasoning\" (the hub), or a "
                         "local copy in the\n# hub's layout (data/train-*.parquet, "
                         "data/test-*.parquet)\n"
                         "SOURCE = os.environ.get(\"CMAR_SOURCE\", \"shapestories\")\n"
                         + source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def varying(source: str):
    """A cell whose output changes between runs (timings, progress): nbval skips comparing."""
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["nbval-ignore-output"]
    return cell


md, code = new_markdown_cell, new_code_cell

NOTEBOOKS = {
    "01_data": header("01_data", "01 · Data: stories, frames, windows, batches",
                      "What a story is, how the markup becomes captions, what ShapeStories "
                      "asks of a model, and the exact tensors a batch holds.") + [
        parameters('CONFIG = "smoke" if SMOKE else "default"\n'
                   'OVERRIDES = [f"data.source={SOURCE}"]'),
        code("from cmar.config import load_config\nfrom cmar.data import prepare_data\n\n"
             "cfg = load_config(CONFIG, OVERRIDES)\n"
             "data = prepare_data(cfg.data, progress=False)\nsummary = data.summary()\n"
             "for split, row in summary[\"splits\"].items():\n"
             "    print(f\"{split:<11} {row['stories']:>5} stories {row['frames']:>6} frames "
             "{row['windows']:>6} windows  skipped: {row['skipped'] or 0}\")\n"
             "print(\"vocabulary:\", summary[\"vocabulary\"], \"tokens\")"),
        md("## The markup\n\nEach story's text holds one `<gdi imageN>` segment per image. "
           "`split_frames` returns their plain text in order of N; `frame_entities` keeps the "
           "entity ids; `parse_boxes` reads the boxes of the `chain_of_thought` tables."),
        code("from cmar.data import frame_entities, open_source, parse_boxes, split_frames\n"
             "from cmar.data.prepare import shapestories_options\n\n"
             "raw = open_source(cfg.data.source, cache_dir=cfg.data.cache_dir,\n"
             "                  **shapestories_options(cfg.data))[\"train\"][0]\n"
             "print(raw[\"story\"][:600])\nprint()\n"
             "for n, (text, ids) in enumerate(zip(split_frames(raw[\"story\"]), "
             "frame_entities(raw[\"story\"])), 1):\n"
             "    print(n, text, ids)\nprint()\nprint(\"boxes of image 1:\", "
             "parse_boxes(raw[\"chain_of_thought\"])[1])"),
        md("## A story strip\n\nShapeStories: names are only in the text, where each character "
           "faces (the black dot) and who stands where are only in the images. The next caption "
           "needs both."),
        code("import matplotlib.pyplot as plt\nfrom cmar.plots import story_strip\n\n"
             "story = data.stories[\"train\"][0]\n"
             "story_strip([story.image(t) for t in range(len(story))], story.captions,\n"
             "            [f\"frame {t + 1}\" for t in range(len(story))])\nplt.show()"),
        md("## Statistics"),
        code("from collections import Counter\n\n"
             "train = data.stories[\"train\"]\n"
             "fig, axes = plt.subplots(1, 2, figsize=(9, 3))\n"
             "axes[0].hist([len(s) for s in train], bins=range(2, 25))\n"
             "axes[0].set_title(\"frames per story\")\n"
             "axes[1].hist([len(c.split()) for s in train for c in s.captions], bins=20)\n"
             "axes[1].set_title(\"words per caption\")\nplt.tight_layout()\nplt.show()\n"
             "words = Counter(w.strip('.,').lower() for s in train for c in s.captions "
             "for w in c.split())\nprint(words.most_common(15))"),
        md("## Windows and the target shift\n\nEvery frame t >= k of a story is a target, its "
           "context frames t-k .. t-1. The decoder reads `target_in` (`[BOS]` + the caption) and "
           "must predict `target_out` (the caption + `[EOS]`), the same tokens shifted by one. "
           "Tokens are byte-level BPE pieces: `Ġ` marks the space before a word, and a word the "
           "training captions never saw is spelt in smaller pieces, never `[UNK]`."),
        code("from cmar.data import decode\n\nbatch = next(iter(data.loader(\"train\", "
             "shuffle=False, num_workers=0)))\n"
             "for name, value in batch.__dict__.items():\n"
             "    if value is not None:  # a batch holds images, or cached features (frozen "
             "encoder)\n"
             "        print(f\"{name:<15}\", tuple(value.shape) if hasattr(value, \"shape\") "
             "else value[:3])\n"
             "tok = data.tokenizer\nrow_in = tok.convert_ids_to_tokens(batch.target_in[0])\n"
             "row_out = tok.convert_ids_to_tokens(batch.target_out[0])\n"
             "print(\"\\nwindow\", batch.window_ids[0])\n"
             "for i, (a, b) in enumerate(zip(row_in, row_out)):\n"
             "    print(f\"{i:>2}  input {a:<10} -> predict {b}\")"),
    ],
    "02_model": header("02_model", "02 · The model: CNN, CMAR, story encoder, decoder",
                       "The parts of `StoryModel`, the CMAR block and its two ablations, one "
                       "forward pass with every shape, and attention drawn over an image.") + [
        parameters('CONFIG = "smoke" if SMOKE else "default"\nFUSION = "cmar"  # or "cross", '
                   '"concat"\nDECODER = "lstm"  # or "gru", "transformer"\n'
                   'OVERRIDES = [f"data.source={SOURCE}", f"model.fusion={FUSION}", '
                   'f"model.decoder={DECODER}"]'),
        md("## CMAR\n\nFor one frame, image regions $V \\in \\mathbb{R}^{R\\times d}$ and caption "
           "word states $W \\in \\mathbb{R}^{L\\times d}$, repeated for $r$ rounds:\n\n"
           "$$W \\leftarrow \\mathrm{LN}(W + g_w \\odot \\mathrm{Attn}(W, V, V)),\\quad "
           "g_w = \\sigma(G_w[W; \\mathrm{Attn}(W,V,V)])$$\n\n"
           "$$V \\leftarrow \\mathrm{LN}(V + g_v \\odot \\mathrm{Attn}(V, W, W)),\\quad "
           "g_v = \\sigma(G_v[V; \\mathrm{Attn}(V,W,W)])$$\n\n"
           "then the frame vector is a projection of $[\\bar V; \\bar W]$.\n\n"
           "```\nframe image --CNN--> regions V --+            +--> frame vector --> story "
           "encoder --> memory --> decoder --> next caption\n"
           "frame caption --GRU--> words W ---+-- CMAR x r-+--> fused words, regions -----^\n"
           "```\n\n`cross` is one text-to-image pass; `concat` joins the pooled vectors. All "
           "three get the same parameter budget."),
        code("from cmar.config import load_config\nfrom cmar.data import prepare_data\n"
             "from cmar.models import build_model\n\n"
             "cfg = load_config(CONFIG, OVERRIDES)\n"
             "data = prepare_data(cfg.data, splits=(\"train\",), progress=False)\n"
             "model = build_model(cfg.model, data.tokenizer, cfg.data)\n"
             "for part, count in model.parameter_counts().items():\n"
             "    print(f\"{part:<15}{count:>12,}\")"),
        code("import dataclasses\n\nfor fusion in (\"concat\", \"cross\", \"cmar\"):\n"
             "    other = build_model(dataclasses.replace(cfg.model, fusion=fusion), "
             "data.tokenizer, cfg.data)\n"
             "    print(f\"{fusion:<8}{other.parameter_counts()['fusion']:>10,} parameters\")"),
        md("## One forward pass, every shape"),
        code("import torch\n\ntorch.manual_seed(0)\n"
             "batch = next(iter(data.loader(\"train\", shuffle=False, num_workers=0)))\n"
             "b, k = batch.context_tokens.shape[:2]\n"
             "regions, image = model.image_encoder(batch.context_images.flatten(0, 1))\n"
             "tokens, text = model.text_encoder(batch.context_tokens.flatten(0, 1), "
             "batch.context_mask.flatten(0, 1))\n"
             "enc = model.encode(batch, return_attention=True)\nout = model(batch)\n"
             "shapes = {\"context images\": batch.context_images, \"regions\": regions, "
             "\"image vector\": image,\n          \"word states\": tokens, \"fused frames\": "
             "enc.fused.frame, \"memory\": enc.memory,\n          \"logits\": out.logits, "
             "\"next-frame embedding\": out.next_pred}\n"
             "for name, value in shapes.items():\n    print(f\"{name:<22}{tuple(value.shape)}\")\n"
             "print({name: round(value.item(), 3) for name, value in out.losses.items()})"),
        md("## Attention over the image (untrained)\n\nWhere each word of a context caption "
           "looks among the image regions, averaged over CMAR rounds. Untrained, it is close to "
           "uniform; notebook 04 draws it after training."),
        code("import matplotlib.pyplot as plt\nfrom cmar.plots import attention_overlay\n\n"
             "from cmar.data import decode\n\nstory = data.stories[\"train\"][0]\n"
             "words = [decode(data.tokenizer, [i]) for i in batch.context_tokens[0, 0][batch."
             "context_mask[0, 0]]]  # one BPE piece each\n"
             "if enc.fused.attention is None:\n    print(f\"{FUSION} has no attention to draw\")\n"
             "else:\n    maps = enc.fused.attention[0].mean(0)  # (L, R) for frame 1 of window 0\n"
             "    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))\n"
             "    for ax, i in zip(axes, range(4)):\n"
             "        attention_overlay(ax, story.image(0), maps[i].detach(), words[i])\n"
             "    plt.show()"),
        md("## Swap a part for a pretrained one\n\n"
           "Any part can be a Hugging Face model, named `hf:<hub id or local folder>`: "
           "`model.image_encoder` a vision tower (CLIP, SigLIP, DINOv2, ViT: its patch tokens "
           "become the regions), `model.text_encoder` an encoder such as MiniLM (with its own "
           "tokenizer for the context captions), `model.decoder` a GPT-2-family language model "
           "that cross-attends to the story memory (its tokenizer becomes the caption "
           "tokenizer). From the command line:\n\n"
           "```\ncmar train --config default --set model.image_encoder=hf:openai/clip-vit-base-"
           "patch32 \\\n    --set model.freeze_image_encoder=true --set model.decoder=hf:gpt2 "
           "\\\n    --set model.copy_tokens=false --set train.lr=0.0001\n```\n\n"
           "Here, offline, the parts are tiny stand-ins built from their configs and written with "
           "`save_pretrained` (random weights: they show the mechanics, not what pretraining "
           "buys). With network, set `USE_HUB = True` to load the real models instead."),
        code("import tempfile\nfrom pathlib import Path\n\n"
             "import transformers\n\nfrom cmar.models.hf import stand_ins, tokenizers_for\n\n"
             "transformers.logging.set_verbosity_error()  # no load report in this notebook\n"
             "transformers.utils.logging.disable_progress_bar()\n"
             "USE_HUB = False\nif USE_HUB:\n"
             "    parts = {\"image_encoder\": \"hf:openai/clip-vit-base-patch32\", "
             "\"decoder\": \"hf:gpt2\"}\n"
             "else:\n    folder = Path(tempfile.mkdtemp(prefix=\"cmar-stand-ins-\"))\n"
             "    captions = [c for s in data.stories[\"train\"] for c in s.captions]\n"
             "    parts = {\"image_encoder\": f\"hf:{stand_ins.vision_tower(folder / 'clip')}\",\n"
             "             \"decoder\": f\"hf:{stand_ins.causal_lm(folder / 'gpt2', captions)}\"}\n"
             "swapped = load_config(CONFIG, OVERRIDES + [f\"model.{part}={name}\" for part, "
             "name in parts.items()]\n"
             "                      + [\"model.freeze_image_encoder=true\",  # features "
             "cacheable\n"
             "                         \"model.copy_tokens=false\"])  # copying needs one "
             "vocabulary\n"
             "swapped_data = prepare_data(swapped.data, splits=(\"train\",), progress=False,\n"
             "                            **tokenizers_for(swapped.model))  # the decoder's "
             "tokenizer\n"
             "swapped_model = build_model(swapped.model, swapped_data.tokenizer, swapped.data)\n"
             "print(type(swapped_data.tokenizer).__name__, \"caption tokenizer,\", "
             "len(swapped_data.tokenizer), \"tokens\")\n"
             "for part, count in swapped_model.parameter_counts().items():\n"
             "    print(f\"{part:<15}{count:>12,}\")"),
        code("torch.manual_seed(0)\n"
             "swapped_batch = next(iter(swapped_data.loader(\"train\", shuffle=False, "
             "num_workers=0)))\n"
             "regions, image = swapped_model.image_encoder(swapped_batch.context_images."
             "flatten(0, 1))\n"
             "out = swapped_model(swapped_batch)\n"
             "print(\"regions (patch tokens)\", tuple(regions.shape), \" logits\", "
             "tuple(out.logits.shape))\n"
             "ids = swapped_model.generate(swapped_batch.rows(slice(0, 1)), \"beam\", "
             "max_len=12)\n"
             "# random weights: random pieces, often single bytes of a character, so show the\n"
             "# pieces rather than text\n"
             "print(\"untrained caption, as GPT-2 pieces:\", "
             "swapped_data.tokenizer.convert_ids_to_tokens(ids[0].tolist()))"),
    ],
    "03_training": header("03_training", "03 · Training",
                          "Train the chosen configuration with a progress bar and watch train "
                          "and validation loss per epoch, for every loss term.") + [
        parameters('CONFIG = "smoke" if SMOKE else "default"\nNAME = "notebook"\n'
                   'RUNS_DIR = "runs"\nOVERRIDES = [f"name={NAME}", f"runs_dir={RUNS_DIR}", '
                   'f"data.source={SOURCE}"]'),
        code("import shutil\nfrom pathlib import Path\n\nfrom cmar.config import load_config\n"
             "from cmar.train import Trainer\n\ncfg = load_config(CONFIG, OVERRIDES)\n"
             "shutil.rmtree(Path(RUNS_DIR) / NAME, ignore_errors=True)  # a fresh run each time\n"
             "trainer = Trainer(cfg)\nprint(f\"{len(trainer.data.datasets['train'])} training "
             "windows, {trainer.steps_per_epoch} steps per epoch\")"),
        md("## One training step\n\n`trainer.fit()` runs `train_step` on every batch: the "
           "model's loss terms and their weighted sum (`loss_terms`), the gradients (through "
           "Accelerate, which scales them under fp16), clipping, one AdamW step and one step of "
           "the learning-rate schedule. The rest of `cmar/train/` is bookkeeping around it: "
           "checkpoints and exact resume, the epoch's sums, a graceful stop on Ctrl-C. To "
           "change how the model learns (a new loss term, another clip), start here."),
        code("import inspect\n\nfrom cmar.train import loss_terms, train_step\n\n"
             "print(inspect.getsource(loss_terms))\nprint(inspect.getsource(train_step))"),
        varying("history = trainer.fit()"),
        md("## Loss per epoch\n\nThe two curves everyone draws first, then every term of the "
           "loss: caption cross-entropy, image-text alignment and next-frame InfoNCE."),
        code("import matplotlib.pyplot as plt\n\ntrain_losses = [row[\"train_caption\"] for row "
             "in history]\nval_losses = [row[\"val_caption\"] for row in history]\n"
             "plt.plot(train_losses, label=\"train\")\nplt.plot(val_losses, label=\"validation\")\n"
             "plt.xlabel(\"epoch - 1\")\nplt.ylabel(\"caption cross-entropy\")\nplt.legend()\n"
             "plt.show()"),
        code("from cmar.plots import loss_curves_figure\n\nloss_curves_figure(history)\n"
             "plt.show()"),
        md("## The run folder\n\nEverything needed to evaluate, resume or reproduce the run."),
        code("for path in sorted(trainer.run_dir.rglob(\"*\")):\n"
             "    if path.is_file():\n        print(path.relative_to(trainer.run_dir))"),
    ],
    "04_evaluation": header("04_evaluation", "04 · Evaluation",
                            "Free-running generation (greedy, beam, nucleus), corpus-level "
                            "scores beside their floors, alignment scores, and what the model "
                            "looks at.") + [
        parameters('CONFIG = "smoke" if SMOKE else "default"\nRUN_DIR = "runs/notebook"  '
                   '# written by 03_training; trained here if missing\nSPLIT = "test"'),
        code("from pathlib import Path\n\nfrom cmar.config import load_config\n"
             "from cmar.train import train\n\nif not (Path(RUN_DIR) / \"best.pt\").exists():\n"
             "    train(load_config(CONFIG, [f\"name={Path(RUN_DIR).name}\",\n"
             "                               f\"runs_dir={Path(RUN_DIR).parent}\",\n"
             "                               f\"data.source={SOURCE}\"]), progress=False)"),
        code("import torch\nfrom cmar.data import decode, prepare_data\n"
             "from cmar.evaluation import load_run\n\ncfg, tokenizer, model = load_run(RUN_DIR)\n"
             "data = prepare_data(cfg.data, tokenizer=tokenizer, splits=(\"train\", SPLIT), "
             "progress=False)\nbatch = next(iter(data.loader(SPLIT, shuffle=False, "
             "batch_size=4, num_workers=0)))\n"
             "for strategy, options in ((\"greedy\", {}), (\"beam\", {\"beam_size\": 5}),\n"
             "                          (\"sample\", {\"top_p\": 0.9, \"generator\": "
             "torch.Generator().manual_seed(0)})):\n"
             "    ids = model.generate(batch, strategy, **options)\n"
             "    print(f\"{strategy:<7}\", decode(tokenizer, ids[0]))\n"
             "print(\"reference\", decode(tokenizer, batch.target_out[0]))"),
        md("## Scores beside their floors\n\nThe whole split, corpus level, with 95% intervals "
           "that resample whole stories. On ShapeStories the slot columns say which part of the "
           "caption each system gets right: names come from the text, places and meetings from "
           "the images; the image-use table blanks the context images. Every alignment score "
           "sits beside a floor that learns nothing, on the same candidates, and is flagged when "
           "that floor already saturates it."),
        code("from IPython.display import Markdown, display\nfrom cmar.evaluation import "
             "evaluate_run\nfrom cmar.evaluation.report import render\n\n"
             "metrics = evaluate_run(RUN_DIR, split=SPLIT, progress=False)\n"
             "display(Markdown(render(metrics)))"),
        md("## Story strips: context, reference, prediction"),
        code("import json\nimport matplotlib.pyplot as plt\nfrom cmar.plots import window_strip\n\n"
             "predictions = {json.loads(line)[\"window_id\"]: json.loads(line)[\"prediction\"]\n"
             "               for line in open(Path(RUN_DIR) / \"predictions.jsonl\")}\n"
             "stories = data.stories[SPLIT]\n"
             "for w in data.datasets[SPLIT].windows[:2]:\n"
             "    story = stories[w.story]\n"
             "    window_strip(story, w.t, w.k, predictions[f\"{story.story_id}:{w.t}\"])\n"
             "    plt.show()"),
        md("## Where CMAR looks\n\nThe words of the first context caption, each with its "
           "word-to-region attention (mean over rounds) over the frame's image."),
        code("from cmar.plots import attention_overlay\n\nout = model(batch, "
             "return_attention=True)\nw = data.datasets[SPLIT].windows[0]\n"
             "story = stories[w.story]\n"
             "if out.attention is None:\n    print(\"this fusion has no attention\")\nelse:\n"
             "    words = [decode(tokenizer, [i]) for i in batch.context_tokens[0, 0][batch."
             "context_mask[0, 0]]]  # one BPE piece each\n"
             "    maps = out.attention[0, 0].mean(0)  # (L, R)\n"
             "    n = min(6, len(words))\n"
             "    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))\n"
             "    for i, ax in enumerate(axes):\n"
             "        attention_overlay(ax, story.image(w.t - w.k), maps[i].detach(), words[i])\n"
             "    plt.show()"),
        md("## Retrieving the next frame\n\nThe predicted next-frame embedding ranks the "
           "windows' true next frames; the top five beside the true one."),
        code("import torch.nn.functional as F\n\nwith torch.no_grad():\n"
             "    outs = [model(b) for b in data.loader(SPLIT, shuffle=False, num_workers=0)]\n"
             "pred = F.normalize(torch.cat([o.next_pred for o in outs]), dim=-1)\n"
             "true = F.normalize(torch.cat([o.next_true for o in outs]), dim=-1)\n"
             "top = (pred[0] @ true.T).topk(5).indices.tolist()\n"
             "windows = data.datasets[SPLIT].windows\n"
             "images = [stories[windows[0].story].image(windows[0].t)] + "
             "[stories[windows[i].story].image(windows[i].t) for i in top]\n"
             "from cmar.plots import story_strip\n"
             "story_strip(images, [\"true next frame\"] + [f\"rank {r + 1}\" + (\" (true)\" if i "
             "== 0 else \"\") for r, i in enumerate(top)])\nplt.show()"),
        md("## Does the decoder use its context?\n\nCaption loss with each window's own context "
           "against another story's context: a gap near zero would mean the model ignores its "
           "input."),
        code("print(json.dumps(metrics[\"alignment\"][\"context sensitivity\"], indent=1))"),
        md("## Your own story\n\nThe next caption for frames and captions of your own: edit "
           "`IMAGES` and `CAPTIONS` (exactly k of each, in story order; any image size or format "
           "PIL reads). Here they are a test story's first frames, written out as PNG files as "
           "a stand-in for yours. From the command line: `cmar generate RUN --images a.png "
           "b.jpg c.png --captions \"...\" \"...\" \"...\"`."),
        code("import tempfile\n\nfrom cmar.evaluation.own_story import own_story_caption\n\n"
             "folder = Path(tempfile.mkdtemp(prefix=\"cmar-own-story-\"))\n"
             "own = stories[0]\nIMAGES = []\nfor t in range(cfg.data.k):\n"
             "    own.image(t).save(folder / f\"frame{t + 1}.png\")\n"
             "    IMAGES.append(str(folder / f\"frame{t + 1}.png\"))\n"
             "CAPTIONS = list(own.captions[:cfg.data.k])  # edit: one caption per image\n"
             "for t, caption in enumerate(CAPTIONS):\n"
             "    print(f\"frame {t + 1}: {caption}\")\n"
             "print(\"predicted:\", own_story_caption(cfg, tokenizer, model, IMAGES, CAPTIONS))"),
    ],
    "05_ablations": header("05_ablations", "05 · Ablations",
                           "The study: fusion (concat / cross / cmar) x decoder (LSTM / GRU / "
                           "Transformer) x 3 seeds, in `next` and `grounded` modes, each run "
                           "trained, then scored with free-running decoding beside the floors and "
                           "the oracle; then modality ablations of the best run. The same code "
                           "as `cmar study`. Finished runs are read back, not retrained, so a "
                           "study that stopped continues where it was.") + [
        parameters('# "smoke": 2 runs, seconds; "readme": the README\'s study, 54 runs of 3 '
                   'epochs (about\n# 2 h on a 2-core CPU; finished runs are read back); '
                   '"full": the same 54 runs at the preset\'s 8 epochs (hours)\n'
                   'GRID = os.environ.get("CMAR_GRID", "smoke" if SMOKE else "readme")\n'
                   'RUNS_DIR = "runs/study" if GRID != "smoke" else "runs/study-smoke"'),
        code("import dataclasses\nfrom pathlib import Path\n\n"
             "from IPython.display import Image, Markdown, display\n\n"
             "from cmar.research.study.grid import GRIDS, run_study\n\n"
             "grid = GRIDS[GRID]\nif SOURCE != \"shapestories\":  # every run reads SOURCE\n"
             "    grid = dataclasses.replace(grid, overrides=(*grid.overrides, "
             "f\"data.source={SOURCE}\"))\n"
             "print(grid)\nresult = run_study(grid, RUNS_DIR)"),
        md("## Mean and spread over seeds, beside the floors\n\nEach cell is the mean ± "
           "sample standard deviation over seeds on the test split. \"minus concat\" is the "
           "mean and spread of a fusion's score minus concat's on the run with the same "
           "decoder and seed, with how many of those runs are above concat. The modality "
           "ablation re-scores the best run "
           "with its context images (features) or its context captions blanked."),
        code("display(Markdown((Path(RUNS_DIR) / \"study.md\").read_text()))"),
        code("display(Image(filename=str(Path(RUNS_DIR) / \"study.png\")))"),
        md("## One run's numbers\n\nEvery row comes from a run folder with its config, "
           "history, checkpoints and `metrics.json`; open any of them with notebook 04."),
        code("for row in result[\"rows\"][:6]:\n"
             "    print(row[\"run\"], {k: round(v, 3) for k, v in row.items() if "
             "isinstance(v, float)})"),
    ],
    "06_your_data": header("06_your_data", "06 · Your own dataset",
                           "A folder of your images and one captions file becomes a cmar "
                           "source: validated (what was skipped and why), trained and scored "
                           "beside the floors.") + [
        parameters('CONFIG = "smoke" if SMOKE else "default"\n'
                   'FOLDER = "data/my_stories"  # your folder: images + captions.csv\n'
                   'STAND_IN = True  # write a stand-in folder from SOURCE first; False: '
                   'use yours as it is\nN_STORIES = 60 if SMOKE else 600  # stand-in stories '
                   '(before the test and validation carve)'),
        md("## The layout\n\nOne folder, any images PIL reads (any size), and a "
           "`captions.csv` with one line per frame:\n\n"
           "```\nstory_id,frame,image,caption\nbeach,1,beach/01.jpg,Ana walks down to the "
           "water with her dog.\nbeach,2,beach/02.jpg,The dog runs ahead and barks at a gull.\n"
           "```\n\n`frame` orders a story's frames; `image` is relative to the folder. An "
           "optional `split` column (`train`, `validation`, `test`) places whole stories; "
           "whatever it leaves out is carved from `train` by story. A `captions.jsonl` with the "
           "same fields per line works too, or one story per line: `{\"story_id\": ..., "
           "\"images\": [...], \"captions\": [...]}`.\n\n"
           "Here a stand-in folder is written from SOURCE's stories, with three mistakes a real "
           "folder often has, made on purpose: a missing image, a frame given two captions, an "
           "empty caption."),
        code("import csv\nimport shutil\nfrom pathlib import Path\n\n"
             "from cmar.config import load_config\nfrom cmar.data.own import write_own_folder\n"
             "from cmar.data.prepare import load_split\n\n"
             "if STAND_IN:\n    shutil.rmtree(FOLDER, ignore_errors=True)\n"
             "    source = load_config(CONFIG, [f\"data.source={SOURCE}\", "
             "f\"data.n_stories={N_STORIES}\"])\n"
             "    stories = load_split(source.data, \"train\", progress=False)[:N_STORIES]\n"
             "    captions = write_own_folder(stories, FOLDER)\n"
             "    lines = list(csv.DictReader(captions.open()))\n"
             "    (Path(FOLDER) / lines[0][\"image\"]).unlink()  # 1: a missing image\n"
             "    lines.append({**lines[7], \"caption\": \"A second caption for this frame.\"})"
             "  # 2\n"
             "    lines[14][\"caption\"] = \"\"  # 3: an empty caption\n"
             "    with captions.open(\"w\", newline=\"\") as handle:\n"
             "        writer = csv.DictWriter(handle, fieldnames=lines[0].keys())\n"
             "        writer.writeheader()\n        writer.writerows(lines)\n"
             "print(\"\".join((Path(FOLDER) / \"captions.csv\").open().readlines()[:4]))"),
        md("## The validation report\n\nEvery story of the file is read; a story with a problem "
           "is skipped whole and counted under its reason, with examples, so no frame is "
           "misaligned and nothing is lost silently. Stories shorter than a window "
           "(k + 1 frames) are skipped as `too_short`."),
        code("import logging\n\ncfg = load_config(CONFIG, [f\"data.source={FOLDER}\", "
             "\"name=own-data\"])\n"
             "logging.getLogger(\"cmar.data\").setLevel(logging.ERROR)  # printed here instead "
             "of logged at every load\n"
             "for split in (\"train\", \"validation\", \"test\"):\n"
             "    stories = load_split(cfg.data, split, progress=False)\n"
             "    print(stories.report.summary())\n"
             "    for reason, examples in stories.report.examples.items():\n"
             "        print(f\"    {reason}: {examples}\")"),
        md("## Train on it\n\nThe notebook's preset (`smoke` in CI, `default` otherwise) with "
           "`data.source` set to the folder: from the command line, `cmar train --config "
           "default --set data.source=data/my_stories` (`cmar data` with the same flags prints "
           "the report above)."),
        code("from cmar.plots import loss_curves_figure\nfrom cmar.train import Trainer\n"
             "import matplotlib.pyplot as plt\n\n"
             "shutil.rmtree(Path(cfg.runs_dir) / cfg.name, ignore_errors=True)  # a fresh run\n"
             "trainer = Trainer(cfg, progress=False)\nhistory = trainer.fit()\n"
             "loss_curves_figure(history)\nplt.show()"),
        md("## Scores beside the floors\n\nFree-running generation on the test split, each "
           "score beside the systems that learn nothing (copy the last caption, the most "
           "frequent caption, the nearest training caption). A model that does not beat them "
           "has learned nothing from your images and captions yet: train longer "
           "(`train.epochs`), or on more stories."),
        code("from IPython.display import Markdown, display\n\n"
             "from cmar.evaluation import evaluate_run\nfrom cmar.evaluation.report import "
             "render\n\nmetrics = evaluate_run(trainer.run_dir, progress=False, "
             "bootstrap=200)\n"
             "display(Markdown(render(metrics)))"),
    ],
}


def write(names: list[str], folder: Path = FOLDER) -> None:
    """Write the named notebooks (all when none is named); writing clears their outputs."""
    folder.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        notebook = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.write(notebook, folder / f"{name}.ipynb")
        print("wrote", folder / f"{name}.ipynb")


def relink(folder: Path = FOLDER) -> None:
    """Rewrite the header cells (title, badge, install) of every notebook, outputs kept."""
    for name, cells in NOTEBOOKS.items():
        path = folder / f"{name}.ipynb"
        notebook = nbformat.read(path, as_version=4)
        for i in range(2):
            notebook.cells[i].source = cells[i].source
        nbformat.write(notebook, path)
        print("relinked", path, "to", REPO)


def cell_differences(expected, committed) -> list[str]:
    """What differs between a generated cell and a committed one: type, source, and the
    metadata keys the generator sets (tags always), not outputs, counts or ids."""
    found = []
    if expected.cell_type != committed.cell_type:
        found.append(f"type {committed.cell_type}, generator writes {expected.cell_type}")
    if expected.source != committed.source:
        found.append("source")
    for key in sorted({"tags", *expected.metadata}):
        if expected.metadata.get(key) != committed.metadata.get(key):
            found.append(f"metadata {key} {committed.metadata.get(key)!r}, generator writes "
                         f"{expected.metadata.get(key)!r}")
    return found


def source_diff(expected: str, committed: str, name: str, index: int,
                max_lines: int = 30) -> list[str]:
    """A unified diff (committed -> generated) of one cell's source, cut at max_lines."""
    lines = list(difflib.unified_diff(committed.splitlines(), expected.splitlines(),
                                      f"{name}.ipynb cell {index} (committed)",
                                      f"{name}.ipynb cell {index} (generator)", lineterm=""))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more diff lines)"]
    return lines


def notebook_differences(name: str, path: Path) -> list[str]:
    """Report lines for one committed notebook against its generator; empty when they match."""
    if not path.exists():
        return [f"{path}: missing"]
    expected = NOTEBOOKS[name]
    committed = nbformat.read(path, as_version=4).cells
    report = []
    first_source = None
    for index in range(max(len(expected), len(committed))):
        if index >= len(committed):
            report.append(f"  cell {index}: missing (generator writes a "
                          f"{expected[index].cell_type} cell)")
            continue
        if index >= len(expected):
            report.append(f"  cell {index}: extra {committed[index].cell_type} cell, not in the "
                          "generator")
            continue
        found = cell_differences(expected[index], committed[index])
        if found:
            report.append(f"  cell {index}: " + "; ".join(found))
            if first_source is None and "source" in found:
                first_source = index
    if not report:
        return []
    lines = [f"{path}: {len(report)} cell(s) differ from tools/make_notebooks.py"] + report
    if first_source is not None:
        lines += ["  " + line for line in source_diff(
            expected[first_source].source, committed[first_source].source, name, first_source)]
    return lines


def check(names: list[str], folder: Path = FOLDER) -> int:
    """0 when every named notebook (all when none is named) matches its generator, else 1.
    Reads only; prints what differs."""
    lines = []
    chosen = [name for name in NOTEBOOKS if not names or name in names]
    for name in chosen:
        lines += notebook_differences(name, folder / f"{name}.ipynb")
    if lines:
        print("\n".join(lines))
        print("notebooks differ from their generator: edit tools/make_notebooks.py or the "
              "notebook so they agree, then re-execute (make notebooks)")
        return 1
    print(f"OK: {len(chosen)} notebook(s) in {folder} match tools/make_notebooks.py")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to write or check (default: all)")
    parser.add_argument("--links", action="store_true",
                        help="rewrite only the header cells of every notebook, outputs kept")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a notebook's cells differ from here")
    parser.add_argument("--notebooks", type=Path, default=FOLDER, metavar="DIR",
                        help="the notebooks folder (default: notebooks/)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; choose from {sorted(NOTEBOOKS)}")
    if args.links and args.check:
        parser.error("--links and --check do not go together")
    if args.check:
        return check(args.names, args.notebooks)
    if args.links:
        if args.names:
            parser.error("--links rewrites every notebook; name none")
        relink(args.notebooks)
    else:
        write(args.names, args.notebooks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
