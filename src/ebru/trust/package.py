"""Making packages: :func:`write_package` (from tensors), :func:`write_trained_package` (the same at
the end of a training run), :func:`package_dir` (a directory of files brought in from elsewhere),
and :func:`sign_package`.

:func:`write_package` is the generic writer any trainer calls (image and text models alike)::

    from ebru.trust import write_package

    write_package("run/model", config={"kind": "text-diffusion", ...}, weights=model.state_dict(),
                  card="---\\nlicense: mit\\nbase_model: null\\n...---\\n# My model\\n",
                  provenance={"created_by": "ebru text train", "dataset": "...", "dataset_hash": "...",
                              "config": cfg, "code_revision": "...", "final_metrics": {"loss": 1.23}},
                  sign_key="keys/release.key")

It writes everything into a temporary sibling directory, hashes it into ``manifest.json``,
checks the weights with the strict reader, signs if asked, and only then renames the directory
into place, so a crash, a full disk, a bad key or a Ctrl-C never leaves a half-written package:
the temporary directory is removed, a package that was there stays intact, and the audit log
records the abandoned write (:mod:`ebru.trust.staging`; every writer here works that way).

The path of a private key never enters a package: wherever the config, provenance, metadata or
card name a key (a ``sign_key`` field, or the path of the key being signed with), the key's
public ID is written instead (:mod:`ebru.trust.redact`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .card import parse_card
from .errors import IntegrityError, TrustError, UnsafeFileError
from .files import Stamp, check_stamp, list_files, read_file, sha256_bytes
from .keys import SigningKey, load_signing_key
from .manifest import (
    AUTOENCODER_WEIGHTS,
    CARD,
    CONFIG,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_TEXT_FILE_BYTES,
    REQUIRED,
    SIGNATURE,
    WEIGHTS,
    CheckedPackage,
    Manifest,
    build_manifest,
    check_package,
)
from .redact import Redactor
from .safetensors_strict import refuse_unsafe_content, validate_file
from .signature import sign_digests
from .staging import Staged
from .strict_json import loads

if TYPE_CHECKING:
    from torch import Tensor


def _key(sign_key: SigningKey | str | os.PathLike | None) -> SigningKey | None:
    if sign_key is None or isinstance(sign_key, SigningKey):
        return sign_key
    return load_signing_key(sign_key)


def _write_signature(op: Staged, directory: Path, key: SigningKey, name: str | None = None) -> CheckedPackage:
    """Sign only what verifies: the manifest matches, the weights pass the strict reader, the card parses."""
    pkg = check_package(directory, keep={CARD})
    validate_file(directory / WEIGHTS, stamp=pkg.stamps[WEIGHTS])  # the weights that were hashed and are signed
    parse_card(pkg.contents[CARD], directory / CARD)
    op.write_file(directory / SIGNATURE, sign_digests(name or directory.name, pkg.digests, key))
    return pkg


def sign_package(model_dir: str | os.PathLike, key: SigningKey | str | os.PathLike) -> Path:
    """Check the package, then write (or replace) ``model.sig``; returns its path.

    Interrupted or failed, it leaves the previous ``model.sig`` (or none) and no temporary file.
    """
    d = Path(model_dir)
    with Staged("sign", d) as op:
        signing_key = _key(key)
        assert signing_key is not None
        pkg = _write_signature(op, d, signing_key)
        op.record("sign", {"path": os.path.abspath(d), "key_id": signing_key.key_id, "key_name": signing_key.name,
                           "manifest_sha256": pkg.manifest_sha256})
    return d / SIGNATURE


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write(op: Staged, path: Path, config: dict[str, Any], weights: dict[str, Tensor], card: str,
           provenance: dict[str, Any] | None, *, key: SigningKey | None, key_paths: list[Any],
           metadata: dict[str, str] | None, lineage: list[dict[str, Any]] | None,
           extra_files: dict[str, bytes] | None, unsigned_because: str | None = None) -> None:
    """The body of :func:`write_package` inside its :class:`Staged` operation."""
    from safetensors.torch import save_file

    redactor = Redactor([*key_paths, *([key] if key is not None else [])])
    config = redactor(config)
    provenance = redactor(provenance) if provenance is not None else None
    metadata = redactor(metadata) if metadata is not None else None
    card = redactor.text(card)
    parse_card(card, path / CARD)  # a card without front matter fails before anything is written
    for name in extra_files or {}:
        if name in (MANIFEST, SIGNATURE, *REQUIRED) or "/" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is not allowed")
    try:
        config_text = json.dumps(config, indent=1, default=str, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"config.json for {path}: not strict JSON ({e}); NaN and infinities are refused") from None
    try:
        tmp = op.temp_dir()
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / CONFIG).write_text(config_text + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        validate_file(tmp / WEIGHTS)
        manifest = build_manifest(tmp, provenance, lineage or [])
        op.write_file(tmp / MANIFEST, manifest.to_json())
        if key is not None:
            _write_signature(op, tmp, key, path.name)
        for name in list_files(tmp):
            os.chmod(tmp / name, 0o644)
            _fsync_file(tmp / name)
        os.chmod(tmp, 0o755)
        op.publish_dir(tmp, replace=True)
    except OSError as e:
        raise OSError(e.errno, f"could not write the model package to {path} ({e.strerror or e})") from None
    entry = {"path": os.path.abspath(path), "manifest_sha256": sha256_bytes(manifest.to_json()),
             "signed_by": key.key_id if key else None, "created_by": manifest.provenance.get("created_by")}
    if unsigned_because:
        entry["unsigned_because"] = unsigned_because
    op.record("package", entry)


def write_package(path: str | os.PathLike, config: dict[str, Any], weights: dict[str, Tensor], card: str,
                  provenance: dict[str, Any] | None = None, *, sign_key: SigningKey | str | os.PathLike | None = None,
                  metadata: dict[str, str] | None = None, lineage: list[dict[str, Any]] | None = None,
                  extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a complete model package at ``path`` atomically (replacing one that is there); returns ``path``.

    ``config``: JSON-serialisable dict (``config.json``). ``weights``: name -> tensor
    (``model.safetensors``; made contiguous and moved to the CPU). ``card``: the ``MODEL_CARD.md``
    text, which must start with YAML front matter holding at least ``license``. ``provenance``:
    dataset, dataset_hash, config, code_revision, final_metrics, ... (recorded in the manifest,
    so signed). ``sign_key``: a private key (path or :class:`SigningKey`) to sign with.
    ``lineage``: the base package's :meth:`LoadedModel.lineage_entry` for a fine-tune.
    ``extra_files``: more files (e.g. ``LICENSE``), listed in the manifest like the rest.

    Key paths (``sign_key`` fields anywhere in ``config``/``provenance``, and ``sign_key`` itself)
    are written as ``"key-id:<hex>"``. On any error or interruption nothing is left but the
    previous package (if any), and the audit log records the abandoned write.
    """
    path = Path(path)
    with Staged("package", path) as op:
        key = _key(sign_key)  # a bad key fails here, before anything is written
        _write(op, path, config, weights, card, provenance, key=key, key_paths=[sign_key] if sign_key else [],
               metadata=metadata, lineage=lineage, extra_files=extra_files)
    return path


