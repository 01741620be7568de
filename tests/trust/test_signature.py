"""Signatures: the OMS-compatible DSSE/in-toto bundle, tamper detection down to every single byte."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil

import pytest

from ebru.trust import (
    IntegrityError,
    SignatureError,
    TrustedKeys,
    TrustError,
    UntrustedKeyError,
    load_policy,
    package_dir,
    sign_package,
    verify,
)
from ebru.trust.signature import PREDICATE_TYPE, STATEMENT_TYPE, pae, root_digest


def test_pae_matches_the_dsse_specification_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


@pytest.mark.parametrize("which", ["ed", "ec"])
def test_signed_package_verifies_and_the_statement_is_oms_v1(make_package, keys, which):
    pkg = make_package(sign_key=getattr(keys, which))
    m = verify(pkg, trusted_keys=keys.trusted)
    assert m.signer is not None and m.signer.name == which
    bundle = json.loads((pkg / "model.sig").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": m.signer.key_id}, "tlogEntries": []}
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    resources = statement["predicate"]["resources"]
    names = [r["name"] for r in resources]
    assert names == ["MODEL_CARD.md", "config.json", "manifest.json", "model.safetensors"]  # sorted, no model.sig
    for r in resources:
        assert r["algorithm"] == "sha256"
        assert r["digest"] == hashlib.sha256((pkg / r["name"]).read_bytes()).hexdigest()
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert statement["subject"] == [{"name": "pkg", "digest": {"sha256": root}}]
    assert root == root_digest({r["name"]: r["digest"] for r in resources})
    assert statement["predicate"]["serialization"] == {"method": "files", "hash_type": "sha256",
                                                       "allow_symlinks": False, "ignore_paths": ["model.sig"]}


@pytest.mark.parametrize(("which", "flip"), [("ed", 0x01), ("ec", 0x80)])
def test_every_single_byte_change_to_a_signed_package_is_detected(make_package, keys, which, flip, monkeypatch):
    """Change every byte of every file, model.sig and manifest.json included: never accepted.

    The low bit turns letters into neighbours, digits into digits and base64 into base64; the high
    bit turns ASCII into invalid UTF-8. Each signature algorithm gets one of the two."""
    monkeypatch.setenv("EBRU_AUDIT_LOG", "off")  # thousands of refusals; the audit log is tested elsewhere
    pkg = make_package(sign_key=getattr(keys, which))
    trusted, policy = TrustedKeys.from_dir(keys.trusted), load_policy()
    verify(pkg, policy, trusted_keys=trusted, quiet=True)
    checked = 0
    for name in sorted(os.listdir(pkg)):
        path = pkg / name
        original = path.read_bytes()
        for i in range(len(original)):
            changed = bytearray(original)
            changed[i] ^= flip
            path.write_bytes(changed)
            with pytest.raises(TrustError):
                verify(pkg, policy, trusted_keys=trusted, quiet=True)
            checked += 1
        path.write_bytes(original)
    assert checked == sum(len((pkg / n).read_bytes()) for n in os.listdir(pkg)) > 2500
    verify(pkg, policy, trusted_keys=trusted, quiet=True)  # restored: verifies again


def test_tampering_beyond_byte_edits(make_package, keys, tmp_path):
    pkg = make_package(sign_key=keys.ed)
    clean = tmp_path / "clean"
    shutil.copytree(pkg, clean)

    def fresh():
        shutil.rmtree(pkg)
        shutil.copytree(clean, pkg)

    # An added file, even one the attacker also lists by re-running `ebru package` (which drops the
    # stale signature; putting the old signature back does not help).
    (pkg / "LICENSE").write_text("MIT\n")
    with pytest.raises(IntegrityError, match=r"LICENSE: is not in the manifest"):
        verify(pkg, trusted_keys=keys.trusted)
    sig = (pkg / "model.sig").read_bytes()
    package_dir(pkg)
    (pkg / "model.sig").write_bytes(sig)
    with pytest.raises(SignatureError, match=r"model.sig: LICENSE is not covered by the signature"):
        verify(pkg, trusted_keys=keys.trusted)
    fresh()
    # A removed file.
    (pkg / "MODEL_CARD.md").unlink()
    with pytest.raises(IntegrityError, match=r"MODEL_CARD.md: is listed in the manifest but missing"):
        verify(pkg, trusted_keys=keys.trusted)
    fresh()
    # A file swapped for a symbolic link to identical content.
    (tmp_path / "elsewhere.json").write_bytes((pkg / "config.json").read_bytes())
    (pkg / "config.json").unlink()
    (pkg / "config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(IntegrityError, match=r"config.json: is a symbolic link"):
        verify(pkg, trusted_keys=keys.trusted)
    fresh()
    # Weights changed and the manifest rewritten to match: the signature catches the manifest.
    (pkg / "config.json").write_text('{"kind": "toy", "n": 2}\n')
    package_dir(pkg)
    (pkg / "model.sig").write_bytes(sig)
    with pytest.raises(SignatureError, match=r"config.json differs from the signed file"):
        verify(pkg, trusted_keys=keys.trusted)
    fresh()
    # Re-signed by a key that is not trusted.
    sign_package(pkg, keys.stranger)
    with pytest.raises(UntrustedKeyError, match=r"which is not among the trusted keys"):
        verify(pkg, trusted_keys=keys.trusted)
    fresh()
    # A signature taken from another package.
    other = make_package("other", config={"kind": "toy", "n": 3}, sign_key=keys.ed)
    shutil.copy(other / "model.sig", pkg / "model.sig")
    with pytest.raises(SignatureError, match=r"differs from the signed file"):
        verify(pkg, trusted_keys=keys.trusted)


def _rewrite(pkg, edit):
    bundle = json.loads((pkg / "model.sig").read_text())
    edit(bundle)
    (pkg / "model.sig").write_text(json.dumps(bundle))


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda b: b.update(extra=1), "the bundle has an unknown field 'extra'"),
    (lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle+json;version=0.2"),
     "unsupported bundle media type"),
    (lambda b: b["verificationMaterial"].update(tlogEntries=[{"logIndex": "1"}]),
     "transparency-log entries are not supported"),
    (lambda b: b["verificationMaterial"]["publicKey"].update(hint="ABC"), "publicKey.hint must be a key ID"),
    (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "unsupported DSSE payload type"),
    (lambda b: b["dsseEnvelope"]["signatures"].append(b["dsseEnvelope"]["signatures"][0]),
     "exactly one signature"),
    (lambda b: b["dsseEnvelope"]["signatures"][0].update(keyid="someone-else"),
     "keyid differs from the bundle's key hint"),
    (lambda b: b["dsseEnvelope"].update(payload=b["dsseEnvelope"]["payload"] + "\n"), "not valid base64"),
    (lambda b: b["dsseEnvelope"].update(payload=b["dsseEnvelope"]["payload"].rstrip("=")), "not valid base64"),
    (lambda b: b["dsseEnvelope"].pop("signatures"), "dsseEnvelope has no 'signatures'"),
])
def test_malformed_bundles_refused(make_package, keys, edit, reason):
    pkg = make_package(sign_key=keys.ed)
    _rewrite(pkg, edit)
    with pytest.raises(SignatureError) as e:
        verify(pkg, trusted_keys=keys.trusted)
    assert reason in e.value.reason and e.value.path.endswith("model.sig")


def test_non_canonical_base64_refused(make_package, keys):
    """Base64 with non-zero padding bits decodes to the same bytes; it is still a changed file, and refused."""
    pkg = make_package(sign_key=keys.ed)
    bundle = json.loads((pkg / "model.sig").read_text())
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]  # 64 bytes -> ends in "=="
    assert sig.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-3]
    variant = sig[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(variant) == base64.b64decode(sig)
    _rewrite(pkg, lambda b: b["dsseEnvelope"]["signatures"][0].update(sig=variant))
    with pytest.raises(SignatureError, match=r"the signature is not canonical base64"):
        verify(pkg, trusted_keys=keys.trusted)


def test_statement_edits_break_the_signature(make_package, keys):
    pkg = make_package(sign_key=keys.ed)

    def drop_resource(b):
        st = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
        st["predicate"]["resources"].pop()
        b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()

    _rewrite(pkg, drop_resource)
    with pytest.raises(SignatureError, match=r"the signature does not verify with ed"):
        verify(pkg, trusted_keys=keys.trusted)


def test_signing_refuses_what_would_not_load(make_package, keys):
    import pickle

    from ebru.trust import UnsafeFileError
    from ebru.trust.manifest import build_manifest

    pkg = make_package()
    (pkg / "model.safetensors").write_bytes(pickle.dumps([1, 2], protocol=2))
    (pkg / "manifest.json").write_bytes(build_manifest(pkg, {}).to_json())
    with pytest.raises(UnsafeFileError, match="a pickle stream"):
        sign_package(pkg, keys.ed)
    assert not (pkg / "model.sig").exists()


# ------------------------------------------------------------------ a signature is checked even without keys


def _edit_manifest(pkg, edit):
    manifest = json.loads((pkg / "manifest.json").read_text(encoding="utf-8"))
    edit(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def test_changed_after_signing_is_refused_without_trusted_keys(make_package, keys, tmp_path):
    """Sign, then change the licence record in manifest.json: refused, not 'origin not checked'."""
    from ebru.trust import load, pack

    pkg = make_package(sign_key=keys.ed)
    _edit_manifest(pkg, lambda m: m.update(lineage=[{"name": "base", "license": "apache-2.0"}]))
    for check in (load, verify, lambda p: pack(p, tmp_path / "b.tar")):
        with pytest.raises(SignatureError) as e:
            check(pkg)
        assert e.value.path == str(pkg / "model.sig") and "\n" not in str(e.value)
        assert re.search(r"manifest.json differs from the signed file .*the signature does not match", e.value.reason)
    assert not (tmp_path / "b.tar").exists()


def test_card_licence_edited_and_manifest_rebuilt_is_refused_without_keys(make_package, keys):
    from ebru.trust.manifest import build_manifest

    pkg = make_package(sign_key=keys.ed)
    card = (pkg / "MODEL_CARD.md").read_text(encoding="utf-8")
    (pkg / "MODEL_CARD.md").write_text(card.replace("license: mit", "license: apache-2.0"), encoding="utf-8")
    old = json.loads((pkg / "manifest.json").read_text(encoding="utf-8"))
    (pkg / "manifest.json").write_bytes(build_manifest(pkg, old["provenance"]).to_json())
    with pytest.raises(SignatureError, match=r"model.sig: .* differs from the signed file .*does not match"):
        verify(pkg)


def test_file_added_after_signing_is_refused_without_keys(make_package, keys):
    pkg = make_package(sign_key=keys.ed)
    sig = (pkg / "model.sig").read_bytes()
    (pkg / "LICENSE").write_text("MIT\n", encoding="utf-8")
    package_dir(pkg)  # lists the new file and drops the stale signature; the attacker puts it back
    (pkg / "model.sig").write_bytes(sig)
    with pytest.raises(SignatureError, match=r"model.sig: LICENSE is not covered by the signature .*does not match"):
        verify(pkg)


def test_unknown_signer_without_trusted_keys_is_a_distinct_warning(make_package, keys):
    from ebru.trust import load_signing_key

    kid = load_signing_key(keys.stranger).key_id
    signed = verify(make_package(sign_key=keys.stranger), quiet=True)
    unsigned = verify(make_package("plain"), quiet=True)
    assert signed.signer is None and len(signed.warnings) == 1
    assert f"is signed by key {kid[:16]}…" in signed.warnings[0] and "were not checked" in signed.warnings[0]
    assert "is unsigned and no trusted keys are configured" in unsigned.warnings[0]


@pytest.mark.parametrize(("content", "reason"), [
    (b"garbage", "signature bundle"),
    (b"", "signature bundle"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"', "signature bundle"),
    (b"{}", "the bundle has no 'dsseEnvelope'"),
])
def test_corrupt_signature_is_refused_without_keys(make_package, content, reason):
    pkg = make_package()
    (pkg / "model.sig").write_bytes(content)
    with pytest.raises(SignatureError) as e:
        verify(pkg)
    assert e.value.path == str(pkg / "model.sig") and reason in e.value.reason and "\n" not in str(e.value)


def test_corrupt_statement_is_refused_without_keys(make_package, keys):
    pkg = make_package(sign_key=keys.ed)
    _rewrite(pkg, lambda b: b["dsseEnvelope"].update(payload=base64.b64encode(b"[1, 2]").decode()))
    with pytest.raises(SignatureError, match=r"model.sig: the statement is not a JSON object"):
        verify(pkg)


def test_allow_unsigned_with_an_unknown_signer_still_checks_the_files(make_package, keys):
    """--allow-unsigned accepts an unknown signer, never a signature that no longer matches the files."""
    pkg = make_package(sign_key=keys.stranger)
    assert verify(pkg, trusted_keys=keys.trusted, allow_unsigned=True, quiet=True).signer is None
    _edit_manifest(pkg, lambda m: m["provenance"].update(dataset="something else"))
    with pytest.raises(SignatureError, match=r"manifest.json differs from the signed file"):
        verify(pkg, trusted_keys=keys.trusted, allow_unsigned=True)
