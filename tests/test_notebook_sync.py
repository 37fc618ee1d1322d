"""The committed notebooks are what tools/make_notebooks.py writes (cell types, sources, tags;
outputs aside), and ``--check`` says so, or names the notebook and cell that drifted."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_notebooks.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--check", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_committed_notebooks_match_their_generator():
    before = {path: path.read_bytes() for path in (ROOT / "notebooks").glob("*.ipynb")}
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK")
    assert {path: path.read_bytes() for path in before} == before  # nothing written


def test_check_names_the_notebook_and_cell_that_drifted(tmp_path):
    name = "02_model"
    path = tmp_path / f"{name}.ipynb"
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", path)
    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and i > 2)
    notebook.cells[index].source += "\nprint('edited by hand')"
    nbformat.write(notebook, path)
    edited = path.read_bytes()

    result = run_check("--notebooks", str(tmp_path), name)
    assert result.returncode != 0
    assert f"{name}.ipynb" in result.stdout
    assert f"cell {index}: source" in result.stdout
    assert "+print('edited by hand')" not in result.stdout  # diff runs committed -> generator
    assert "-print('edited by hand')" in result.stdout
    assert path.read_bytes() == edited  # the check writes nothing


def test_check_sees_a_changed_tag(tmp_path):
    name = "03_training"
    path = tmp_path / f"{name}.ipynb"
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", path)
    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "tags" in cell.metadata)
    del notebook.cells[index].metadata["tags"]
    nbformat.write(notebook, path)

    result = run_check("--notebooks", str(tmp_path), name)
    assert result.returncode != 0
    assert f"cell {index}: metadata tags" in result.stdout
