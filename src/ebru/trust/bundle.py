"""Moving a package across a boundary: ``ebru pack`` and ``ebru unpack``.

A bundle is a plain (uncompressed) POSIX tar of the package's files, flat, in name order, with
zeroed owners and times, so packing the same package twice gives the same bytes.

``pack`` verifies the package (manifest, signature, strict weights) and re-hashes every file
while copying it into the tar, so the bundle holds exactly the verified bytes; the tar is
written beside its destination and renamed into place.

``unpack`` never calls ``tarfile.extract``. It reads members one by one and refuses, before
writing anything usable: a member that is not a regular file (links, devices, directories,
sparse files), a name with a path (``/``, ``..``) or one packages do not allow, a repeated
name, more than :data:`MAX_MEMBERS` members, and a truncated or damaged archive. Files go into
a private temporary directory beside the destination; the result is verified like a load
(manifest, signature by the trusted keys in force, strict weights) and only then renamed to the
destination, which must not exist yet.

Both run as one :class:`~ebru.trust.staging.Staged` operation: on any failure or interruption
(Ctrl-C included) the temporary tar or directory is removed, a bundle that was already at the
destination stays as it was, and the audit log records the abandoned operation.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
from pathlib import Path
from typing import IO

from .errors import BundleError, IntegrityError, TrustError
from .files import CHUNK, valid_name
from .keys import TrustedKeys
from .license import Policy
from .loader import verify_integrity
from .manifest import SIGNATURE
from .staging import Staged

MAX_MEMBERS = 256


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingReader:
    """Reads a file for tarfile while hashing exactly what was read."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        return data


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


class _HashingWriter:
    """The tar's file object: writes through, hashing exactly what was written."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.h.update(data)
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n


def pack(model_dir: str | os.PathLike, out: str | os.PathLike, *,
         trusted_keys: TrustedKeys | str | os.PathLike | None = None, allow_unsigned: bool = False) -> Path:
    """Verify ``model_dir`` and write it as a tar bundle at ``out``; returns ``out``.

    On any error or interruption no temporary file is left, a file already at ``out`` is
    unchanged, and the audit log records the abandoned pack.
    """
    d, out = Path(model_dir), Path(out)
    with Staged("pack", out, path=os.path.abspath(d), bundle=os.path.abspath(out)) as op:
        pkg, signer, warnings = verify_integrity(d, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
        expected = dict(pkg.digests)
        if pkg.signature is not None:
            expected[SIGNATURE] = hashlib.sha256(pkg.signature).hexdigest()
        tmp = op.temp_file()
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(expected):
                    with open(d / name, "rb", opener=_open_nofollow) as f:
                        reader = _HashingReader(f)
                        tar.addfile(_tarinfo(name, os.fstat(f.fileno()).st_size), reader)
                    if reader.h.hexdigest() != expected[name]:
                        raise IntegrityError(d / name, "changed while being packed")
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        op.publish_file(tmp)
        for w in warnings:
            print(f"ebru: warning: {w}", file=sys.stderr)
        op.record("pack", {"path": os.path.abspath(d), "bundle": os.path.abspath(out),
                           "manifest_sha256": pkg.manifest_sha256, "signer": signer.key_id if signer else None,
                           "bundle_sha256": writer.h.hexdigest()})
    return out


def _copy_member(src: IO[bytes], dst: IO[bytes], size: int) -> int:
    """Copy at most ``size`` bytes of one member; returns how many were copied."""
    copied = 0
    while chunk := src.read(min(CHUNK, size - copied)):
        dst.write(chunk)
        copied += len(chunk)
    return copied


def _extract(bundle: Path, tmp: Path) -> None:
    try:
        tar = tarfile.open(bundle, mode="r:")  # noqa: SIM115 (closed by the with-block below)
    except tarfile.ReadError as e:
        raise BundleError(bundle, f"not a readable tar archive ({e}); bundles are uncompressed tar files") from None
    seen: set[str] = set()
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as e:
                raise BundleError(bundle, f"damaged or truncated archive ({e})") from None
            if member is None:
                break
            name = member.name
            if not (member.isreg() and not member.issparse()):
                kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                        else "a directory" if member.isdir() else "not a regular file")
                raise BundleError(bundle, f"member {name!r} is {kind}; bundles hold regular files only")
            if not valid_name(name):
                raise BundleError(bundle, f"member {name!r} has a path or a name packages do not allow "
                                          "(path traversal refused)")
            if name in seen:
                raise BundleError(bundle, f"member {name!r} appears twice")
            seen.add(name)
            if len(seen) > MAX_MEMBERS:
                raise BundleError(bundle, f"more than {MAX_MEMBERS} members")
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as dst:
                try:
                    copied = _copy_member(src, dst, member.size)
                except (tarfile.TarError, EOFError) as e:
                    raise BundleError(bundle, f"truncated archive: member {name!r} is cut short ({e})") from None
                if copied != member.size:
                    raise BundleError(bundle, f"truncated archive: member {name!r} is cut short")
                dst.flush()
                os.fsync(dst.fileno())
        end = tar.offset  # just past the last member; a complete archive has two zero blocks here
    with open(bundle, "rb") as f:
        f.seek(end)
        if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
            raise BundleError(bundle, "truncated archive: the end-of-archive marker is missing")
    if not seen:
        raise BundleError(bundle, "the archive holds no files")


def unpack(bundle: str | os.PathLike, out_dir: str | os.PathLike, *,
           trusted_keys: TrustedKeys | str | os.PathLike | None = None, allow_unsigned: bool = False,
           policy: Policy | str | os.PathLike | None = None, acknowledge: tuple[str, ...] | list[str] = ()) -> Path:
    """Extract and verify a bundle into the new directory ``out_dir``; returns it.

    Verified means what :func:`ebru.load` checks: the manifest, the signature, the strict weights
    structure and the licence under ``policy`` (None: the policy in force; ``acknowledge`` as for
    ``load``). ``out_dir`` appears only once all of it passed. Nothing is left on failure or
    interruption (the private temporary directory is removed), and the audit log records the
    abandoned unpack.
    """
    bundle, out = Path(bundle), Path(out_dir)
    with Staged("unpack", out, bundle=os.path.abspath(bundle)) as op:
        if not bundle.is_file():
            raise FileNotFoundError(f"bundle not found: {bundle}")
        if out.exists() or out.is_symlink():
            raise FileExistsError(f"{out} already exists; unpack into a new directory")
        tmp = op.temp_dir()
        _extract(bundle, tmp)
        try:
            pkg, signer, warnings = verify_integrity(tmp, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned,
                                                     label=f"the package in {bundle}", licence=True, policy=policy,
                                                     acknowledge=acknowledge)
        except TrustError as e:  # a file of the package: name the bundle, not the temporary directory
            if not Path(e.path).is_relative_to(tmp):
                raise
            raise type(e)(bundle, f"{Path(e.path).name}: {e.reason}") from None
        os.chmod(tmp, 0o755)
        op.publish_dir(tmp, replace=False)
        for w in warnings:
            print(f"ebru: warning: {w}", file=sys.stderr)
        op.record("unpack", {"bundle": os.path.abspath(bundle), "path": os.path.abspath(out),
                             "manifest_sha256": pkg.manifest_sha256, "signer": signer.key_id if signer else None})
    return out
