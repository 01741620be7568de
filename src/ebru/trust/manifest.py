"""The package manifest (``manifest.json``) and the check of a package directory against it.

A model package is one flat directory::

    config.json         the model's configuration (JSON object)
    model.safetensors   the weights
    MODEL_CARD.md       the card; YAML front matter with license, base_model, datasets, intended_use
    manifest.json       SHA-256 and size of every other file, ebru version, provenance, lineage
    model.sig           (optional) the signature: DSSE envelope over an in-toto statement
    ...                 other regular files (LICENSE, README.md) if the manifest lists them

``manifest.json``::

    {
      "format": "ebru-model-package/1",
      "ebru_version": "0.1.0",
      "created": "2026-05-01T12:00:00Z",
      "files": {"MODEL_CARD.md": {"sha256": "…", "size": 812}, "config.json": {…}, "model.safetensors": {…}},
      "provenance": {"created_by": "ebru train", "dataset": "…", "dataset_hash": "…", "config": {…},
                     "code_revision": "…", "final_metrics": {"final_loss": 0.031, …}},
      "lineage": [{"name": "org/base-model", "license": "creativeml-openrail-m", "base_model": [], …}]
    }

Every file in the directory except ``manifest.json`` and ``model.sig`` must be listed, and
every listed file must be present with the listed size and digest. Links, subdirectories and
unlisted files are refused. The signature covers ``manifest.json`` too, so provenance and
lineage are signed along with the weights.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .files import Stamp, hash_file_stamped, list_files, read_file, sha256_bytes, valid_name
from .strict_json import loads

FORMAT = "ebru-model-package/1"
MANIFEST = "manifest.json"
SIGNATURE = "model.sig"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# the one other weights file a package may hold: a latent diffusion model's bundled autoencoder (ebru.tasks.latent),
# hashed and signed like the rest and read only through the strict safetensors reader
AUTOENCODER_WEIGHTS = "autoencoder.safetensors"
CARD = "MODEL_CARD.md"
REQUIRED = (CONFIG, WEIGHTS, CARD)

MAX_MANIFEST_BYTES = 16 * 2**20
MAX_SIGNATURE_BYTES = 2**20
MAX_TEXT_FILE_BYTES = 16 * 2**20  # config.json and MODEL_CARD.md, which are read into memory

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LINEAGE_FIELDS = {"name", "license", "license_name", "license_link", "base_model", "manifest_sha256"}
_PROVENANCE_KEYS = ("created_by", "source", "dataset", "dataset_hash", "config", "code_revision", "final_metrics")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    files: dict[str, FileEntry]
    provenance: dict[str, Any]
    lineage: tuple[dict[str, Any], ...] = ()
    ebru_version: str = ""
    created: str = ""

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "ebru_version": self.ebru_version,
            "created": self.created,
            "files": {n: {"sha256": e.sha256, "size": e.size} for n, e in sorted(self.files.items())},
            "provenance": self.provenance,
            "lineage": list(self.lineage),
        }
        return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, path: str | os.PathLike) -> Manifest:
        doc = loads(data, path, "manifest", IntegrityError)

        def refuse(reason: str) -> IntegrityError:
            return IntegrityError(path, reason)

        if not isinstance(doc, dict):
            raise refuse("manifest is not a JSON object")
        if doc.get("format") != FORMAT:
            raise refuse(f"unsupported manifest format {doc.get('format')!r} (expected {FORMAT!r})")
        allowed = {"format", "ebru_version", "created", "files", "provenance", "lineage"}
        unknown = sorted(doc.keys() - allowed)
        if unknown:
            raise refuse(f"unknown manifest field {unknown[0]!r}")
        for key in ("ebru_version", "files", "provenance"):
            if key not in doc:
                raise refuse(f"manifest has no {key!r}")
        if not isinstance(doc["ebru_version"], str) or not isinstance(doc.get("created", ""), str):
            raise refuse("ebru_version and created must be strings")
        files = doc["files"]
        if not isinstance(files, dict) or not files:
            raise refuse("'files' must be a non-empty JSON object")
        entries = {}
        for name, e in files.items():
            if not valid_name(name) or name in (MANIFEST, SIGNATURE):
                raise refuse(f"file name {name!r} is not allowed in a manifest")
            if (not isinstance(e, dict) or set(e) != {"sha256", "size"} or not isinstance(e["sha256"], str)
                    or not _HEX64.fullmatch(e["sha256"]) or type(e["size"]) is not int or e["size"] < 0):
                raise refuse(f"entry for {name!r} must be {{\"sha256\": 64 lowercase hex, \"size\": bytes}}")
            entries[name] = FileEntry(e["sha256"], e["size"])
        if not isinstance(doc["provenance"], dict):
            raise refuse("'provenance' must be a JSON object")
        lineage = doc.get("lineage", [])
        if not isinstance(lineage, list):
            raise refuse("'lineage' must be a list")
        for item in lineage:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item.keys() - _LINEAGE_FIELDS:
                raise refuse(f"lineage entries need a 'name' and only the fields {sorted(_LINEAGE_FIELDS)}")
            bases = item.get("base_model") or []
            if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
                raise refuse(f"lineage entry {item['name']!r}: base_model must be a list of names")
            for key in ("license", "license_name", "license_link", "manifest_sha256"):
                if not isinstance(item.get(key), str | None):
                    raise refuse(f"lineage entry {item['name']!r}: {key} must be a string")
        return cls(entries, doc["provenance"], tuple(lineage), doc["ebru_version"], doc.get("created", ""))


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalise_provenance(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The provenance record with every standard key present (None where unknown), JSON-clean."""
    p = {k: None for k in _PROVENANCE_KEYS}
    p.update(provenance or {})
    try:
        return json.loads(json.dumps(p, default=str, allow_nan=False))
    except ValueError as e:
        raise ValueError(f"provenance is not strict JSON ({e}); NaN and infinities are refused") from None


