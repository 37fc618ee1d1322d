"""provenance(run_dir): what a report must say about the reference system it used, so that a
reader can tell the exact code, settings, data and weights behind every number.

    >>> import cmar
    >>> cmar.provenance("runs/default")
    {'version': '0.1.0', 'commit': '8d6431b...', 'commit_dirty': False,
     'config_sha256': '...', 'data_fingerprint': '...', 'checkpoint_sha256': '...', ...}
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str | None:
    """The file's SHA-256 (hex), None if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit(folder: str | Path = PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``folder``; (None, None) when it is not
    in one (an installed wheel) or git is missing. Dirty: tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def version() -> str:
    try:
        return metadata.version("cmar")
    except metadata.PackageNotFoundError:  # imported from a folder, never installed
        return "not installed"


def provenance(run_dir: str | Path) -> dict:
    """The reference system of a run folder, as a dict:

    - ``version``: the installed cmar's version; ``commit`` and ``commit_dirty``: the git
      commit of the cmar checkout this code runs from, and whether its tracked files differ
      from it (None for both outside a checkout);
    - ``config_sha256``: SHA-256 of the run's ``config.yaml``;
    - ``data_fingerprint``: SHA-256 over the training and validation stories the run learned
      from (ids, captions, image bytes), as the trainer recorded it (None for a run trained
      before it did);
    - ``checkpoint_sha256``: SHA-256 of ``best.pt``;
    - ``run``, ``source``, ``preset fields``: the folder, the data source, and the config's
      main choices, for the table a report shows.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"no run folder at {run_dir} (it has no config.yaml)")
    from cmar.config import load_config
    from cmar.train.trainer import DATA_RECORD

    cfg = load_config(run_dir / "config.yaml")
    data_file = run_dir / DATA_RECORD
    data = json.loads(data_file.read_text()) if data_file.exists() else {}
    commit, dirty = git_commit()
    model = cfg.model
    return {"version": version(), "commit": commit, "commit_dirty": dirty,
            "config_sha256": sha256_of(run_dir / "config.yaml"),
            "data_fingerprint": data.get("fingerprint"),
            "checkpoint_sha256": sha256_of(run_dir / "best.pt"),
            "run": str(run_dir), "source": cfg.data.source, "seed": cfg.seed,
            "model": f"{model.image_encoder} + {model.fusion} + {model.decoder}",
            "data splits": data.get("splits")}
