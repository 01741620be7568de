"""Watermark keys: the 32-byte secret that keys ebru's noise watermark (:mod:`ebru.provenance.watermark`).

A key file ``NAME.wmkey`` (mode 0600) is a small JSON object, UTF-8::

    {
      "format": "ebru-watermark-key",
      "version": 1,
      "name": "default",
      "key_id": "3f1c0a9d5e7b2c41",
      "created": "2026-05-01T12:00:00Z",
      "secret": "<32 bytes, base64>",
      "note": "SECRET: whoever holds this file can read and forge this watermark; never share it"
    }

The *key ID* is the first 16 hex digits of ``SHA-256("ebru/watermark-key-id/v1\\0" || secret)``: it
names the key in manifests and records without revealing it (a domain-separated hash, so it is not
the hash of the secret used for anything else). The secret itself never goes into an image, a
manifest or a log. The ID is recomputed on load; a ``key_id`` that disagrees is refused.

Where the key comes from (:func:`default_watermark_key`): ``$EBRU_WATERMARK_KEY`` (a file, which must
exist), else ``config_dir()/watermark/default.wmkey`` (``~/.config/ebru/watermark/default.wmkey``,
see :mod:`ebru.trust.settings`), created on first use with a one-line note on stderr.

Every refusal is a :class:`~ebru.trust.errors.KeyFileError` (a ``ValueError``): ``"<file>: <reason>"``
on one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ebru.trust import settings
from ebru.trust.errors import KeyFileError
from ebru.trust.files import valid_name

__all__ = [
    "ENV_WATERMARK_KEY", "KEY_FORMAT", "SECRET_BYTES", "WatermarkKey", "default_watermark_key",
    "default_watermark_key_path", "generate_watermark_key", "load_watermark_key", "watermark_key_id",
]

ENV_WATERMARK_KEY = "EBRU_WATERMARK_KEY"
KEY_FORMAT = "ebru-watermark-key"
KEY_VERSION = 1
SECRET_BYTES = 32
SUFFIX = ".wmkey"
MAX_KEY_FILE_BYTES = 16 * 1024
_ID_DOMAIN = b"ebru/watermark-key-id/v1\0"
_NOTE = "SECRET: whoever holds this file can read and forge this watermark; never share it"


def watermark_key_id(secret: bytes) -> str:
    """The public name of a secret: first 16 hex of SHA-256 of the domain-separated secret."""
    return hashlib.sha256(_ID_DOMAIN + bytes(secret)).hexdigest()[:16]


@dataclass(frozen=True)
class WatermarkKey:
    """A loaded watermark key. ``secret`` is kept out of ``repr`` (and so out of logs and tracebacks)."""

    name: str
    secret: bytes = field(repr=False)
    key_id: str = ""
    created: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise ValueError(f"a watermark key's secret must be {SECRET_BYTES} bytes")
        kid = watermark_key_id(self.secret)
        if self.key_id and self.key_id != kid:
            raise ValueError(f"key_id {self.key_id!r} does not match the secret (its ID is {kid})")
        object.__setattr__(self, "key_id", kid)

    @classmethod
    def from_secret(cls, secret: bytes, name: str = "unnamed") -> WatermarkKey:
        """A key from raw bytes (tests, or a secret held elsewhere); not written anywhere."""
        return cls(name=name, secret=bytes(secret))

    def describe(self) -> str:
        return f"watermark key {self.name} (ID {self.key_id})"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _serialize(key: WatermarkKey) -> bytes:
    doc = {
        "format": KEY_FORMAT,
        "version": KEY_VERSION,
        "name": key.name,
        "key_id": key.key_id,
        "created": key.created,
        "secret": base64.b64encode(key.secret).decode("ascii"),
        "note": _NOTE,
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _write_new(path: Path, key: WatermarkKey) -> None:
    """Write ``path`` (0600) whole or not at all; never overwrites (FileExistsError)."""
    from ebru.trust.staging import Staged

    with Staged("keygen", path, kind="watermark") as op:
        tmp = op.stage_file(path, _serialize(key), 0o600)
        op.publish_new(tmp, path)


def generate_watermark_key(out_dir: str | os.PathLike, name: str) -> Path:
    """Write a new random key ``out_dir/NAME.wmkey`` (mode 0600) and return its path.

    The secret is 32 bytes from :mod:`secrets`. Never overwrites: raises ``FileExistsError`` when
    the file exists, ``ValueError`` for a name that is not letters, digits, ``.``, ``_`` or ``-``.
    """
    if not isinstance(name, str) or not valid_name(name):
        raise ValueError(f"key name {name!r} must be letters, digits, '.', '_' or '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{SUFFIX}"
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} already exists; choose another name or remove it")
    key = WatermarkKey(name=name, secret=secrets.token_bytes(SECRET_BYTES), created=_now(), path=path)
    _write_new(path, key)
    return path


def load_watermark_key(path: str | os.PathLike) -> WatermarkKey:
    """Read a ``.wmkey`` file.

    Raises :class:`~ebru.trust.errors.KeyFileError` (one line, naming the file) when it is missing,
    a directory or a link, readable or writable by other users (mode must be 0600 or stricter:
    ``chmod 600 FILE``), not the JSON format above, holds a secret that is not 32 bytes of base64,
    or a ``key_id`` that does not match its secret.
    """
    p = Path(path)
    if p.is_symlink():
        raise KeyFileError(p, "is a symbolic link; watermark key files must be regular files")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileError(p, "watermark key not found (create one with 'ebru keys generate --watermark')") from None
    except OSError as e:
        raise KeyFileError(p, f"cannot read the watermark key ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise KeyFileError(p, "is a directory, not a watermark key file")
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(p, "is not a regular file")
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(p, "is too large to be a watermark key file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(p, f"is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); a watermark "
                              f"key must be private: chmod 600 {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise KeyFileError(p, f"cannot read the watermark key ({e.strerror})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(p, "is not a watermark key file (not JSON; corrupt or another kind of file?)") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise KeyFileError(p, f"is not a watermark key file (no \"format\": \"{KEY_FORMAT}\")")
    if doc.get("version") != KEY_VERSION:
        raise KeyFileError(p, f"has watermark key format version {doc.get('version')!r}; this ebru reads "
                              f"version {KEY_VERSION}")
    secret_b64 = doc.get("secret")
    if not isinstance(secret_b64, str):
        raise KeyFileError(p, "has no \"secret\" (corrupt watermark key file)")
    try:
        secret = base64.b64decode(secret_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFileError(p, "its \"secret\" is not valid base64 (corrupt watermark key file)") from None
    if len(secret) != SECRET_BYTES:
        raise KeyFileError(p, f"its secret is {len(secret)} bytes, expected {SECRET_BYTES} (corrupt watermark key)")
    kid = watermark_key_id(secret)
    stored = doc.get("key_id")
    if stored is not None and stored != kid:
        raise KeyFileError(p, "its key_id does not match the secret it holds (edited file?)")
    name = doc.get("name")
    created = doc.get("created")
    return WatermarkKey(name=name if isinstance(name, str) and name else p.stem, secret=secret, key_id=kid,
                        created=created if isinstance(created, str) else "", path=p)


def default_watermark_key_path() -> Path:
    """``$EBRU_WATERMARK_KEY`` when set, else ``config_dir()/watermark/default.wmkey``."""
    env = settings.env_path(ENV_WATERMARK_KEY)
    return env if env is not None else settings.config_dir() / "watermark" / f"default{SUFFIX}"


def default_watermark_key(create: bool = True) -> WatermarkKey:
    """The watermark key in force.

    ``$EBRU_WATERMARK_KEY`` names a file that must exist (a mistyped path is an error, never a new
    key: detection would then fail on every image). Otherwise the default file is used, and with
    ``create=True`` made on first use (its directory 0700, the file 0600), with a one-line note on
    stderr. Raises :class:`~ebru.trust.errors.KeyFileError` when the key is missing and may not be
    created, or cannot be read.
    """
    env = settings.env_path(ENV_WATERMARK_KEY)
    if env is not None:
        return load_watermark_key(env)
    path = default_watermark_key_path()
    if not (path.exists() or path.is_symlink()):
        if not create:
            raise KeyFileError(path, "no watermark key yet (create one with 'ebru keys generate --watermark')")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = WatermarkKey(name="default", secret=secrets.token_bytes(SECRET_BYTES), created=_now(), path=path)
        try:
            _write_new(path, key)
        except FileExistsError:  # another process made it first: use theirs
            return load_watermark_key(path)
        print(f"ebru: created a watermark key {path} (ID {key.key_id}); keep it private and back it up: "
              "images it marked can only be checked with it", file=sys.stderr)
        return key
    return load_watermark_key(path)
