"""Signing keys (Ed25519 or ECDSA P-256) and the directory of trusted public keys.

``ebru keys generate`` writes two PEM files::

    NAME.key   PKCS#8 private key, mode 0600, encrypted when EBRU_KEY_PASSPHRASE is set
    NAME.pub   SubjectPublicKeyInfo public key: give it to verifiers

Each starts with a few ``Field: value`` lines before the PEM block (RFC 7468 explanatory text,
which PEM readers, OpenSSL and ``model_signing`` included, skip)::

    Name: release-2026
    Algorithm: ed25519
    Key-ID: 3f1c…                (SHA-256 of the PEM public key: the OpenSSF model-signing "hint")
    Created: 2026-05-01T12:00:00Z
    Expires: 2027-05-01T12:00:00Z  (or "never")

A *trusted-keys directory* holds ``*.pub`` files only; a private key there is refused. A
trusted key whose ``Expires`` has passed no longer verifies anything: signatures carry no
trusted timestamp, so expiry is judged at verification time, and packages signed with an
expiring key must be re-signed with its successor. Remove a ``.pub`` file to revoke a key.
The key ID is recomputed from the key itself; a ``Key-ID`` line that disagrees is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from . import settings
from .errors import KeyFileError

ALGORITHMS = ("ed25519", "ecdsa-p256")
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
MAX_KEY_FILE_BYTES = 64 * 1024
_FIELDS = ("Name", "Algorithm", "Key-ID", "Created", "Expires")


def _algorithm(key: PublicKey | PrivateKey) -> str | None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ecdsa-p256"
    return None


def _describe(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ed448, rsa

    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"an ECDSA key on {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return "a DSA key"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "an Ed448 key"
    return f"an unsupported key ({type(key).__name__})"


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    """SHA-256 of the PEM SubjectPublicKeyInfo: the same value OpenSSF model-signing puts in its bundle hint."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------- the header lines