def write_trained_package(path: str | os.PathLike, config: dict[str, Any], weights: dict[str, Tensor], card: str,
                          provenance: dict[str, Any] | None = None, *,
                          sign_key: SigningKey | str | os.PathLike | None = None,
                          metadata: dict[str, str] | None = None,
                          extra_files: dict[str, bytes] | None = None,
                          lineage: list[dict[str, Any]] | None = None) -> Path:
    """:func:`write_package` for the end of a training run: the trained weights are never lost to a key problem.

    A ``sign_key`` that cannot be used (missing, not a private key, wrong passphrase, expired)
    still writes the package, unsigned, then raises a one-line ``ValueError`` that names the key
    problem and says how to sign the package afterwards. Everything else is as :func:`write_package`;
    in particular the training config's ``sign_key`` is recorded as the key's ID, never its path, and
    ``lineage`` is the base package's for a run that starts from one (a distilled student).
    """
    path = Path(path)
    key_error: TrustError | None = None
    with Staged("package", path) as op:
        key = None
        if sign_key:
            try:
                key = _key(sign_key)
            except TrustError as e:
                key_error = e
        _write(op, path, config, weights, card, provenance, key=key, key_paths=[sign_key] if sign_key else [],
               metadata=metadata, lineage=lineage, extra_files=extra_files,
               unsigned_because=key_error.reason if key_error else None)
    if key_error is not None:
        raise ValueError(f"the model was written to {path} but not signed ({key_error}); sign it with "
                         f"'ebru sign {path} --key KEY'")
    return path


