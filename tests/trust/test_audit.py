"""The audit log's hash chain: edits, reorders, deletions and cut-off tails are all detected."""

from __future__ import annotations

import itertools
import json
import multiprocessing

import pytest

from ebru.trust import AuditError
from ebru.trust.audit import GENESIS, entry_hash, log_path, read_entries, record, verify_log
from ebru.trust.strict_json import dumps_canonical


def write_log(n: int = 5) -> list[bytes]:
    for i in range(n):
        record("load", {"path": f"/models/m{i}", "i": i})
    return log_path().read_bytes().splitlines(keepends=True)


def test_chain_links_every_entry(tmp_path):
    lines = write_log(4)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    for a, b in itertools.pairwise(entries):
        assert b["prev"] == a["hash"]
    for e in entries:
        assert e["hash"] == entry_hash(e) and set(e) == {"seq", "time", "event", "user", "host", "pid", "data",
                                                          "prev", "hash"}
    s = verify_log()
    assert (s.entries, s.head) == (4, entries[-1]["hash"])


def tamper(lines: list[bytes]) -> None:
    log_path().write_bytes(b"".join(lines))


def test_edited_entry_detected():
    lines = write_log()
    e = json.loads(lines[2])
    e["data"]["path"] = "/models/innocent"
    tamper([*lines[:2], (dumps_canonical(e) + "\n").encode(), *lines[3:]])
    with pytest.raises(AuditError, match=r"line 3: the entry was edited"):
        verify_log()


def test_edited_entry_with_recomputed_hash_breaks_the_next_link():
    lines = write_log()
    e = json.loads(lines[2])
    e["data"]["path"] = "/models/innocent"
    e["hash"] = entry_hash(e)
    tamper([*lines[:2], (dumps_canonical(e) + "\n").encode(), *lines[3:]])
    with pytest.raises(AuditError, match=r"line 4: the chain is broken"):
        verify_log()


@pytest.mark.parametrize(("change", "message"), [
    (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 2: sequence number 2 where 1 was expected"),
    (lambda ls: [ls[0], *ls[2:]], "line 2: sequence number 2 where 1 was expected"),
    (lambda ls: ls[1:], "line 1: sequence number 1 where 0 was expected"),
    (lambda ls: [*ls[:3], ls[3], *ls[3:]], "line 5: sequence number 3 where 4 was expected"),
    (lambda ls: [*ls[:-1], ls[-1][:-10]], "the last line is incomplete"),
    (lambda ls: [*ls[:2], b"{}\n", *ls[2:]], "line 3: not an audit entry"),
    (lambda ls: [*ls[:2], b"garbage\n", *ls[2:]], "line 3 is not valid JSON"),
])
def test_reordered_deleted_inserted_entries_detected(change, message):
    tamper(change(write_log()))
    with pytest.raises(AuditError) as e:
        verify_log()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_renumbered_deletion_detected_by_prev():
    """Deleting an entry and renumbering the rest (recomputing their hashes) still breaks at prev."""
    entries = [json.loads(line) for line in write_log()]
    del entries[2]
    for i, e in enumerate(entries):
        e["seq"] = i
        e["hash"] = entry_hash(e)
    tamper([(dumps_canonical(e) + "\n").encode() for e in entries])
    with pytest.raises(AuditError, match=r"line 3: the chain is broken"):
        verify_log()


def test_cut_off_tail_detected_with_a_noted_head():
    lines = write_log()
    head = verify_log().head
    tamper(lines[:-2])
    assert verify_log().entries == 3  # a shorter chain is still a chain ...
    with pytest.raises(AuditError, match=r"no longer holds the entry with hash .*cut off"):
        verify_log(head=head)  # ... which the head noted elsewhere exposes


def test_appends_continue_the_chain_after_verification(tmp_path):
    write_log(2)
    record("sign", {"path": tmp_path / "m"})  # non-JSON values (paths) are recorded as text
    assert verify_log().entries == 3 and read_entries()[-1]["data"] == {"path": str(tmp_path / "m")}


def _append_many(path: str, n: int) -> None:
    for i in range(n):
        record("load", {"i": i}, path=path)


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, 15)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    assert verify_log(path).entries == 60


def test_log_location_and_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("EBRU_AUDIT_LOG", "off")
    assert record("load", {}) is None and log_path() is None
    monkeypatch.delenv("EBRU_AUDIT_LOG")
    assert log_path() == tmp_path / "xdg-state" / "ebru" / "audit.jsonl"
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "file" / "audit.jsonl"))
    with pytest.raises(AuditError, match=r"cannot open the audit log .*EBRU_AUDIT_LOG"):
        record("load", {})
    with pytest.raises(AuditError, match=r"audit log not found"):
        verify_log(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match=r"unknown audit event 'delete'"):
        record("delete", {})
