"""Reading and writing package files safely: no symbolic links, regular files only, atomic writes.

Files are opened with ``O_NOFOLLOW`` and checked with ``fstat`` on the open descriptor, so a
link swapped in after a directory listing is refused rather than followed. A file whose size
differs from what its manifest says is refused before it is read.

A file that is hashed in a streaming pass (too large to hold twice in memory) and read again
later (the strict weights check of ``ebru verify``) is tied to the hashing pass by its
:data:`Stamp` — device, inode, size, modification and change times of the open descriptor: a
file replaced (renamed over) or written to in between has a different stamp and is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from .errors import IntegrityError

CHUNK = 1 << 20

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of an open file: which file, in which state.
Stamp = tuple[int, int, int, int, int]

#: names a package file may have: plain, portable, no path separators, not hidden.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and name not in (".", "..")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_files(directory: str | os.PathLike) -> list[str]:
    """The names of a flat package directory's files; links, subdirectories and odd names are refused."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory not found: {d}")
    names = []
    with os.scandir(d) as it:
        for entry in it:
            p = d / entry.name
            if entry.is_symlink():
                raise IntegrityError(p, "is a symbolic link; packages hold regular files only")
            if entry.is_dir(follow_symlinks=False):
                raise IntegrityError(p, "is a directory; packages are flat (regular files only)")
            if not entry.is_file(follow_symlinks=False):
                raise IntegrityError(p, "is not a regular file")
            if not valid_name(entry.name):
                raise IntegrityError(p, "has a name packages do not allow (letters, digits, '.', '_', '-'; "
                                        "not starting with '.')")
            names.append(entry.name)
    return sorted(names)


def _open_regular(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if path.is_symlink():
            raise IntegrityError(path, "is a symbolic link; packages hold regular files only") from None
        raise OSError(e.errno, f"cannot read {path} ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(path, "is not a regular file")
    return fd


def _check_size(path: Path, fd: int, expected: int | None, limit: int | None) -> int:
    size = os.fstat(fd).st_size
    if expected is not None and size != expected:
        raise IntegrityError(path, f"is {size} bytes, the manifest says {expected}")
    if limit is not None and size > limit:
        raise IntegrityError(path, f"is {size} bytes, more than the {limit}-byte limit for this file")
    return size


def read_file(path: str | os.PathLike, expected_size: int | None = None, limit: int | None = None) -> bytes:
    """The whole content of a regular file (no links), checking its size first."""
    p = Path(path)
    fd = _open_regular(p)
    with os.fdopen(fd, "rb") as f:
        size = _check_size(p, fd, expected_size, limit)
        data = f.read(size + 1)
    if len(data) != size:
        raise IntegrityError(p, "changed size while being read")
    return data


def stamp_of(fd: int) -> Stamp:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_stamp(path: str | os.PathLike, fd: int, stamp: Stamp | None) -> None:
    """Refuse if the open file ``fd`` is not the file, in the state, that ``stamp`` was taken of."""
    if stamp is not None and stamp_of(fd) != stamp:
        raise IntegrityError(path, "was replaced or changed after it was hashed; refused (check it again)")


def hash_file_stamped(path: str | os.PathLike, expected_size: int | None = None) -> tuple[str, int, Stamp]:
    """Streamed SHA-256, size and :data:`Stamp` of a regular file (no links), checking its size first."""
    p = Path(path)
    fd = _open_regular(p)
    h = hashlib.sha256()
    n = 0
    with os.fdopen(fd, "rb") as f:
        size = _check_size(p, fd, expected_size, None)
        before = stamp_of(fd)
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
        if n != size:
            raise IntegrityError(p, "changed size while being read")
        after = stamp_of(fd)
        if after != before:
            raise IntegrityError(p, "changed while being read")
    return h.hexdigest(), n, after


def hash_file(path: str | os.PathLike, expected_size: int | None = None) -> tuple[str, int]:
    """Streamed SHA-256 and size of a regular file (no links), checking its size first."""
    digest, n, _ = hash_file_stamped(path, expected_size)
    return digest, n


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
