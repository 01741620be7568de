"""Content hashes: known answers, streaming, and the framing of sha256_files."""

from __future__ import annotations

import hashlib
import os

import pytest

from ebru.data import sha256_bytes, sha256_file, sha256_files
from ebru.data.hashing import CHUNK, FilesHasher


def test_known_answers(tmp_path):
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example
    assert sha256_bytes(b"abc") == abc
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == abc
    big = os.urandom(2 * CHUNK + 123)  # spans several read chunks
    (tmp_path / "big").write_bytes(big)
    assert sha256_file(str(tmp_path / "big")) == hashlib.sha256(big).hexdigest()


def test_files_layout_and_order(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"hello")
    (tmp_path / "y").write_bytes(b"")
    expected = hashlib.sha256()
    for rel, data in (("d/x", b"hello"), ("y", b"")):  # sorted by relative path
        expected.update(len(rel).to_bytes(8, "big") + rel.encode() + len(data).to_bytes(8, "big") + data)
    paths = [tmp_path / "y", tmp_path / "d" / "x"]
    assert sha256_files(paths, tmp_path) == expected.hexdigest()
    assert sha256_files(paths[::-1] + paths, tmp_path) == expected.hexdigest()  # order and duplicates ignored
    assert sha256_files(["y", "d/x"], tmp_path) == expected.hexdigest()  # relative paths are under root


def test_files_framing_is_unambiguous(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ab").write_bytes(b"c")
    (tmp_path / "b" / "a").write_bytes(b"bc")
    assert sha256_files([tmp_path / "a" / "ab"], tmp_path / "a") != sha256_files([tmp_path / "b" / "a"], tmp_path / "b")


def test_incremental_hasher_matches_and_checks_order(tmp_path):
    (tmp_path / "p").write_bytes(b"1")
    (tmp_path / "q").write_bytes(b"22")
    h = FilesHasher()
    h.add("p", b"1")
    h.add_file("q", tmp_path / "q")
    assert h.hexdigest() == sha256_files([tmp_path / "p", tmp_path / "q"], tmp_path)
    with pytest.raises(ValueError, match="sorted order"):
        h.add("a", b"")
