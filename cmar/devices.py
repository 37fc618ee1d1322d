"""Which device a run trains and evaluates on: the config's top-level key ``device``.

``auto`` takes CUDA when it is there, else Apple's MPS, else the CPU; ``cpu``, ``cuda`` and
``mps`` ask for one, and asking for one this machine lacks fails at once, in one line, before
any data is read. MPS lacks a few ops: :func:`mps_or_cpu` runs one probe step there first and
falls back to the CPU, saying so, when an op is missing (``PYTORCH_ENABLE_MPS_FALLBACK`` only
works when set before torch is imported, so it cannot be relied on here). :func:`amp_dtype` says
which mixed precision, if any, a device trains in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from cmar.settings import DEVICES


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (a value of the config key ``device``) stands for on this machine;
    a ValueError for an unknown name, a RuntimeError for a device this machine lacks."""
    if name not in DEVICES:
        raise ValueError(f"config key device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available()
                            else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key device is 'cuda' but this machine has no CUDA device "
                           f"torch can use (torch {torch.__version__}); set device: auto or cpu")
    if name == "mps" and not mps_available():
        raise RuntimeError("config key device is 'mps' but MPS (Apple silicon's GPU) is not "
                           "available here; set device: auto or cpu")
    return torch.device(name)


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype mixed precision (``train.amp``) computes in on ``device``, or None for none.

    * ``torch.bfloat16`` on a CUDA GPU of compute capability 8.0 or more (Ampere: A100, RTX 30xx;
      Hopper: H100; later), which runs it natively; it has float32's range, so no gradient scaler.
    * ``torch.float16`` on an older CUDA GPU (Colab's T4 is 7.5, a V100 7.0), trained with a
      gradient scaler against float16's narrow range. ``torch.cuda.is_bf16_supported()`` is not
      asked: it says True on a T4 because it counts emulation, which is slow, and cuDNN has no
      bfloat16 convolutions below 8.0, so a CNN would fail or crawl there.
    * None on the CPU and on MPS: no mixed precision there (CPU autocast gains little for this
      model and MPS autocast lacks ops), so they train in float32.

    ``device`` is a :class:`torch.device` or a string such as ``"cuda"``, ``"cuda:1"``, ``"cpu"``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _minor = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def mps_or_cpu(model: torch.nn.Module,
               probe: Callable[[torch.nn.Module, torch.device], object]) -> torch.device:
    """The MPS device if ``probe(model, mps)`` (one forward step, which moves the model and a
    batch there) runs; the CPU, with ``model`` moved back there and one message, if it raises
    NotImplementedError (an op missing on MPS)."""
    mps = torch.device("mps")
    try:
        probe(model, mps)
    except NotImplementedError as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        print(f"warning: an op is missing on MPS ({reason}); falling back to the CPU",
              file=sys.stderr, flush=True)
        model.to("cpu")
        return torch.device("cpu")
    return mps
