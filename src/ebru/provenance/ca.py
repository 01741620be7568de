"""A local certificate authority for C2PA: a root CA and the end-entity signing certificate it issues.

C2PA refuses a self-signed signing certificate (c2pa-rs ``sdk/src/crypto/cose/certificate_profile.rs``:
"certificate issuer and subject cannot be the same"), so an organisation that signs offline needs two:

- ``root.pem`` / ``root.key``: the root (ECDSA P-256, CA:TRUE, pathlen 0, keyCertSign + cRLSign,
  self-signed). Verifiers add ``root.pem`` to their trust anchors; ``root.key`` signs nothing else
  and belongs offline (a USB stick in a safe) once the signer exists.
- ``signer.pem`` / ``signer.key``: the end-entity certificate that signs manifests (ECDSA P-256 for
  ES256, CA:FALSE, digitalSignature, EKU documentSigning + emailProtection, ``O=`` in the subject,
  X.509 v3 with subject and authority key identifiers). ``signer.pem`` holds the leaf followed by
  the root: the chain C2PA embeds in every manifest.

The directory is ``$EBRU_C2PA_DIR``, else ``$XDG_CONFIG_HOME/ebru/c2pa`` (see :mod:`ebru.trust.settings`).
Keys are written with mode 0600, encrypted with ``$EBRU_KEY_PASSPHRASE`` when that is set. The whole
set is written with :class:`ebru.trust.staging.Staged`: all four files, or none.

Why ``O=`` and the EKU: c2pa-rs maps a missing Organisation to a misleading ``claimSignature.mismatch``
(c2pa-rs #2262, #2497), and refuses a leaf without one of the EKUs in :data:`ALLOWED_EKUS`
(c2pa-rs's default trust configuration).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ebru.checks import positive_int
from ebru.trust import settings
from ebru.trust.staging import Staged

from .errors import ProvenanceError

ENV_C2PA_DIR = "EBRU_C2PA_DIR"
ROOT_CERT, ROOT_KEY, SIGNER_CERT, SIGNER_KEY = "root.pem", "root.key", "signer.pem", "signer.key"
CA_FILES = (ROOT_CERT, ROOT_KEY, SIGNER_CERT, SIGNER_KEY)
DEFAULT_ORG = "ebru local provenance"
DEFAULT_DAYS = 3650  # long-lived: an untimestamped manifest may stop validating once its signer expires (c2pa-rs #1609)

DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
ALLOWED_EKUS = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string: "emailProtection",
    DOCUMENT_SIGNING.dotted_string: "documentSigning",
    "1.3.6.1.4.1.311.76.59.1.9": "Microsoft C2PA signing",
    "1.3.6.1.4.1.62558.2.1": "c2pa-kp-claimSigning",
}
_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past, for clocks that differ


def c2pa_dir() -> Path:
    """``$EBRU_C2PA_DIR``, else ``$XDG_CONFIG_HOME/ebru/c2pa`` (``~/.config/ebru/c2pa``)."""
    return settings.env_path(ENV_C2PA_DIR) or settings.config_dir() / "c2pa"


@dataclass(frozen=True)
class CAFiles:
    """The four files of a local CA (paths; they exist once :func:`init_ca` returns)."""

    directory: Path
    root_cert: Path
    root_key: Path
    signer_cert: Path
    signer_key: Path

    @classmethod
    def at(cls, directory: str | os.PathLike) -> CAFiles:
        d = Path(directory)
        return cls(d, d / ROOT_CERT, d / ROOT_KEY, d / SIGNER_CERT, d / SIGNER_KEY)


def _name(org: str, cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(org: str = DEFAULT_ORG, days: int = DEFAULT_DAYS, *, now: dt.datetime | None = None
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh root CA and a signer it issues, in memory: ``(root, root_key, signer, signer_key)``.

    ``days``: the signer's validity; the root's is twice that, so the root outlives every signer it
    issues. Both keys are ECDSA P-256 (C2PA's ES256). Raises ``ValueError`` for an empty ``org``
    or a non-positive ``days``.
    """
    org = " ".join(str(org).split())
    if not org:
        raise ValueError("the organisation name (--org) must not be empty: C2PA needs O= in the certificate subject")
    days = positive_int("days", days)
    now = now or dt.datetime.now(dt.UTC)
    root_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = _name(org, f"{org} root CA")
    root = (x509.CertificateBuilder()
            .subject_name(root_name).issuer_name(root_name).public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + dt.timedelta(days=2 * days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(sign=False, ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder()
              .subject_name(_name(org, f"{org} C2PA signer")).issuer_name(root_name)
              .public_key(signer_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - _SKEW).not_valid_after(now + dt.timedelta(days=days))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_key_usage(sign=True, ca=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                             critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                             critical=False)
              .sign(root_key, hashes.SHA256()))
    return root, root_key, signer, signer_key


def init_ca(directory: str | os.PathLike | None = None, *, org: str = DEFAULT_ORG, days: int = DEFAULT_DAYS,
            force: bool = False) -> CAFiles:
    """Write a new local CA (root + signer, see the module docstring) into ``directory`` (default :func:`c2pa_dir`).

    Refuses (``FileExistsError``) when any of the four files exists, unless ``force``: then all four are
    replaced (manifests signed before verify only against the old ``root.pem``). Returns the paths.
    """
    files = CAFiles.at(directory if directory is not None else c2pa_dir())
    present = [n for n in CA_FILES if (files.directory / n).exists()]
    if present and not force:
        raise FileExistsError(f"{files.directory} already holds a C2PA CA ({', '.join(present)}); pass --force to "
                              "replace it (images signed before then verify only against the old root.pem)")
    root, root_key, signer, signer_key = make_ca(org, days)
    secret = settings.passphrase()
    contents = {
        files.root_cert: (_pem(root), 0o644),
        files.root_key: (_key_pem(root_key, secret), 0o600),
        files.signer_cert: (_pem(signer) + _pem(root), 0o644),
        files.signer_key: (_key_pem(signer_key, secret), 0o600),
    }
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with Staged("ca-init", files.directory, org=org) as op:
        staged = [(op.stage_file(p, data, mode), p) for p, (data, mode) in contents.items()]
        for tmp, dest in staged:
            if force:
                op.publish_file(tmp, dest)
            else:
                op.publish_new(tmp, dest)
    _identity_cache.clear()
    return files


# --------------------------------------------------------------------------- the signer's identity


@dataclass(frozen=True)
class SigningIdentity:
    """A C2PA signer loaded from a CA directory: the PEM chain (leaf first), its key, and the root if present.

    ``key_pem`` is the unencrypted PKCS#8 key, in memory only (c2pa-python takes it as bytes).
    ``key_id``: the first 16 hex digits of SHA-256 over the leaf's DER SubjectPublicKeyInfo.
    """

    directory: Path
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    root_pem: bytes | None
    leaf: x509.Certificate = field(repr=False)
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def key_id(self) -> str:
        spki = self.leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()[:16]

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) of ``data`` with the signer's key."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def parse_chain(pem: bytes, path: str | os.PathLike) -> list[x509.Certificate]:
    """The certificates of a PEM bundle, in order; ``ProvenanceError`` naming ``path`` if none, or it is bad."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ProvenanceError(path, "not a PEM certificate bundle (-----BEGIN CERTIFICATE----- blocks)") from None
    if not certs:
        raise ProvenanceError(path, "holds no certificate")
    return certs


def _valid_range(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def check_signing_chain(chain: list[x509.Certificate], path: str | os.PathLike, *,
                        now: dt.datetime | None = None) -> None:
    """Refuse, with one line naming ``path``, a signing chain that C2PA's certificate profile would refuse.

    Checks the leaf (``chain[0]``): X.509 v3; not self-signed; not a CA; digitalSignature key usage;
    an EKU from :data:`ALLOWED_EKUS` and no anyExtendedKeyUsage; an Organisation (``O=``) in the subject;
    an ECDSA P-256 key (ebru signs ES256); valid now; and each certificate issued by the next one.
    Source: c2pa-rs ``sdk/src/crypto/cose/certificate_profile.rs`` (the rules), whose own refusal of a
    self-signed leaf reads only "the certificate is invalid".
    """
    leaf = chain[0]
    fix = "run 'ebru ca init' to make a local root and a signer it issues"
    if leaf.version != x509.Version.v3:
        raise ProvenanceError(path, f"the signing certificate is not X.509 v3, which C2PA requires; {fix}")
    if leaf.issuer == leaf.subject:
        raise ProvenanceError(path, "the signing certificate is self-signed, and C2PA refuses self-signed signers "
                                    f"(issuer = subject = {leaf.subject.rfc4514_string()}); {fix}")
    exts = leaf.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise ProvenanceError(path, f"the signing certificate is a CA certificate; C2PA signs with an end-entity "
                                        f"certificate; {fix}")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = exts.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise ProvenanceError(path, f"the signing certificate's key usage lacks digitalSignature; {fix}")
    except x509.ExtensionNotFound:
        raise ProvenanceError(path, f"the signing certificate has no key usage extension (C2PA needs "
                                    f"digitalSignature); {fix}") from None
    try:
        ekus = {o.dotted_string for o in exts.get_extension_for_class(x509.ExtendedKeyUsage).value}
    except x509.ExtensionNotFound:
        raise ProvenanceError(path, f"the signing certificate has no extended key usage; C2PA needs one of "
                                    f"{', '.join(ALLOWED_EKUS.values())}; {fix}") from None
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string in ekus or not ekus & set(ALLOWED_EKUS):
        raise ProvenanceError(path, f"the signing certificate's extended key usage must include one of "
                                    f"{', '.join(ALLOWED_EKUS.values())} (and not anyExtendedKeyUsage); {fix}")
    if not leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        raise ProvenanceError(path, f"the signing certificate's subject has no Organisation (O=), which C2PA "
                                    f"validators need; {fix}")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ProvenanceError(path, f"the signing certificate's key is not ECDSA P-256 (ebru signs ES256); {fix}")
    now = now or dt.datetime.now(dt.UTC)
    start, end = _valid_range(leaf)
    if not start <= now <= end:
        when = f"expired on {end:%Y-%m-%d}" if now > end else f"is valid only from {start:%Y-%m-%d %H:%M} UTC"
        raise ProvenanceError(path, f"the signing certificate {when}; make a new one with 'ebru ca init --force'")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise ProvenanceError(path, f"the chain is broken: {child.subject.rfc4514_string()} was not issued by "
                                        f"the next certificate ({parent.subject.rfc4514_string()})") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ProvenanceError(path, f"{what} not found; run 'ebru ca init' (or set {ENV_C2PA_DIR})") from None
    except OSError as e:
        raise ProvenanceError(path, f"cannot read the {what} ({e.strerror})") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "C2PA signing key")
    try:
        key = serialization.load_pem_private_key(data, settings.passphrase())
    except TypeError:
        raise ProvenanceError(path, f"the key is encrypted: set {settings.ENV_PASSPHRASE}") from None
    except ValueError:
        raise ProvenanceError(path, f"not a PEM private key, or the wrong {settings.ENV_PASSPHRASE}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ProvenanceError(path, "the signing key is not ECDSA P-256 (ebru signs ES256)")
    return key


_identity_cache: dict[tuple, SigningIdentity] = {}


def load_identity(directory: str | os.PathLike | None = None) -> SigningIdentity:
    """The signer in ``directory`` (default :func:`c2pa_dir`), checked by :func:`check_signing_chain`.

    Raises :class:`ProvenanceError` for a missing or unreadable file, a key that does not match the
    certificate, or a certificate C2PA would refuse. Cached per directory while the files are unchanged.
    """
    files = CAFiles.at(directory if directory is not None else c2pa_dir())
    stamp = []
    for p in (files.signer_cert, files.signer_key, files.root_cert):
        try:
            st = p.stat()
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append(None)
    secret = settings.passphrase()
    cache_key = (str(files.directory.resolve()), tuple(stamp), secret and hashlib.sha256(secret).hexdigest())
    if cache_key in _identity_cache:
        return _identity_cache[cache_key]
    chain_pem = _read(files.signer_cert, "C2PA signing certificate")
    chain = parse_chain(chain_pem, files.signer_cert)
    check_signing_chain(chain, files.signer_cert)
    key = _load_key(files.signer_key)
    if key.public_key().public_numbers() != chain[0].public_key().public_numbers():
        raise ProvenanceError(files.signer_key, f"this key does not belong to the certificate in {files.signer_cert}")
    root_pem = files.root_cert.read_bytes() if files.root_cert.exists() else None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ident = SigningIdentity(files.directory, chain_pem, key_pem, root_pem, chain[0], key)
    _identity_cache.clear()  # one entry: the identity in use
    _identity_cache[cache_key] = ident
    return ident


_noted: set[str] = set()


def default_signer(create: bool = True) -> SigningIdentity:
    """The signer in :func:`c2pa_dir`; made first (a one-line note on stderr) when ``create`` and there is none.

    Raises :class:`ProvenanceError` when there is none and ``create`` is false, or when it is unusable.
    """
    d = c2pa_dir()
    if create and not (d / SIGNER_CERT).exists() and not (d / SIGNER_KEY).exists():
        files = init_ca(d)
        if str(d) not in _noted:
            _noted.add(str(d))
            print(f"ebru: note: created a local C2PA signing CA in {d} (signer.pem/signer.key sign every output; "
                  f"give {files.root_cert.name} to verifiers and move {files.root_key.name} offline)",
                  file=sys.stderr)
    return load_identity(d)
