"""Errors raised by ``ebru.text`` for a user's mistake: each message is one actionable line.

The CLI prints ``ebru: error: <message>`` and exits with code 2 for any of them.
"""

from __future__ import annotations


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class TextInputError(ValueError):
    """Bad input: a prompt longer than the context, unknown characters, lengths or steps <= 0, a bad template."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class CorpusMissingError(FileNotFoundError):
    """A text corpus is not installed (the message names the install step) or a folder holds no text."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))
