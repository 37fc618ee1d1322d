"""Several processes, one run folder and one cache folder.

Under ``torchrun``, ``accelerate launch`` or ``accelerate.notebook_launcher`` every process runs
the same code. What one of them writes, the others must not write at the same time, and a
check one of them makes, the others must agree with:

- :func:`main_process_first`: the main process runs a block first (building a cache), the
  others wait and then run it (finding the cache built). If the main process fails there,
  every process raises its error instead of waiting for it forever.
- :func:`decide_on_main`: a check made once, by the main process; every process returns its
  answer or raises its error.
- :func:`gather`: one object from each process (e.g. its random state), in rank order.
- :func:`temporary_path` and :func:`publish`: a file or folder is written under a name unique
  to its process, then renamed into place atomically, so two processes never write the same
  file (even two unrelated ones, without a process group) and a reader never sees half of one.

Without a process group of several processes (one plain process) the first three do nothing
special: the block runs, the check runs, the list holds one object.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _group():
    """``torch.distributed`` when a process group of more than one process is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def leave_process_group() -> None:
    """End this process's part in a running process group (a process that exits with gloo's
    threads still alive may abort with SIGABRT instead of exiting 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    dist = _group()
    return dist.get_rank() if dist else 0


def _from_main(value: Any) -> Any:
    """``value`` as the main process holds it, on every process."""
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def _shareable(error: BaseException) -> BaseException:
    """``error`` itself if it can travel to the other processes (pickled), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def decide_on_main(check: Callable[[], T]) -> T:
    """Run ``check`` on the main process only; every process returns its result (which must
    pickle) or raises the error it raised, so all processes go on, or stop, together."""
    dist = _group()
    if dist is None:
        return check()
    outcome = None
    if dist.get_rank() == 0:
        try:
            outcome = ("value", check())
        except Exception as error:
            outcome = ("error", _shareable(error))
    kind, value = _from_main(outcome)
    if kind == "error":
        raise value
    return value


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block, then the others do (one after the main, together).

    For work whose result lands on disk, such as a cache: the main process builds it, the
    others find it built. When the block fails on the main process, the others raise the same
    error instead of running the block or waiting.
    """
    dist = _group()
    if dist is None:
        yield
        return
    if dist.get_rank() == 0:
        try:
            yield
        except BaseException as error:
            _from_main(_shareable(error))
            raise
        _from_main(None)
    else:
        error = _from_main(None)
        if error is not None:
            raise error
        yield


def gather(value: Any) -> list:
    """``value`` of every process, indexed by rank (``[value]`` in one process)."""
    dist = _group()
    if dist is None:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _marker() -> str:
    return f".partial-{socket.gethostname()}-{os.getpid()}-"


def temporary_path(path: str | Path) -> Path:
    """A name beside ``path``, unique to this process and call, to write ``path`` under
    before :func:`publish` (``<stem>.partial-<host>-<pid>-<random><suffix>``; the suffix is
    kept so ``np.save`` adds none).

    Leftovers of processes of this host that died mid-write are removed first; those of live
    processes and of other hosts are left alone.
    """
    path = Path(path)
    for old in path.parent.glob(f"{path.stem}.partial-*{path.suffix}"):
        host, pid = _writer(old, path)
        if host == socket.gethostname() and pid is not None and not _alive(pid):
            _remove(old)
    return path.with_name(f"{path.stem}{_marker()}{uuid.uuid4().hex[:8]}{path.suffix}")


def _writer(temporary: Path, path: Path) -> tuple[str | None, int | None]:
    """(host, pid) of the process that named ``temporary`` for ``path``."""
    token = temporary.name[len(path.stem) + len(".partial-"):]
    token = token[: len(token) - len(path.suffix)] if path.suffix else token
    parts = token.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None, None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(temporary: str | Path, path: str | Path) -> Path:
    """Rename ``temporary`` (a complete file or folder) to ``path`` atomically; returns ``path``.

    A file replaces any file already there (another process wrote the same content). A folder
    cannot replace a folder: when another process published ``path`` first, ``temporary`` is
    deleted and theirs is kept.
    """
    temporary, path = Path(temporary), Path(path)
    if not temporary.is_dir():
        os.replace(temporary, path)
        return path
    try:
        os.rename(temporary, path)
    except OSError:
        if not path.is_dir():
            raise
        shutil.rmtree(temporary, ignore_errors=True)  # another process was first
    return path
