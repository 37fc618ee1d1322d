"""Execute notebooks in place with their committed parameters (full mode), keeping the outputs:
``python tools/run_notebooks.py [notebooks/03_training.ipynb ...]``. Prints each one's time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"


def main(paths: list[str]) -> None:
    for path in [Path(p) for p in paths] or sorted(FOLDER.glob("[0-9]*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=7200, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(notebook, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
