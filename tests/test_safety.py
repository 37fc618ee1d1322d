"""Nothing unsafe is loaded, and nothing reaches the network during tests."""

import os
import socket

import pytest
import torch

from cmar.models import load_model


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path, monkeypatch):
    torch.save({"model_config": Exploit()}, tmp_path / "evil.pt")
    ran = []
    monkeypatch.setattr(os, "system", lambda command: ran.append(command))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_model(tmp_path / "evil.pt")
    assert ran == []


def test_the_network_guard_refuses_outside_addresses():
    with socket.socket() as s, pytest.raises(RuntimeError, match="network"):
        s.connect(("198.51.100.7", 443))


def test_no_code_in_the_package_trusts_remote_code():
    """Hub datasets and models are read as data only: a grep-able guarantee."""
    import re
    from pathlib import Path

    import cmar

    root = Path(cmar.__file__).parent
    pattern = re.compile(r"trust_remote_code\s*=\s*(True|1)")
    hits = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []
    assert any("load_dataset" in p.read_text() for p in root.rglob("*.py"))  # the grep sees
