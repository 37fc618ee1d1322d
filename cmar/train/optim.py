"""The optimiser and its schedule: AdamW with weight decay on weight matrices only, a linear
warm-up, then a cosine decay to zero.

Parts may learn at their own rates: ``train.lr_groups`` multiplies the learning rate of the
parameters whose name starts with a prefix (``{"image_encoder": 0.1}``), and
``train.frozen_epochs`` holds it at 0 for a part's first epochs (``{"image_encoder": 2}``):
protect a part while the rest settles, then fine-tune it. A parameter follows the longest
prefix that matches its name (``model.named_parameters()``; ``*`` stands for one part of
it); the others get multiplier 1.

Decay pulls a weight towards zero. That regularises the matrices of linear, convolution and
recurrent layers, but not the parameters whose scale or offset is the point: biases, the gains
and offsets of LayerNorm and BatchNorm, embedding tables (token, frame position, memory kind)
and learned position codes. Those get no decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def decays(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    """Whether ``parameter``, called ``name`` in ``module`` (its direct owner), gets decay."""
    return (parameter.ndim >= 2 and not isinstance(module, NO_DECAY_MODULES)
            and "position" not in name)


def matching_prefix(name: str, prefixes) -> str | None:
    """The longest of ``prefixes`` that ``name`` (a dotted parameter name) starts with, as
    whole parts: ``decoder`` matches ``decoder.out.weight``, not ``decoder_norm.weight``. A
    ``*`` stands for one part: ``decoder.lm.transformer.h.*.crossattention`` matches the
    cross-attention of every GPT-2 block."""
    parts = name.split(".")

    def matches(prefix: str) -> bool:
        wanted = prefix.rstrip(".").split(".")
        return len(wanted) <= len(parts) and all(
            w == "*" or w == p for w, p in zip(wanted, parts, strict=False))

    return max((p for p in prefixes if matches(p)), key=len, default=None)


def parameter_groups(model: nn.Module, weight_decay: float, lr_groups: dict | None = None,
                     frozen_epochs: dict | None = None) -> list[dict]:
    """Groups of the trainable parameters, for ``torch.optim.AdamW(groups, ...)``: with
    ``weight_decay`` and with none, split further by the prefix of ``lr_groups`` /
    ``frozen_epochs`` each parameter matches. Every trainable parameter is in exactly one
    group; each group carries ``lr_scale`` and ``frozen_epochs`` (read by
    :func:`make_optimizer`'s schedule) and its ``prefix`` (None: the rest). Empty groups are
    left out, except the first two when no prefix is given. A prefix that matches no
    parameter is a ValueError: a typo would otherwise train that part at the full rate."""
    lr_groups, frozen_epochs = dict(lr_groups or {}), dict(frozen_epochs or {})
    prefixes = set(lr_groups) | set(frozen_epochs)
    names = {id(p): n for n, p in model.named_parameters()}
    unused = set(prefixes)
    groups: dict[tuple, list] = {(True, None): [], (False, None): []}
    seen = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue  # frozen, or shared with a module seen before
            seen.add(id(parameter))
            prefix = matching_prefix(names[id(parameter)], prefixes)
            unused.discard(prefix)
            key = (decays(module, name, parameter), prefix)
            groups.setdefault(key, []).append(parameter)
    if unused:
        parts = sorted({n.split(".")[0] for n in names.values()})
        raise ValueError(f"train.lr_groups / train.frozen_epochs name {sorted(unused)}, which "
                         f"no trainable parameter's name starts with; the model's parts are "
                         f"{parts} (a deeper prefix such as decoder.out works too)")
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "prefix": prefix, "lr_scale": float(lr_groups.get(prefix, 1.0)),
             "frozen_epochs": int(frozen_epochs.get(prefix, 0))}
            for (decay, prefix), params in groups.items() if params or prefix is None]


def warmup_cosine(total_steps: int, warmup: float):
    """LR multiplier: linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def held(factor, scale: float, frozen_steps: int):
    """``factor`` times ``scale``, and 0 for the first ``frozen_steps`` steps."""
    def scaled(step: int) -> float:
        return 0.0 if step < frozen_steps else scale * factor(step)
    return scaled


def make_optimizer(model: nn.Module, train_cfg, total_steps: int, steps_per_epoch: int = 1):
    """(AdamW over :func:`parameter_groups`, its warm-up then cosine schedule) for
    ``total_steps`` optimiser steps of ``train_cfg`` (a :class:`cmar.settings.TrainConfig`);
    each group's learning rate is its ``lr_scale`` times the schedule's, and 0 during its
    frozen epochs of ``steps_per_epoch`` steps."""
    groups = parameter_groups(model, train_cfg.weight_decay, train_cfg.lr_groups,
                              train_cfg.frozen_epochs)
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr)
    factor = warmup_cosine(total_steps, train_cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [held(factor, g["lr_scale"], g["frozen_epochs"] * steps_per_epoch)
                    for g in groups])
    return optimizer, scheduler
