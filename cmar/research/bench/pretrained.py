"""What a preset with pretrained parts costs, estimated on the machine at hand: ``cmar bench
pretrained``.

The real models cannot be downloaded here, so stand-ins of the same shapes are built from their
configs (:mod:`cmar.models.hf.stand_ins`: CLIP ViT-B/32's vision tower, all-MiniLM-L6-v2,
GPT-2 small) and the preset's model is built on them through the real ``hf:`` loading code.
One synthetic batch of StoryReasoning's shape (``data.batch_size`` windows of k frames, cached
tower features, context and target captions of ``data.max_tokens`` tokens: the longest, so an
upper bound) then gives, measured:

- parameters (all, trainable) and the optimiser state AdamW keeps for the trainable ones;
- the activations a training step keeps for backward: the bytes of every tensor autograd saves
  (each storage counted once), in float32;
- the floating-point operations of one step (forward and backward, ``FlopCounterMode``);
- the seconds of one step on this machine (median of ``steps``, after one warm-up step).

From those, two estimates (labelled as such everywhere they are shown):

- GPU memory: weights + gradients + AdamW's two moments (float32) + the activations, + 1 GiB
  for the CUDA context and allocator slack. Mixed precision keeps many activations in 16 bits,
  so the float32 activations are an upper bound;
- GPU time per epoch: the step's operations x steps per epoch / an assumed sustained rate
  (``gpu_tflops``, default 15 TFLOP/s: about a quarter of a T4's 65 TFLOP/s fp16 peak, what
  mixed-precision training of a model this size typically sustains).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cmar.config import load_config
from cmar.data import Batch
from cmar.models.hf import hf_source, pretrained_tokenizer, stand_ins
from cmar.models.story_model import StoryModel

# StoryReasoning's training split: about 3,500 stories of 9-14 frames (mean about 11.5), so
# about 8.5 windows of k = 3 per story
STORYREASONING_TRAIN_STORIES = 3500
STORYREASONING_MEAN_FRAMES = 11.5
GIB = 2 ** 30


def train_windows(k: int) -> int:
    return round(STORYREASONING_TRAIN_STORIES * (STORYREASONING_MEAN_FRAMES - k))


def stand_in_parts(model_cfg, folder: Path, size: str = "base") -> dict[str, str]:
    """``hf:`` names of stand-ins for every hf: part of ``model_cfg``: CLIP ViT-B/32's tower,
    all-MiniLM-L6-v2 and GPT-2 small's shapes (``size="tiny"``: the tests' tiny ones)."""
    tiny = size == "tiny"
    parts = {}
    if hf_source(model_cfg.image_encoder):
        parts["image_encoder"] = stand_ins.vision_tower(folder / "vision", size)
    if hf_source(model_cfg.text_encoder):
        parts["text_encoder"] = stand_ins.text_encoder(folder / "text", ["a b c"],
                                                       size if tiny else "minilm")
    if hf_source(model_cfg.decoder):
        parts["decoder"] = stand_ins.causal_lm(folder / "decoder", ["a b c"], size)
    return {part: f"hf:{path}" for part, path in parts.items()}


def synthetic_batch(model: StoryModel, windows: int, k: int, tokens: int,
                    context_vocab: int, seed: int = 0) -> Batch:
    """A batch of the preset's largest shape; tower features in place of frames when the
    tower is frozen (the feature cache), else images."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.init_args["vocab_size"]
    size = model.init_args["image_size"]
    frames: dict = {}
    if model.cfg.freeze_image_encoder:
        backbone = model.image_encoder.backbone
        shape = (1 + backbone.n_regions, backbone.width)
        frames["context_features"] = torch.randn(windows, k, *shape, generator=g)
        frames["target_features"] = torch.randn(windows, *shape, generator=g)
    else:
        frames["context_images"] = torch.randn(windows, k, 3, size, size, generator=g)
        frames["target_image"] = torch.randn(windows, 3, size, size, generator=g)
    context = torch.randint(5, context_vocab, (windows, k, tokens), generator=g)
    target = torch.randint(5, vocab - 1, (windows, tokens + 1), generator=g)
    return Batch(context_images=frames.get("context_images"),
                 target_image=frames.get("target_image"),
                 context_features=frames.get("context_features"),
                 target_features=frames.get("target_features"),
                 context_tokens=context, context_mask=torch.ones_like(context, dtype=torch.bool),
                 target_in=target, target_out=target,
                 target_mask=torch.ones_like(target, dtype=torch.bool),
                 window_ids=[f"s{i}:{k}" for i in range(windows)])


