"""The optimiser's parameter groups: weight decay on weight matrices only.

Decay pulls a weight towards zero. That regularises the matrices of linear, convolution and
recurrent layers, but not the parameters whose scale or offset is the point: biases, the gains
and offsets of LayerNorm and BatchNorm, embedding tables (token, frame position, memory kind)
and learned position codes. Those get no decay.
"""

from __future__ import annotations

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
