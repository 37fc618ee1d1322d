"""Which device a run trains and evaluates on: the config's top-level key ``device``.

``auto`` takes CUDA when it is there, else Apple's MPS, else the CPU; ``cpu``, ``cuda`` and
``mps`` ask for one, and asking for one this machine lacks fails at once, in one line, before
any data is read. MPS lacks a few ops: :func:`mps_or_cpu` runs one probe step there first and
falls back to the CPU, saying so, when an op is missing (``PYTORCH_ENABLE_MPS_FALLBACK`` only
works when set before torch is imported, so it cannot be relied on here).
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
