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
into place, so a crash, a full disk or a bad key never leaves a half-written package.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import audit
from .card import parse_card
from .errors import IntegrityError, TrustError, UnsafeFileError
from .files import atomic_write, fsync_dir, list_files, read_file, sha256_bytes
from .keys import SigningKey, load_signing_key
from .manifest import (
    CARD,
    CONFIG,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    REQUIRED,
    SIGNATURE,
    WEIGHTS,
    CheckedPackage,
    Manifest,
    build_manifest,
    check_package,
)
from .safetensors_strict import refuse_unsafe_content, validate_file
from .signature import sign_digests
from .strict_json import loads

if TYPE_CHECKING:
    from torch import Tensor


def _key(sign_key: SigningKey | str | os.PathLike | None) -> SigningKey | None:
    if sign_key is None or isinstance(sign_key, SigningKey):
        return sign_key
    return load_signing_key(sign_key)


def _write_signature(directory: Path, key: SigningKey, name: str | None = None) -> CheckedPackage:
    """Sign only what verifies: the manifest matches, the weights pass the strict reader, the card parses."""
    pkg = check_package(directory, keep={CARD})
    validate_file(directory / WEIGHTS)
    parse_card(pkg.contents[CARD], directory / CARD)
    atomic_write(directory / SIGNATURE, sign_digests(name or directory.name, pkg.digests, key))
    return pkg


def sign_package(model_dir: str | os.PathLike, key: SigningKey | str | os.PathLike) -> Path:
    """Check the package, then write (or replace) ``model.sig``; returns its path."""
    d = Path(model_dir)
    try:
        signing_key = _key(key)
        assert signing_key is not None
        pkg = _write_signature(d, signing_key)
    except (TrustError, OSError) as e:
        audit.record("refuse", {"action": "sign", "path": os.path.abspath(d), "error": str(e)})
        raise
    audit.record("sign", {"path": os.path.abspath(d), "key_id": signing_key.key_id, "key_name": signing_key.name,
                          "manifest_sha256": pkg.manifest_sha256})
    return d / SIGNATURE


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``, replacing an existing directory there."""
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


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
    """
    from safetensors.torch import save_file

    path = Path(path)
    key = _key(sign_key)  # a bad key fails here, before anything is written
    parse_card(card, path / CARD)  # so does a card without front matter
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
        try:
            config_text = json.dumps(config, indent=1, default=str, allow_nan=False)
        except ValueError as e:
            raise ValueError(f"config.json for {path}: not strict JSON ({e}); NaN and infinities are refused") from None
        (tmp / CONFIG).write_text(config_text + "\n")
        (tmp / CARD).write_text(card)
        for name, data in (extra_files or {}).items():
            if name in (MANIFEST, SIGNATURE, *REQUIRED) or "/" in name or name.startswith("."):
                raise ValueError(f"extra file name {name!r} is not allowed")
            (tmp / name).write_bytes(data)
        validate_file(tmp / WEIGHTS)
        manifest = build_manifest(tmp, provenance, lineage or [])
        atomic_write(tmp / MANIFEST, manifest.to_json())
        if key is not None:
            _write_signature(tmp, key, path.name)
        for name in list_files(tmp):
            os.chmod(tmp / name, 0o644)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"could not write the model package to {path} ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    audit.record("package", {"path": os.path.abspath(path), "manifest_sha256": sha256_bytes(manifest.to_json()),
                             "signed_by": key.key_id if key else None,
                             "created_by": manifest.provenance.get("created_by")})
    return path


def write_trained_package(path: str | os.PathLike, config: dict[str, Any], weights: dict[str, Tensor], card: str,
                          provenance: dict[str, Any] | None = None, *,
                          sign_key: SigningKey | str | os.PathLike | None = None,
                          metadata: dict[str, str] | None = None,
                          extra_files: dict[str, bytes] | None = None) -> Path:
    """:func:`write_package` for the end of a training run: the trained weights are never lost to a key problem.

    A ``sign_key`` that cannot be used (missing, not a private key, wrong passphrase, expired)
    still writes the package, unsigned, then raises a one-line ``ValueError`` that names the key
    problem and says how to sign the package afterwards. Everything else is as :func:`write_package`.
    """
    path = Path(path)
    key, key_error = None, None
    if sign_key:
        try:
            key = _key(sign_key)
        except TrustError as e:
            key_error = e
    out = write_package(path, config, weights, card, provenance, sign_key=key, metadata=metadata,
                        extra_files=extra_files)
    if key_error is not None:
        raise ValueError(f"the model was written to {path} but not signed ({key_error}); sign it with "
                         f"'ebru sign {path} --key KEY'")
    return out


def package_dir(model_dir: str | os.PathLike, provenance: dict[str, Any] | None = None, *,
                lineage: list[dict[str, Any]] | None = None) -> Manifest:
    """Write or refresh ``manifest.json`` for a directory holding a config, weights and card.

    For weights brought in from elsewhere: every file is checked first (no links or
    subdirectories; nothing that sniffs as pickle, ZIP or TorchScript; strictly valid
    ``model.safetensors``; a JSON-object config; a card with front matter). Provenance and
    lineage of an existing manifest are kept unless new ones are given. A stale ``model.sig`` is
    removed (it no longer matches) with a warning: sign again with ``ebru sign``.
    """
    d = Path(model_dir)
    try:
        names = list_files(d)
        for req in REQUIRED:
            if req not in names:
                raise IntegrityError(d / req, "missing: a package needs config.json, model.safetensors and "
                                              "MODEL_CARD.md")
        for name in names:
            if name in (MANIFEST, SIGNATURE):
                continue
            with open(d / name, "rb") as f:
                refuse_unsafe_content(f, d / name)
            if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")) and name != WEIGHTS:
                raise UnsafeFileError(d / name, "weights belong in model.safetensors only; remove this file")
        validate_file(d / WEIGHTS)
        config = loads(read_file(d / CONFIG, limit=16 * 2**20), d / CONFIG, "config")
        if not isinstance(config, dict):
            raise TrustError(d / CONFIG, "is not a JSON object")
        parse_card(read_file(d / CARD, limit=16 * 2**20), d / CARD)
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
        manifest = build_manifest(d, provenance, lineage)
        if SIGNATURE in names:
            os.unlink(d / SIGNATURE)
            print(f"ebru: warning: removed {d / SIGNATURE}, which no longer matches; sign again with 'ebru sign'",
                  file=sys.stderr)
        atomic_write(d / MANIFEST, manifest.to_json())
    except (TrustError, OSError) as e:
        audit.record("refuse", {"action": "package", "path": os.path.abspath(d), "error": str(e)})
        raise
    audit.record("package", {"path": os.path.abspath(d), "manifest_sha256": sha256_bytes(manifest.to_json()),
                             "created_by": manifest.provenance.get("created_by")})
    return manifest
