"""The optimiser and its schedule: AdamW with weight decay on weight matrices only, a linear
warm-up, then a cosine decay to zero.

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


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters, for ``torch.optim.AdamW(groups, ...)``: with
    ``weight_decay`` and with none. Every trainable parameter is in exactly one."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue  # frozen, or shared with a module seen before
            seen.add(id(parameter))
            (decay if decays(module, name, parameter) else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup: float):
    """LR multiplier: linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(model: nn.Module, train_cfg, total_steps: int):
    """(AdamW over :func:`parameter_groups`, its warm-up then cosine schedule) for
    ``total_steps`` optimiser steps of ``train_cfg`` (a :class:`cmar.settings.TrainConfig`)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, train_cfg.weight_decay),
                                  lr=train_cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, train_cfg.warmup))
    return optimizer, scheduler
