"""Bearer tokens for ``ebru serve``: a file of salted scrypt hashes, checked in constant time.

A token looks like ``ebru-<id>-<secret>``: ``<id>`` (8 hex digits) names its entry in the token file,
``<secret>`` is 32 random bytes (base64url, 43 characters). The file keeps, per token, its NAME (who holds
it; what the audit log records), its id, a random 16-byte salt and ``scrypt(secret, salt)`` (RFC 7914,
``n = 2**14, r = 8, p = 1``, 32 bytes, ``hashlib.scrypt``), never the token itself: a stolen file does not
let anyone in. ``ebru serve --add-token NAME`` (:func:`add_token`) prints a new token once.

File format (UTF-8 JSON, written atomically, mode 0600)::

    {"format": "ebru-serve-tokens", "version": 1,
     "tokens": [{"name": "ana", "id": "1f0c9a2e", "kdf": "scrypt", "n": 16384, "r": 8, "p": 1,
                 "salt": "<hex>", "hash": "<hex>", "created": "2026-12-01T03:00:00Z", "expires": null}]}

Checking (:meth:`TokenStore.check`): a missing or malformed ``Authorization`` header is :class:`AuthError`
401; a well-formed token that is unknown, wrong or expired is 403. The derived hash is compared with
``hmac.compare_digest``; an unknown id still costs one scrypt, so timing does not tell ids apart. A token
that passed once is remembered by its SHA-256 (not by the token), so polling and progress streams do not
pay scrypt on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FORMAT = "ebru-serve-tokens"
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
TOKEN_RE = re.compile(r"ebru-([0-9a-f]{8})-([A-Za-z0-9_-]{43})")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class AuthError(Exception):
    """A refused request: ``status`` 401 (no or malformed credentials) or 403 (wrong, unknown or expired)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _derive(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{where}: expires must be a time like 2027-01-31T00:00:00Z, got {value!r}") from None


@dataclass(frozen=True)
class TokenEntry:
    """One token file entry (no secret in it)."""

    name: str
    id: str
    salt: bytes
    hash: bytes
    n: int
    r: int
    p: int
    expires: datetime | None


def read_token_file(path: str | os.PathLike) -> list[TokenEntry]:
    """Parse a token file; raises ``OSError`` when it cannot be read and ``ValueError`` (one line, naming the
    file) when it is not one ebru wrote."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a token file (not JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tokens"), list):
        raise ValueError(f"{path}: not an ebru serve token file (make one with 'ebru serve --add-token NAME')")
    entries = []
    for k, t in enumerate(data["tokens"]):
        where = f"{path}: token {k}"
        try:
            entry = TokenEntry(str(t["name"]), str(t["id"]), bytes.fromhex(t["salt"]), bytes.fromhex(t["hash"]),
                               int(t["n"]), int(t["r"]), int(t["p"]), _parse_time(t.get("expires"), where))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ValueError) and str(e).startswith(where):
                raise
            raise ValueError(f"{where} is damaged ({type(e).__name__}: {e})") from None
        if t.get("kdf") != "scrypt" or not re.fullmatch(r"[0-9a-f]{8}", entry.id):
            raise ValueError(f"{where} is damaged (kdf must be scrypt, id 8 hex digits)")
        entries.append(entry)
    return entries


def add_token(path: str | os.PathLike, name: str, *, expires_days: float | None = None) -> str:
    """Add a token for ``name`` to the token file ``path`` (made if missing); returns the token, shown once.

    ``name`` (letters, digits, ``._@-``, at most 64) is what the audit log records for the token's requests;
    it must be new in the file. ``expires_days``: the token is refused that many days from now (default:
    never). The file is rewritten atomically with mode 0600. Raises ValueError for a bad or taken name.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"token name must be 1-64 letters, digits, '.', '_', '@' or '-' (starting with a letter "
                         f"or digit), got {name!r}")
    path = Path(path)
    raw: dict[str, Any] = {"format": FORMAT, "version": 1, "tokens": []}
    if path.exists():
        entries = read_token_file(path)  # refuse to rewrite a file that is not ours
        if any(e.name == name for e in entries):
            raise ValueError(f"{path} already has a token named {name!r}; choose another name")
        raw = json.loads(path.read_text(encoding="utf-8"))
    taken = {t["id"] for t in raw["tokens"]}
    tid = secrets.token_hex(4)
    while tid in taken:
        tid = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    salt = secrets.token_bytes(16)
    expires = None if expires_days is None else _iso(_now() + timedelta(days=float(expires_days)))
    raw["tokens"].append({"name": name, "id": tid, "kdf": "scrypt", **SCRYPT, "salt": salt.hex(),
                          "hash": _derive(secret, salt, **SCRYPT).hex(), "created": _iso(_now()),
                          "expires": expires})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"ebru-{tid}-{secret}"


class TokenStore:
    """The tokens a server accepts (:func:`read_token_file`), checked per request by :meth:`check`."""

    def __init__(self, entries: list[TokenEntry]):
        self.entries = {e.id: e for e in entries}
        self._passed: dict[bytes, TokenEntry] = {}
        self._lock = threading.Lock()
        self._dummy = TokenEntry("", "", b"\0" * 16, b"\0" * 32, **SCRYPT, expires=None)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TokenStore:
        return cls(read_token_file(path))

    def check(self, authorization: str | None) -> str:
        """The NAME of the token in an ``Authorization: Bearer <token>`` header value.

        Raises :class:`AuthError` 401 for no header, another scheme or a string that is not an ebru token;
        403 for an unknown or wrong token, or one past its ``expires`` time.
        """
        if not authorization:
            raise AuthError(401, "this server needs a token: send 'Authorization: Bearer <token>' "
                                 "(its operator makes one with 'ebru serve --add-token NAME')")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "malformed Authorization header: expected 'Bearer <token>'")
        m = TOKEN_RE.fullmatch(token)
        if m is None:
            raise AuthError(401, "malformed token: expected ebru-<8 hex digits>-<43 characters>")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        with self._lock:
            entry = self._passed.get(digest)
        if entry is None:
            known = self.entries.get(m.group(1))
            e = known or self._dummy
            good = hmac.compare_digest(_derive(m.group(2), e.salt, e.n, e.r, e.p), e.hash)
            if known is None or not good:
                raise AuthError(403, "token refused: it is not one this server accepts")
            entry = known
            with self._lock:
                self._passed[digest] = entry
        if entry.expires is not None and _now() >= entry.expires:
            raise AuthError(403, f"token refused: it expired at {_iso(entry.expires)}")
        return entry.name
