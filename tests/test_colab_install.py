"""Colab: every notebook's badge and install cell name the repository of pyproject.toml (the one
place a fork changes), the install cell prefers a cmar wheel beside the notebook, and cmar
installed from its wheel (not this checkout) loads its presets and prepares data."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def repository() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^Repository = "https://github\.com/(.+)"$', text, re.MULTILINE).group(1)


def install_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(cells[1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_install_cell_point_at_the_repository_of_pyproject(path):
    cells = json.loads(path.read_text())["cells"]
    badge = "".join(cells[0]["source"])
    repo = repository()
    assert f"colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name}" in badge
    assert f"git+https://github.com/{repo}" in install_cell(path)
    # no other address anywhere in the notebook's sources
    for cell in cells:
        for found in re.findall(r"github\.com/([\w.-]+/[\w.-]+)", "".join(cell["source"])):
            assert found == repo, (path.name, found)


@pytest.mark.parametrize("wheel", [None, "cmar-0.1.0-py3-none-any.whl"])
def test_the_install_cell_installs_a_wheel_beside_it_or_the_repository(tmp_path, monkeypatch,
                                                                      wheel):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    on_colab = {"google": object(), "google.colab": object(), "cmar": None}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: on_colab[name] if name in on_colab else
                        real_find_spec(name, *a))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    monkeypatch.chdir(tmp_path)
    if wheel:
        (tmp_path / wheel).write_bytes(b"")
    exec(install_cell(NOTEBOOKS[0]), {})
    assert len(commands) == 1
    assert commands[0][-1] == (wheel or f"git+https://github.com/{repository()}")
    on_colab["cmar"] = object()  # installed already: nothing to do
    exec(install_cell(NOTEBOOKS[0]), {})
    assert len(commands) == 1


def test_cmar_installed_from_its_wheel_loads_presets_and_prepares_data(tmp_path):
    """The wheel, not this checkout: its files alone (configs included) run `cmar data`."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("cmar-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True)
    script = ("import cmar, sys\nfrom cmar.cli import main\n"
              "print(cmar.__file__)\n"
              "sys.exit(main(['data', '--config', 'smoke', '--set', 'data.n_stories=12']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    ran = subprocess.run([sys.executable, "-c", script], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.splitlines()[0].startswith(str(site))  # the wheel's copy ran
    assert "source: shapestories" in ran.stdout
