"""The provenance a report cites: the data fingerprint moves with any caption or image byte and
with nothing else, git facts are None outside a checkout, and a folder that is no run fails
with the reason."""

import dataclasses
import hashlib

import pytest

import cmar
from cmar.config import load_config
from cmar.data import prepare_data
from cmar.experiment.reference import git_commit, sha256_of


@pytest.fixture(scope="module")
def data(shapes_cache):
    cfg = load_config("smoke", [f"data.cache_dir={shapes_cache}", "data.n_stories=24"])
    return prepare_data(cfg.data, splits=("train", "validation"), progress=False)


def test_the_data_fingerprint_moves_with_a_caption_or_an_image_byte(data):
    before = data.fingerprint()
    assert data.fingerprint() == before  # the same data: the same fingerprint
    stories = data.stories["train"]
    first = stories[0]
    stories[0] = dataclasses.replace(first, captions=[*first.captions[:-1],
                                                      first.captions[-1] + " "])
    assert data.fingerprint() != before
    image = bytearray(first.images[0])
    image[-1] ^= 1
    stories[0] = dataclasses.replace(first, images=[bytes(image), *first.images[1:]])
    assert data.fingerprint() != before
    stories[0] = first
    assert data.fingerprint() == before
    assert data.fingerprint(("train",)) != before  # the splits it covers are part of it


def test_git_facts_are_none_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) == (None, None)


def test_a_folder_that_is_no_run_is_refused_with_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder"):
        cmar.provenance(tmp_path)


def test_file_hashes_are_sha256_and_none_for_a_missing_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"cmar" * 1000)
    assert sha256_of(path, chunk=7) == hashlib.sha256(b"cmar" * 1000).hexdigest()
    assert sha256_of(tmp_path / "missing") is None


def test_an_unknown_attribute_of_the_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'provenence'"):
        cmar.provenence  # noqa: B018
