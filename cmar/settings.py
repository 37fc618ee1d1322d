"""Settings: the config dataclasses, with a commented default on every field, and the closed
sets of choices of the string keys.

``Config()`` is exactly the ``default`` preset: the model each comment describes is the one
``make demo`` trains. This module is a leaf: it imports nothing from cmar and no torch, so a
notebook, a test or any other module can read, build and copy a config without the model.
Loading YAML presets, ``--set`` overrides and every check live in :mod:`cmar.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The closed sets of choices of the string keys. The modules that act on a choice import its
# set from here (this module stays light: no torch), so each set is written once.
SPLITS = ("train", "validation", "test")  # the splits of every source; eval.split
MODES = ("next", "grounded")  # data.mode
CAPTION_POLICIES = ("first_sentence", "full")  # data.caption_policy
IMAGE_FITS = ("letterbox", "center_crop", "squash")  # data.image_fit
# data.difficulty: the ShapeStories knobs (cmar.data.shapes_world.Knobs) each one sets
DIFFICULTIES = {
    "easy": dict(n_characters=2, n_landmarks=4, n_distractors=0, noise=0.0, jitter=0),
    "medium": dict(n_characters=3, n_landmarks=4, n_distractors=2, noise=0.02, jitter=1),
    "hard": dict(n_characters=3, n_landmarks=4, n_distractors=4, noise=0.06, jitter=2,
                 turn_prob=0.8),
}
NEXT_TARGETS = ("shared", "detached")  # model.next_target
NEXT_NEGATIVES = ("batch", "story")  # model.next_negatives
REGION_SOURCES = ("fused", "encoder", "both")  # model.memory_region_source
PREDICT_FROM = ("encoder", "fused", "story")  # model.predict_regions_from
GROUND_MENTIONS = ("characters", "all")  # model.ground_mentions
DESCRIBE_ENTITIES = ("characters", "all")  # model.describe_entities
STRATEGIES = ("greedy", "beam", "sample")  # eval.strategy
METRIC_TOKENIZERS = ("python", "ptb")  # eval.tokenizer
LOSS_TERMS = ("caption", "align", "next")  # every run's loss terms ("ground" too if asked)
DEVICES = ("auto", "cpu", "cuda", "mps")  # the values of the key device (see cmar.devices)
HF_PREFIX = "hf:"  # a part named hf:<hub id or folder> is a pretrained Hugging Face model


@dataclass
class DataConfig:
    source: str = "shapestories"  # "shapestories", "storyreasoning", a hub id or a local folder
    k: int = 3  # context frames; the target is frame k+1 of each window
    mode: str = "next"  # "next": context only; "grounded": also the target frame's image
    images_column: str = "images"  # column with the list of frame images
    captions_column: str | None = None  # list-of-captions column; None = StoryReasoning markup
    caption_policy: str = "first_sentence"  # "first_sentence" | "full" (see max_tokens)
    image_size: int = 64  # frames are resized to image_size x image_size
    image_fit: str = "letterbox"  # "letterbox" (pads: keeps all characters) | center_crop | squash
    val_fraction: float = 0.1  # share of train stories carved out as validation (by story)
    test_fraction: float = 0.1  # carved only when the source has no test split
    split_seed: int = 0  # seed of the carving; fixed so splits never move
    limit: int | None = None  # at most this many stories per split (quick runs)
    n_stories: int = 2000  # ShapeStories: stories generated (before splitting)
    shapestories_seed: int = 0  # ShapeStories: generator seed
    difficulty: str = "medium"  # ShapeStories: "easy" | "medium" | "hard"
    shapestories_knobs: dict = field(default_factory=dict)  # ShapeStories: Knobs overrides
    min_pair_freq: int = 2  # BPE: a pair seen fewer times is never merged (no word is lost)
    vocab_size: int = 10000  # BPE vocabulary size, incl. the 256 byte symbols and 4 specials
    max_tokens: int = 40  # the caption length: BPE tokens kept of every caption, in or out
    batch_size: int = 32  # windows per batch
    num_workers: int = 0  # DataLoader worker processes (0: batches built in the main process;
    #                       on a 2-core CPU the model, not the loader, is the bottleneck)
    cache_dir: str = "data"  # generated data, downloaded copies and decoded-frame caches


@dataclass
class ModelConfig:
    image_encoder: str = "small_cnn"  # "small_cnn" (CPU, S/16 regions) | "small_cnn_fine" (S/8)
    #                                  | "resnet18" | "resnet34" | "resnet50"
    #                                  | "hf:<hub id or folder>": a CLIP/SigLIP/DINOv2/ViT tower
    pretrained: bool = False  # ResNet: ImageNet weights through torchvision's weights API
    freeze_image_encoder: bool = False  # keep the CNN or tower fixed (only its projection
    #                                     trains; its features are then cached)
    freeze_text_encoder: bool = False  # hf: text encoder: keep it fixed
    freeze_decoder: bool = False  # hf: decoder: keep its pretrained weights fixed (its new
    #                               cross-attention layers still train)
    gradient_checkpointing: bool = False  # hf: parts recompute activations in backward
    #                                       (less memory, about a third more time)
    d_model: int = 128  # width of every representation the parts exchange
    n_heads: int = 4  # attention heads in fusion, Transformer encoders and decoder
    region_layers: int = 1  # self-attention layers over each frame's regions after the image
    #                         encoder (0: none): a region can then hold what lies elsewhere
    text_encoder: str = "gru"  # context captions: "gru" | "lstm" | "transformer"
    #                            | "hf:<hub id or folder>": BERT, MiniLM, with its tokenizer
    fusion: str = "cmar"  # per frame: "cmar" | "cmar_lite" | "cross" | "concat"
    cmar_rounds: int = 2  # CMAR refinement rounds (text->image then image->text each)
    story_encoder: str = "gru"  # over the k fused frames: "gru" | "lstm" | "transformer"
    decoder: str = "transformer"  # "transformer" | "lstm" | "gru" | "hf:<hub id or folder>":
    #                               a GPT-2-family LM that cross-attends; its tokenizer is the
    #                               captions'
    encoder_layers: int = 1  # layers of the text encoder and of the story encoder
    decoder_layers: int = 2  # layers of the caption decoder
    memory_tokens: bool = True  # decoder memory also holds every context frame's fused words
    memory_regions: bool = True  # ... and every context frame's image regions
    memory_region_source: str = "fused"  # which regions the memory holds: "fused" (after the
    #                                      fusion: they have read their caption) | "encoder"
    #                                      (before it: a visual route the text cannot flood)
    #                                      | "both"
    copy_tokens: bool = True  # pointer-generator decoder: a word may be copied from the
    #                           context captions' tokens in its memory (needs memory_tokens):
    #                           names are copied from the context, not memorised
    dropout: float = 0.1  # dropout inside every part
    infonce_temperature: float = 0.1  # of the alignment and next-frame InfoNCE losses
    learn_temperature: bool = False  # learn both temperatures (log scale, from the one above)
    next_target: str = "shared"  # next-frame target: "shared" (its gradient trains the image
    #                              encoder too) | "detached" (a fixed target: stop-gradient)
    next_negatives: str = "batch"  # "batch": the next frames of the batch's other windows |
    #                                "story": also the window's own context frames
    w_ground: float = 0.0  # weight of the grounding loss: the fusion's word-to-region
    #                        attention at a tagged mention (a character's name; see
    #                        ground_mentions) pulled onto the regions of its box (needs boxes
    #                        in chain_of_thought and a cmar or cross fusion; 0: off)
    ground_mentions: str = "characters"  # which tagged mentions the grounding loss pulls:
    #                                      "characters" (names) | "all" (also objects and
    #                                      places: <gdl lmN>the pond</gdl>) that have a box
    predict_regions: bool = False  # "imagine, then describe" (next mode): predict frame k+1's
    #                                regions from the context frames' regions (no text input);
    #                                the prediction joins the decoder memory where grounded
    #                                mode puts the real frame's regions (cmar.models.imagine)
    predict_regions_from: str = "encoder"  # what the prediction reads: the context regions
    #                                        from the "encoder" (no text at all) | "fused"
    #                                        (after the fusion: each read its own caption) |
    #                                        "story" (fused, and the story encoder's states)
    predict_regions_motion: bool = False  # the prediction also reads each region's change
    #                                       between consecutive context frames
    teacher_regions: float = 0.0  # training only: the share of windows whose decoder reads
    #                               the true frame k+1's regions in place of the prediction
    #                               (teacher forcing the imagined frame, so the decoder learns
    #                               to read that slot as grounded mode does; needs
    #                               predict_regions)
    w_regions: float = 0.0  # weight of the dense next-frame loss: each predicted region pulled
    #                         to the encoded region of the true frame k+1 (stop-gradient),
    #                         weighted by how much that region changed (needs predict_regions;
    #                         0: off, the prediction then learns from the caption loss only)
    w_describe: float = 0.0  # weight of the describe loss: the image encoder's regions under
    #                          each boxed entity of a context frame must say its description
    #                          in chain_of_thought (training-only supervision; needs boxes and
    #                          descriptions there; cmar.models.describe; 0: off)
    describe_entities: str = "characters"  # which boxed entities it describes: "characters"
    #                                        | "all" (objects and landmarks too)
    look_ahead: bool = True  # each context region points at where its content goes in the
    #                          next frame and reads what lies there (cmar.models.look_ahead;
    #                          false turns it off whole: the two keys below are then unread)
    look_ahead_turn: bool = True  # where it sits: true, after the story encoder, its pointer
    #                               also reading the story state of its frame (whose turn is
    #                               next, from the captions) and refining the fused regions the
    #                               decoder memory holds | false, after the region encoder and
    #                               before the fusion (image only)
    w_look_ahead: float = 1.0  # weight of the look-ahead loss: the regions under each
    #                            character that moves point at its box in the next frame
    #                            (training-only supervision from chain_of_thought boxes; 0: the
    #                            pointer learns from the other losses only)
    w_move: float = 0.0  # weight of the move loss: the look-ahead's output regions under each
    #                      character that moves give its step (dx, dy and length, between its
    #                      box centres in two consecutive frames) through a linear head, so that
    #                      the decoder can read how far it goes; 0 turns it off


@dataclass
class TrainConfig:
    epochs: int = 8  # passes over the training windows
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay, on weight matrices only (cmar.train.optim)
    warmup: float = 0.05  # share of all steps spent warming the learning rate up
    grad_clip: float = 1.0  # max gradient norm (0 turns clipping off)
    w_align: float = 0.1  # weight of the image-text alignment InfoNCE (0 turns it off)
    w_next: float = 0.1  # weight of the next-frame InfoNCE (0 turns it off)
    lr_groups: dict = field(default_factory=dict)  # learning-rate multipliers by parameter name
    #                                               prefix, e.g. {"image_encoder": 0.1}; the
    #                                               longest matching prefix wins (1: the rest)
    frozen_epochs: dict = field(default_factory=dict)  # parameter name prefix -> epochs at the
    #                                                   start with its learning rate held at 0,
    #                                                   e.g. {"image_encoder": 2}: protect a
    #                                                   part, then fine-tune it
    caption_dropout: float = 0.0  # share of training windows whose context captions are all
    #                               blanked (one [UNK] each, as the captions_blanked control)
    word_dropout: float = 0.0  # share of the remaining context caption tokens set to [UNK]
    amp: bool = True  # mixed precision on CUDA only: bf16 from compute capability 8.0 (A100,
    #                   H100), fp16 with the gradient scaler below it (T4): devices.amp_dtype
    select: str = "val_caption"  # history key that picks the best checkpoint (lower is better)
    patience: int = 0  # stop after this many epochs without improvement (0: never)
    log_every: int = 25  # steps between host syncs: loss shown, NaN check, stop agreed
    save_frozen_weights: bool = False  # store a frozen pretrained backbone in checkpoints
    process_timeout: int = 120  # minutes a process waits for the others (several processes),
    #                             the main process building the data caches included


@dataclass
class EvalConfig:
    split: str = "test"  # split scored by `cmar evaluate`
    strategy: str = "greedy"  # "greedy" | "beam" | "sample"
    beam_size: int = 5  # beam width for strategy=beam
    batch_size: int = 64  # windows per generation batch
    candidates: int = 100  # retrieval candidates per window (the true one + others); the
    #                        caption ranking's cost grows with it (docs/evaluation-cost.md)
    candidate_sets: list[int] = field(default_factory=lambda: [20, 32, 100])  # sizes also
    #     reported (R@1, R@5, mean rank, chance, floor): the first n of the candidates, no
    #     extra cost; a size above eval.candidates is reported as skipped
    retrieval_windows: int = 500  # windows scored for caption retrieval (a seeded sample;
    #                               0: no caption ranking, the costly part on a CPU)
    examples: int = 5  # example windows shown in report.md
    meteor: bool = False  # also METEOR (pycocoevalcap's jar: needs Java on the PATH)
    tokenizer: str = "python"  # how the metrics split words: "python" (no Java) | "ptb" (Java)
    bootstrap: int = 1000  # resamples of stories for the 95% intervals (0: no intervals)


@dataclass
class Config:
    name: str = "default"  # run folder name under runs_dir
    runs_dir: str = "runs"  # where run folders are written
    seed: int = 0  # seeds python, numpy, torch and the data order
    device: str = "auto"  # "auto" (cuda, else mps, else cpu) | "cpu" | "cuda" | "mps"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def loss_terms_of(config: Config) -> tuple[str, ...]:
    """The loss terms a run of ``config`` logs: :data:`LOSS_TERMS`, then ``ground`` and
    ``regions`` where their weights turn them on, then ``total``."""
    m = config.model
    return (*LOSS_TERMS, *(("ground",) if m.w_ground > 0 else ()),
            *(("regions",) if m.predict_regions and m.w_regions > 0 else ()),
            *(("describe",) if m.w_describe > 0 else ()),
            *(("look_ahead",) if m.look_ahead and m.w_look_ahead > 0 else ()),
            *(("move",) if m.look_ahead and m.w_move > 0 else ()), "total")


def check_model(m: ModelConfig, fusion_given: bool = False) -> ModelConfig:
    """``m``, or a ValueError naming the first model keys whose values cannot run together.

    The checks that need no model code, so both :func:`cmar.config.check_combinations` (every
    config loaded) and ``StoryModel`` (a model built from a ``ModelConfig`` in Python) run
    these same lines. ``fusion_given``: the fusion is a module passed in, not ``m.fusion``.
    """
    for key, value, choices in (("next_target", m.next_target, NEXT_TARGETS),
                                ("next_negatives", m.next_negatives, NEXT_NEGATIVES)):
        if value not in choices:
            raise ValueError(f"config key model.{key} must be one of {', '.join(choices)}, "
                             f"got {value!r}")
    for key, value, choices in (("memory_region_source", m.memory_region_source,
                                 REGION_SOURCES),
                                ("predict_regions_from", m.predict_regions_from, PREDICT_FROM),
                                ("ground_mentions", m.ground_mentions, GROUND_MENTIONS),
                                ("describe_entities", m.describe_entities, DESCRIBE_ENTITIES)):
        if value not in choices:
            raise ValueError(f"config key model.{key} must be one of {', '.join(choices)}, "
                             f"got {value!r}")
    if m.teacher_regions > 0 and not m.predict_regions:
        raise ValueError(f"config key model.teacher_regions ({m.teacher_regions}) replaces "
                         "predicted next-frame regions: it needs model.predict_regions=true")
    if m.w_regions > 0 and not m.predict_regions:
        raise ValueError(f"config key model.w_regions ({m.w_regions}) weights the loss of the "
                         "predicted next-frame regions: it needs model.predict_regions=true")
    if m.d_model % m.n_heads:
        raise ValueError(f"config key model.d_model ({m.d_model}) must be divisible by "
                         f"model.n_heads ({m.n_heads})")
    if m.copy_tokens and not m.memory_tokens:
        raise ValueError("config key model.copy_tokens (true) copies the context words of the "
                         "decoder's memory: it needs model.memory_tokens=true, got false")
    pretrained = [(key, value) for key, value in (("model.text_encoder", m.text_encoder),
                                                  ("model.decoder", m.decoder))
                  if value.startswith(HF_PREFIX)]
    if m.copy_tokens and pretrained:
        key, value = pretrained[0]
        raise ValueError(f"config key model.copy_tokens (true) needs the built-in decoder and "
                         f"text encoder (one shared vocabulary), got {key}={value}: set "
                         "model.copy_tokens=false")
    for freeze, key, value in (("freeze_text_encoder", "model.text_encoder", m.text_encoder),
                               ("freeze_decoder", "model.decoder", m.decoder)):
        if getattr(m, freeze) and not value.startswith(HF_PREFIX):
            raise ValueError(f"config key model.{freeze} (true) keeps pretrained weights fixed: "
                             f"it needs {key}={HF_PREFIX}<hub id or folder>, got {key}={value}")
    if m.w_ground > 0 and m.fusion == "concat" and not fusion_given:
        raise ValueError(f"config key model.w_ground ({m.w_ground}) needs a fusion with "
                         "word-to-region attention (cmar, cmar_lite or cross), got "
                         "model.fusion=concat")
    return m
