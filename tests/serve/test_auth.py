"""Tokens: the file keeps salted scrypt hashes, never a token; 401 without or with a malformed token, 403 for a
wrong, unknown or expired one; a job is seen only by its token; the audit log names the token, never holds it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import pytest

from ebru.serve import create_app
from ebru.serve.auth import AuthError, TokenStore, add_token, read_token_file

from .conftest import read_events


def test_a_token_is_shown_once_and_its_file_keeps_only_a_salted_hash(tmp_path):
    path = tmp_path / "tokens.json"
    ana, bo = add_token(path, "ana"), add_token(path, "bo@lab")
    assert re.fullmatch(r"ebru-[0-9a-f]{8}-[A-Za-z0-9_-]{43}", ana) and ana != bo
    text = path.read_text(encoding="utf-8")
    assert ana not in text and ana.split("-", 2)[2] not in text and bo.split("-", 2)[2] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entries = read_token_file(path)
    assert [e.name for e in entries] == ["ana", "bo@lab"] and entries[0].salt != entries[1].salt
    secret = ana.split("-", 2)[2]
    e = entries[0]
    assert e.hash == hashlib.scrypt(secret.encode(), salt=e.salt, n=e.n, r=e.r, p=e.p, dklen=32)
    store = TokenStore(entries)
    assert store.check(f"Bearer {ana}") == "ana" and store.check(f"bearer  {bo} ") == "bo@lab"
    with pytest.raises(ValueError, match=r"already has a token named 'ana'"):
        add_token(path, "ana")
    with pytest.raises(ValueError, match=r"token name must be"):
        add_token(path, "../x")


@pytest.mark.parametrize("header,status,message", [
    (None, 401, r"needs a token"),
    ("Basic YW5hOnB3", 401, r"expected 'Bearer <token>'"),
    ("Bearer", 401, r"expected 'Bearer <token>'"),
    ("Bearer not-a-token", 401, r"malformed token"),
    ("Bearer ebru-00000000-" + "A" * 43, 403, r"not one this server accepts"),
])
def test_missing_malformed_and_unknown_tokens_are_refused(tmp_path, header, status, message):
    path = tmp_path / "tokens.json"
    add_token(path, "ana")
    with pytest.raises(AuthError, match=message) as e:
        TokenStore.from_file(path).check(header)
    assert e.value.status == status


def test_a_wrong_secret_and_an_expired_token_are_403(tmp_path):
    path = tmp_path / "tokens.json"
    good = add_token(path, "ana")
    old = add_token(path, "old", expires_days=0)
    store = TokenStore.from_file(path)
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")
    with pytest.raises(AuthError, match=r"not one this server accepts") as e:
        store.check(f"Bearer {wrong}")
    assert e.value.status == 403
    with pytest.raises(AuthError, match=r"expired at") as e:
        store.check(f"Bearer {old}")
    assert e.value.status == 403


def test_a_damaged_token_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "tokens.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokens.json: not a token file"):
        read_token_file(bad)
    bad.write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"not an ebru serve token file"):
        read_token_file(bad)
    with pytest.raises(OSError):
        read_token_file(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def guarded(models, state, serve, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens = {name: add_token(path, name) for name in ("ana", "bo")}
    running = serve(create_app([models["cond"]], tokens_file=path, out_dir=state / "out"))
    return running, tokens


def test_the_server_lets_in_only_its_tokens(guarded):
    running, tokens = guarded
    c = running.client
    assert c.get("/healthz").json()["auth"] == "token"  # health and the page need no token
    assert c.get("/").status_code == 200
    r = c.get("/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert re.search(r"needs a token", r.json()["error"]["message"])
    r = c.get("/v1/models", headers={"Authorization": "Bearer ebru-12345678-" + "x" * 43})
    assert r.status_code == 403 and 'error="invalid_token"' in r.headers["www-authenticate"]
    r = c.post("/v1/generations", content=b"x" * 200_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # refused before the body is even read
    ok = c.get("/v1/models", headers={"Authorization": f"Bearer {tokens['ana']}"})
    assert ok.status_code == 200 and ok.json()["models"][0]["name"] == "cond"


def test_a_job_is_seen_only_by_its_token_and_the_audit_log_names_it(guarded, state):
    running, tokens = guarded
    c = running.client
    ana, bo = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("ana", "bo"))
    r = c.post("/v1/generations", json={"model": "cond", "n": 1, "steps": 1, "seed": 4}, headers=ana)
    assert r.status_code == 202
    jid = r.json()["job_id"]
    assert read_events(c, jid, headers=ana)[-1][0] == "done"
    assert c.get(f"/v1/jobs/{jid}", headers=bo).status_code == 404
    assert c.get(f"/v1/jobs/{jid}/images/0", headers=bo).status_code == 404
    assert c.post(f"/v1/jobs/{jid}/cancel", headers=bo).status_code == 404
    assert c.get(f"/v1/jobs/{jid}/images/0", headers=ana).status_code == 200
    log = (state / "audit.jsonl").read_text(encoding="utf-8")
    entries = [json.loads(line) for line in log.splitlines()]
    mine = [e for e in entries if e["event"] == "generation" and e["data"].get("job") == jid
            and e["data"].get("source") == "ebru serve"]
    assert len(mine) == 1 and mine[0]["data"]["client"] == "ana" and mine[0]["data"]["seeds"] == [4]
    (out,) = mine[0]["data"]["outputs"]
    assert out["sha256"] == hashlib.sha256(c.get(f"/v1/jobs/{jid}/images/0", headers=ana).content).hexdigest()
    for token in tokens.values():
        assert token not in log and token.split("-", 2)[2] not in log


def test_a_cancelled_job_is_on_the_audit_log_with_how_far_it_got_and_no_outputs(guarded, state):
    running, tokens = guarded
    c = running.client
    ana = {"Authorization": f"Bearer {tokens['ana']}"}
    blocker = c.post("/v1/generations", json={"model": "cond", "n": 16, "steps": 200, "sampler": "heun", "seed": 0},
                     headers=ana).json()["job_id"]
    waiting = c.post("/v1/generations", json={"model": "cond", "n": 1, "steps": 2, "seed": 9}, headers=ana)
    jid = waiting.json()["job_id"]
    for job in (jid, blocker):
        assert c.post(f"/v1/jobs/{job}/cancel", headers=ana).status_code == 202
        assert read_events(c, job, headers=ana)[-1][0] == "cancelled"
    entries = [json.loads(line) for line in (state / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    mine = {e["data"]["job"]: e["data"] for e in entries if e["event"] == "generation"
            and e["data"].get("job") in (jid, blocker)}
    assert set(mine) == {jid, blocker}
    for job, data in mine.items():
        assert data["state"] == "cancelled" and data["client"] == "ana" and "outputs" not in data
        assert data["total"] == (2 if job == jid else 200) and data["step"] < data["total"]
    assert mine[jid]["seeds"] == [9] and mine[jid]["step"] == 0