def saved_activation_bytes(model: StoryModel, batch: Batch) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (a storage once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch)
        loss = sum(out.losses.values())
    del loss, out
    return sum(seen.values())


def bench_pretrained(config: str = "storyreasoning-clip", overrides: list[str] = (),
                     steps: int = 3, gpu_tflops: float = 15.0, size: str = "base") -> dict:
    """Measured cost of one training step of ``config`` on stand-ins, and the estimates."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config(config, list(overrides))
    with tempfile.TemporaryDirectory(prefix="cmar-stand-ins-") as root:
        parts = stand_in_parts(cfg.model, Path(root), size)
        model_cfg = dataclasses.replace(cfg.model, **parts)
        decoder_folder = hf_source(model_cfg.decoder)
        tokenizer = pretrained_tokenizer(decoder_folder) if decoder_folder else None
        torch.manual_seed(cfg.seed)
        vocab = len(tokenizer) if tokenizer is not None and size == "tiny" else 50257
        model = StoryModel(model_cfg, vocab_size=vocab, image_size=cfg.data.image_size,
                           mode=cfg.data.mode, max_len=cfg.data.max_tokens + 1,
                           pad_id=getattr(tokenizer, "pad_token_id", 0) or 0,
                           bos_id=getattr(tokenizer, "bos_token_id", 1) or 0,
                           eos_id=getattr(tokenizer, "eos_token_id", 2) or 0)
    model.train()
    context_vocab = (model.text_encoder.model.config.vocab_size
                     if hasattr(model.text_encoder, "model") else model.init_args["vocab_size"])
    batch = synthetic_batch(model, cfg.data.batch_size, cfg.data.k, cfg.data.max_tokens,
                            context_vocab)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(model(batch).losses.values()).backward()
        optimizer.step()

    activations = saved_activation_bytes(model, batch)
    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    n_all = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in trainable)
    windows = train_windows(cfg.data.k)
    steps_per_epoch = math.ceil(windows / cfg.data.batch_size)
    flops = counter.get_total_flops()
    memory = 4 * n_all + 3 * 4 * n_trainable + activations + GIB
    return {
        "config": config, "overrides": list(overrides),
        "stand_ins": {part: f"{size}-size random weights" for part in parts},
        "batch": {"windows": cfg.data.batch_size, "k": cfg.data.k,
                  "tokens": cfg.data.max_tokens, "features": batch.context_features is not None},
        "parameters": n_all, "trainable": n_trainable,
        "activations_gib": activations / GIB,
        "flops_per_step": flops,
        "cpu_step_seconds": seconds, "cpu_threads": torch.get_num_threads(),
        "train_windows": windows, "steps_per_epoch": steps_per_epoch,
        "estimate": {
            "gpu_memory_gib": memory / GIB,
            "gpu_epoch_minutes": flops * steps_per_epoch / (gpu_tflops * 1e12) / 60,
            "gpu_tflops_assumed": gpu_tflops,
            "cpu_epoch_hours": statistics.median(seconds) * steps_per_epoch / 3600,
        },
    }


def render_pretrained(result: dict) -> str:
    e = result["estimate"]
    s = result["cpu_step_seconds"]
    b = result["batch"]
    lines = [
        f"cmar bench pretrained  (config {result['config']}; stand-ins of the pretrained "
        f"parts' shapes, random weights)",
        f"batch: {b['windows']} windows x {b['k']} frames, captions of {b['tokens']} tokens, "
        f"{'cached tower features' if b['features'] else 'images'}",
        f"parameters: {result['parameters'] / 1e6:.1f} M, trainable "
        f"{result['trainable'] / 1e6:.1f} M",
        f"activations kept for backward (float32, measured): {result['activations_gib']:.2f} GiB",
        f"operations per training step (measured): {result['flops_per_step'] / 1e12:.2f} TFLOP",
        f"one step on this CPU ({result['cpu_threads']} threads, measured): "
        f"{statistics.median(s):.1f} s (min {min(s):.1f}, max {max(s):.1f})",
        f"StoryReasoning train: about {result['train_windows']:,} windows, "
        f"{result['steps_per_epoch']:,} steps per epoch",
        "ESTIMATES (not measured on a GPU):",
        f"  GPU memory: about {e['gpu_memory_gib']:.1f} GiB (float32 weights, gradients, AdamW, "
        "activations, + 1 GiB CUDA context; mixed precision needs less)",
        f"  GPU time per epoch: about {e['gpu_epoch_minutes']:.0f} min at a sustained "
        f"{e['gpu_tflops_assumed']:.0f} TFLOP/s",
        f"  CPU time per epoch here: about {e['cpu_epoch_hours']:.0f} h",
    ]
    return "\n".join(lines)
