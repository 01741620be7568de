"""Keys: generation, loading, trusted-keys directories, and one clear line for every bad key."""

from __future__ import annotations

import hashlib
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ebru.trust import KeyFileError, TrustedKeys, generate_key, load_public_key, load_signing_key
from ebru.trust.keys import key_id, resolve_trusted_keys, verify_bytes


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_generate_writes_a_usable_pair(tmp_path, algorithm):
    priv, pub = generate_key(tmp_path, "release", algorithm, valid_days=30)
    assert (priv.name, pub.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    signing = load_signing_key(priv)
    public = load_public_key(pub)
    assert signing.key_id == public.key_id == key_id(public.key)
    # The key ID is SHA-256 of the PEM public key: OpenSSF model-signing's bundle hint.
    pem = public.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public.key_id == hashlib.sha256(pem).hexdigest()
    assert public.algorithm == algorithm and public.name == "release"
    assert timedelta(days=29.99) < public.expires - datetime.now(UTC) <= timedelta(days=30)
    text = pub.read_text()
    assert f"Key-ID: {public.key_id}\n" in text and f"Algorithm: {algorithm}\n" in text
    assert verify_bytes(public.key, signing.sign(b"payload"), b"payload")
    assert not verify_bytes(public.key, signing.sign(b"payload"), b"payload!")


def test_generate_never_overwrites(tmp_path):
    generate_key(tmp_path, "k")
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(FileExistsError, match=r"k.key already exists"):
        generate_key(tmp_path, "k")
    assert (tmp_path / "k.key").read_bytes() == before


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key algorithm 'rsa'"):
        generate_key(tmp_path, "k", "rsa")
    with pytest.raises(ValueError, match=r"key name '../k'"):
        generate_key(tmp_path, "../k")
    with pytest.raises(ValueError, match=r"validity must be > 0 days"):
        generate_key(tmp_path, "k", valid_days=0)
    assert list(tmp_path.iterdir()) == []


def test_encrypted_key_needs_its_passphrase(tmp_path, monkeypatch):
    priv, _ = generate_key(tmp_path, "k", passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in priv.read_bytes()
    with pytest.raises(KeyFileError, match=r"encrypted.*EBRU_KEY_PASSPHRASE"):
        load_signing_key(priv)
    monkeypatch.setenv("EBRU_KEY_PASSPHRASE", "wrong")
    with pytest.raises(KeyFileError, match=r"wrong passphrase.*EBRU_KEY_PASSPHRASE"):
        load_signing_key(priv)
    monkeypatch.setenv("EBRU_KEY_PASSPHRASE", "correct horse")
    assert load_signing_key(priv).algorithm == "ed25519"
    plain, _ = generate_key(tmp_path, "plain")  # a passphrase in the environment does not stop unencrypted keys
    assert load_signing_key(plain).name == "plain"


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_wrong_key_types_one_line_each(tmp_path):
    _, pub = generate_key(tmp_path, "k")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    files = {
        "rsa.key": _pem_private(rsa_key), "p384.key": _pem_private(p384), "rsa.pub": _pem_public(rsa_key),
        "junk.key": b"not a key at all\n",
        "broken.key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases = [  # the key facts of each refusal: what the file holds, and what is wanted instead
        (load_signing_key, pub, r"public key.*private key \(the \.key file\)"),
        (load_signing_key, tmp_path / "rsa.key", r"RSA key.*Ed25519 and ECDSA P-256"),
        (load_signing_key, tmp_path / "p384.key", r"ECDSA key on secp384r1"),
        (load_signing_key, tmp_path / "junk.key", r"not a PEM file.*-----BEGIN"),
        (load_signing_key, tmp_path / "broken.key", r"not a readable PEM private key"),
        (load_signing_key, tmp_path / "missing.key", r"private key \(\.key\) not found"),
        (load_signing_key, tmp_path, r"is a directory"),
        (load_public_key, tmp_path / "k.key", r"private key.*public keys \(\.pub\)"),
        (load_public_key, tmp_path / "rsa.pub", r"RSA key.*Ed25519 and ECDSA P-256"),
    ]
    for loader, path, reason in cases:
        with pytest.raises(KeyFileError) as e:
            loader(path)
        assert re.search(reason, str(e.value)), (path, str(e.value))
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_expired_signing_key_refused(tmp_path):
    priv, pub = generate_key(tmp_path, "k", valid_days=1)
    expires = load_signing_key(priv).expires
    assert expires == load_public_key(pub).expires  # the pair carries one expiry, one day from now
    assert timedelta(hours=23.9) < expires - datetime.now(UTC) <= timedelta(days=1)
    with pytest.raises(KeyFileError, match=r"expired on \d{4}-\d\d-\d\d.*generate"):
        load_signing_key(priv, now=datetime.now(UTC) + timedelta(days=2))


def test_edited_key_id_or_algorithm_line_refused(tmp_path):
    _, pub = generate_key(tmp_path, "k")
    text = pub.read_text()
    kid = load_public_key(pub).key_id
    pub.write_text(text.replace(kid, "0" * 64))
    with pytest.raises(KeyFileError, match=r"Key-ID line does not match the key"):
        load_public_key(pub)
    pub.write_text(text.replace("Algorithm: ed25519", "Algorithm: ecdsa-p256"))
    with pytest.raises(KeyFileError, match=r"Algorithm.*'ecdsa-p256'.*ed25519"):
        load_public_key(pub)
    pub.write_text(text.replace("Expires: ", "Expires: soon ", 1))
    with pytest.raises(KeyFileError, match=r"Expires: 'soon .*ISO 8601"):
        load_public_key(pub)


def test_a_bare_pem_key_from_elsewhere_is_accepted(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "openssl.pub").write_bytes(_pem_public(key))
    k = load_public_key(tmp_path / "openssl.pub")
    assert (k.name, k.algorithm, k.expires) == ("openssl", "ecdsa-p256", None)


def test_trusted_keys_directory_rules(tmp_path, monkeypatch):
    d = tmp_path / "trusted"
    d.mkdir()
    with pytest.raises(KeyFileError, match=r"holds no public keys"):
        TrustedKeys.from_dir(d)
    _, pub = generate_key(tmp_path / "k", "a")
    (d / "a.pub").write_bytes(pub.read_bytes())
    (d / "README").write_text("keys of the release team\n")  # other files are ignored
    assert [k.name for k in TrustedKeys.from_dir(d)] == ["a"]
    (d / "a.key").write_bytes((tmp_path / "k" / "a.key").read_bytes())
    with pytest.raises(KeyFileError, match=r"private key inside a trusted-keys directory"):
        TrustedKeys.from_dir(d)
    with pytest.raises(KeyFileError, match=r"trusted-keys directory not found"):
        TrustedKeys.from_dir(tmp_path / "nope")


def test_trusted_keys_resolution(tmp_path, monkeypatch):
    assert resolve_trusted_keys(None) is None  # nothing configured: the newcomer default
    default = tmp_path / "xdg-config" / "ebru" / "trusted_keys"
    default.mkdir(parents=True)
    assert resolve_trusted_keys(None) is None  # an empty default directory configures nothing
    _, pub = generate_key(tmp_path / "k", "a")
    (default / "a.pub").write_bytes(pub.read_bytes())
    assert resolve_trusted_keys(None).source == str(default)
    monkeypatch.setenv("EBRU_TRUSTED_KEYS", str(tmp_path / "typo"))
    with pytest.raises(KeyFileError, match=r"typo: trusted-keys directory not found"):
        resolve_trusted_keys(None)  # a mistyped setting is an error, never "no keys"
    monkeypatch.setenv("EBRU_TRUSTED_KEYS", str(tmp_path / "k"))
    with pytest.raises(KeyFileError, match=r"private key inside a trusted-keys directory"):
        resolve_trusted_keys(None)