@contextmanager
def _open_hashed(path: Path, stamp: Stamp) -> Iterator[IO[bytes]]:
    """Open ``path`` (no links) only if it is still the file, unchanged, that was hashed into the manifest."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        check_stamp(path, fd, stamp)
        yield f
        check_stamp(path, fd, stamp)


def _read_hashed(path: Path, entry_sha256: str) -> bytes:
    data = read_file(path, limit=MAX_TEXT_FILE_BYTES)
    if sha256_bytes(data) != entry_sha256:
        raise IntegrityError(path, "changed while the package was being made; run 'ebru package' again")
    return data


def package_dir(model_dir: str | os.PathLike, provenance: dict[str, Any] | None = None, *,
                lineage: list[dict[str, Any]] | None = None) -> Manifest:
    """Write or refresh ``manifest.json`` for a directory holding a config, weights and card.

    For weights brought in from elsewhere: every file is checked (no links or subdirectories;
    nothing that sniffs as pickle, ZIP or TorchScript; strictly valid ``model.safetensors``; a
    JSON-object config; a card with front matter), and the checks read the very files that were
    hashed into the manifest (a file changed meanwhile is refused). Provenance and lineage of an
    existing manifest are kept unless new ones are given. A stale ``model.sig`` is removed (it no
    longer matches) with a warning: sign again with ``ebru sign``. Interrupted or failed, the
    previous manifest stays and no temporary file is left.
    """
    d = Path(model_dir)
    with Staged("package", d) as op:
        names = list_files(d)
        for req in REQUIRED:
            if req not in names:
                raise IntegrityError(d / req, "missing: a package needs config.json, model.safetensors and "
                                              "MODEL_CARD.md")
        for name in names:
            if (name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"))
                    and name not in (WEIGHTS, AUTOENCODER_WEIGHTS)):
                with open(d / name, "rb", opener=lambda p, fl: os.open(p, fl | getattr(os, "O_NOFOLLOW", 0))) as f:
                    refuse_unsafe_content(f, d / name)  # name a pickle as a pickle first
                raise UnsafeFileError(d / name, "weights belong in model.safetensors only; remove this file")
        old = None
        if MANIFEST in names:
            try:
                old = Manifest.parse(read_file(d / MANIFEST, limit=MAX_MANIFEST_BYTES), d / MANIFEST)
            except TrustError:
                old = None  # a damaged manifest is what refreshing replaces
        if provenance is None:
            provenance = dict(old.provenance) if old else {"created_by": "ebru package"}
        if lineage is None:
            lineage = list(old.lineage) if old else []
        stamps: dict[str, Stamp] = {}
        manifest = build_manifest(d, provenance, lineage, stamps)
        for name in sorted(manifest.files):
            with _open_hashed(d / name, stamps[name]) as f:
                refuse_unsafe_content(f, d / name)
        validate_file(d / WEIGHTS, stamp=stamps[WEIGHTS])
        if AUTOENCODER_WEIGHTS in stamps:
            validate_file(d / AUTOENCODER_WEIGHTS, stamp=stamps[AUTOENCODER_WEIGHTS])
        config = loads(_read_hashed(d / CONFIG, manifest.files[CONFIG].sha256), d / CONFIG, "config")
        if not isinstance(config, dict):
            raise TrustError(d / CONFIG, "is not a JSON object")
        parse_card(_read_hashed(d / CARD, manifest.files[CARD].sha256), d / CARD)
        staged = op.stage_file(d / MANIFEST, manifest.to_json())
        if SIGNATURE in names:
            os.unlink(d / SIGNATURE)
            print(f"ebru: warning: removed {d / SIGNATURE}, which no longer matches; sign again with 'ebru sign'",
                  file=sys.stderr)
        op.publish_file(staged, d / MANIFEST)
        op.record("package", {"path": os.path.abspath(d), "manifest_sha256": sha256_bytes(manifest.to_json()),
                              "created_by": manifest.provenance.get("created_by")})
    return manifest
