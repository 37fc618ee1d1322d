"""Guards around a training run: a graceful stop on Ctrl-C or SIGTERM (the trainer saves a
resumable checkpoint at the next step boundary), and a memory check of the largest batch
before the first epoch, so a config that cannot fit fails in seconds with a clear message
instead of mid-epoch.
"""

from __future__ import annotations

import os
import signal
import threading

import torch


class ResourceError(RuntimeError):
    """The configured run cannot fit this machine (memory, disk)."""


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (pre-emption) only set ``requested``; the
    training loop checks it between steps. A second signal stops at once, as usual.

    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second one: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:  # os.write: print() here could re-enter a print the loop is in
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                        "a checkpoint (send it again to stop at once)\n".encode())

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory",
                 "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error).lower()
                                                   for s in OUT_OF_MEMORY)


def largest_windows(dataset, n: int) -> list[int]:
    """Indices of the ``n`` windows with the most tokens: the batch that needs the most
    memory, since every tensor is padded to its longest row. The target counts four times:
    its length also sizes the (batch, length, vocabulary) logits, the largest activation."""
    def tokens(i: int) -> int:
        w = dataset.windows[i]
        context = getattr(dataset, "context_ids", dataset.ids)[w.story]
        return len(dataset.ids[w.story][w.t]) * 4 + sum(len(context[t]) for t in w.context)

    return sorted(range(len(dataset)), key=tokens, reverse=True)[:n]


def check_first_step(model, loss_fn, batch, settings: str) -> None:
    """One forward and backward pass on ``batch`` (the largest), leaving no trace: random
    states, buffers (batch-norm statistics) and gradients are restored. A failed allocation
    becomes a :class:`ResourceError` naming the knobs to turn."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            loss_fn(batch).backward()
    except Exception as error:  # noqa: BLE001 - only memory failures are translated
        if not is_out_of_memory(error):
            raise
        raise ResourceError(
            f"one training step on the largest batch ({len(batch)} windows) needs more memory "
            f"than this machine has ({str(error).splitlines()[0][:200]}). Lower "
            f"{settings}, or on a GPU set train.amp=true.") from None
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
