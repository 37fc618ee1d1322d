"""The Accelerator a run trains under: its device, precision and process group.

One CPU, one GPU, Apple's MPS, or many processes (``accelerate launch``, ``torchrun``,
``accelerate.notebook_launcher``): Accelerate reads the process group from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs

from cmar.devices import amp_dtype, mps_or_cpu, resolve_device


def make_accelerator(cfg) -> Accelerator:
    """An Accelerator for ``cfg`` (a :class:`cmar.settings.Config`): its ``device`` (a device
    this machine lacks fails here, at once), mixed precision on CUDA only (bf16 or fp16, by
    :func:`cmar.devices.amp_dtype`), and a process group (several processes) whose every wait
    lasts up to ``train.process_timeout`` minutes: the others wait that long for the main
    process to build the caches (the default, 10 minutes under NCCL, is shorter than a first
    StoryReasoning frame cache)."""
    device = resolve_device(cfg.device)
    # bfloat16 from compute capability 8.0, float16 (Accelerate adds the GradScaler) below it,
    # e.g. Colab's T4; none on the CPU or MPS (see cmar.devices.amp_dtype)
    dtype = amp_dtype(device) if cfg.train.amp else None
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[dtype]
    # Several processes without CUDA (torchrun on CPUs): Accelerate needs cpu=True to join the
    # process group over gloo; otherwise every process would think it is alone. With
    # device: cpu it must not pick a GPU (CUDA or MPS) by itself.
    cpu_group = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1
    return Accelerator(mixed_precision=precision,
                       cpu=cpu_group or cfg.device == "cpu",
                       kwargs_handlers=[InitProcessGroupKwargs(
                           timeout=timedelta(minutes=cfg.train.process_timeout))])


def fall_back_from_mps(accelerator: Accelerator, model: torch.nn.Module,
                       probe: Callable[[torch.nn.Module, torch.device], object]) -> Accelerator:
    """``accelerator``, or a CPU one if it holds MPS and ``probe`` (one training step) finds an
    op missing there (see :func:`cmar.devices.mps_or_cpu`)."""
    if accelerator.device.type != "mps" or mps_or_cpu(model, probe).type != "cpu":
        return accelerator
    # Accelerate's device is fixed once chosen: start it again on the CPU (MPS runs one
    # process, so no process group is lost)
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision="no", cpu=True)
