"""Files written whole or not at all: a temporary sibling, renamed into place when complete.

For outputs a person keeps (sample grids, PNGs, JSON reports): an interruption (Ctrl-C), a full
disk or an exception never leaves a truncated file behind, nor destroys a previous file of the same
name. (Model packages, bundles and checkpoints go through ``ebru.trust.staging``, which also
audits an abandoned write.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a hidden temporary file beside ``path`` for writing; rename it to ``path`` when the block ends.

    ``mode`` is ``"wb"`` or ``"w"`` (text mode needs ``encoding``, e.g. ``"utf-8"``). Missing parent
    folders are made. On any exception, KeyboardInterrupt included, the temporary file is removed and
    ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
