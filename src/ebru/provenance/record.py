"""The generation record: every image ebru writes, in the audit log and in a local store keyed by watermark id.

For each output, :func:`record_generation`

1. builds the record (flat JSON): ``path`` (absolute), ``sha256`` of the file as written, ``watermark_id``,
   ``watermark_key_id``, ``watermark_alg``, ``model_digest`` (the model package's manifest SHA-256),
   ``license``, the generation ``parameters`` (sampler, steps, guidance, seed, the prompt's SHA-256 or
   the prompt, by policy), the C2PA ``manifest_label``, the ``tool`` and the ``time``;
2. signs it as an in-toto Statement v1 (subject = the file's SHA-256, predicate = the record) in a
   DSSE envelope, with the C2PA signer's key (ECDSA P-256), so the record proves its origin on its own
   when the C2PA manifest is stripped or the format carries none (trust.md section 4: "your own signed
   provenance record"; DSSE: github.com/secure-systems-lab/dsse, protocol.md);
3. appends a ``generation`` entry to the hash-chained audit log (:func:`ebru.trust.audit.record`);
4. adds ``{record, manifest, envelope, signer_chain, audit}`` to the store file of its watermark id,
   ``<store>/<watermark_id>.json`` (one file per id, holding a list: ids are random, and two outputs
   may share one), or ``<store>/sha256-<sha256>.json`` for an output written without a watermark.

The store is ``$EBRU_PROVENANCE_STORE``, else ``$XDG_DATA_HOME/ebru/provenance``
(``~/.local/share/ebru/provenance``). Writes take an exclusive ``flock`` on ``<store>/.lock`` and
replace a store file atomically, so concurrent writers (DDP ranks, a server) lose nothing.
From an image stripped of its metadata, the id its watermark decodes to finds the original record and
manifest: :func:`find_by_id`.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ebru import __version__
from ebru.checks import positive_int
from ebru.trust import audit, settings
from ebru.trust.files import fsync_dir
from ebru.trust.strict_json import dumps_canonical, loads

from .ca import SigningIdentity, parse_chain
from .errors import ProvenanceError

ENV_STORE = "EBRU_PROVENANCE_STORE"
STORE_FORMAT = "ebru-provenance-store/1"
RECORD_FORMAT = "ebru-generation/1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:ebru:predicate:generation:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
_ID_FILE = re.compile(r"^(\d{1,40})\.json$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def store_dir(store: str | os.PathLike | None = None) -> Path:
    """The store in force: the argument, else ``$EBRU_PROVENANCE_STORE``, else ``$XDG_DATA_HOME/ebru/provenance``."""
    if store is not None:
        return Path(store)
    env = settings.env_path(ENV_STORE)
    if env is not None:
        return env
    data_home = os.environ.get("XDG_DATA_HOME")
    return (Path(data_home) if data_home else Path.home() / ".local" / "share") / "ebru" / "provenance"


def check_sha256(value: Any, what: str = "image_sha256") -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits (a SHA-256), got {value!r}")
    return value


def json_clean(value: Any, what: str) -> Any:
    """``value`` as plain JSON (a deep copy); ``ValueError`` naming ``what`` for NaN, infinities or non-JSON types."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be plain JSON (str, int, finite float, bool, None, lists, dicts): {e}") from None


