"""The committed notebooks read cleanly on GitHub: no warnings, no local paths, at most a few
lines of stderr in any cell's output (progress bars render as widgets or stay quiet)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))
LOCAL_PATH = re.compile(r"/work/|/home/|/root/|/tmp/|/Users/|\.venv|site-packages|[A-Z]:\\\\")
MAX_STDERR_LINES = 5


def output_text(output: dict) -> tuple[str, str]:
    """(stream name or output type, the text a reader sees) of one output."""
    if output.get("output_type") == "stream":
        return output.get("name", ""), "".join(output.get("text", ""))
    data = output.get("data", {})
    text = "".join(data.get("text/plain", "")) + "".join(data.get("text/html", ""))
    if output.get("output_type") == "error":
        text = "\n".join(output.get("traceback", []))
    return output.get("output_type", ""), text


def problems(notebook: dict) -> list[str]:
    """What a reader would trip over in a notebook's committed outputs."""
    found = []
    for number, cell in enumerate(notebook.get("cells", [])):
        stderr_lines = 0
        for output in cell.get("outputs", []):
            kind, text = output_text(output)
            if kind == "error":
                found.append(f"cell {number}: an error output")
            if kind == "stderr":
                stderr_lines += len(re.split(r"[\r\n]+", text.strip())) if text.strip() else 0
            if re.search(r"\w*Warning\b", text) and kind in ("stderr", "stdout"):
                found.append(f"cell {number}: a warning in {kind}")
            if LOCAL_PATH.search(text):
                found.append(f"cell {number}: a local path ({LOCAL_PATH.search(text).group()})")
        if stderr_lines > MAX_STDERR_LINES:
            found.append(f"cell {number}: {stderr_lines} lines of stderr")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_read_cleanly(path):
    assert problems(json.loads(path.read_text())) == []


def test_the_check_catches_each_kind_of_mess():
    frames = "".join(f"\repoch 1: {i}%|" for i in range(10))
    notebook = {"cells": [
        {"outputs": [{"output_type": "stream", "name": "stderr", "text": frames}]},
        {"outputs": [{"output_type": "stream", "name": "stderr",
                      "text": "/home/me/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: "
                              "TqdmWarning: IProgress not found\n"}]},
        {"outputs": [{"output_type": "execute_result",
                      "data": {"text/plain": "PosixPath('/work/main/runs/demo')"}}]},
        {"outputs": [{"output_type": "stream", "name": "stdout", "text": "epoch=1 loss=0.5\n"}]},
    ]}
    found = problems(notebook)
    assert any("cell 0" in p and "stderr" in p for p in found)
    assert any("cell 1" in p and "warning" in p for p in found)
    assert any("cell 1" in p and "local path" in p for p in found)
    assert any("cell 2" in p and "local path" in p for p in found)
    assert not any("cell 3" in p for p in found)
