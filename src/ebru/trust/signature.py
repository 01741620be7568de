"""Detached package signatures: a DSSE envelope over an in-toto statement, in the OpenSSF
model-signing (OMS) bundle format, so ``model_signing verify key`` can check ebru's
signatures and ebru can check OMS key-signed models.

``model.sig`` is a Sigstore bundle (JSON, media type v0.3) without transparency-log entries::

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": "<key ID>"}, "tlogEntries": []},
     "dsseEnvelope": {"payload": "<base64 statement>", "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": "<base64 signature>", "keyid": ""}]}}

The signature is over DSSE's pre-authentication encoding,
``PAE = "DSSEv1" SP len(type) SP type SP len(payload) SP payload``; ECDSA P-256 signatures are
DER over SHA-256, Ed25519 signatures are raw. The statement (in-toto Statement v1) is::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<directory name>", "digest": {"sha256": "<root digest>"}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                                     "ignore_paths": ["model.sig"]},
                   "resources": [{"name": "MODEL_CARD.md", "algorithm": "sha256", "digest": "…"}, …]}}

``resources`` lists every file of the package except ``model.sig`` (``manifest.json``
included), sorted by name; the root digest is SHA-256 over the concatenated raw digests in
that order. The key ID in ``hint`` is SHA-256 of the signer's PEM public key.

Verification is strict: unknown fields anywhere in the bundle or statement, non-canonical
base64, more than one signature, transparency-log entries, an unknown key ID, an expired key,
a signature that fails, a root digest that does not match its resources, or a resource set
that differs from the directory in any file or digest — each is refused. Where no key can
check the signature (no trusted keys configured, or an unknown signer accepted as unsigned),
:func:`parse_bundle` and :meth:`Envelope.claimed_digests` still parse it strictly and
:func:`check_signed_files` still compares what it lists with the files. OMS verifiers
support only ECDSA keys, so OMS interoperability needs ``ecdsa-p256`` keys; Ed25519 works
within ebru.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import SignatureError, UntrustedKeyError
from .keys import SigningKey, TrustedKey, TrustedKeys, verify_bytes
from .strict_json import loads

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SIGNATURE_FILE = "model.sig"

_HEX64 = re.compile(r"[0-9a-f]{64}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def root_digest(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(bytes.fromhex(digests[name]))
    return h.hexdigest()


def statement(model_name: str, digests: dict[str, str]) -> dict[str, Any]:
    """The in-toto statement over ``digests`` (file name -> SHA-256 hex), in OMS v1.0 form."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(digests)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": [SIGNATURE_FILE]},
            "resources": [{"name": n, "algorithm": "sha256", "digest": digests[n]} for n in sorted(digests)],
        },
    }


