"""Execute notebooks in place with their committed parameters (full mode), keeping the outputs:
``python tools/run_notebooks.py [notebooks/03_training.ipynb ...]``. Prints each one's time.

With no path, every numbered notebook runs in order, except that a notebook runs after the
one whose run it reads (:data:`READS_RUN_OF`), so its committed outputs show that run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
# notebook -> the notebook whose run it reads (02's last section loads the run 03 trains)
READS_RUN_OF = {"02_model": "03_training"}


def default_order(paths: list[Path]) -> list[Path]:
    """``paths`` sorted by name, each moved after the notebook whose run it reads."""
    order = sorted(paths)
    for reader, writer in READS_RUN_OF.items():
        names = [p.stem for p in order]
        if reader in names and writer in names and names.index(reader) < names.index(writer):
            order.insert(names.index(writer), order.pop(names.index(reader)))
    return order


def main(paths: list[str]) -> None:
    for path in [Path(p) for p in paths] or default_order(list(FOLDER.glob("[0-9]*.ipynb"))):
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=7200, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(notebook, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
