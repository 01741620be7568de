"""The one loader: order of checks, unsigned-package rules, refusals naming files, offline operation."""

from __future__ import annotations

import json
import pickle
import re
import socket
import subprocess
import sys

import pytest
import torch

import ebru
from ebru.trust import (
    IntegrityError,
    KeyFileError,
    SignatureError,
    UnsafeFileError,
    UntrustedKeyError,
    load,
    verify,
)
from ebru.trust.audit import read_entries
from ebru.trust.manifest import build_manifest

from .conftest import toy_weights


def test_whole_verify_and_load_path_runs_offline(make_package, keys):
    with pytest.raises(RuntimeError, match=r"network access is disabled"):
        socket.socket()  # the guard is real: no socket can even be created in these tests
    pkg = make_package(sign_key=keys.ec)
    m = ebru.load(pkg, trusted_keys=keys.trusted)
    assert m.signer.name == "ec" and m.warnings == [] and m.license.cls == "allow"
    for k, v in toy_weights().items():
        assert torch.equal(m.weights[k], v)
    assert m.config == {"kind": "toy", "n": 1}
    assert m.manifest.provenance["dataset_hash"] == "0" * 64
    assert ebru.load is load


def test_import_ebru_stays_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, ebru; print(sorted(m for m in sys.modules "
                          "if m.startswith(('ebru.trust', 'torch', 'cryptography', 'yaml'))))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unsigned_package_when_keys_are_configured(make_package, keys, capsys):
    pkg = make_package()
    with pytest.raises(SignatureError) as e:
        load(pkg, trusted_keys=keys.trusted)
    assert e.value.path == str(pkg / "model.sig")
    assert re.search(r"missing.*unsigned.*trusted keys are configured", e.value.reason), e.value.reason
    m = load(pkg, trusted_keys=keys.trusted, allow_unsigned=True)
    assert m.signer is None and "is UNSIGNED" in m.warnings[0]
    assert f"ebru: warning: {pkg} is UNSIGNED" in capsys.readouterr().err


def test_no_keys_configured_loads_with_a_warning(make_package, capsys):
    m = load(make_package())
    assert m.signer is None
    assert re.search(r"no trusted keys.*origin was not checked", m.warnings[0]), m.warnings
    assert "ebru: warning:" in capsys.readouterr().err


def test_keys_from_the_environment_and_the_default_directory(make_package, keys, monkeypatch, tmp_path):
    pkg = make_package()
    monkeypatch.setenv("EBRU_TRUSTED_KEYS", str(keys.trusted))
    with pytest.raises(SignatureError, match=r"unsigned and trusted keys are configured"):
        load(pkg)
    monkeypatch.delenv("EBRU_TRUSTED_KEYS")
    default = tmp_path / "xdg-config" / "ebru" / "trusted_keys"
    default.parent.mkdir(parents=True)
    keys.trusted.rename(default)
    with pytest.raises(SignatureError, match=rf"configured \({default}\)"):
        load(pkg)


def test_untrusted_and_expired_keys(make_package, keys):
    pkg = make_package(sign_key=keys.stranger)
    with pytest.raises(UntrustedKeyError, match=r"which is not among the trusted keys"):
        load(pkg, trusted_keys=keys.trusted)
    m = load(pkg, trusted_keys=keys.trusted, allow_unsigned=True, quiet=True)
    assert m.signer is None and "not among the trusted keys" in m.warnings[0]
    # Expire the trusted Ed25519 key (an operator edits the Expires line of the .pub).
    pub = keys.trusted / "ed.pub"
    lines = [("Expires: 2020-01-01T00:00:00Z" if line.startswith("Expires:") else line)
             for line in pub.read_text().splitlines()]
    pub.write_text("\n".join(lines) + "\n")
    signed = make_package("signed", sign_key=keys.ed)
    with pytest.raises(UntrustedKeyError, match=r"signed by ed .*expired on 2020-01-01"):
        load(signed, trusted_keys=keys.trusted)


def test_allow_unsigned_never_accepts_a_failing_signature(make_package, keys):
    pkg = make_package(sign_key=keys.ed)
    sig = json.loads((pkg / "model.sig").read_text())
    s = sig["dsseEnvelope"]["signatures"][0]["sig"]
    sig["dsseEnvelope"]["signatures"][0]["sig"] = ("B" if s[0] == "A" else "A") + s[1:]
    (pkg / "model.sig").write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match=r"does not verify"):
        load(pkg, trusted_keys=keys.trusted, allow_unsigned=True)


def test_structural_refusals_name_the_file(make_package, tmp_path):
    pkg = make_package()
    (pkg / "notes.txt").write_text("hi")
    with pytest.raises(IntegrityError) as e:
        load(pkg)
    assert e.value.path == str(pkg / "notes.txt") and re.match(r"is not in the manifest", e.value.reason)
    (pkg / "notes.txt").unlink()
    (pkg / "sub").mkdir()
    with pytest.raises(IntegrityError, match=r"sub: is a directory.*flat"):
        load(pkg)
    (pkg / "sub").rmdir()
    (pkg / ".hidden").write_text("x")
    with pytest.raises(IntegrityError, match=r"\.hidden: has a name packages do not allow"):
        load(pkg)
    (pkg / ".hidden").unlink()
    (pkg / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match=r"manifest.json: missing: .*'ebru package DIR'"):
        load(pkg)
    with pytest.raises(FileNotFoundError, match=r"model directory not found"):
        load(tmp_path / "nowhere")


def test_weights_changed_on_disk_are_refused(make_package):
    pkg = make_package()
    data = bytearray((pkg / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (pkg / "model.safetensors").write_bytes(data)
    with pytest.raises(IntegrityError, match=r"model.safetensors: SHA-256 .* does not match the manifest"):
        load(pkg)
    (pkg / "model.safetensors").write_bytes(data + b"x")
    with pytest.raises(IntegrityError, match=r"model.safetensors: is .* bytes, the manifest says"):
        load(pkg)


def test_hostile_weights_with_a_matching_manifest_are_refused(make_package):
    """An attacker who can write the manifest (no signatures configured) still cannot get a pickle loaded."""
    pkg = make_package()
    (pkg / "model.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    (pkg / "manifest.json").write_bytes(build_manifest(pkg, {}).to_json())
    with pytest.raises(UnsafeFileError) as e:
        load(pkg)
    assert e.value.path == str(pkg / "model.safetensors") and "a pickle stream (protocol 4" in e.value.reason


def test_config_must_be_a_strict_json_object(make_package):
    pkg = make_package()
    (pkg / "config.json").write_text('{"kind": "toy", "kind": "image-diffusion"}')
    (pkg / "manifest.json").write_bytes(build_manifest(pkg, {}).to_json())
    with pytest.raises(ValueError, match=r"config.json: config: duplicate key 'kind'"):
        load(pkg)


def test_loads_and_refusals_are_audited(make_package, keys, tmp_path):
    pkg = make_package(sign_key=keys.ed)
    load(pkg, trusted_keys=keys.trusted)
    with pytest.raises(KeyFileError):
        load(pkg, trusted_keys=tmp_path / "missing")
    verify(pkg, trusted_keys=keys.trusted)
    events = read_entries()
    assert [e["event"] for e in events] == ["package", "load", "refuse", "verify"]
    assert events[1]["data"]["signer"] == events[3]["data"]["signer"] != None  # noqa: E711
    assert events[2]["data"]["action"] == "load" and "trusted-keys directory not found" in events[2]["data"]["reason"]
    assert events[1]["data"]["license"]["class"] == "allow"


def test_read_model_dir_goes_through_the_loader(make_package, keys):
    from ebru.pipelines.image import read_model_dir

    pkg = make_package(sign_key=keys.ed)
    with pytest.raises(ValueError, match=r"config.json: not an ebru image-diffusion model config"):
        read_model_dir(pkg, trusted_keys=keys.trusted)
    other = make_package("unsigned")
    with pytest.raises(SignatureError, match=r"unsigned"):
        read_model_dir(other, trusted_keys=keys.trusted)


def test_malformed_lineage_in_the_manifest_is_refused(make_package):
    pkg = make_package()
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["lineage"] = [{"name": "base", "license": 3}]
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="lineage entry 'base': license must be a string"):
        load(pkg)