def build_manifest(directory: str | os.PathLike, provenance: dict[str, Any] | None,
                   lineage: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
                   stamps: dict[str, Stamp] | None = None) -> Manifest:
    """Hash every file of ``directory`` (except manifest and signature) into a new manifest.

    ``stamps``, if given, receives each hashed file's :data:`~ebru.trust.files.Stamp`, so later
    checks of those files can insist on the bytes that were hashed.
    """
    import ebru

    d = Path(directory)
    names = [n for n in list_files(d) if n not in (MANIFEST, SIGNATURE)]
    for req in REQUIRED:
        if req not in names:
            raise IntegrityError(d / req, "missing: a package needs config.json, model.safetensors and MODEL_CARD.md")
    files = {}
    for name in names:
        digest, size, stamp = hash_file_stamped(d / name)
        files[name] = FileEntry(digest, size)
        if stamps is not None:
            stamps[name] = stamp
    return Manifest(files, normalise_provenance(provenance), tuple(lineage), ebru.__version__, now_utc())


@dataclass
class CheckedPackage:
    """A package directory checked against its manifest.

    ``digests`` maps every signed file (all listed files plus ``manifest.json``) to its SHA-256;
    ``contents`` holds the bytes of the files asked for (and of ``manifest.json``), exactly the
    bytes that were hashed; ``stamps`` the :data:`~ebru.trust.files.Stamp` of each file that was
    hashed without being kept, for checks that must read it again.
    """

    path: Path
    manifest: Manifest
    digests: dict[str, str]
    contents: dict[str, bytes] = field(default_factory=dict)
    signature: bytes | None = None
    stamps: dict[str, Stamp] = field(default_factory=dict)

    @property
    def manifest_sha256(self) -> str:
        return self.digests[MANIFEST]


def check_package(directory: str | os.PathLike, keep: frozenset[str] | set[str] = frozenset(), *,
                  keep_all: bool = False) -> CheckedPackage:
    """Check a package against its manifest; keep the bytes of the files named in ``keep`` (all with ``keep_all``).

    Refuses (naming the file): a link, subdirectory or odd name; a missing or malformed
    manifest; a file not in the manifest; a listed file that is missing, or whose size or
    SHA-256 differs; a package without config, weights or card.
    """
    d = Path(directory)
    names = list_files(d)
    if MANIFEST not in names:
        raise IntegrityError(d / MANIFEST, "missing: this directory is not a verified model package "
                                           "(write a manifest with 'ebru package DIR')")
    manifest_bytes = read_file(d / MANIFEST, limit=MAX_MANIFEST_BYTES)
    manifest = Manifest.parse(manifest_bytes, d / MANIFEST)
    present = set(names) - {MANIFEST, SIGNATURE}
    extra = sorted(present - manifest.files.keys())
    if extra:
        raise IntegrityError(d / extra[0], "is not in the manifest; files a package does not list are refused")
    missing = sorted(manifest.files.keys() - present)
    if missing:
        raise IntegrityError(d / missing[0], "is listed in the manifest but missing")
    for req in REQUIRED:
        if req not in manifest.files:
            raise IntegrityError(d / req, "missing: a package needs config.json, model.safetensors and MODEL_CARD.md")

    digests: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    stamps: dict[str, Stamp] = {}
    for name, entry in sorted(manifest.files.items()):
        p = d / name
        if keep_all or name in keep:
            limit = MAX_TEXT_FILE_BYTES if name in (CONFIG, CARD) else None
            contents[name] = read_file(p, expected_size=entry.size, limit=limit)
            digest = sha256_bytes(contents[name])
        else:
            digest, _, stamps[name] = hash_file_stamped(p, expected_size=entry.size)
        if digest != entry.sha256:
            raise IntegrityError(p, f"SHA-256 {digest[:16]}… does not match the manifest's {entry.sha256[:16]}…: "
                                    "the file was changed")
        digests[name] = digest
    digests[MANIFEST] = sha256_bytes(manifest_bytes)
    contents[MANIFEST] = manifest_bytes
    signature = read_file(d / SIGNATURE, limit=MAX_SIGNATURE_BYTES) if SIGNATURE in names else None
    return CheckedPackage(d, manifest, digests, contents, signature, stamps)
