"""SHA-256 content hashes for provenance.

- :func:`sha256_bytes` and :func:`sha256_file` hash one byte string or one file (streamed).
- :func:`sha256_files` hashes a *set of files under a root*: the files are taken in the order of
  their relative POSIX paths, and for each one the hash is fed the record

      len(rel_path) as 8-byte big-endian || rel_path (UTF-8) || len(content) as 8-byte big-endian || content

  The length prefixes make the framing unambiguous (``("ab", "c")`` and ``("a", "bc")`` differ),
  renaming or moving a file changes the hash, and file metadata (mtime, permissions) does not.
  :class:`FilesHasher` computes the same digest incrementally, for callers that already hold each
  file's bytes (``ImageFolder`` reads every file once, to hash and decode it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20

__all__ = ["FilesHasher", "relative_posix", "sha256_bytes", "sha256_file", "sha256_files"]


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def relative_posix(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` as a POSIX string; a relative ``path`` is taken as already under ``root``."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(Path(root)).as_posix()
    except ValueError:
        return Path(os.path.abspath(p)).relative_to(Path(os.path.abspath(root))).as_posix()


class FilesHasher:
    """Incremental form of :func:`sha256_files`: call :meth:`add` in sorted relative-path order."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._last: str | None = None

    def _header(self, rel: str, size: int) -> None:
        if self._last is not None and rel <= self._last:
            raise ValueError(f"FilesHasher: {rel!r} added after {self._last!r}; add files in sorted order, once each")
        self._last = rel
        name = rel.encode("utf-8")
        self._h.update(len(name).to_bytes(8, "big") + name + size.to_bytes(8, "big"))

    def add(self, rel: str, data: bytes | bytearray | memoryview) -> None:
        """Add one file, given its relative POSIX path and its bytes."""
        self._header(rel, len(data))
        self._h.update(data)

    def add_file(self, rel: str, path: str | os.PathLike) -> None:
        """Add one file, streamed from ``path``."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._header(rel, size)
            n = 0
            while chunk := f.read(CHUNK):
                self._h.update(chunk)
                n += len(chunk)
        if n != size:
            raise ValueError(f"{path}: file changed size while being hashed ({size} -> {n} bytes)")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> str:
    """Hex SHA-256 over ``(relative path, content)`` of ``paths`` under ``root``, in sorted order.

    The order of ``paths`` does not matter; duplicates are counted once. See the module docstring
    for the exact byte layout.
    """
    items = sorted({relative_posix(p, root): p for p in paths}.items())
    h = FilesHasher()
    for rel, p in items:
        h.add_file(rel, p if Path(p).is_absolute() else Path(root) / p)
    return h.hexdigest()
