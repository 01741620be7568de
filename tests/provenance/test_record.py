"""The generation record: audit log entries, the DSSE-signed store keyed by watermark id, and re-association.

- every write appends a ``generation`` entry (output SHA-256, watermark id and key id, model digest,
  parameters, manifest label, path) and the hash chain still verifies;
- the store holds the record and the manifest per watermark id; a stripped, re-encoded copy's id finds both;
- the record's DSSE signature verifies against the local root, and fails once the record is edited;
- a generation that cannot be recorded leaves no file; concurrent writers lose nothing;
- bad arguments and a damaged store file: one line each.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from ebru.provenance import (
    GenerationRecord,
    ProvenanceError,
    find_by_id,
    find_by_sha256,
    init_ca,
    known_ids,
    load_identity,
    record_generation,
    store_dir,
    verify_file,
    write_signed_png,
)
from ebru.provenance.record import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae
from ebru.trust.audit import read_entries, verify_log
from ebru.trust.errors import AuditError

DIGEST = "c0" * 32


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("EBRU_C2PA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("EBRU_PROVENANCE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("EBRU_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def ident(tmp_path):
    return load_identity(init_ca(tmp_path / "ca").directory)


def pixels(seed=0, size=64):
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def kw(**over):
    out = {"model_digest": DIGEST, "license": "apache-2.0", "prompt": "a bag",
           "parameters": {"sampler": "heun", "steps": 18, "guidance": 3.0, "seed": 11},
           "watermark_id": 31337, "watermark_key_id": "0123456789abcdef"}
    out.update(over)
    return out


def test_a_write_appends_the_generation_to_the_audit_log_and_the_store(tmp_path, ident):
    out = write_signed_png(pixels(), tmp_path / "out" / "a.png", identity=ident, **kw())
    sha = hashlib.sha256(out.path.read_bytes()).hexdigest()
    assert out.sha256 == sha
    entries = read_entries()
    assert [e["event"] for e in entries] == ["generation"]
    data = entries[0]["data"]
    assert data["path"] == str((tmp_path / "out" / "a.png").absolute()) and data["sha256"] == sha
    assert (data["watermark_id"], data["watermark_key_id"]) == (31337, "0123456789abcdef")
    assert data["model_digest"] == DIGEST and data["license"] == "apache-2.0"
    assert data["manifest_label"] == out.label
    assert data["parameters"] == {"sampler": "heun", "steps": 18, "guidance": 3.0, "seed": 11, "prompt_policy": "hash",
                                  "prompt_sha256": hashlib.sha256(b"a bag").hexdigest()}
    assert "a bag" not in json.dumps(entries)  # the prompt itself is not recorded under the default policy
    assert verify_log().entries == 1

    [rec] = find_by_id(31337)
    assert rec.record == data and rec.manifest == out.manifest
    assert rec.audit["seq"] == 0 and rec.audit["hash"] == entries[0]["hash"]
    assert (store_dir() / "31337.json").exists() and known_ids() == [31337]
    assert find_by_sha256(sha)[0].record == data
    assert out.record.record == data


def test_the_record_is_a_signed_in_toto_statement(tmp_path, ident):
    out = write_signed_png(pixels(), tmp_path / "a.png", identity=ident, **kw())
    [rec] = find_by_id(31337)
    env = rec.envelope
    assert env["payloadType"] == PAYLOAD_TYPE and env["signatures"][0]["keyid"] == ident.key_id
    statement = json.loads(base64.b64decode(env["payload"]))
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [{"name": "a.png", "digest": {"sha256": out.sha256}}]
    assert statement["predicate"] == rec.record
    # PAE exactly as the DSSE protocol spells it
    assert pae("t", b"abc") == b"DSSEv1 1 t 3 abc"
    assert rec.verify_signature(ident.root_pem) == ident.subject

    edited = GenerationRecord({**rec.record, "model_digest": "ff" * 32}, rec.manifest, rec.envelope,
                              rec.signer_chain, rec.audit)
    with pytest.raises(ProvenanceError, match=r"does not match the record \(the record was altered\)"):
        edited.verify_signature(ident.root_pem)
    forged = GenerationRecord(rec.record, None, {**env, "payload": base64.b64encode(b"{}").decode()},
                              rec.signer_chain, None)
    with pytest.raises(ProvenanceError, match=r"signature does not verify"):
        forged.verify_signature()
    other_root = init_ca(tmp_path / "other").root_cert.read_bytes()
    with pytest.raises(ProvenanceError, match=r"not under the local root"):
        rec.verify_signature(other_root)


def test_a_stripped_recompressed_copy_finds_its_record_and_manifest_by_id(tmp_path, ident):
    out = write_signed_png(pixels(), tmp_path / "a.png", identity=ident, **kw())
    write_signed_png(pixels(1), tmp_path / "b.png", identity=ident, **kw(watermark_id=5))
    img = Image.open(out.path).convert("RGB")
    img = img.resize((img.width // 2, img.height // 2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)  # metadata stripped, re-compressed, resized x0.5
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(buf.getvalue())
    assert verify_file(copy).state == "None"
    assert find_by_sha256(hashlib.sha256(copy.read_bytes()).hexdigest()) == []
    decoded_id = 31337  # what the watermark decoder reads from the copy (ebru.provenance.watermark)
    [rec] = find_by_id(decoded_id)
    assert rec.path == str(out.path.absolute()) and rec.manifest["label"] == out.label
    assert rec.record["manifest_label"] == out.label and rec.manifest == out.manifest
    assert known_ids() == [5, 31337]


def test_two_outputs_with_one_id_are_both_kept_in_order(tmp_path, ident):
    a = write_signed_png(pixels(0), tmp_path / "a.png", identity=ident, **kw())
    b = write_signed_png(pixels(1), tmp_path / "b.png", identity=ident, **kw())
    assert [r.sha256 for r in find_by_id(31337)] == [a.sha256, b.sha256]
    assert verify_log().entries == 2


def test_an_unwatermarked_output_is_recorded_by_its_sha256(tmp_path, ident):
    out = write_signed_png(pixels(), tmp_path / "a.png", identity=ident, **kw(watermark_id=None))
    assert known_ids() == []
    [rec] = find_by_sha256(out.sha256)
    assert rec.watermark_id is None and rec.record["watermark_key_id"] is None
    assert (store_dir() / f"sha256-{out.sha256}.json").exists()


def test_a_generation_that_cannot_be_recorded_leaves_no_file(tmp_path, ident, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(blocker / "audit.jsonl"))
    dst = tmp_path / "out" / "a.png"
    with pytest.raises(AuditError, match=r"cannot open the audit log"):
        write_signed_png(pixels(), dst, identity=ident, **kw())
    assert list(dst.parent.iterdir()) == [] and find_by_id(31337) == []

    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("EBRU_PROVENANCE_STORE", str(blocker / "store"))
    with pytest.raises(ProvenanceError, match=r"cannot open the provenance store"):
        write_signed_png(pixels(), dst, identity=ident, **kw())
    assert list(dst.parent.iterdir()) == []
    # the audit log says what happened: a generation entry, then its abandonment
    assert [e["event"] for e in read_entries()] == ["generation", "refuse"]
    assert verify_log().entries == 2


def test_concurrent_writers_lose_no_record(tmp_path):
    errors = []

    def work(k):
        try:
            for i in range(5):
                record_generation(tmp_path / f"{k}-{i}.png", f"{k:02x}{i:02x}".ljust(64, "0"), 7, "kid", DIGEST, "mit",
                                  {"seed": i}, None)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(find_by_id(7)) == 30 and verify_log().entries == 30


def test_bad_arguments_are_one_line_each(tmp_path):
    good = dict(path=tmp_path / "a.png", image_sha256="ab" * 32, watermark_id=1, key_id="k", model_digest=DIGEST,
                license="mit", parameters={"seed": 1}, manifest_label=None)
    for change, message in [({"image_sha256": "xyz"}, r"image_sha256 must be 64 lowercase hex"),
                            ({"watermark_id": -3}, r"watermark_id must be an integer >= 0, got -3"),
                            ({"watermark_id": True}, r"watermark_id must be an integer >= 0"),
                            ({"model_digest": ""}, r"model_digest must be"),
                            ({"parameters": [1]}, r"parameters must be a mapping"),
                            ({"parameters": {"g": float("inf")}}, r"parameters must be plain JSON")]:
        with pytest.raises(ValueError, match=message):
            record_generation(**{**good, **change})
    with pytest.raises(ValueError, match=r"watermark_id must be an integer >= 0"):
        find_by_id(-1)
    assert read_entries() == []


def test_a_damaged_store_file_is_one_line(tmp_path):
    store = store_dir()
    store.mkdir(parents=True)
    (store / "9.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ProvenanceError, match=r"9\.json: the store file is not valid JSON"):
        find_by_id(9)
    (store / "9.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ProvenanceError, match=r"not an ebru provenance store file"):
        find_by_id(9)
    assert find_by_id(10) == [] and known_ids() == [9]


def test_the_store_location(tmp_path, monkeypatch):
    assert store_dir() == tmp_path / "store"
    monkeypatch.delenv("EBRU_PROVENANCE_STORE")
    assert store_dir() == tmp_path / "xdg-data" / "ebru" / "provenance"
    assert store_dir(tmp_path / "x") == tmp_path / "x"
