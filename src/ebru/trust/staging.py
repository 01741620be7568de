"""Writers that never leave half-written output: :class:`Staged`, shared by every writer in ebru.

Every writer (``write_package``, ``write_trained_package``, ``package_dir``, ``sign_package``,
``pack``, ``unpack``, ``generate_key``, training checkpoints) runs inside one ``Staged`` operation::

    with Staged("pack", out, model=model_dir) as op:
        tmp = op.temp_file()              # .NAME.pack-XXXX.tmp beside ``out``, removed unless published
        ... write tmp ...
        op.publish_file(tmp)              # os.replace(tmp, out)

Temporary files and directories are siblings of their destination (same file system, so the final
rename is atomic) and hidden (``.NAME.OPERATION-XXXX.tmp``). When anything inside the block
raises — an error, a refusal, or an interruption (``KeyboardInterrupt``, ``SystemExit``, which
are ``BaseException``\\ s, not ``Exception``\\ s) — :class:`Staged`:

1. puts back a destination that :meth:`Staged.publish_dir` had moved aside but not yet replaced,
   so the previous version stays intact, and removes files it created with
   :meth:`Staged.publish_new` (so a key pair is written whole or not at all);
2. removes every temporary it created that was not published (a further Ctrl-C during this
   clean-up is held back until it is done, then ignored: the operation is already failing);
3. appends one audit entry (:mod:`ebru.trust.audit`): ``refuse`` for a refusal
   (:class:`~ebru.trust.errors.TrustError`), ``abandon`` for anything else, with the operation
   (``action``), its destination (``path``), the writer's details, and why (``error``:
   ``"interrupted"`` for an interruption, else the error's message; ``exception``: its type);

and the exception propagates unchanged. If the audit entry cannot be written, a note saying so is
added to the propagating exception rather than replacing it.

A successful operation records its own, more detailed entry (``package``, ``pack``, ...) with
:meth:`Staged.record` inside the block, after publishing; leaving the block then removes what is
left (e.g. the previous version of a replaced directory). A Ctrl-C during that last clean-up is
held back until it is done and then raised.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from . import audit
from .errors import AuditError, TrustError
from .files import fsync_dir


@contextmanager
def _sigint_held() -> Iterator[list[int]]:
    """Hold back SIGINT (Ctrl-C) while cleaning up; yields the list of signals that arrived meanwhile.

    A no-op (nothing held) outside the main thread, where Python delivers no signals anyway.
    """
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    except (ValueError, OSError):  # no signal support here
        yield arrived
        return
    try:
        yield arrived
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def why(exc: BaseException) -> str:
    """The ``error`` of an audit entry: ``"interrupted"`` for a BaseException that is not an Exception."""
    if not isinstance(exc, Exception):
        return "interrupted"
    return str(exc) or type(exc).__name__


class Staged:
    """One audited write of ``target`` through temporary siblings (see the module docstring).

    ``operation``: the audit ``action`` (``package``, ``pack``, ``checkpoint``, ...). ``target``:
    the file or directory being written. ``details``: more audit fields (e.g. the bundle).
    """

    def __init__(self, operation: str, target: str | os.PathLike, **details: Any):
        self.operation = operation
        self.target = Path(target)
        self.details = details
        self.published = False
        self._temps: list[Path] = []
        self._aside: tuple[Path, Path] | None = None  # (moved-aside copy, where it belongs)
        self._created: list[Path] = []  # published with publish_new: removed if the operation fails

    # ----------------------------------------------------------------------------- temporaries
    def _prefix(self, dest: Path) -> str:
        return f".{dest.name}.{self.operation}-"

    def temp_dir(self, dest: str | os.PathLike | None = None) -> Path:
        """A new private (0700) directory beside ``dest`` (default: the target), removed unless published."""
        d = Path(dest) if dest is not None else self.target
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=self._prefix(d), suffix=".tmp"))
        self._temps.append(tmp)
        return tmp

    def temp_file(self, dest: str | os.PathLike | None = None) -> Path:
        """A new empty private (0600) file beside ``dest`` (default: the target), removed unless published."""
        d = Path(dest) if dest is not None else self.target
        d.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=d.parent, prefix=self._prefix(d), suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        self._temps.append(tmp)
        return tmp

    def stage_file(self, dest: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
        """Write ``data`` to a new temporary beside ``dest`` and fsync it; returns the temporary (publish it)."""
        tmp = self.temp_file(dest)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        return tmp

    def write_file(self, dest: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
        """Write ``data`` to a temporary beside ``dest``, fsync it, and rename it onto ``dest``."""
        self.publish_file(self.stage_file(dest, data, mode), dest)
        return Path(dest)

    def _forget(self, tmp: Path) -> None:
        self._temps = [t for t in self._temps if t != tmp]

    # ----------------------------------------------------------------------------- publishing
    def publish_file(self, tmp: Path, dest: str | os.PathLike | None = None) -> None:
        """Rename the temporary file ``tmp`` onto ``dest`` (default: the target), replacing it."""
        d = Path(dest) if dest is not None else self.target
        os.replace(tmp, d)
        self._forget(tmp)
        self.published = True

    def publish_new(self, tmp: Path, dest: str | os.PathLike) -> None:
        """Give the temporary file ``tmp`` the name ``dest``, which must not exist (never overwrites).

        Files published this way belong to the operation: if it then fails or is interrupted,
        they are removed too (e.g. a key pair is written whole or not at all).
        """
        d = Path(dest)
        try:
            os.link(tmp, d)  # fails if ``d`` exists, atomically
        except FileExistsError:
            raise FileExistsError(f"{d} already exists; choose another name or remove it") from None
        except OSError:  # a file system without hard links
            if d.exists() or d.is_symlink():
                raise FileExistsError(f"{d} already exists; choose another name or remove it") from None
            os.rename(tmp, d)
        else:
            os.unlink(tmp)
        self._forget(tmp)
        self._created.append(d)
        self.published = True

    def publish_dir(self, tmp: Path, *, replace: bool) -> None:
        """Rename the finished directory ``tmp`` to the target.

        ``replace=False``: the target must not exist. ``replace=True``: an existing directory there
        is moved aside, replaced, then removed; if anything stops this half-way, the old
        directory is put back.
        """
        path = self.target
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} appeared while writing it; nothing was written there")
            if path.is_symlink() or not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a directory")
            holder = self.temp_dir()
            self._aside = (holder / path.name, path)
            os.replace(path, holder / path.name)
            os.replace(tmp, path)
            self._aside = None
        else:
            os.rename(tmp, path)
        self._forget(tmp)
        self.published = True
        fsync_dir(path.parent)

    def record(self, event: str, data: dict[str, Any]) -> None:
        """Append the successful operation's audit entry (call it after publishing)."""
        audit.record(event, data)

    # ----------------------------------------------------------------------------- the block
    def __enter__(self) -> Staged:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        with _sigint_held() as arrived:
            if self._aside is not None:  # stopped between moving the old target aside and replacing it
                old, home = self._aside
                if home.exists() or home.is_symlink():
                    self.published = True  # the new directory was already in place
                elif old.exists():
                    try:
                        os.replace(old, home)
                    except OSError as e:  # keep it where it is rather than lose it
                        self._temps = [t for t in self._temps if t != old.parent]
                        if exc is not None:
                            exc.add_note(f"ebru: could not put {home} back ({e.strerror}); it is in {old}")
                self._aside = None
            for tmp in reversed(self._temps):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
            self._temps = []
            if exc is not None:
                for created in self._created:
                    created.unlink(missing_ok=True)
            if exc is None:
                if arrived:
                    raise KeyboardInterrupt
                return False
            refused = isinstance(exc, TrustError)
            data: dict[str, Any] = {"action": self.operation, "path": os.path.abspath(self.target), **self.details,
                                    "error": why(exc), "exception": type(exc).__name__}
            if refused:
                data.update(file=exc.path, reason=exc.reason)
            if self.published:
                data["published"] = True  # stopped after the result was in place (e.g. while tidying up)
            try:
                audit.record("refuse" if refused else "abandon", data)
            except AuditError as e:
                exc.add_note(f"ebru: the audit log could not record this: {e}")
        return False


__all__ = ["Staged", "why"]