# --------------------------------------------------------------------------- DSSE / in-toto


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``"DSSEv1" SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_statement(record: Mapping[str, Any], identity: SigningIdentity) -> dict[str, Any]:
    """The record as an in-toto Statement v1 in a DSSE envelope signed by ``identity`` (ECDSA P-256 / SHA-256)."""
    statement = {"_type": STATEMENT_TYPE,
                 "subject": [{"name": Path(record["path"]).name, "digest": {"sha256": record["sha256"]}}],
                 "predicateType": PREDICATE_TYPE, "predicate": dict(record)}
    body = dumps_canonical(statement).encode()
    return {"payloadType": PAYLOAD_TYPE, "payload": _b64(body),
            "signatures": [{"keyid": identity.key_id, "sig": _b64(identity.sign(pae(PAYLOAD_TYPE, body)))}]}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class GenerationRecord:
    """One store entry: the ``record`` (see the module docstring), the C2PA ``manifest`` (the active manifest's
    JSON, or None), the DSSE ``envelope`` and the ``signer_chain`` (PEM) that signed it, and the ``audit``
    entry's ``seq`` and ``hash`` (None when the audit log is off)."""

    record: dict[str, Any]
    manifest: dict[str, Any] | None = None
    envelope: dict[str, Any] | None = None
    signer_chain: str | None = None
    audit: dict[str, Any] | None = None

    @property
    def watermark_id(self) -> int | None:
        return self.record.get("watermark_id")

    @property
    def sha256(self) -> str:
        return self.record["sha256"]

    @property
    def path(self) -> str:
        return self.record["path"]

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "manifest": self.manifest, "envelope": self.envelope,
                "signer_chain": self.signer_chain, "audit": self.audit}

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike) -> GenerationRecord:
        if not isinstance(d, dict) or not isinstance(d.get("record"), dict) or "sha256" not in d["record"] \
                or "path" not in d["record"]:
            raise ProvenanceError(where, "a store entry is not a generation record (damaged store file)")
        return cls(d["record"], d.get("manifest"), d.get("envelope"), d.get("signer_chain"), d.get("audit"))

    def verify_signature(self, anchors_pem: bytes | None = None) -> str:
        """Check the DSSE envelope; returns the signer's subject. ``anchors_pem``: roots the chain must end in.

        Checks: the envelope's signature over PAE(payload) by the chain's leaf; the statement's subject
        and predicate equal this record; each certificate issued by the next; with ``anchors_pem``, the
        last one issued by (or equal to) one of those roots. Raises :class:`ProvenanceError` otherwise.
        """
        where = f"record of {self.path}"
        if not self.envelope or not self.signer_chain:
            raise ProvenanceError(where, "the record is not signed")
        try:
            body = base64.b64decode(self.envelope["payload"], validate=True)
            sig = base64.b64decode(self.envelope["signatures"][0]["sig"], validate=True)
            ptype = self.envelope["payloadType"]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ProvenanceError(where, "the record's DSSE envelope is malformed") from None
        chain = parse_chain(self.signer_chain.encode(), where)
        try:
            chain[0].public_key().verify(sig, pae(ptype, body), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, TypeError, ValueError):
            raise ProvenanceError(where, "the record's signature does not verify (the record was altered)") from None
        statement = loads(body, where, "the signed statement", ProvenanceError)
        if not isinstance(statement, dict) or statement.get("predicate") != self.record or \
                statement.get("subject") != [{"name": Path(self.path).name, "digest": {"sha256": self.sha256}}]:
            raise ProvenanceError(where, "the signed statement does not match the record (the record was altered)")
        for child, parent in itertools.pairwise(chain):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise ProvenanceError(where, "the record's certificate chain is broken") from None
        if anchors_pem is not None:
            roots = x509.load_pem_x509_certificates(anchors_pem)
            top = chain[-1]
            if not any(top == r or _issued_by(top, r) for r in roots):
                raise ProvenanceError(where, f"the record was signed by {chain[0].subject.rfc4514_string()}, which is "
                                             "not under the local root")
        return chain[0].subject.rfc4514_string()


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def build_record(path: str | os.PathLike, image_sha256: str, watermark_id: int | None, key_id: str | None,
                 model_digest: str, license: Any, parameters: Mapping[str, Any], manifest_label: str | None, *,
                 watermark_alg: str | None = None) -> dict[str, Any]:
    """The record's fields (see the module docstring), checked: ``ValueError`` names the first bad argument."""
    if watermark_id is not None:
        positive_int("watermark_id", watermark_id, minimum=0)
    if not isinstance(model_digest, str) or not model_digest.strip():
        raise ValueError(f"model_digest must be the model package's manifest digest (a string), got {model_digest!r}")
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be a mapping (sampler, steps, guidance, seed, ...), got "
                         f"{type(parameters).__name__}")
    return {
        "format": RECORD_FORMAT,
        "path": str(Path(path).absolute()),
        "sha256": check_sha256(image_sha256),
        "watermark_id": watermark_id,
        "watermark_key_id": None if watermark_id is None else key_id,
        "watermark_alg": None if watermark_id is None else watermark_alg,
        "model_digest": model_digest,
        "license": json_clean(license, "license"),
        "parameters": json_clean(dict(parameters), "parameters"),
        "manifest_label": manifest_label,
        "tool": f"ebru {__version__}",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }


