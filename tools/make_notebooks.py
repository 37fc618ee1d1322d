"""Writes notebooks/01..07 from the cell sources below (outputs are added by executing them:
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
from textwrap import dedent

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
                              "Any outputs committed here come from a full run on ShapeStories "
                              "on a 2-core CPU (`make notebooks`). CI runs every notebook in smoke "
                              "mode (`SMOKE = True`: tiny data, seconds), on ShapeStories and on "
                              "a StoryReasoning look-alike."),
            new_code_cell(install)]


def parameters(knobs: str = "", about: str = "") -> list:
    """The parameters section: a markdown cell, then the tagged cell of plain assignments a
    student edits (SOURCE, SMOKE, then the notebook's own ``knobs``). CI runs copies with its
    values injected after the tagged cell (tools/inject_parameters.py, as papermill does), so
    no cell reads the environment. A knob must not be computed from SMOKE or SOURCE here: the
    injected values come after this cell."""
    text = ("## Parameters\n\n"
            "The one cell to edit. `SOURCE` picks the stories: `\"shapestories\"` (generated "
            "here in seconds), `\"storyreasoning\"` (the real dataset, downloaded once from the "
            "Hugging Face hub) or a local copy in the hub's layout (`data/train-*.parquet`, "
            "`data/test-*.parquet`). `SMOKE = True` shrinks data and model so that every cell "
            "runs in seconds: what CI runs, and a quick check of an edit before a long run.")
    cell = new_code_cell(
        "SOURCE = \"shapestories\"  # or \"storyreasoning\" (the hub), or a local copy in the "
        "hub's layout\nSMOKE = False  # True: tiny data and model, seconds (what CI runs)"
        + (f"\n{knobs}" if knobs else ""))
    cell.metadata["tags"] = ["parameters"]
    return [new_markdown_cell(text + (f"\n\n{about}" if about else "")), cell]


def md(*parts: str):
    """A markdown cell from indented triple-quoted strings, one paragraph (or more) each."""
    return new_markdown_cell("\n\n".join(dedent(part).strip("\n") for part in parts))


def code(text: str):
    """A code cell from an indented triple-quoted string."""
    return new_code_cell(dedent(text).strip("\n"))


def varying(text: str):
    """A cell whose output changes between runs (timings, progress): nbval skips comparing."""
    cell = code(text)
    cell.metadata["tags"] = ["nbval-ignore-output"]
    return cell


PRESET = """
    ## The preset

    A preset is a YAML file of settings in `cmar/configs/`. `preset_for` picks the one made
    for `SOURCE`: `default` for ShapeStories, `storyreasoning` for anything else (the real
    dataset: letterboxed 224-pixel frames, an ImageNet ResNet-18), and their small versions
    `smoke` and `storyreasoning-smoke` in smoke mode. To try another, name it instead:
    `CONFIG = "default"`."""

NOTEBOOKS = {
    "01_data": header("01_data", "01 · Data: stories, frames, windows, batches",
                      "What a story is, how the markup becomes captions, what an example "
                      "asks of the model, and the exact tensors a batch holds: the frame the "
                      "model sees and the tokens it reads.") + parameters(
        'OVERRIDES = []  # more settings, e.g. ["data.k=4"] (see "Try this" at the end)') + [
        md(PRESET, """

            The cell prints the choice and the data settings this notebook is about: `k`
            context frames per example, the side of the square frame the model sees and how a
            frame is fitted into it, and the longest caption kept."""),
        code("""
            from cmar.config import load_config, preset_for

            CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)
            cfg = load_config(CONFIG, [f"data.source={SOURCE}", *OVERRIDES])
            d = cfg.data
            print(f"k = {d.k} context frames; frames fitted to {d.image_size} x {d.image_size} "
                  f"pixels ({d.image_fit}); captions: {d.caption_policy}, at most "
                  f"{d.max_tokens} tokens")"""),
        md("""
            ## Load the stories

            `prepare_data` reads the source (ShapeStories is generated on first use into
            `data/`; StoryReasoning is downloaded once), splits it by story, cuts every story
            into windows, trains the BPE tokenizer on the training captions and decodes every
            frame once into a cache. One line per split: a window is one example, so a story
            of n frames gives n - k of them; `skipped` counts the stories that could not be
            read, by reason; `targets cut` counts target captions longer than `data.max_tokens`
            (the model learns them cut)."""),
        code("""
            from cmar.data import prepare_data

            data = prepare_data(cfg.data, progress=False)
            summary = data.summary()
            for split, row in summary["splits"].items():
                print(f"{split:<11} {row['stories']:>5} stories {row['frames']:>6} frames "
                      f"{row['windows']:>6} windows  targets cut: {row['targets_cut']}  "
                      f"skipped: {row['skipped'] or 0}")
            print("vocabulary:", summary["vocabulary"], "tokens")"""),
        md("""
            ## Which data is this?

            The notebook runs on either source, so the next cell says which one it read and
            what that source asks of a model."""),
        code("""
            if SOURCE == "shapestories":
                print("ShapeStories, generated by cmar: coloured shapes walk between the "
                      "landmarks of a small world.\\nNames are only in the captions; where each "
                      "shape stands and which way it faces (the black dot)\\nonly in the images, "
                      "so the next caption needs both. A rule solver that reads both (the "
                      "oracle)\\nis exact, so every score has a ceiling.")
            else:
                print(f"StoryReasoning's layout ({SOURCE}): film stills with prose captions "
                      "that tag characters,\\nobjects and places (<gdo char1>...</gdo>), and a "
                      "box for each in a chain_of_thought table.\\nThe captions are open-ended: "
                      "no solver gives a ceiling, only floors that learn nothing\\n(copy the "
                      "last caption, the most frequent one, the nearest neighbour).")"""),
        md("""
            ## The markup

            Both sources store a story the same way (ShapeStories is written in
            StoryReasoning's schema): one text with a `<gdi imageN>` segment per image and
            entity tags inside it, and a `chain_of_thought` with a table of boxes per image.
            `split_frames` returns each segment's plain text in order of N (a frame's
            caption), `frame_entities` the entity ids it mentions and `parse_boxes` the boxes,
            in the stored image's pixels. Read the raw text first, then each numbered caption
            beside its ids."""),
        code("from cmar.data import frame_entities, open_source, parse_boxes, split_frames\n"
             "from cmar.data.prepare import shapestories_options\n\n"
             "raw = open_source(cfg.data.source, cache_dir=cfg.data.cache_dir,\n"
             "                  **shapestories_options(cfg.data))[\"train\"][0]\n"
             "print(raw[\"story\"][:600])\nprint()\n"
             "for n, (text, ids) in enumerate(zip(split_frames(raw[\"story\"]), "
             "frame_entities(raw[\"story\"])), 1):\n"
             "    print(n, text, ids)\nprint()\nprint(\"boxes of image 1:\", "
             "parse_boxes(raw[\"chain_of_thought\"])[1])"),
        md("""
            ## A story strip

            The frames of one training story under their captions. On ShapeStories the names
            are only in the text, while where each character stands and which way it faces
            are only in the images: the next caption needs both. On StoryReasoning the
            captions name the people the frames show, and say what the frames cannot (who
            they are, what they feel)."""),
        code("import matplotlib.pyplot as plt\nfrom cmar.plots import story_strip\n\n"
             "story = data.stories[\"train\"][0]\n"
             "story_strip([story.image(t) for t in range(len(story))], story.captions,\n"
             "            [f\"frame {t + 1}\" for t in range(len(story))])\nplt.show()"),
        md("""
            ## Statistics

            Two histograms: frames per story (each gives frames - k windows) and words per
            caption (compare with `data.max_tokens`, which counts BPE tokens: a word is one to
            three of them). Then the fifteen most frequent words: ShapeStories has a small
            closed vocabulary, StoryReasoning a long tail of names and places."""),
        code("from collections import Counter\n\n"
             "train = data.stories[\"train\"]\n"
             "fig, axes = plt.subplots(1, 2, figsize=(9, 3))\n"
             "axes[0].hist([len(s) for s in train], bins=range(2, 25))\n"
             "axes[0].set_title(\"frames per story\")\n"
             "axes[1].hist([len(c.split()) for s in train for c in s.captions], bins=20)\n"
             "axes[1].set_title(\"words per caption\")\nplt.tight_layout()\nplt.show()\n"
             "words = Counter(w.strip('.,').lower() for s in train for c in s.captions "
             "for w in c.split())\nprint(words.most_common(15))"),
        md("""
            ## Windows and the target shift

            Every frame t >= k of a story is a target, its context frames t-k .. t-1. A batch
            stacks windows; the next cell prints each field's shape (B windows, k context
            frames, 3 colour channels, S x S pixels, L tokens). The decoder reads `target_in`
            (`[BOS]` + the caption) and must predict `target_out` (the caption + `[EOS]`): the
            same tokens shifted by one, so at each position it predicts the token it reads
            next.

            Tokens are byte-level BPE pieces. The table shows each piece as stored (`Ġ` marks
            the space before a word, and a letter outside ASCII is stored as its bytes:
            `ĠRenÃ©e` is ` Renée`) and as text. A word the training captions never saw is
            spelt in smaller pieces, never `[UNK]`."""),
        code("""
            from cmar.data import decode

            batch = next(iter(data.loader("train", shuffle=False, num_workers=0)))
            for name, value in batch.__dict__.items():
                if value is not None:  # images, or cached features (a frozen encoder)
                    shown = tuple(value.shape) if hasattr(value, "shape") else value[:3]
                    print(f"{name:<15}", shown)

            tok = data.tokenizer
            target = decode(tok, batch.target_out[0])
            print(f"\\nwindow {batch.window_ids[0]}, target: {target!r}")
            print(f"{'':>3}{'reads piece':<16}{'as text':<16}-> predicts")
            pairs = zip(batch.target_in[0].tolist(), batch.target_out[0].tolist())
            for i, (a, b) in enumerate(pairs):
                if a == tok.pad_token_id:
                    print("... then [PAD] up to the longest caption of the batch")
                    break
                piece = tok.convert_ids_to_tokens(a)
                print(f"{i:>2} {piece:<16}{tok.decode([a])!r:<16}-> {tok.decode([b])!r}")"""),
        md("""
            ## The frame as the model sees it

            A frame is stored at its own size; the model reads it fitted to `data.image_size`
            x `data.image_size` pixels (`letterbox` pads the short side, `center_crop` cuts
            the long one, `squash` stretches) and normalised with ImageNet's mean and spread.
            Left: the first context frame of the window above, as stored. Right: the same
            frame taken from `batch.context_images` with the normalisation undone, pixel for
            pixel what the image encoder gets. Look at what the fit keeps and how much detail
            survives the size (on ShapeStories the facing dot is a few pixels)."""),
        code("""
            import torch
            from cmar.data.images import IMAGENET_MEAN, IMAGENET_STD

            w = data.datasets["train"].windows[0]  # batch row 0: the loader did not shuffle
            stored = data.stories["train"][w.story].image(w.t - w.k)
            mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
            std = torch.tensor(IMAGENET_STD)[:, None, None]
            seen = (batch.context_images[0, 0] * std + mean).clamp(0, 1)  # (3, S, S) in [0, 1]
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            axes[0].imshow(stored)
            axes[0].set_title(f"stored: {stored.width} x {stored.height} pixels")
            axes[1].imshow(seen.permute(1, 2, 0), interpolation="nearest")  # each pixel a square
            axes[1].set_title(f"model input: {cfg.data.image_size} x {cfg.data.image_size}, "
                              f"{cfg.data.image_fit}")
            for ax in axes:
                ax.set_xticks([])
                ax.set_yticks([])
            plt.tight_layout()
            plt.show()"""),
        md("""
            ## Summary

            - A story is one text with a segment per image: `split_frames` makes it one
              caption per frame, `parse_boxes` says where each entity stands.
            - An example is a window: k context frames (image and caption) and the caption of
              frame k+1 as the target; a story of n frames gives n - k windows.
            - The model never sees a stored frame, only the frame fitted to
              `data.image_size` (letterboxed by default) and normalised.
            - The decoder reads the target shifted right by one and predicts every next token;
              captions are byte-level BPE pieces, so no word is ever unknown.
            - `preset_for(SOURCE, SMOKE)` picks the settings for the data; every notebook
              starts the same way."""),
        md("""
            ## Try this

            1. Set `OVERRIDES = ["data.k=4"]` and run again: every story gives one window
               fewer (the window counts drop) and the batch shapes read `(B, 4, ...)`.
            2. Set `OVERRIDES = ["data.image_size=32"]` (the default preset uses 64): the
               right-hand panel of "The frame as the model sees it" loses detail. Can you
               still tell which way a shape faces? On a StoryReasoning source try
               `["data.image_fit=center_crop"]` instead: the sides of the wide frame are gone.
            3. Set `OVERRIDES = ["data.caption_policy=full"]`. On StoryReasoning the targets
               become whole paragraphs: the words-per-caption histogram moves right and the
               split summary says how many targets are cut at `data.max_tokens`. On
               ShapeStories a caption is one sentence, so nothing changes: why?"""),
    ],
    "02_model": header("02_model", "02 · The model: CNN, CMAR, story encoder, decoder",
                       "The parts of `StoryModel`, the CMAR block and its two ablations, one "
                       "forward pass with every shape, attention drawn over an image, and what "
                       "an untrained model writes.") + parameters(
        'FUSION = "cmar"  # or "cross", "concat"\n'
        'DECODER = "lstm"  # or "gru", "transformer"') + [
        md(PRESET, """

            `FUSION` and `DECODER` replace the preset's own choice of those two parts."""),
        code("""
            from cmar.config import load_config, preset_for

            CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)
            SETTINGS = [f"data.source={SOURCE}", f"model.fusion={FUSION}",
                        f"model.decoder={DECODER}"]
            cfg = load_config(CONFIG, SETTINGS)"""),
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
           "three get the same parameter budget.\n\n"
           "After the story encoder, a **look-ahead** (`cmar.models.look_ahead`) refines the "
           "fused regions the decoder reads: each region points at where its content will be "
           "in the next frame, reading whose turn it is from the story state, and adds what "
           "lies there to itself. In training the characters' boxes in consecutive frames "
           "supervise the pointer. It is what makes the model read where the actor is heading "
           "from the images; `model.look_ahead=false` removes it "
           "(docs/visual-route.md).\n\n"
           "The next cell reads the data (the tokenizer fixes the vocabulary), builds the "
           "model and counts the parameters of each part: the fusion is the part the three "
           "variants change."),
        code("""
            from cmar.data import prepare_data
            from cmar.models import build_model

            data = prepare_data(cfg.data, splits=("train",), progress=False)
            model = build_model(cfg.model, data.tokenizer, cfg.data)
            for part, count in model.parameter_counts().items():
                print(f"{part:<15}{count:>12,}")"""),
        md("""
            ## Three fusions, one budget

            `concat`, `cross` and `cmar` are sized to nearly the same number of parameters, so
            a difference between them in notebook 05 comes from how they mix the two
            modalities, not from size."""),
        code("import dataclasses\n\nfor fusion in (\"concat\", \"cross\", \"cmar\"):\n"
             "    other = build_model(dataclasses.replace(cfg.model, fusion=fusion), "
             "data.tokenizer, cfg.data)\n"
             "    print(f\"{fusion:<8}{other.parameter_counts()['fusion']:>10,} parameters\")"),
        md("""
            ## One forward pass, every shape

            One batch through every part: B windows of k context frames become B·k frames for
            the encoders (regions: R vectors per frame, one per cell of the image grid), the
            story encoder turns them into the decoder's memory, and the decoder returns one
            score per vocabulary entry at each of the L target positions. The last line is
            the loss terms of this untrained model: the two InfoNCE terms (`align`, `next`)
            start near the log of their number of candidates, the score of a guess."""),
        code("""
            import math

            import torch

            torch.manual_seed(0)
            batch = next(iter(data.loader("train", shuffle=False, num_workers=0)))
            b, k = batch.context_tokens.shape[:2]
            regions, image = model.encode_frames(batch.context_images, batch.context_features,
                                                 flat=True)
            tokens, text = model.text_encoder(batch.context_tokens.flatten(0, 1),
                                              batch.context_mask.flatten(0, 1))
            enc = model.encode(batch, return_attention=True)
            out = model(batch)
            shapes = {"context images": batch.context_images, "regions": regions,
                      "image vector": image, "word states": tokens,
                      "fused frames": enc.fused.frame, "memory": enc.memory,
                      "logits": out.logits, "next-frame embedding": out.next_pred}
            for name, value in shapes.items():
                print(f"{name:<22}{tuple(value.shape)}")
            print({name: round(value.item(), 3) for name, value in out.losses.items()})
            print(f"a guess scores: align about ln(B*k) = {math.log(b * k):.3f} (less when "
                  f"windows share frames), next ln(B) = {math.log(b):.3f}")"""),
        md("""
            ## Attention over the image (untrained)

            Where each word of a context caption looks among the image regions, averaged over
            CMAR rounds, drawn over the frame as the model sees it. Untrained, it is close to
            uniform; notebook 04 draws it after training, beside a score that says how far to
            trust it."""),
        code("""
            import matplotlib.pyplot as plt

            from cmar.data import decode
            from cmar.data.images import fit_image
            from cmar.plots import attention_overlay

            story = data.stories["train"][0]  # window 0's first context frame is its frame 1
            frame = fit_image(story.image(0), cfg.data.image_size, cfg.data.image_fit)
            caption = batch.context_tokens[0, 0][batch.context_mask[0, 0]]
            words = [decode(data.tokenizer, [i]) for i in caption]  # one BPE piece each
            if enc.fused.attention is None:
                print(f"{FUSION} has no attention to draw")
            else:
                maps = enc.fused.attention[0].mean(0)  # (L, R) for frame 1 of window 0
                fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
                for ax, i in zip(axes, range(4)):
                    attention_overlay(ax, frame, maps[i].detach(), words[i])
                plt.show()"""),
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
             "swapped = load_config(CONFIG, SETTINGS + [f\"model.{part}={name}\" for part, "
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
        md("""
            The swapped model runs the same forward pass: the regions are now the vision
            tower's patch tokens and the logits score the decoder's own vocabulary. With
            random weights it writes random pieces, often single bytes of a character, so
            they are shown as pieces rather than text."""),
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
        md("""
            ## Untrained output: what training must fix

            The model above has random weights. Greedy decoding from it writes random pieces,
            often one piece over and over: this is what training must fix. Beside it, the
            reference captions of the same windows."""),
        code("""
            ids = model.generate(batch.rows(slice(0, 3)), "greedy", max_len=16)
            for wid, row, reference in zip(batch.window_ids, ids, batch.target_out):
                print(f"window {wid}\\n  untrained: {decode(data.tokenizer, row)!r}\\n"
                      f"  reference: {decode(data.tokenizer, reference)!r}")"""),
        md("""
            ## The same windows after training

            Notebook 03 trains a run into `runs/notebook`. Once it exists, this cell loads it
            and decodes the same kind of windows (the first training windows of the run's own
            data), so you can compare with the random pieces above."""),
        varying("""
            from pathlib import Path

            from cmar.evaluation import load_run

            TRAINED = Path("runs/notebook")  # written by 03_training
            if not (TRAINED / "best.pt").exists():
                print(f"no trained run in {TRAINED} yet: run 03_training, then this cell again")
            else:
                run_cfg, run_tokenizer, trained = load_run(TRAINED)
                run_data = prepare_data(run_cfg.data, tokenizer=run_tokenizer, splits=("train",),
                                        progress=False)
                run_batch = next(iter(run_data.loader("train", shuffle=False, num_workers=0)))
                ids = trained.generate(run_batch.rows(slice(0, 3)), "greedy")
                for wid, row, reference in zip(run_batch.window_ids, ids, run_batch.target_out):
                    print(f"window {wid}\\n  trained:   {decode(run_tokenizer, row)!r}\\n"
                          f"  reference: {decode(run_tokenizer, reference)!r}")"""),
        md("""
            ## Summary

            - `StoryModel` is five parts: an image encoder (regions per frame), a text encoder
              (word states per caption), a fusion per frame, a story encoder over the k fused
              frames, and a decoder that attends to the resulting memory.
            - CMAR refines words against regions and regions against words for r rounds, each
              update gated; `cross` is one text-to-image pass, `concat` joins pooled vectors,
              all at the same parameter budget.
            - Every tensor has a shape you can predict from B, k, R, L and d.
            - Untrained, the InfoNCE terms sit at the score of a guess and the decoder writes
              random pieces; any part can be swapped for a pretrained `hf:` one."""),
        md("""
            ## Try this

            1. Set `FUSION = "concat"`: the attention cell prints that there is nothing to
               draw (concat joins pooled vectors, no word looks at a region), while the
               fusion's parameter count stays within a few hundred of CMAR's.
            2. Set `DECODER = "transformer"`: the decoder's parameter count changes, the shapes
               of the forward pass do not (logits stay `(B, L, V)`): the decoder is a part
               behind one interface.
            3. Run notebook 03, then "The same windows after training" again: the trained
               captions should read like the references, often word for word on
               ShapeStories."""),
    ],
    "03_training": header("03_training", "03 · Training",
                          "What the model minimises, how the optimiser steps, and what each "
                          "curve of a run says: train and validation loss per epoch, for every "
                          "loss term, with the gaps between them.") + parameters(
        'NAME = "notebook"  # the run folder is RUNS_DIR/NAME (04_evaluation reads runs/notebook)\n'
        'RUNS_DIR = "runs"  # on Colab, a Google Drive folder keeps runs across disconnects\n'
        'OVERRIDES = []  # more settings, e.g. ["train.epochs=4"] (see "Try this" at the end)') + [
        md("""
            ## On Colab: keep the run on Google Drive

            A Colab runtime forgets its files when it disconnects. To keep the run, mount your
            Drive in a new cell and point `RUNS_DIR` at it before you run the rest:

            ```python
            from google.colab import drive
            drive.mount("/content/drive")
            RUNS_DIR = "/content/drive/MyDrive/cmar-runs"
            ```

            After a disconnect, do not run "Build the trainer" again: it deletes
            `RUNS_DIR/NAME` to start afresh. Mount the Drive and continue from the last
            checkpoint instead, from a terminal (`!cmar train --resume
            /content/drive/MyDrive/cmar-runs/notebook` in a cell) or in Python:

            ```python
            from cmar.train import train
            train(None, resume_dir=f"{RUNS_DIR}/{NAME}")  # reads the run's own config.yaml
            ```

            A resumed run ends with the weights an uninterrupted one would have."""),
        md(PRESET, """

            The cell prints the choice and every setting that shapes training; the sections
            below explain each of them."""),
        code("""
            from cmar.config import load_config, preset_for

            CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)
            cfg = load_config(CONFIG, [f"name={NAME}", f"runs_dir={RUNS_DIR}",
                                       f"data.source={SOURCE}", *OVERRIDES])
            t = cfg.train
            print(f"{t.epochs} epochs of batches of {cfg.data.batch_size} windows; AdamW, peak "
                  f"learning rate {t.lr}, weight decay {t.weight_decay}, warm-up {t.warmup:.0%} "
                  f"of the steps, gradient clip {t.grad_clip}; loss weights w_align {t.w_align}, "
                  f"w_next {t.w_next}")"""),
        md("""
            ## Build the trainer

            `Trainer` reads the data, builds the model, the optimiser and the schedule, and
            creates the run folder. The cell deletes `RUNS_DIR/NAME` first, so every run of
            the notebook starts afresh. Look at the two numbers it prints: training windows
            and optimiser steps per epoch (windows / batch size)."""),
        code("""
            import shutil
            from pathlib import Path

            from cmar.train import Trainer

            shutil.rmtree(Path(RUNS_DIR) / NAME, ignore_errors=True)  # a fresh run each time
            trainer = Trainer(cfg)
            print(f"{len(trainer.data.datasets['train'])} training windows, "
                  f"{trainer.steps_per_epoch} steps per epoch")"""),
        md("""
            ## What one step minimises

            Three terms, summed with weights:

            - **caption**: the cross-entropy of the next caption, token by token. The decoder
              reads the true previous tokens (teacher forcing) and is scored on the token
              that follows; padding is not scored. This is the task itself.
            - **align** (weight `train.w_align`): an InfoNCE loss between each context frame's
              pooled image vector and its pooled caption vector. In a batch of B windows
              there are B·k frames; each image must pick out its own caption among all of
              them by cosine similarity (over a temperature, `model.infonce_temperature`), and
              each caption its image. A guess scores ln(B·k).
            - **next** (weight `train.w_next`): an InfoNCE loss between the embedding the
              story encoder predicts for frame k+1 and the embedding of the true frame k+1,
              against the next frames of the batch's other windows. A guess scores ln(B).

            total = caption + w_align · align + w_next · next (+ `model.w_ground` · ground
            when grounding supervision is on). `trainer.fit()` runs `train_step` on every
            batch: the loss terms and their weighted sum (`loss_terms`), the gradients
            (through Accelerate, which scales them under fp16), clipping, one AdamW step and
            one step of the learning-rate schedule. The rest of `cmar/train/` is bookkeeping
            around it: checkpoints and exact resume, the epoch's sums, a graceful stop on
            Ctrl-C. To change how the model learns (a new loss term, another clip), start
            here."""),
        code("import inspect\n\nfrom cmar.train import loss_terms, train_step\n\n"
             "print(inspect.getsource(loss_terms))\nprint(inspect.getsource(train_step))"),
        md("""
            ## The optimiser and its schedule

            AdamW, with weight decay on weight matrices only: decay pulls a weight towards
            zero, which regularises the matrices of linear, convolution and recurrent layers,
            but would harm the parameters whose scale or offset is the point (biases, the
            gains of normalisation layers, embedding tables), so those get none. The learning
            rate rises linearly over the first `train.warmup` of the steps (large early steps
            on random weights can wreck them), then decays along a cosine to zero. Every
            step's gradient is clipped to a norm of at most `train.grad_clip`, so one bad batch
            cannot throw the weights far. The cell counts the two groups and draws the
            schedule this run will follow."""),
        code("""
            import matplotlib.pyplot as plt

            from cmar.train.optim import parameter_groups, warmup_cosine

            for group in parameter_groups(trainer.model, cfg.train.weight_decay):
                tensors = group["params"]
                print(f"weight decay {group['weight_decay']}: {len(tensors)} tensors, "
                      f"{sum(p.numel() for p in tensors):,} numbers")
            steps = trainer.steps_per_epoch * cfg.train.epochs
            factor = warmup_cosine(steps, cfg.train.warmup)
            plt.figure(figsize=(6, 2.6))
            plt.plot([s / trainer.steps_per_epoch for s in range(steps)],
                     [cfg.train.lr * factor(s) for s in range(steps)])
            plt.xlabel("epoch")
            plt.ylabel("learning rate")
            plt.title("linear warm-up, then cosine decay to zero")
            plt.show()"""),
        md("""
            ## Train

            A progress bar per epoch; at the end of each epoch the whole validation split is
            scored and a checkpoint written (`last.pt`, and `best.pt` whenever the validation
            caption loss improves). The trainer also prints a line per epoch; the cell keeps
            those lines out of the way, since the table in the next cell says the same more
            readably. Stopped by hand (the stop button, Ctrl-C)? `last.pt` holds the progress:
            resume as in "On Colab" above."""),
        varying("""
            import contextlib
            import io

            log = io.StringIO()  # the trainer's key=value line per epoch: the table shows it
            with contextlib.redirect_stdout(log):
                history = trainer.fit()
            notes = [line for line in log.getvalue().splitlines() if not line.startswith("epoch=")]
            if notes:  # anything else the trainer said, such as an early stop
                print("\\n".join(notes))"""),
        md("""
            ## The training log

            One row per epoch: each loss term on the training split (the mean over the
            epoch's steps) beside the same term on the validation split (measured once, after
            the epoch), then the seconds the epoch's training took."""),
        varying("""
            import pandas as pd

            table = pd.DataFrame(history).set_index("epoch")
            terms = [c.removeprefix("val_") for c in table.columns if c.startswith("val_")]
            table[[f"{split}_{term}" for term in terms for split in ("train", "val")]
                  + ["train_seconds"]].round(3)"""),
        md("""
            ## Loss per epoch

            The caption loss first, the curve everyone draws. Two things to read in it:

            - In the first epochs the training curve lies *above* the validation one. That is
              how they are measured, not a bug: the training value averages the epoch's steps,
              most taken by a model worse than the one at the end of the epoch, with dropout
              on; the validation value is measured after the epoch, with dropout off.
            - Later the curves cross: the training loss keeps falling while the validation
              loss flattens, as the model fits its training captions better than new ones. The
              run keeps the epoch with the lowest validation caption loss (`train.select`) as
              `best.pt`, the checkpoint notebook 04 evaluates."""),
        code("""
            epochs = [row["epoch"] for row in history]  # numbered from 1
            plt.plot(epochs, [row["train_caption"] for row in history], "o-",
                     label="train (mean over the epoch)")
            plt.plot(epochs, [row["val_caption"] for row in history], "s--",
                     label="validation (after the epoch)")
            plt.xticks(epochs)
            plt.xlabel("epoch")
            plt.ylabel("caption cross-entropy")
            plt.legend()
            plt.show()"""),
        md("""
            ## Every loss term

            One panel per term. **align** starts near the score of a guess, ln(B·k), and
            falls as the image and caption vectors of the same frame move together;
            **total** is what the optimiser minimises.

            The gap to read is in **next**. In a full run on ShapeStories (the `default`
            preset) the training value falls to about 0.15 while the validation value stays
            near 1.4 from the first epoch on. A hypothesis: the next-frame term memorises the
            training stories (having seen a story's frames in training, the model recognises
            its context and recalls the frame that follows) rather than learning to predict
            a frame it has never seen. It is a hypothesis, not a finding: "Try this" below
            gives two ways to test it."""),
        code("from cmar.plots import loss_curves_figure\n\nloss_curves_figure(history)\n"
             "plt.show()"),
        md("""
            ## The run folder

            Everything needed to evaluate, resume or reproduce the run: the resolved config
            (`config.yaml`), the tokenizer, the history (`history.json`, the table above), the
            loss curves as a PNG, and the checkpoints (`best.pt` for evaluation, `last.pt` to
            resume)."""),
        code("for path in sorted(trainer.run_dir.rglob(\"*\")):\n"
             "    if path.is_file():\n        print(path.relative_to(trainer.run_dir))"),
        md("""
            ## Summary

            - The loss is the caption cross-entropy plus two InfoNCE terms (image-text
              alignment per context frame, predicted-vs-true next frame), weighted by
              `train.w_align` and `train.w_next`.
            - `train_step` is the whole update: loss terms, backward, clipping, one AdamW step,
              one schedule step; everything else in `cmar/train/` is bookkeeping.
            - AdamW decays weight matrices only; the learning rate warms up linearly, then
              decays along a cosine to zero.
            - Read every curve against its guess level and its partner: training above
              validation early on is how they are measured; a large gap that never closes
              (next) is a hypothesis to test.
            - The run folder holds everything; an interrupted run resumes exactly
              (`cmar train --resume`)."""),
        md("""
            ## Try this

            1. Test the memorisation hypothesis with harder negatives: set
               `OVERRIDES = ["model.next_negatives=story"]`, so that the window's own context
               frames become negatives too. If the low training value came from recognising
               a known story rather than predicting which frame follows, `train_next` in the
               table should stay well above 0.15, closer to `val_next`.
            2. Set `OVERRIDES = ["train.w_next=0"]`: the next-frame term is still measured but
               no longer trained, so both next curves should stay near ln(B). Compare
               `val_caption` with the run above: if it barely moves, the next-frame term was
               not what made the captions good.
            3. Set `OVERRIDES = ["train.warmup=0", "train.lr=0.02"]`: ten times the default
               peak rate with no warm-up (the schedule plot shows it). Expect a worse first
               epoch in the table, or a stop on a non-finite loss; then put
               `"train.grad_clip=0"` in as well and see whether clipping was holding it
               together."""),
    ],
    "04_evaluation": header("04_evaluation", "04 · Evaluation",
                            "Free-running generation (greedy, beam, nucleus), corpus-level "
                            "scores beside their floors, predictions right and wrong, what the "
                            "model looks at and how far to trust it.") + parameters(
        'RUN_DIR = "runs/notebook"  # written by 03_training; trained here if missing\n'
        'SPLIT = "test"  # or "validation"') + [
        md(PRESET, """

            Here the preset matters only if `RUN_DIR` holds no trained model (you skipped
            notebook 03): "The run to evaluate" then trains one with it."""),
        code("""
            from cmar.config import load_config, preset_for

            CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)"""),
        md("""
            ## The run to evaluate

            Everything below reads the run in `RUN_DIR`, trained here first if it holds no
            `best.pt` yet."""),
        code("""
            from pathlib import Path

            from cmar.train import train

            if not (Path(RUN_DIR) / "best.pt").exists():
                train(load_config(CONFIG, [f"name={Path(RUN_DIR).name}",
                                           f"runs_dir={Path(RUN_DIR).parent}",
                                           f"data.source={SOURCE}"]), progress=False)"""),
        md("""
            ## Three ways to decode

            Free-running generation: the model reads only its own previous tokens, as it will
            on new stories. Greedy takes the most likely token at each step; beam search keeps
            the 5 most likely partial captions; nucleus sampling draws from the smallest set of
            tokens holding 90% of the probability (seeded, so it repeats). A confident model
            writes the same caption three times; compare them with the reference."""),
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
           "that floor already saturates it. On ShapeStories three rows come from rule solvers: "
           "`oracle (ceiling)` reads both modalities and is exact, while `rules on text only "
           "(not a ceiling)` and `rules on images only (not a ceiling)` are the same rules fed "
           "one modality, so a model may beat them. The evaluation also writes "
           "`metrics.json`, `predictions.jsonl` and `report.md` into the run folder."),
        code("from IPython.display import Markdown, display\nfrom cmar.evaluation import "
             "evaluate_run\nfrom cmar.evaluation.report import render\n\n"
             "metrics = evaluate_run(RUN_DIR, split=SPLIT, progress=False)\n"
             "display(Markdown(render(metrics)))"),
        md("""
            ## Right and wrong predictions

            Scores summarise; read examples too. The cell counts the predictions that equal
            their reference word for word, then draws one window the model got right (if any)
            and two it got wrong: the context frames with their captions, then the target
            frame with the reference and the prediction. Look at the kind of mistake: a wrong
            name (the text), or a wrong place, direction or meeting (the images)?"""),
        code("""
            import json

            import matplotlib.pyplot as plt

            from cmar.data import window_id
            from cmar.plots import window_strip

            rows = [json.loads(line) for line in open(Path(RUN_DIR) / "predictions.jsonl")]
            right = [r for r in rows if r["prediction"].strip() == r["reference"].strip()]
            wrong = [r for r in rows if r["prediction"].strip() != r["reference"].strip()]
            print(f"{len(right)} of {len(rows)} predictions on {SPLIT} equal their reference")
            stories = data.stories[SPLIT]
            windows = {window_id(stories[w.story].story_id, w.t): w
                       for w in data.datasets[SPLIT].windows}
            shown = [("right", r) for r in right[:1]] + [("wrong", r) for r in wrong[:2]]
            for verdict, row in shown:
                w = windows[row["window_id"]]
                window_strip(stories[w.story], w.t, w.k, row["prediction"])
                plt.suptitle(f"{verdict}: window {row['window_id']}", fontsize=10)
                plt.show()"""),
        md("""
            ## How far to trust the attention maps

            An attention map shows where the fusion's words look among the image regions. It
            is tempting to read it as "the model found the character it names"; the grounding
            score says whether that reading holds. For every mention of a character with a box
            in the context captions, it checks whether the region the name's attention peaks
            on overlaps that character's box, beside the chance level of a random region.
            Grounding supervision (`model.w_ground`, off by default) trains exactly this."""),
        code("""
            grounding = metrics["alignment"].get("grounding")
            if grounding is None:
                print("no grounding score: this fusion has no word-to-region attention (concat), "
                      "or no context caption names a character with a box")
            else:
                accuracy, chance = grounding["accuracy"], grounding["chance"]
                print(f"grounding accuracy {accuracy:.3f} against a chance level of {chance:.3f} "
                      f"({grounding['mentions']} character mentions)")
                if accuracy < 1.5 * chance:
                    print("near or below chance: these maps do not point at the named character; "
                          "read them as where the fusion looks, not as evidence")
                else:
                    print(f"{accuracy / chance:.1f} times chance: the maps point at the named "
                          "character more often than a random region would (still where the "
                          "fusion looks, not why the model wrote a word)")"""),
        md("""
            ## Where CMAR looks

            The words of the first context caption of the split's first window, each with its
            word-to-region attention (mean over rounds) over the frame as the model sees it.
            Read them in the light of the score above."""),
        code("""
            from cmar.data.images import fit_image
            from cmar.plots import attention_overlay

            out = model(batch, return_attention=True)
            w = data.datasets[SPLIT].windows[0]
            story = stories[w.story]
            if out.attention is None:
                print("this fusion has no attention")
            else:
                caption = batch.context_tokens[0, 0][batch.context_mask[0, 0]]
                words = [decode(tokenizer, [i]) for i in caption]  # one BPE piece each
                maps = out.attention[0, 0].mean(0)  # (L, R)
                frame = fit_image(story.image(w.t - w.k), cfg.data.image_size, cfg.data.image_fit)
                n = min(6, len(words))
                fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
                for i, ax in enumerate(axes):
                    attention_overlay(ax, frame, maps[i].detach(), words[i])
                plt.show()"""),
        md("""
            ## Retrieving the next frame

            The predicted next-frame embedding of the split's first window ranks the true next
            frames of every window; the strip shows the true one, then the top five. On
            ShapeStories neighbouring frames of a story look alike, so a wrong rank 1 is often
            a frame of the same story."""),
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
        md("""
            ## Summary

            - Score free-running generation over the whole split at corpus level, never
              teacher-forced outputs or one batch.
            - A score means something only beside its floors (systems that learn nothing) and,
              on ShapeStories, the oracle's ceiling; the rule solvers fed one modality are not
              ceilings.
            - Read right and wrong examples: the kind of mistake says which modality failed.
            - An attention map is where the fusion looks, not evidence; the grounding score
              against its chance level says how far to trust it.
            - The context-sensitivity gap shows whether the decoder uses its input at all."""),
        md("""
            ## Try this

            1. In the scores cell, call `evaluate_run(RUN_DIR, split=SPLIT, progress=False,
               strategy="beam")`: compare BLEU-4 and the number of different predictions with
               greedy decoding's (beam search tends to write safer, more repeated captions).
            2. Train with grounding supervision: in notebook 03 set
               `OVERRIDES = ["model.w_ground=0.2"]`, then run this notebook again. The
               grounding accuracy should rise well above chance (docs/training.md reports 0.933
               against 0.165 on ShapeStories) and the maps should light up the named
               character.
            3. In "Right and wrong predictions", draw `wrong[:8]` and sort each mistake: name,
               place, direction or meeting. On ShapeStories, the commonest kind should match
               the weakest slot column of the scores table."""),
    ],
    "05_ablations": header("05_ablations", "05 · Ablations",
                           "Which fusion helps? Runs of fusion (concat / cross / cmar) x "
                           "decoder x seed, each trained, then scored with free-running decoding "
                           "beside the floors and the oracle (the ceiling); then modality "
                           "ablations of the best run. The same code as `cmar study`. Finished "
                           "runs are read back, not retrained, so a study that stopped continues "
                           "where it was.") + parameters(
        'GRID = "quick"  # "quick": 6 runs, about 12 min on a 2-core CPU; "readme": the study '
        'of docs/results.md,\n#   54 runs, about 2 h; "full": those 54 runs at the preset\'s 8 '
        'epochs (hours)',
        about="`GRID` picks the study. `quick` (the default) trains every fusion with the "
              "default preset's Transformer decoder on 2 seeds for 1 epoch each, in `next` "
              "mode: 6 runs, about 12 minutes on a 2-core CPU (an estimate: about 60 s per "
              "epoch of the `default` preset and 45 s per evaluation). It is a first look, too "
              "short and too few seeds to rank the fusions. `readme` is the study of "
              "docs/results.md, "
              "one setting away: 3 fusions x 3 decoders x 3 seeds x 2 modes, 3 epochs each (54 "
              "runs, about 2 hours on a 2-core CPU, far less on a GPU). Timings are for "
              "ShapeStories; on StoryReasoning every run takes longer. In smoke mode the grid "
              "is `smoke` (2 runs, seconds).") + [
        md(PRESET, """

            Every run of the grid starts from that preset (its data and model), then sets its
            own fusion, decoder, seed, mode and epochs. The cell prints the grid and where its
            runs go: `readme` writes `runs/study` (the folder `cmar study` uses), the other
            grids `runs/study-<grid>`, so no grid overwrites another's runs."""),
        code("""
            import dataclasses

            from cmar.config import preset_for
            from cmar.research.study.grid import GRIDS, Grid, cells

            CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)
            grids = {**GRIDS, "quick": Grid(fusions=("concat", "cross", "cmar"),
                                            decoders=("transformer",), seeds=(0, 1),
                                            modes=("next",), epochs=1)}
            name = "smoke" if SMOKE else GRID
            grid = dataclasses.replace(grids[name], config=CONFIG)
            if SOURCE != "shapestories":  # every run reads SOURCE
                grid = dataclasses.replace(grid, overrides=(*grid.overrides,
                                                            f"data.source={SOURCE}"))
            RUNS_DIR = "runs/study" if name == "readme" else f"runs/study-{name}"
            print(grid)
            print(len(cells(grid)), "runs into", RUNS_DIR)"""),
        md("""
            ## Train and score every run

            The long cell: each run is trained (or read back when its folder holds a finished
            run with the same config), then evaluated on the test split; at the end the best
            run of each mode is scored again with its context images, then its context
            captions, blanked. A progress bar counts the runs. Stopped part-way? Run the cell
            again: finished runs are read back."""),
        varying("from cmar.research.study.grid import run_study\n\n"
                "result = run_study(grid, RUNS_DIR)"),
        md("""
            ## Mean and spread over seeds, beside the floors

            Each cell is the mean ± sample standard deviation over seeds on the test split.
            "minus concat" is the mean and spread of a fusion's score minus concat's on the
            run with the same decoder and seed, with its 95% interval and how many of those
            runs are above concat: with two seeds (`quick`) the interval is wide, so a
            difference is a hint, not a finding.

            Below them, the floors on the same windows: systems that learn nothing (copy the
            last caption, the most frequent caption, the nearest training caption). On
            ShapeStories three rows come from rule solvers: `oracle (ceiling)` reads both
            modalities and is exact; `rules on text only (not a ceiling)` and `rules on images
            only (not a ceiling)` are the same rules fed one modality, so a model can beat
            them. The modality ablation re-scores the best run with its context images
            (features) or its context captions blanked: the larger the drop, the more the
            model relies on that modality."""),
        code("""
            from pathlib import Path

            from IPython.display import Markdown, display

            display(Markdown((Path(RUNS_DIR) / "study.md").read_text()))"""),
        md("""
            ## The chart

            One bar per (fusion, decoder) with its spread over seeds, and the floors as dashed
            lines: a bar that does not clear the lines has learned nothing the floors do not
            already know."""),
        code("""
            from IPython.display import Image

            display(Image(filename=str(Path(RUNS_DIR) / "study.png")))"""),
        md("""
            ## One run's numbers

            Every row comes from a run folder with its config, history, checkpoints and
            `metrics.json`; open any of them with notebook 04 (`RUN_DIR`)."""),
        code("for row in result[\"rows\"][:6]:\n"
             "    print(row[\"run\"], {k: round(v, 3) for k, v in row.items() if "
             "isinstance(v, float)})"),
        md("""
            ## Summary

            - An ablation compares variants that differ in one part, everything else equal:
              same preset, same data, same seeds, paired by decoder and seed.
            - Report the mean and spread over seeds and the paired difference with its
              interval; one run per variant says nothing, two seeds say little.
            - Every score sits beside its floors and, on ShapeStories, the oracle's ceiling;
              the rule solvers fed one modality are not ceilings.
            - Blanking a modality in a trained run shows which input the model uses."""),
        md("""
            ## Try this

            1. Set `GRID = "readme"`: the 54 runs of docs/results.md (about 2 hours on a 2-core CPU,
               minutes per run on a GPU). With three seeds and three decoders per fusion the
               intervals narrow; check whether the `quick` grid's ranking survives.
            2. Add a fusion to the `quick` grid: `fusions=("concat", "cross", "cmar",
               "cmar_lite")` (two more runs, about 4 minutes). Where does it land against
               concat in the paired table?
            3. Give the `quick` grid `epochs=2`: every run trains twice as long (about 18
               minutes in all; the 1-epoch runs are not reused, their config differs). Do the
               fusions keep their order, or was 1 epoch too short to tell them apart?"""),
    ],
    "06_your_data": header("06_your_data", "06 · Your own dataset",
                           "A folder of your images and one captions file becomes a cmar "
                           "source: validated (what was skipped and why), trained and scored "
                           "beside the floors.") + parameters(
        'FOLDER = "data/my_stories"  # your folder: images + captions.csv\n'
        'STAND_IN = True  # write a stand-in folder from SOURCE first; False: use yours as it is\n'
        'N_STORIES = 600  # stand-in stories, before the test and validation carve (smoke: 60)') + [
        md(PRESET, """

            The stand-in folder is written from `SOURCE`'s stories, so it gets `SOURCE`'s
            preset; a folder of your own (`STAND_IN = False`) holds real photos or stills, so
            it gets the `storyreasoning` one."""),
        code("""
            from cmar.config import load_config, preset_for

            CONFIG = preset_for(SOURCE if STAND_IN else FOLDER, SMOKE)  # or name a preset yourself
            print("preset:", CONFIG)"""),
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
             "from cmar.data.own import write_own_folder\n"
             "from cmar.data.prepare import load_split\n\n"
             "if STAND_IN:\n    shutil.rmtree(FOLDER, ignore_errors=True)\n"
             "    n_stories = 60 if SMOKE else N_STORIES\n"
             "    source = load_config(CONFIG, [f\"data.source={SOURCE}\", "
             "f\"data.n_stories={n_stories}\"])\n"
             "    stories = load_split(source.data, \"train\", progress=False)[:n_stories]\n"
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
        md("## Train on it\n\nThe preset chosen above with `data.source` set to the folder: "
           "from the command line, `cmar train --config default --set "
           "data.source=data/my_stories` (`cmar data` with the same flags prints the report "
           "above). A progress bar per epoch, a line per epoch, then the loss curves "
           "(notebook 03 explains them)."),
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
        md("""
            ## Summary

            - A folder of images and a `captions.csv` (or `.jsonl`) is a source like any
              other: `data.source=FOLDER`, in Python or on the command line.
            - A story with a problem is skipped whole and counted under its reason, with
              examples: no frame is misaligned, nothing is lost silently.
            - An optional `split` column places whole stories; the rest is carved from `train`
              by story, so no story is in two splits.
            - A score on your data means something only beside the floors on the same
              windows."""),
        md("""
            ## Try this

            1. Plant a fourth mistake in the stand-in cell: keep only the first three frames
               of one story (`short = lines[40]["story_id"]`, then
               `lines = [x for x in lines if x["story_id"] != short or int(x["frame"]) <= 3]`
               before the file is written). With k = 3 a story needs four frames, so the
               report should count one more skipped story, as `too_short`.
            2. Point `FOLDER` at a folder of your own and set `STAND_IN = False`: read the
               validation report first, fix what it names, and only then train.
            3. Train longer: add `"train.epochs=12"` to the settings of the validation-report
               cell (the config the trainer uses). The smoke preset learns little here, the
               `default` one pulls far above the floors: watch the gap between the model's
               BLEU-4 and the nearest neighbour's."""),
    ],
}


