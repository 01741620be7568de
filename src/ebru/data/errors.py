"""Errors raised by ``ebru.data``.

User mistakes (a missing data set, a corrupt file, an empty folder) raise exceptions whose
message is one actionable line, so the CLI can print it as is and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path


class DataMissingError(FileNotFoundError):
    """A data set or folder is not where it was looked for.

    ``str(err)`` is one line naming what is missing and how to install or point to it;
    ``err.path`` is the path that was looked at (``None`` when not applicable).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the caller passed
        self.path = None if path is None else str(path)
