"""Keeping the paths of private keys out of everything ebru writes.

A training config names its signing key by path (``sign_key = "/secure/keys/release.key"``). That
path is local, and it says where a secret lives, so it never leaves the machine: before a config,
provenance record, model card or checkpoint state is written, :class:`Redactor` replaces every
``sign_key`` value by the key's public ID, ``"key-id:<64 hex digits>"`` (SHA-256 of the PEM public
key, as in ``ebru keys`` and the signature's key hint), or ``"key-id:unknown"`` when the key file
cannot be read. Any other string that holds such a path (or the key file's name as a path
component) is replaced the same way, so the key's location does not leak through a copy of the
config in a description or a command line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .keys import SigningKey, TrustedKey, key_id_of

#: config fields whose value is the path of a private key.
KEY_FIELDS = frozenset({"sign_key"})
REFERENCE_PREFIX = "key-id:"
_TOKEN_STOP = r"[^\s\"'<>|,;()\[\]{}=`]*"


def key_reference(key: SigningKey | TrustedKey | str | os.PathLike) -> str:
    """``"key-id:<hex>"`` for a key object or key file (``"key-id:unknown"`` when it cannot be read)."""
    kid = key_id_of(key)
    return f"{REFERENCE_PREFIX}{kid or 'unknown'}"


class Redactor:
    """Replaces the paths of the given keys, and of every key named in a ``sign_key`` field, by key IDs.

    ``redactor(obj)`` returns a redacted copy of a JSON-like value (dicts, lists, strings, ...);
    ``redactor.text(s)`` redacts free text (a model card). Non-string leaves are kept as they are.
    """

    def __init__(self, keys: tuple[SigningKey | str | os.PathLike, ...] | list[Any] = ()):
        self._paths: dict[str, str] = {}  # a spelling of a key path -> its reference
        self._names: dict[str, str] = {}  # a key file's name -> its reference
        for k in keys:
            if k:
                self.add(k)

    def add(self, key: SigningKey | str | os.PathLike) -> str:
        """Register a key (object or path); returns its reference."""
        path = key.path if isinstance(key, SigningKey | TrustedKey) else key
        raw = os.fspath(path)
        if raw in self._paths:
            return self._paths[raw]
        ref = key_reference(key)
        expanded = os.path.expanduser(raw)
        for form in (raw, expanded, os.path.abspath(expanded), os.path.realpath(expanded)):
            if form:
                self._paths[form] = ref
        name = Path(expanded).name
        if name:
            self._names[name] = ref
        return ref

    def _collect(self, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in KEY_FIELDS and isinstance(v, str | os.PathLike) and os.fspath(v) \
                        and not os.fspath(v).startswith(REFERENCE_PREFIX):
                    self.add(v)
                else:
                    self._collect(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                self._collect(v)

    def text(self, s: str) -> str:
        """``s`` with every registered key path (and key file name as a path component) replaced."""
        for form in sorted(self._paths, key=len, reverse=True):
            s = s.replace(form, self._paths[form])
        for name, ref in self._names.items():
            s = re.sub(rf"{_TOKEN_STOP}(?<![\w.-]){re.escape(name)}(?![\w.-])", lambda m, r=ref: r, s)
        return s

    def _apply(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: (self.add(v) if k in KEY_FIELDS and isinstance(v, str | os.PathLike) and os.fspath(v)
                        and not os.fspath(v).startswith(REFERENCE_PREFIX) else self._apply(v))
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._apply(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self._apply(v) for v in obj)
        if isinstance(obj, str):
            return self.text(obj) if (self._paths or self._names) else obj
        if isinstance(obj, os.PathLike):
            return self.text(os.fspath(obj))
        return obj

    def __call__(self, obj: Any) -> Any:
        self._collect(obj)
        return self._apply(obj)


def redact(obj: Any, keys: tuple[Any, ...] | list[Any] = ()) -> Any:
    """A copy of ``obj`` (JSON-like) with key paths replaced by key IDs (see :class:`Redactor`)."""
    return Redactor(keys)(obj)


__all__ = ["KEY_FIELDS", "Redactor", "key_reference", "redact"]