def _parse_time(value: str, path: Path, field: str) -> datetime | None:
    if field == "Expires" and value.lower() == "never":
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise KeyFileError(path, f"{field}: {value!r} is not an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _read_key_file(path: str | os.PathLike, what: str) -> tuple[Path, bytes, dict[str, str]]:
    p = Path(path)
    if p.is_symlink():
        raise KeyFileError(p, "is a symbolic link; key files must be regular files")
    try:
        if p.stat().st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(p, f"is too large to be a {what}")
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(p, f"{what} not found") from None
    except IsADirectoryError:
        raise KeyFileError(p, f"is a directory, not a {what}") from None
    except OSError as e:
        raise KeyFileError(p, f"cannot read the {what} ({e.strerror})") from None
    start = data.find(b"-----BEGIN ")
    if start < 0:
        raise KeyFileError(p, f"is not a PEM file (no -----BEGIN line); expected a {what}")
    fields = {}
    for raw in data[:start].decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if sep and name.strip() in _FIELDS:
            fields[name.strip()] = value.strip()
    return p, data, fields


def _header(name: str, algorithm: str, kid: str, created: datetime, expires: datetime | None, private: bool) -> bytes:
    lines = [
        "# ebru signing key: PRIVATE, keep it secret; give the .pub file to verifiers" if private
        else "# ebru public key: put it in a trusted-keys directory to accept this key's signatures",
        f"Name: {name}",
        f"Algorithm: {algorithm}",
        f"Key-ID: {kid}",
        f"Created: {created.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"Expires: {expires.strftime('%Y-%m-%dT%H:%M:%SZ') if expires else 'never'}",
        "",
    ]
    return "\n".join(lines).encode()


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class TrustedKey:
    """A public key from a ``.pub`` file, with its name, ID and expiry."""

    key: PublicKey
    key_id: str
    algorithm: str
    name: str
    path: Path
    expires: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def describe(self) -> str:
        return f"{self.name} ({self.algorithm}, key {self.key_id[:16]}…)"


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded for signing."""

    key: PrivateKey
    key_id: str
    algorithm: str
    name: str
    path: Path
    expires: datetime | None = None

    def sign(self, data: bytes) -> bytes:
        return sign_bytes(self.key, data)

    def public(self) -> TrustedKey:
        return TrustedKey(self.key.public_key(), self.key_id, self.algorithm, self.name, self.path, self.expires)


def _check_fields(p: Path, fields: dict[str, str], kid: str, algorithm: str) -> datetime | None:
    if "Key-ID" in fields and fields["Key-ID"].lower() != kid:
        raise KeyFileError(p, "its Key-ID line does not match the key it holds (edited file?)")
    if "Algorithm" in fields and fields["Algorithm"].lower() != algorithm:
        raise KeyFileError(p, f"its Algorithm line says {fields['Algorithm']!r} but the key is {algorithm}")
    if "Created" in fields:
        _parse_time(fields["Created"], p, "Created")
    return _parse_time(fields["Expires"], p, "Expires") if "Expires" in fields else None


def load_public_key(path: str | os.PathLike) -> TrustedKey:
    """Read a ``.pub`` file; refuses private keys, other algorithms and malformed files."""
    p, data, fields = _read_key_file(path, "public key (.pub)")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(p, "holds a private key; trusted keys must be public keys (.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(p, f"is not a readable PEM public key ({str(e).splitlines()[0]})") from None
    algorithm = _algorithm(key)
    if algorithm is None:
        raise KeyFileError(p, f"holds {_describe(key)}; ebru accepts Ed25519 and ECDSA P-256 keys only")
    kid = key_id(key)
    expires = _check_fields(p, fields, kid, algorithm)
    return TrustedKey(key, kid, algorithm, fields.get("Name") or p.stem, p, expires)


def load_signing_key(path: str | os.PathLike, passphrase: bytes | None = None,
                     now: datetime | None = None) -> SigningKey:
    """Read a private ``.key`` file (passphrase from the argument or EBRU_KEY_PASSPHRASE); refuse expired keys."""
    p, data, fields = _read_key_file(path, "private key (.key)")
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise KeyFileError(p, "is a public key; signing needs the private key (the .key file)")
        raise KeyFileError(p, "is not a PEM private key")
    passphrase = passphrase if passphrase is not None else settings.passphrase()
    try:
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except TypeError:  # encrypted without a passphrase, or a passphrase for an unencrypted key
            if passphrase is None:
                raise KeyFileError(p, f"is encrypted: set {settings.ENV_PASSPHRASE} to its passphrase") from None
            key = serialization.load_pem_private_key(data, None)
    except ValueError as e:
        if "password" in str(e).lower() or "decrypt" in str(e).lower():
            raise KeyFileError(p, f"wrong passphrase (from {settings.ENV_PASSPHRASE})") from None
        raise KeyFileError(p, f"is not a readable PEM private key ({str(e).splitlines()[0]})") from None
    except UnsupportedAlgorithm as e:
        raise KeyFileError(p, f"uses an unsupported key type ({e})") from None
    algorithm = _algorithm(key)
    if algorithm is None:
        raise KeyFileError(p, f"holds {_describe(key)}; ebru signs with Ed25519 and ECDSA P-256 keys only")
    kid = key_id(key.public_key())
    expires = _check_fields(p, fields, kid, algorithm)
    if expires is not None and (now or datetime.now(UTC)) >= expires:
        raise KeyFileError(p, f"key expired on {expires:%Y-%m-%d %H:%M} UTC; generate a new one with "
                              "'ebru keys generate'")
    return SigningKey(key, kid, algorithm, fields.get("Name") or p.stem, p, expires)


def key_id_of(sign_key: SigningKey | TrustedKey | str | os.PathLike) -> str | None:
    """The key ID (public fingerprint) of a key object or key file, or None when it cannot be read.

    For naming a key in records without its path: unlike :func:`load_signing_key` it accepts an
    expired key (its ID is still its ID) and a public key file, and never raises. An encrypted
    private key needs ``EBRU_KEY_PASSPHRASE``.
    """
    if isinstance(sign_key, SigningKey | TrustedKey):
        return sign_key.key_id
    try:
        _, data, _ = _read_key_file(sign_key, "key file")
        if b"PRIVATE KEY-----" in data:
            key = serialization.load_pem_private_key(data, settings.passphrase()).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (KeyFileError, ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key_id(key) if _algorithm(key) else None


def generate_key(out_dir: str | os.PathLike, name: str, algorithm: str = "ed25519",
                 valid_days: float | None = 365.0, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` into ``out_dir``; never overwrites. Returns both paths."""
    from .files import valid_name

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown key algorithm {algorithm!r}; choose {' or '.join(ALGORITHMS)}")
    if not valid_name(name):
        raise ValueError(f"key name {name!r} must be letters, digits, '.', '_' or '-'")
    if valid_days is not None and valid_days <= 0:
        raise ValueError(f"validity must be > 0 days, got {valid_days}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} already exists; choose another --name or remove it")
    private: PrivateKey = (ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519"
                           else ec.generate_private_key(ec.SECP256R1()))
    created = datetime.now(UTC).replace(microsecond=0)
    expires = created + timedelta(days=valid_days) if valid_days is not None else None
    kid = key_id(private.public_key())
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    priv_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    pub_pem = public_pem(private.public_key())
    from .staging import Staged

    with Staged("keygen", priv_path) as op:  # both files or neither, even if interrupted
        priv_tmp = op.stage_file(priv_path, _header(name, algorithm, kid, created, expires, True) + priv_pem, 0o600)
        pub_tmp = op.stage_file(pub_path, _header(name, algorithm, kid, created, expires, False) + pub_pem, 0o644)
        op.publish_new(priv_tmp, priv_path)
        op.publish_new(pub_tmp, pub_path)
    return priv_path, pub_path


# --------------------------------------------------------------------------- trusted keys


class TrustedKeys:
    """The public keys of one trusted-keys directory, by key ID."""

    def __init__(self, keys: list[TrustedKey], source: str):
        self.by_id = {k.key_id: k for k in keys}
        self.source = source

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(sorted(self.by_id.values(), key=lambda k: k.name))

    def get(self, kid: str) -> TrustedKey | None:
        return self.by_id.get(kid)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> TrustedKeys:
        """Every ``*.pub`` in ``directory``; refuses a directory holding private keys or no keys at all."""
        d = Path(directory)
        if not d.is_dir():
            raise KeyFileError(d, "trusted-keys directory not found")
        keys = []
        for p in sorted(d.iterdir()):  # other files (a README) are ignored
            if p.suffix == ".key":
                raise KeyFileError(p, "is a private key inside a trusted-keys directory; keep only .pub files there")
            if p.suffix == ".pub":
                keys.append(load_public_key(p))  # which also refuses private-key content
        if not keys:
            raise KeyFileError(d, "holds no public keys (*.pub)")
        return cls(keys, str(d))

    @classmethod
    def from_keys(cls, keys: list[TrustedKey], source: str = "<given keys>") -> TrustedKeys:
        return cls(keys, source)


def resolve_trusted_keys(trusted_keys: TrustedKeys | str | os.PathLike | None) -> TrustedKeys | None:
    """The trusted keys in force, or None when none are configured.

    An explicit directory or ``EBRU_TRUSTED_KEYS`` must exist and hold keys (a mistyped path is an
    error, not a silent "no keys"); the default ``~/.config/ebru/trusted_keys`` counts only when it
    holds at least one ``.pub`` file.
    """
    if isinstance(trusted_keys, TrustedKeys):
        return trusted_keys
    if trusted_keys is not None:
        return TrustedKeys.from_dir(trusted_keys)
    env = settings.env_path(settings.ENV_TRUSTED_KEYS)
    if env is not None:
        return TrustedKeys.from_dir(env)
    default = settings.default_trusted_keys_dir()
    if default.is_dir() and any(default.glob("*.pub")):
        return TrustedKeys.from_dir(default)
    return None
