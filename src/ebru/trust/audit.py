"""The audit trail: an append-only JSONL log whose entries form a SHA-256 hash chain.

Each line is one JSON object::

    {"seq": 7, "time": "2026-05-01T12:00:00.123Z", "event": "load", "user": "ana", "host": "gpu-3",
     "pid": 4242, "data": {"path": "/models/x", …}, "prev": "<hash of line 6>", "hash": "<this line's hash>"}

``hash`` is SHA-256 of the entry without ``hash``, serialised canonically (sorted keys, no
spaces, UTF-8); ``prev`` is the previous entry's ``hash`` (64 zeros for the first). ``ebru audit
verify`` recomputes the chain, so an edited entry (its hash no longer matches), a reordered,
inserted or deleted one (``seq`` and ``prev`` no longer follow) are each reported with their
line number. Cutting entries off the *end* leaves a valid shorter chain: keep the head hash
that ``verify`` prints somewhere else (a ticket, syslog, a second machine) and pass it back with
``--head`` to detect that too.

Events: ``load``, ``refuse``, ``verify``, ``sign``, ``package``, ``pack``, ``unpack``,
``generation`` (an output image written with its C2PA manifest: :mod:`ebru.provenance.record`), and
``abandon``: a write that was interrupted or failed (its ``action``, its ``path``, and the
``error``: ``"interrupted"`` or the error's message), after its temporary files were removed
(:mod:`ebru.trust.staging`).
Appends take an exclusive ``flock`` on the log, so concurrent processes (DDP ranks, a server)
keep the chain intact. The log is on by default (see :mod:`ebru.trust.settings`;
``EBRU_AUDIT_LOG=off`` turns it off); when it cannot be written, the operation being recorded
fails, because an audit trail with silent gaps is no audit trail.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import settings
from .errors import AuditError
from .strict_json import dumps_canonical, loads

GENESIS = "0" * 64
EVENTS = ("load", "refuse", "verify", "sign", "package", "pack", "unpack", "generation", "abandon")
_FIELDS = {"seq", "time", "event", "user", "host", "pid", "data", "prev", "hash"}


def log_path(path: str | os.PathLike | None = None) -> Path | None:
    """The audit log in force: the argument, else EBRU_AUDIT_LOG (``off`` disables), else the default."""
    if path is not None:
        return Path(path)
    value = os.environ.get(settings.ENV_AUDIT_LOG, "").strip()
    if value.lower() in ("off", "none", "0", "false"):
        return None
    return Path(value).expanduser() if value else settings.default_audit_log()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(dumps_canonical({k: v for k, v in entry.items() if k != "hash"}).encode()).hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _last_line(fd: int) -> bytes:
    size = os.lseek(fd, 0, os.SEEK_END)
    block, data = 4096, b""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1]
    return b""


def record(event: str, data: dict[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Append one entry; returns it (None when the log is off). Raises :class:`AuditError` if it cannot."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    log = log_path(path)
    if log is None:
        return None
    import fcntl

    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as e:
        raise AuditError(log, f"cannot open the audit log ({e.strerror}); set {settings.ENV_AUDIT_LOG} to a "
                              f"writable file, or {settings.ENV_AUDIT_LOG}=off") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        if last:
            prev_entry = loads(last, log, "the last audit entry", AuditError)
            if not isinstance(prev_entry, dict) or not isinstance(prev_entry.get("hash"), str) \
                    or not isinstance(prev_entry.get("seq"), int):
                raise AuditError(log, "the last entry is damaged; run 'ebru audit verify'")
            prev, seq = prev_entry["hash"], prev_entry["seq"] + 1
        else:
            prev, seq = GENESIS, 0
        entry = {
            "seq": seq,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "event": event,
            "user": _user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "data": data,
            "prev": prev,
        }
        entry = json.loads(json.dumps(entry, default=str, allow_nan=False))  # a JSON-clean copy (paths -> str)
        entry["hash"] = entry_hash(entry)
        os.write(fd, (dumps_canonical(entry) + "\n").encode())
        os.fsync(fd)
    except OSError as e:
        raise AuditError(log, f"cannot append to the audit log ({e.strerror})") from None
    finally:
        os.close(fd)  # closing releases the lock
    return entry


@dataclass(frozen=True)
class AuditSummary:
    path: Path
    entries: int
    head: str


def verify_log(path: str | os.PathLike | None = None, head: str | None = None) -> AuditSummary:
    """Check the whole chain; raise :class:`AuditError` naming the first bad line and why."""
    log = log_path(path)
    if log is None:
        raise AuditError(settings.ENV_AUDIT_LOG, "the audit log is off; nothing to verify")
    try:
        raw = log.read_bytes()
    except FileNotFoundError:
        raise AuditError(log, "audit log not found") from None
    except OSError as e:
        raise AuditError(log, f"cannot read the audit log ({e.strerror})") from None
    if raw and not raw.endswith(b"\n"):
        raise AuditError(log, "the last line is incomplete (a write was cut off, or the file was truncated)")
    prev, hashes = GENESIS, []
    for i, line in enumerate(raw.splitlines()):
        where = f"line {i + 1}"
        entry = loads(line, log, where, AuditError)
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            raise AuditError(log, f"{where}: not an audit entry (fields {sorted(_FIELDS)})")
        if entry["hash"] != entry_hash(entry):
            raise AuditError(log, f"{where}: the entry was edited (its hash does not match its content)")
        if entry["seq"] != i:
            raise AuditError(log, f"{where}: sequence number {entry['seq']} where {i} was expected "
                                  "(entries were deleted, inserted or reordered)")
        if entry["prev"] != prev:
            raise AuditError(log, f"{where}: the chain is broken (prev does not match the entry before; "
                                  "an entry was deleted, inserted or reordered)")
        prev = entry["hash"]
        hashes.append(prev)
    if head is not None and head not in hashes:
        raise AuditError(log, f"the log no longer holds the entry with hash {head[:16]}… (entries were cut off "
                              "the end, or the log was replaced)")
    return AuditSummary(log, len(hashes), prev)


def read_entries(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All entries, parsed (no chain check: use :func:`verify_log` for that)."""
    log = log_path(path)
    if log is None or not log.exists():
        return []
    return [loads(line, log, f"line {i + 1}", AuditError) for i, line in enumerate(log.read_bytes().splitlines())]