def sign_digests(model_name: str, digests: dict[str, str], key: SigningKey) -> bytes:
    """The ``model.sig`` bytes signing ``digests`` with ``key``."""
    payload = json.dumps(statement(model_name, digests), indent=2).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.key_id}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return (json.dumps(bundle, indent=2) + "\n").encode()


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: who signed, and the file digests they signed."""

    signer: TrustedKey
    digests: dict[str, str]
    subject_name: str


def _fields(obj: Any, what: str, required: set[str], optional: set[str], path: str | os.PathLike) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SignatureError(path, f"{what} is not a JSON object")
    missing = sorted(required - obj.keys())
    if missing:
        raise SignatureError(path, f"{what} has no {missing[0]!r}")
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        raise SignatureError(path, f"{what} has an unknown field {unknown[0]!r}")
    return obj


def _b64(value: Any, what: str, path: str | os.PathLike) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(path, f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(path, f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode() != value:
        raise SignatureError(path, f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class Envelope:
    """A structurally valid ``model.sig``, not yet checked against any key.

    ``key_id`` is the signer's key ID as the bundle claims it (the key hint); ``payload`` the
    signed statement's bytes; ``sig`` the raw signature over its DSSE encoding.
    """

    key_id: str
    payload: bytes
    sig: bytes

    def claimed_digests(self, path: str | os.PathLike) -> tuple[dict[str, str], str]:
        """The file digests the statement lists (and the subject name), *without* checking the signature.

        What a signature claims to cover can be compared with the files even where no key can
        check who made it: a mismatch means the package was changed after signing.
        """
        return _statement_digests(self.payload, path)


def parse_bundle(data: bytes, path: str | os.PathLike) -> Envelope:
    """Parse a ``model.sig`` strictly (fields, media types, one signature, canonical base64), without keys.

    Raises :class:`SignatureError` for anything malformed.
    """
    bundle = _fields(loads(data, path, "signature bundle", SignatureError), "the bundle",
                     {"mediaType", "verificationMaterial", "dsseEnvelope"}, set(), path)
    if bundle["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise SignatureError(path, f"unsupported bundle media type {bundle['mediaType']!r}")
    material = _fields(bundle["verificationMaterial"], "verificationMaterial", {"publicKey"}, {"tlogEntries"}, path)
    if material.get("tlogEntries", []) != []:
        raise SignatureError(path, "transparency-log entries are not supported (ebru verifies offline, with keys)")
    hint = _fields(material["publicKey"], "publicKey", {"hint"}, set(), path)["hint"]
    if not isinstance(hint, str) or not _HEX64.fullmatch(hint):
        raise SignatureError(path, "publicKey.hint must be a key ID (64 lowercase hex digits)")
    envelope = _fields(bundle["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"}, set(), path)
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise SignatureError(path, f"unsupported DSSE payload type {envelope['payloadType']!r}")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise SignatureError(path, "the envelope must hold exactly one signature")
    entry = _fields(signatures[0], "the signature", {"sig"}, {"keyid"}, path)
    if entry.get("keyid", "") not in ("", hint):
        raise SignatureError(path, "the signature's keyid differs from the bundle's key hint")
    payload = _b64(envelope["payload"], "the payload", path)
    sig = _b64(entry["sig"], "the signature", path)
    return Envelope(hint, payload, sig)


def verify_envelope(env: Envelope, path: str | os.PathLike, trusted: TrustedKeys,
                    now: datetime | None = None) -> VerifiedSignature:
    """Check a parsed signature against the trusted keys; return the signed digests.

    Raises :class:`UntrustedKeyError` for a signature by a key that is not trusted (unknown or
    expired), and :class:`SignatureError` for a signature that does not verify or a malformed statement.
    """
    key = trusted.get(env.key_id)
    if key is None:
        raise UntrustedKeyError(path, f"signed by key {env.key_id[:16]}…, which is not among the trusted keys "
                                      f"({trusted.source})")
    if key.expired(now):
        raise UntrustedKeyError(path, f"signed by {key.describe()}, which expired on {key.expires:%Y-%m-%d} "
                                      f"({key.path})")
    if not verify_bytes(key.key, env.sig, pae(PAYLOAD_TYPE, env.payload)):
        raise SignatureError(path, f"the signature does not verify with {key.describe()}: the signature or its "
                                   "statement was changed")
    return VerifiedSignature(key, *_statement_digests(env.payload, path))


def verify_bundle(data: bytes, path: str | os.PathLike, trusted: TrustedKeys,
                  now: datetime | None = None) -> VerifiedSignature:
    """Check a ``model.sig``'s signature against the trusted keys; return the signed digests.

    :func:`parse_bundle` then :func:`verify_envelope`: raises :class:`UntrustedKeyError` for a
    well-formed signature by a key that is not trusted (unknown or expired), and
    :class:`SignatureError` for everything else.
    """
    return verify_envelope(parse_bundle(data, path), path, trusted, now)


def _statement_digests(payload: bytes, path: str | os.PathLike) -> tuple[dict[str, str], str]:
    st = _fields(loads(payload, path, "the signed statement", SignatureError), "the statement",
                 {"_type", "subject", "predicateType", "predicate"}, set(), path)
    if st["_type"] != STATEMENT_TYPE:
        raise SignatureError(path, f"statement type {st['_type']!r} is not {STATEMENT_TYPE}")
    if st["predicateType"] != PREDICATE_TYPE:
        raise SignatureError(path, f"predicate type {st['predicateType']!r} is not {PREDICATE_TYPE}")
    if not isinstance(st["subject"], list) or len(st["subject"]) != 1:
        raise SignatureError(path, "the statement must have exactly one subject")
    subject = _fields(st["subject"][0], "the subject", {"name", "digest"}, set(), path)
    root = _fields(subject["digest"], "the subject digest", {"sha256"}, set(), path)["sha256"]
    predicate = _fields(st["predicate"], "the predicate", {"serialization", "resources"}, set(), path)
    ser = _fields(predicate["serialization"], "the serialization", {"method", "hash_type", "allow_symlinks"},
                  {"ignore_paths"}, path)
    if ser["method"] != "files" or ser["hash_type"] != "sha256" or ser["allow_symlinks"] is not False:
        raise SignatureError(path, "only per-file SHA-256 serialization without symlinks is accepted")
    resources = predicate["resources"]
    if not isinstance(resources, list):
        raise SignatureError(path, "resources must be a list")
    digests: dict[str, str] = {}
    for r in resources:
        r = _fields(r, "a resource", {"name", "algorithm", "digest"}, set(), path)
        if r["algorithm"] != "sha256" or not isinstance(r["digest"], str) or not _HEX64.fullmatch(r["digest"]):
            raise SignatureError(path, f"resource {r['name']!r} must carry a sha256 digest")
        if not isinstance(r["name"], str) or r["name"] in digests:
            raise SignatureError(path, f"resource name {r['name']!r} is invalid or repeated")
        digests[r["name"]] = r["digest"]
    if root != root_digest(digests):
        raise SignatureError(path, "the statement's root digest does not match its resources")
    name = subject["name"] if isinstance(subject["name"], str) else ""
    return digests, name


def check_signed_files(verified: VerifiedSignature | dict[str, str], digests: dict[str, str],
                       path: str | os.PathLike) -> None:
    """Refuse unless the signed file set and digests equal the directory's (``model.sig`` excluded).

    ``verified``: a verified signature, or the digests a signature claims (:meth:`Envelope.claimed_digests`).
    """
    signed = verified.digests if isinstance(verified, VerifiedSignature) else verified
    actual = digests
    tail = "; the signature does not match the package's files"
    unsigned = sorted(actual.keys() - signed.keys())
    if unsigned:
        raise SignatureError(path, f"{unsigned[0]} is not covered by the signature (added after signing){tail}")
    missing = sorted(signed.keys() - actual.keys())
    if missing:
        raise SignatureError(path, f"{missing[0]} is signed but missing from the package{tail}")
    changed = [name for name in sorted(actual) if actual[name] != signed[name]]
    if changed:
        raise SignatureError(path, f"{changed[0]} differs from the signed file (SHA-256 mismatch; changed after "
                                   f"signing){tail}")
