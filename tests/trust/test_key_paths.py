"""No local path of a private key leaves the machine: packages name signing keys by their public ID only."""

from __future__ import annotations

import json
import os

import pytest

from ebru.trust import load, load_signing_key, write_package, write_trained_package
from ebru.trust.redact import Redactor, key_reference

from .conftest import CARD, toy_weights


def assert_no_trace(directory, key_path):
    """Neither the key's path (as given or absolute) nor its file name appears in any file's bytes."""
    needles = {str(key_path), os.path.abspath(key_path), os.path.basename(key_path)}
    for f in sorted(directory.iterdir()):
        data = f.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{f.name} holds {needle!r}"


def training_config(key_path) -> dict:
    return {"steps": 2, "lr": 1e-3, "sign_key": str(key_path), "text": {"sign_key": str(key_path)}}


def test_trained_package_names_the_key_by_id_only(tmp_path, keys):
    """The training config goes into provenance (signed), config.json and possibly the card: none keeps the path."""
    cfg = training_config(keys.ed)
    config = {"kind": "toy", "training": {"config": cfg, "command": f"ebru train --set sign_key={keys.ed}"}}
    card = CARD + f"\nSigned at the end of training (sign_key = {keys.ed}).\n"
    out = write_trained_package(tmp_path / "model", config, toy_weights(), card,
                                {"created_by": "ebru train", "config": cfg}, sign_key=str(keys.ed),
                                metadata={"training_config": json.dumps(cfg)})
    assert_no_trace(out, keys.ed)
    kid = load_signing_key(keys.ed).key_id
    m = load(out, trusted_keys=keys.trusted)
    assert m.signer.key_id == kid
    ref = f"key-id:{kid}"
    assert m.manifest.provenance["config"]["sign_key"] == ref and m.manifest.provenance["config"]["text"] == \
        {"sign_key": ref}
    assert m.config["training"]["config"]["sign_key"] == ref
    assert m.config["training"]["command"] == f"ebru train --set sign_key={ref}"
    assert json.loads(m.metadata["training_config"])["sign_key"] == ref
    assert f"(sign_key = {ref})" in m.read("MODEL_CARD.md").decode()


def test_an_unusable_key_is_not_recorded_by_path_either(tmp_path, keys):
    """The key is gone by the end of the run: the package is written unsigned, still without the path."""
    missing = tmp_path / "vault" / "release.key"
    cfg = training_config(missing)
    with pytest.raises(ValueError, match=r"written to .* but not signed .*release.key: private key \(.key\) not found"):
        write_trained_package(tmp_path / "model", {"kind": "toy", "training": {"config": cfg}}, toy_weights(), CARD,
                              {"created_by": "ebru train", "config": cfg}, sign_key=str(missing))
    assert_no_trace(tmp_path / "model", missing)
    m = load(tmp_path / "model", quiet=True)
    assert m.manifest.provenance["config"]["sign_key"] == "key-id:unknown"


def test_relative_key_path_and_other_key_fields(tmp_path, keys, monkeypatch):
    """A relative sign_key, and a config naming a key that is not the one signing: all become key IDs."""
    monkeypatch.chdir(keys.dir)
    cfg = {"sign_key": "ed.key", "note": f"copied from {keys.dir / 'ed.key'}", "fallback": {"sign_key": str(keys.ec)}}
    out = write_package(tmp_path / "m", {"kind": "toy", "cfg": cfg}, toy_weights(), CARD, {"config": cfg},
                        sign_key="ed.key")
    assert_no_trace(out, keys.dir / "ed.key")
    assert_no_trace(out, keys.ec)
    ed, ec = key_reference(keys.ed), key_reference(keys.ec)
    got = load(out, trusted_keys=keys.trusted).config["cfg"]
    assert got == {"sign_key": ed, "note": f"copied from {ed}", "fallback": {"sign_key": ec}}


def test_redactor_leaves_everything_else_alone(keys):
    r = Redactor([keys.ed])
    value = {"steps": 3, "lr": 0.5, "names": ["a", "bed.keyboard", "red.key"], "sign_key": None, "out": "run/x"}
    assert r(value) == value  # no key path, no whole-component key file name, no sign_key value: unchanged
    assert r("path: /elsewhere/ed.key; done") == f"path: {key_reference(keys.ed)}; done"