def guide_fusion() -> str:
    """CONTRIBUTING.md's FiLM fusion, the one definition notebook 07 registers."""
    guide = (ROOT / "CONTRIBUTING.md").read_text()
    found = re.search(r"```python\n(import torch.*?)```", guide, re.S)
    if not found:
        raise SystemExit("CONTRIBUTING.md has no ```python block starting with `import torch`")
    return found.group(1).strip("\n")


NOTEBOOKS["07_investigation"] = header(
    "07_investigation", "07 · An investigation: does CMAR make the model use its images more?",
    "A whole investigation as a course asks for it: a question, a prediction, the reference "
    "system, one intervention (a fusion registered in a cell), a fair comparison over seeds "
    "with controls, a probe and an intervention on one representation, and what the evidence "
    "supports. Import the reference system; expose your intervention; keep the experiment in "
    "the notebook.") + parameters(
    'SEEDS = [0, 1, 2]  # every arm trains once per seed; more seeds, narrower intervals\n'
    'EPOCHS = 2  # per run (the default preset trains 8)\n'
    'RUNS_DIR = "runs/investigation"  # on Colab, a Google Drive folder keeps the runs',
    about="In full mode the comparison trains 3 fusions x 3 seeds of the `default` preset "
          "for 2 epochs each and scores every run under two controls; the whole notebook "
          "took 20 minutes on a 2-core CPU (its timings are in the outputs). "
          "Finished runs are read back, so running it again costs seconds. In smoke mode "
          "(`SMOKE = True`) the arms are the `smoke` preset for 1 epoch on seeds 0 and 1: "
          "seconds, and numbers that mean nothing.") + [
    md("""
        ## 1. Question

        **Does cross-modal refinement (CMAR) make the model use its context images more than
        concatenation does?**

        "Use" needs a measurement. Here it is what the model loses when its images are taken
        away: the rise of the true next caption's negative log-likelihood (`caption NLL`,
        lower is better) and the fall of BLEU-4 under the control `images_blanked`, paired
        with the same run's plain scores. A model that ignores its images loses nothing."""),
    md("""
        ## 2. Motivation and prediction

        Concatenation pools the image into one vector and glues it to the pooled caption.
        CMAR lets every word attend to the image regions, and every region to the words, for
        a few rounds before pooling, so it could carry more of what the images hold (on
        ShapeStories, where the actor faces, which the captions never say).

        **Prediction, written before running:** CMAR's runs lose more without their images
        than concat's, paired by seed (the difference of the two drops has a 95% interval
        above 0). A third fusion, FiLM (the caption scales and shifts every region), sits
        between them. If the prediction fails, the images are not what CMAR's extra
        computation buys."""),
    md(PRESET, """

        ## 3. The reference system

        The reference is cmar's own model with one change that makes the question fair: its
        decoder does not read the image regions directly. By default it attends over the
        story states, every context frame's words after fusion, and every region, so the
        images could reach it without passing through the fusion, and the fusions would be
        compared on a path the decoder may ignore. With `model.memory_regions=false` the
        decoder reads the story states and the fused words (where it finds, and copies, the
        names), so whatever it knows of the images went through the fusion under test: into
        the frame vector for every fusion, and into the words too for CMAR (its words attend
        to the regions; concat's and FiLM's words leave the fusion as they came in). The
        reference's look-ahead then refines regions the decoder no longer reads: it stays only
        as a training signal (its pointer's loss reaches the image encoder, the fusion and the
        story encoder), the same in every arm."""),
    code("""
        from cmar.config import load_config, preset_for

        CONFIG = preset_for(SOURCE, SMOKE)  # or name a preset yourself
        print("preset:", CONFIG)
        COMMON = [f"data.source={SOURCE}", f"train.epochs={1 if SMOKE else EPOCHS}",
                  "model.memory_regions=false"]
        reference = load_config(CONFIG, ["model.fusion=cmar", *COMMON])
        m = reference.model
        print(f"{m.image_encoder} image encoder -> {m.fusion} fusion -> {m.story_encoder} story "
              f"encoder -> {m.decoder} decoder; d_model {m.d_model}; {reference.train.epochs} "
              f"epochs; k = {reference.data.k}; seeds {SEEDS if not SMOKE else [0, 1]}")"""),
    md("""
        ## 4. The intervention: a fusion of our own

        The fusion is the part we change. This cell registers FiLM, the example fusion of
        CONTRIBUTING.md: the pooled caption predicts a scale and a shift for every image
        region, then regions and words are pooled as CMAR pools them. `Pool` and
        `hidden_for` size it to CMAR's parameter budget, so no arm wins by being bigger.
        Registering is all it takes: `model.fusion=film` now names it, in a config built here
        or in `cmar train --plugin FILE.py` from a terminal."""),
    code("from cmar.models.registry import FUSIONS\n\n"
         "FUSIONS.pop(\"film\", None)  # running this cell again replaces the earlier "
         "definition\n\n" + guide_fusion()),
    md("""
        ## 5. Implementation: a fair comparison with controls

        Three arms that differ in one key, `model.fusion`; `vary=["model.fusion"]` makes
        that a check (an arm that differed in anything else would be refused, naming the
        key). Each arm trains once per seed, the same seeds for every arm, so each seed gives
        one paired comparison. Each run is then scored as it is and under two controls:

        - `images_blanked`: every image replaced by zeros, the captions untouched;
        - `context_from_other_story`: the whole context (images and captions) taken from a
          window of another story. A model that reads its context at all loses here; one that
          writes a generic caption does not.

        Finished runs are read back, not retrained: run the cell again after a disconnect and
        it continues. Scores under a control are cached in each run's folder too."""),
    varying("""
        import time

        from cmar.experiment import compare

        arms = {fusion: load_config(CONFIG, [f"model.fusion={fusion}", *COMMON])
                for fusion in ("concat", "cmar", "film")}
        start = time.perf_counter()
        result = compare(arms, seeds=[0, 1] if SMOKE else SEEDS,
                         controls=["images_blanked", "context_from_other_story"],
                         runs_dir=RUNS_DIR, vary=["model.fusion"])
        print(f"{len(result.table)} rows in {(time.perf_counter() - start) / 60:.1f} min")"""),
    md("""
        The reference system as a report states it: the code's version and commit, and the
        SHA-256 of the run's config, its training data and its checkpoint. Paste it into your
        report; anyone can then check they hold the same system."""),
    code("""
        from pathlib import Path

        import pandas as pd

        import cmar

        record = cmar.provenance(Path(RUNS_DIR) / "cmar-s0")
        pd.Series(record, name="reference system").to_frame()"""),
    md("""
        ## 6. Results

        ### Scores over seeds, beside the floors

        Mean and sample standard deviation over seeds of every (arm, control). Below, the
        floors on the same windows: systems that learn nothing. A fusion's BLEU-4 is a result
        only above them."""),
    code("""
        pd.set_option("display.precision", 3)
        place = ["slot place"] if SOURCE == "shapestories" else ["names F1"]
        display(result.means(["BLEU-4", "caption NLL", *place]))
        display(result.floors)"""),
    md("""
        ### Paired with concat

        Each arm minus concat on the runs of the same seed: the mean difference, its 95% t
        interval and how many seeds are above. First the plain runs (is the arm better?),
        then the question itself: the *drop* under `images_blanked` (control minus plain),
        arm minus concat. For `caption NLL` a positive drop difference means the arm loses
        more without its images, so it used them more."""),
    code("""
        display(result.paired("concat", "caption NLL"))
        display(result.paired("concat", "BLEU-4"))
        key = result.paired("concat", "caption NLL", "images_blanked", drop=True)
        display(key)
        display(result.paired("concat", "caption NLL", "context_from_other_story", drop=True))"""),
    md("""
        ### The figure

        Caption NLL of every arm, plain and under each control; each dot a seed. The gap
        between an arm's plain bar and its `images_blanked` bar is what it loses without its
        images."""),
    code("""
        figure = result.plot("caption NLL")"""),
    md("""
        ### Decodable: a probe

        Is the next place (ShapeStories: the landmark the next actor faces, shown only by a
        dot in the image) in the representations at all? A linear and a small MLP probe read
        it from each frame's image vector (before fusion) and from its story state (after
        fusion and the story encoder), trained on the train split and scored on the test
        split. Beside them: the same probe trained on shuffled labels, which must sit near the
        majority class. On another source the cell uses a target of its own: whether the next
        caption tags a place."""),
    code("""
        from cmar.experiment import probe


        def next_caption_tags_a_place(story, t):
            \"\"\"A target of your own: (story, frame t) -> label, None to leave it out.\"\"\"
            if t + 1 >= len(story) or not story.mentions:
                return None
            return any(m.kind == "gdl" for m in story.mentions[t + 1])


        target = "next_place" if SOURCE == "shapestories" else next_caption_tags_a_place
        probes = pd.DataFrame([probe(Path(RUNS_DIR) / f"{arm}-s0", representation, target,
                                     progress=False)
                               for arm in ("concat", "cmar")
                               for representation in ("image", "story")])
        probes[["run", "representation", "linear", "mlp", "shuffled labels", "majority",
                "chance"]]"""),
    md("""
        ### Used: an intervention

        A probe says the information is there, not that the model reads it. Here the newest
        context frame's image representation (its regions and vector) is swapped for the same
        frame of another story's window, everything else kept, and the caption's likelihood
        and the decoded place are compared window by window. A representation the model does
        not use changes nothing."""),
    code("""
        from cmar.experiment import intervene

        swaps = [intervene(Path(RUNS_DIR) / f"{arm}-s0", "image", position=-1, progress=False)
                 for arm in ("concat", "cmar")]
        pd.DataFrame([{"run": s["run"], "NLL plain": s["caption NLL"]["plain"],
                       "NLL swapped": s["caption NLL"]["swapped"],
                       "change": s["caption NLL"]["change"],
                       "95% interval": s["caption NLL"]["95% interval"],
                       **{f"place {k}": v for k, v in s.get("place", {}).items()}}
                      for s in swaps])"""),
    md("""
        ## 7. Interpretation

        Read the numbers, not the prediction. The cell states each paired result the way a
        report should: the mean, the interval, and whether the interval leaves 0 out. With 3
        seeds the t interval is wide (t = 4.3 for 2 degrees of freedom), so only a clear,
        consistent difference leaves 0 out.

        Read the four instruments together:

        | probe reads it | intervention changes it | what it suggests |
        |---|---|---|
        | no | no | the information never made it into the representation |
        | yes | no | decodable but unused: the model ignores it |
        | yes | yes | decodable and used |
        | no | yes | used through something the probe cannot read (try the MLP probe) |"""),
    code("""
        def sentence(row, what):
            low, high = row["95% low"], row["95% high"]
            if row["seeds"] < 2:
                return f"{row['arm']}: {what} {row['mean']:+.3f} from one seed: no interval"
            side = ("above 0" if low > 0 else "below 0" if high < 0
                    else "includes 0: no evidence of a difference")
            return (f"{row['arm']}: {what} {row['mean']:+.3f} [{low:+.3f}, {high:+.3f}], "
                    f"{row['above']} of {row['seeds']} seeds above; interval {side}")


        for _, row in key.iterrows():
            print(sentence(row, "extra NLL lost without images, vs concat"))
        for _, row in result.paired("concat", "caption NLL").iterrows():
            print(sentence(row, "plain NLL minus concat's"))"""),
    md("""
        ## 8. Limitations and alternative explanations

        - **Few seeds, short training.** 3 seeds of 2 epochs, where the preset trains 8.
          A difference may appear or vanish with longer training; the intervals say how
          little 3 pairs can show.
        - **One dataset.** ShapeStories is procedural: its images hold one thing the captions
          do not (the facing dot, 1-2 pixels at 64 px). On StoryReasoning the images carry
          different, fuzzier information; set `SOURCE = "storyreasoning"` to test that.
        - **Blank images are out of distribution.** A model never saw black frames in
          training, so a drop under `images_blanked` mixes "it used the images" with "black
          frames confuse it". `context_from_other_story` is a natural input and does not have
          that problem, and the intervention swaps in a real frame's representation.
        - **Matched parameters, not compute.** The fusions have the same parameter budget;
          CMAR costs more multiply-adds per frame (`cmar bench cost`).
        - **The decoder memory.** The question was asked without the regions in the
          decoder's memory. With the default memory the answer may differ: that is a second
          investigation (below).
        - **Several comparisons.** Two arms, two metrics, two controls: with many intervals
          one may leave 0 out by chance. Decide the key comparison before running (section 2)
          and report the others as secondary."""),
    md("""
        ## 9. Conclusion

        State what the key comparison (section 7's first lines) supports, whichever way it
        fell, beside its interval, and what would change the conclusion: more seeds, longer
        training, the other dataset. A prediction that failed is a result too.

        ## Summary

        - `compare` trains arms x seeds (or reads them back), refuses unfair arms with
          `vary=`, and scores every run plain and under named controls, paired by seed.
        - Controls and interventions measure *use*; probes measure *presence*; only together
          do they say where information goes.
        - `cmar.provenance` gives the reference system's hashes for the report.

        ## Questions you could ask next

        1. *Which context frame does the model rely on?* Add `"one_frame_blanked"` to
           `controls`: one control per frame position, and `result.drops("caption NLL")`.
        2. *Does it read the story in order?* Add `"order_reversed"` to `controls`.
        3. *Does the default memory let the decoder bypass the fusion?* Two arms that differ
           in `model.memory_tokens` and `model.memory_regions`, with `vary=["model.memory_tokens",
           "model.memory_regions"]`, under `images_blanked`.
        4. *Is the place used after fusion?* `intervene(run, "fused", position=-1)`: the fused
           frame vector instead of the image's.
        5. *Can the facing dot be read at all at this frame size?* `cmar probe` trains a small
           CNN on crops around each character, with its floors; then raise `data.image_size`.
        6. *Does a control of your own tell more?* Register one with
           `@CONTROLS.register("...")` (see `cmar/experiment/controls.py`) and name it in
           `controls`."""),
]


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
