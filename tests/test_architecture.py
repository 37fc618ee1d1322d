"""The package's shape: no import cycles, a light configuration, a small top level, research
instruments that no core module imports, and ``Config()`` equal to the ``default`` preset."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cmar"


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its
    ``__init__``)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(root: Path = PACKAGE) -> dict[str, set[tuple[str, str]]]:
    """Module -> {(imported cmar module, how)} for every import statement, including those
    inside functions. ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg`` itself; ``how`` is ``"from"`` for the latter."""
    known = modules(root)

    def owner(name: str) -> str:
        while name not in known:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[name] |= {(owner(a.name), "import") for a in node.names
                                if a.name.split(".")[0] == root.name}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                if base.split(".")[0] != root.name:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges[name].add((full, "module") if full in known else (owner(base), "from"))
    return edges


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {m: {t for t, _ in targets if t != m} for m, targets in edges.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(imports()) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The check above can fail: a two-module package whose modules import each other, one of
    them inside a function."""
    package = tmp_path / "cmar"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cmar.b import f\n")
    (package / "b.py").write_text("def f():\n    from cmar import a\n")
    (package / "c.py").write_text("import cmar.a\n")
    assert cycles(imports(package)) == [["cmar.a", "cmar.b"]]


def test_modules_import_each_other_never_their_own_package():
    """A package's ``__init__`` re-exports its modules; a module that imported names from its
    own package (or one above it) would close a cycle through that ``__init__``."""
    offenders = []
    for name, targets in imports().items():
        if modules()[name].name == "__init__.py":
            continue
        offenders += [f"{name} -> {target}" for target, how in targets
                      if how == "from" and name.startswith(target + ".")]
    assert offenders == []


def test_no_core_module_imports_the_research_instruments():
    """Only the command line mounts ``cmar.research``; the core never depends on it."""
    offenders = [f"{name} -> {target}" for name, targets in imports().items()
                 if not name.startswith(("cmar.research", "cmar.cli"))
                 for target, _ in targets if target.startswith("cmar.research")]
    assert offenders == []


def test_settings_import_nothing_from_cmar_and_config_no_modelling_code():
    edges = imports()
    assert edges["cmar.settings"] == set()
    top_level = {t for t, _ in edges["cmar.config"]}  # imports inside functions included
    assert top_level <= {"cmar.settings", "cmar.models", "cmar.models.registry",
                         "cmar.models.image_encoder", "cmar.data.shapes_world"}
    for low in ("cmar.data", "cmar.models"):  # they read settings, never the config's checks
        readers = [name for name in edges if name.startswith(low)
                   and any(t == "cmar.config" for t, _ in edges[name])]
        assert readers == [], low


def test_reading_the_config_loads_no_torch():
    code = ("import sys, cmar.config, cmar.settings; cmar.config.Config(); "
            "print(sorted(m for m in ('torch', 'cmar.models', 'cmar.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_top_level_of_the_package_holds_at_most_ten_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    for room in ("data", "models", "train", "evaluation", "research"):
        assert (PACKAGE / room / "__init__.py").exists(), room


def _fields(value, where: str = "") -> dict:
    if not dataclasses.is_dataclass(value):
        return {where: value}
    out = {}
    for f in dataclasses.fields(value):
        out |= _fields(getattr(value, f.name), f"{where}.{f.name}".strip("."))
    return out


def test_config_is_the_default_preset_field_for_field():
    from cmar.config import Config, load_config

    built, preset = _fields(Config()), _fields(load_config("default"))
    assert built.keys() == preset.keys()
    differ = {key: (built[key], preset[key]) for key in built if built[key] != preset[key]}
    assert differ == {}


@pytest.mark.parametrize("name", ["smoke", "storyreasoning", "storyreasoning-clip"])
def test_every_preset_loads(name):
    from cmar.config import load_config

    assert load_config(name).name == name
