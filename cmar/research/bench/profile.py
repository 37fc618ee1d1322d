"""Where a training step's time goes: the forward pass of each part of a StoryModel, the
rest of the forward (memory, losses), the backward pass and the optimiser step.

Each part's forward is timed between a pre-hook and a hook on the module; only the model's
direct children are hooked, so no time is counted twice (a part called twice, such as the
image encoder on the context and on the target frame, adds both calls). On a GPU every
boundary synchronises the device first, so the times are the kernels' own; that makes the
profiled steps slower than plain ones, so read the shares, and ``cmar bench train``'s
windows/s for the speed.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(model, batches, optimizer) -> dict:
    """Milliseconds per step of each phase over ``batches`` (the first one warms up and is
    not counted): ``{"forward": {part: ms}, "forward, rest": ms, "backward": ms,
    "optimizer": ms, "step": ms, "shares": {phase: share of the step}}``."""
    device = next(model.parameters()).device
    spent: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    hooks = []
    for name, part in model.named_children():
        def before(module, args, name=name):
            _sync(device)
            started[name] = time.perf_counter()

        def after(module, args, output, name=name):
            _sync(device)
            spent[name] += time.perf_counter() - started.pop(name)

        hooks += [part.register_forward_pre_hook(before), part.register_forward_hook(after)]
    totals: dict[str, float] = defaultdict(float)
    steps = 0
    try:
        for i, batch in enumerate(batches):
            if i == 1:  # the first step warms up
                spent.clear()
                totals.clear()
            batch = batch.to(device)
            _sync(device)
            start = time.perf_counter()
            loss = sum(model(batch).losses.values())
            _sync(device)
            forward = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            _sync(device)
            backward = time.perf_counter()
            optimizer.step()
            _sync(device)
            end = time.perf_counter()
            totals["forward"] += forward - start
            totals["backward"] += backward - forward
            totals["optimizer"] += end - backward
            totals["step"] += end - start
            steps = i
    finally:
        for hook in hooks:
            hook.remove()
    if steps < 1:
        raise ValueError("profile_steps needs at least 2 batches (the first warms up)")
    ms = {key: 1000 * value / steps for key, value in totals.items()}
    parts = {name: round(1000 * value / steps, 2) for name, value in
             sorted(spent.items(), key=lambda item: -item[1])}
    out = {"forward": parts, "forward, rest": round(ms["forward"] - sum(parts.values()), 2),
           "backward": round(ms["backward"], 2), "optimizer": round(ms["optimizer"], 2),
           "step": round(ms["step"], 2), "steps": steps}
    phases = {**{f"forward: {p}": v for p, v in parts.items()},
              "forward: rest (memory, losses)": out["forward, rest"],
              "backward": out["backward"], "optimizer step": out["optimizer"]}
    out["shares"] = {phase: round(value / ms["step"], 3) for phase, value in phases.items()}
    return out
