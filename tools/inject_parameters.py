"""Copy notebooks with other parameter values, the way papermill does it: right after each
cell tagged ``parameters`` (the plain assignments a student edits) a cell tagged
``injected-parameters`` holds the given assignments, so they win; every other cell, output and
metadata is copied as it is. The notebooks themselves never read the environment.

    python tools/inject_parameters.py notebooks build/notebooks-smoke SMOKE=True
    python tools/inject_parameters.py notebooks build/notebooks-lookalike SMOKE=True \\
        'SOURCE="/path/to/storyreasoning-lookalike"'

SOURCE is a folder of notebooks (every ``*.ipynb`` in it) or one notebook; each is written
under DEST with its own name. A value is a Python expression (quote strings twice, as above).
A notebook injected before gets its old injected cell replaced, not a second one. A notebook
without a ``parameters`` cell is an error: its own values would run instead.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

PARAMETERS, INJECTED = "parameters", "injected-parameters"


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=expression`` -> (name, expression); a ValueError names what is wrong."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name.isidentifier():
        raise ValueError(f"{text!r}: expected NAME=value, e.g. SMOKE=True or SOURCE='\"data\"'")
    try:
        ast.parse(value, mode="eval")
    except SyntaxError:
        raise ValueError(f"{text!r}: {value!r} is not a Python expression (quote a string "
                         "twice: SOURCE='\"data/my-copy\"')") from None
    return name, value


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def assigned_names(source: str) -> set[str]:
    """The names a cell's source assigns at top level (what a parameter can override)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else [])
        names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def injected_cell(assignments: list[tuple[str, str]]):
    lines = [f"{name} = {value}" for name, value in assignments]
    cell = new_code_cell("# Parameters injected by tools/inject_parameters.py\n"
                         + "\n".join(lines))
    cell.metadata["tags"] = [INJECTED]
    return cell


def inject(notebook, assignments: list[tuple[str, str]], name: str = "notebook"):
    """``notebook`` with an injected cell after each ``parameters`` cell (an earlier injected
    cell removed); a ValueError when it has no ``parameters`` cell."""
    cells = [cell for cell in notebook.cells if INJECTED not in tags(cell)]
    if not any(PARAMETERS in tags(cell) for cell in cells):
        raise ValueError(f"{name} has no cell tagged {PARAMETERS!r}: nothing to inject after")
    out = []
    for cell in cells:
        out.append(cell)
        if PARAMETERS in tags(cell):
            out.append(injected_cell(assignments))
    notebook.cells = out
    return notebook


def notebooks_in(source: Path) -> list[Path]:
    paths = [source] if source.is_file() else sorted(source.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks in {source}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a folder of notebooks, or one notebook")
    parser.add_argument("dest", type=Path, help="the folder the copies are written to")
    parser.add_argument("assignments", nargs="+", metavar="NAME=VALUE",
                        help="Python assignments, e.g. SMOKE=True 'SOURCE=\"data/copy\"'")
    args = parser.parse_args(argv)
    try:
        assignments = [parse_assignment(text) for text in args.assignments]
        paths = notebooks_in(args.source)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    notebooks = {path: nbformat.read(path, as_version=4) for path in paths}
    known = set()
    for path, notebook in notebooks.items():
        found = [cell for cell in notebook.cells if PARAMETERS in tags(cell)]
        if not found:
            parser.error(f"{path.name} has no cell tagged {PARAMETERS!r}: nothing to inject "
                         "after, and its own values would run")
        for cell in found:
            known |= assigned_names(cell.source)
    unknown = [name for name, _ in assignments if name not in known]
    if unknown:  # a typo would leave the notebook's own value in force, silently
        parser.error(f"no parameters cell assigns {unknown}; they assign {sorted(known)}")
    if any(args.dest.resolve() == path.parent.resolve() for path in paths):
        parser.error(f"{args.dest} is where the notebooks are: write the copies elsewhere")
    for path, notebook in notebooks.items():
        inject(notebook, assignments, path.name)
    args.dest.mkdir(parents=True, exist_ok=True)
    for path, notebook in notebooks.items():
        nbformat.write(notebook, args.dest / path.name)
        print("wrote", args.dest / path.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