def record_generation(path: str | os.PathLike, image_sha256: str, watermark_id: int | None, key_id: str | None,
                      model_digest: str, license: Any, parameters: Mapping[str, Any], manifest_label: str | None,
                      *, manifest: Mapping[str, Any] | None = None, watermark_alg: str | None = None,
                      identity: SigningIdentity | None = None, store: str | os.PathLike | None = None,
                      audit_log: str | os.PathLike | None = None) -> GenerationRecord:
    """Record one generation: sign it, append it to the audit log, add it to the store (module docstring).

    ``identity``: the signer of the DSSE envelope (default: none, the record is unsigned).
    ``audit_log``/``store``: override the defaults (``$EBRU_AUDIT_LOG``, ``$EBRU_PROVENANCE_STORE``).
    Raises ``ValueError`` for a bad argument, :class:`~ebru.trust.errors.AuditError` when the audit log
    cannot be written (nothing is stored then), :class:`ProvenanceError` for a damaged store file.
    """
    record = build_record(path, image_sha256, watermark_id, key_id, model_digest, license, parameters,
                          manifest_label, watermark_alg=watermark_alg)
    envelope = sign_statement(record, identity) if identity is not None else None
    chain = identity.chain_pem.decode("ascii") if identity is not None else None
    entry = audit.record("generation", record, path=audit_log)
    link = None if entry is None else {"seq": entry["seq"], "hash": entry["hash"],
                                       "log": str(audit.log_path(audit_log))}
    rec = GenerationRecord(record, json_clean(dict(manifest), "manifest") if manifest is not None else None,
                           envelope, chain, link)
    _add_to_store(rec, store_dir(store))
    return rec


# --------------------------------------------------------------------------- the store


def _entry_file(store: Path, watermark_id: int | None, sha256: str) -> Path:
    return store / (f"{watermark_id}.json" if watermark_id is not None else f"sha256-{sha256}.json")


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    import fcntl

    try:
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(store / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as e:
        raise ProvenanceError(store, f"cannot open the provenance store ({e.strerror}); set {ENV_STORE} to a "
                                     "writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_store_file(p: Path) -> dict[str, Any] | None:
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ProvenanceError(p, f"cannot read the store file ({e.strerror})") from None
    doc = loads(raw, p, "the store file", ProvenanceError)
    if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT or not isinstance(doc.get("entries"), list):
        raise ProvenanceError(p, f"not an ebru provenance store file (format {STORE_FORMAT!r})")
    return doc


def _add_to_store(rec: GenerationRecord, store: Path) -> Path:
    p = _entry_file(store, rec.watermark_id, rec.sha256)
    with _locked(store):
        doc = _read_store_file(p) or {"format": STORE_FORMAT, "watermark_id": rec.watermark_id, "entries": []}
        doc["entries"].append(rec.to_dict())
        fd, tmp = tempfile.mkstemp(dir=store, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, ensure_ascii=False, indent=1, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(store)
    return p


def _entries(p: Path) -> list[GenerationRecord]:
    doc = _read_store_file(p)
    return [] if doc is None else [GenerationRecord.from_dict(e, p) for e in doc["entries"]]


def find_by_id(watermark_id: int, *, store: str | os.PathLike | None = None) -> list[GenerationRecord]:
    """Every record stored under ``watermark_id`` (oldest first; empty when none). ``ValueError`` for a bad id."""
    watermark_id = positive_int("watermark_id", watermark_id, minimum=0)
    return _entries(store_dir(store) / f"{watermark_id}.json")


def known_ids(*, store: str | os.PathLike | None = None) -> list[int]:
    """The watermark ids the store holds records for, ascending (the candidates for a watermark decoder)."""
    d = store_dir(store)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _ID_FILE.match(p.name)))


def find_by_sha256(sha256: str, *, store: str | os.PathLike | None = None) -> list[GenerationRecord]:
    """Every record whose output had this exact SHA-256 (a file as ebru wrote it); scans the whole store."""
    sha256 = check_sha256(sha256, "sha256")
    d = store_dir(store)
    if not d.is_dir():
        return []
    direct = _entries(d / f"sha256-{sha256}.json")
    found = [r for p in sorted(d.iterdir()) if _ID_FILE.match(p.name) for r in _entries(p) if r.sha256 == sha256]
    return found + direct
