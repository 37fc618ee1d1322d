"""The notebooks' preset follows their source: ``preset_for`` maps a source to a preset, every
notebook chooses its preset with it from a plain ``parameters`` cell, CI's values are injected
right after that cell (tools/inject_parameters.py), and on a StoryReasoning look-alike every
notebook chooses ``storyreasoning-smoke`` (in smoke mode)."""

import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cmar.config import load_config, preset_for

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))
from make_notebooks import NOTEBOOKS  # noqa: E402

INJECT = TOOLS / "inject_parameters.py"
CHOOSES = "CONFIG = preset_for(SOURCE"  # the line every notebook's preset cell holds


@pytest.mark.parametrize("source, smoke, preset", [
    ("shapestories", False, "default"),
    ("shapestories", True, "smoke"),
    ("storyreasoning", False, "storyreasoning"),
    ("storyreasoning", True, "storyreasoning-smoke"),
    ("daniel3303/StoryReasoning", False, "storyreasoning"),
    ("data/storyreasoning-lookalike", True, "storyreasoning-smoke"),
    ("/content/drive/MyDrive/my_stories", False, "storyreasoning"),
])
def test_preset_for_picks_the_preset_of_the_source(source, smoke, preset):
    assert preset_for(source, smoke) == preset
    assert load_config(preset).name == preset  # a preset that exists and loads


def test_preset_for_needs_no_torch():
    script = ("import sys\nfrom cmar.config import preset_for\n"
              "assert preset_for('storyreasoning', True) == 'storyreasoning-smoke'\n"
              "assert 'torch' not in sys.modules, 'cmar.config imported torch'")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr


def test_the_storyreasoning_smoke_preset_is_small_and_offline():
    cfg = load_config("storyreasoning-smoke")
    smoke = load_config("smoke")
    assert (cfg.data.source, cfg.data.image_fit, cfg.data.caption_policy) == (
        "storyreasoning", "letterbox", "first_sentence")
    assert cfg.data.image_size == 64 and cfg.data.max_tokens == 64
    assert cfg.model.image_encoder == "small_cnn" and not cfg.model.pretrained  # no download
    assert (cfg.model, cfg.train, cfg.eval) == (smoke.model, smoke.train, smoke.eval)


def tagged(cells, tag: str) -> list[int]:
    return [i for i, cell in enumerate(cells) if tag in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_each_notebook_chooses_its_preset_with_preset_for(name):
    cells = NOTEBOOKS[name]
    code = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    assert CHOOSES in code and 'print("preset:", CONFIG)' in code
    assert "os.environ" not in code and "CMAR_" not in code  # no test plumbing left
    chooser = next(i for i, cell in enumerate(cells) if CHOOSES in cell.source)
    assert tagged(cells, "parameters") and tagged(cells, "parameters")[0] < chooser


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_the_parameters_cell_is_plain_assignments_a_student_edits(name):
    cells = NOTEBOOKS[name]
    assert len(tagged(cells, "parameters")) == 1
    tree = ast.parse(cells[tagged(cells, "parameters")[0]].source)
    names = []
    for statement in tree.body:
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)  # a value, not computed (from SMOKE, the environment)
        names += [target.id for target in statement.targets]
    assert names[:2] == ["SOURCE", "SMOKE"]
    assert ast.literal_eval(tree.body[0].value) == "shapestories"
    assert ast.literal_eval(tree.body[1].value) is False  # full mode unless told otherwise


def inject(source: Path, dest: Path, *assignments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INJECT), str(source), str(dest), *assignments],
                          capture_output=True, text=True, timeout=120)


def test_injected_parameters_follow_the_parameters_cell(tmp_path):
    ran = inject(ROOT / "notebooks", tmp_path / "copies", "SMOKE=True", 'SOURCE="/data/sr"')
    assert ran.returncode == 0, ran.stderr
    for name in NOTEBOOKS:
        original = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
        copy = nbformat.read(tmp_path / "copies" / f"{name}.ipynb", as_version=4).cells
        at = tagged(copy, "parameters")[0]
        injected = copy[at + 1]
        assert injected.metadata["tags"] == ["injected-parameters"]
        assert injected.source.splitlines()[-2:] == ["SMOKE = True", 'SOURCE = "/data/sr"']
        rest = copy[:at + 1] + copy[at + 2:]
        assert [(c.cell_type, c.source, c.metadata) for c in rest] == [
            (c.cell_type, c.source, c.metadata) for c in original]

    # injecting into a copy replaces the injected cell, never stacks a second one
    again = inject(tmp_path / "copies" / "01_data.ipynb", tmp_path / "again", "SMOKE=False")
    assert again.returncode == 0, again.stderr
    cells = nbformat.read(tmp_path / "again" / "01_data.ipynb", as_version=4).cells
    assert len(tagged(cells, "injected-parameters")) == 1
    assert cells[tagged(cells, "injected-parameters")[0]].source.endswith("SMOKE = False")


@pytest.mark.parametrize("assignment, message", [
    ("SMOK=True", "no parameters cell assigns ['SMOK']"),  # a typo would be ignored silently
    ("SOURCE=/data/sr", "not a Python expression"),  # a string must be quoted
    ("SMOKE", "expected NAME=value"),
])
def test_injection_refuses_what_would_not_take_effect(tmp_path, assignment, message):
    ran = inject(ROOT / "notebooks", tmp_path, assignment)
    assert ran.returncode != 0
    assert message in ran.stderr
    assert not list(tmp_path.glob("*.ipynb"))


def test_injection_refuses_a_notebook_without_a_parameters_cell(tmp_path):
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SMOKE = False")])
    nbformat.write(plain, tmp_path / "plain.ipynb")
    ran = inject(tmp_path / "plain.ipynb", tmp_path / "out", "SMOKE=True")
    assert ran.returncode != 0
    assert "plain.ipynb" in ran.stderr


@pytest.mark.parametrize("on_lookalike", [True, False], ids=["lookalike", "shapestories"])
def test_every_notebook_prints_the_preset_of_its_source(tmp_path, on_lookalike):
    """Each notebook's cells up to its preset cell, run on injected parameters as CI runs them
    (one kernel, its namespace reset between notebooks)."""
    from nbclient import NotebookClient

    from cmar.data.lookalike import write_lookalike

    values = ["SMOKE=True"]
    if on_lookalike:
        write_lookalike(tmp_path / "lookalike")
        values.append(f"SOURCE={str(tmp_path / 'lookalike')!r}")
    ran = inject(ROOT / "notebooks", tmp_path / "copies", *values)
    assert ran.returncode == 0, ran.stderr
    combined, chosen = nbformat.v4.new_notebook(), {}
    for name in NOTEBOOKS:
        notebook = nbformat.read(tmp_path / "copies" / f"{name}.ipynb", as_version=4)
        start = tagged(notebook.cells, "parameters")[0]
        end = next(i for i, cell in enumerate(notebook.cells) if CHOOSES in cell.source)
        combined.cells.append(nbformat.v4.new_code_cell("%reset -f"))
        combined.cells += [cell for cell in notebook.cells[start:end + 1]
                           if cell.cell_type == "code"]
        chosen[name] = len(combined.cells) - 1
    NotebookClient(combined, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    expected = "storyreasoning-smoke" if on_lookalike else "smoke"
    for name, index in chosen.items():
        printed = "".join(out.get("text", "") for out in combined.cells[index].outputs)
        assert f"preset: {expected}\n" in printed, (name, printed)
