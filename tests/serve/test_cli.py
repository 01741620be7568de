"""``ebru serve`` on the command line: start-up faults are one line and exit 2; a real start serves and stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ebru.cli import main
from ebru.cli.serve import bind_warning


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_DEBUG", "EBRU_SERVE_TOKENS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


def one_error_line(err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebru: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_no_model_is_one_line_and_exit_2(capsys):
    code, _, err = run(capsys, "serve")
    assert code == 2
    one_error_line(err, r"give at least one model directory")


def test_a_model_that_fails_verification_stops_start_up(capsys, models, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(models["cond"], bad)
    cfg = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    cfg["sampling"]["steps"] = 99
    (bad / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    code, out, err = run(capsys, "serve", bad, "--port", 0, "--out", tmp_path / "out")
    assert code == 2 and "ebru serve:" not in out
    one_error_line(err, r"config\.json.*(SHA-256|hash|manifest)")
    code, _, err = run(capsys, "serve", tmp_path / "nowhere", "--port", 0)
    assert code == 2
    one_error_line(err, r"nowhere: no such model directory")


def test_a_port_in_use_is_one_line_and_exit_2(capsys, models, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, _, err = run(capsys, "serve", models["cond"], "--port", taken.getsockname()[1], "--out", tmp_path)
    finally:
        taken.close()
    assert code == 2
    one_error_line(err, r"cannot listen on 127\.0\.0\.1:\d+: the port is in use")


def test_an_unreadable_or_damaged_token_file_is_one_line_and_exit_2(capsys, models, tmp_path):
    code, _, err = run(capsys, "serve", models["cond"], "--tokens", tmp_path / "missing.json", "--port", 0)
    assert code == 2
    one_error_line(err, r"missing\.json: No such file")
    (tmp_path / "bad.json").write_text("[]", encoding="utf-8")
    code, _, err = run(capsys, "serve", models["cond"], "--tokens", tmp_path / "bad.json", "--port", 0)
    assert code == 2
    one_error_line(err, r"bad\.json: not an ebru serve token file")
    code, _, err = run(capsys, "serve", models["cond"], "--limit", "max_queu=3", "--port", 0)
    assert code == 2
    one_error_line(err, r"unknown --limit key 'max_queu' \(did you mean 'max_queue'\?\)")


def test_add_token_prints_the_token_once_into_the_default_file(capsys, tmp_path):
    code, out, err = run(capsys, "serve", "--add-token", "ana")
    assert code == 0 and re.fullmatch(r"ebru-[0-9a-f]{8}-[A-Za-z0-9_-]{43}\n", out)
    path = tmp_path / "config" / "ebru" / "serve_tokens.json"
    assert f"added to {path}" in err and out.strip() not in path.read_text(encoding="utf-8")
    code, _, err = run(capsys, "serve", "--add-token", "ana")
    assert code == 2
    one_error_line(err, r"already has a token named 'ana'")


def test_a_server_bound_beyond_this_machine_without_tokens_is_warned_about():
    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None
    assert bind_warning("0.0.0.0", "tokens.json") is None
    assert re.search(r"listening on 0\.0\.0\.0 without tokens", bind_warning("0.0.0.0", None))


def test_ebru_serve_starts_serves_and_stops_cleanly_on_ctrl_c(models, tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "EBRU_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ebru", "serve", str(models["cond"]), "--port", "0", "--out",
                             str(tmp_path / "out"), "--log-level", "warning"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"ebru serve: cond on (http://127\.0\.0\.1:\d+/)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        url = m.group(1)
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(url + "healthz", timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert r.json()["models"] == ["cond"]
        r = httpx.post(url + "v1/images/generations", json={"prompt": "Bag", "steps": 1, "seed": 0}, timeout=30)
        assert r.status_code == 200 and r.json()["seeds"] == [0]
        assert len(list((tmp_path / "out").glob("*/sample-Bag-seed0000.png"))) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 130 and "ebru: interrupted" in proc.stderr.read()  # ebru's status for Ctrl-C, after a clean stop


def test_ctrl_c_mid_job_cancels_it_tells_its_streams_why_and_leaves_no_files(models, tmp_path):
    """Before: an open event stream held the shutdown for uvicorn's whole graceful timeout (5 s), the job ran on,
    the stream was cut without an end event, and a CancelledError traceback was printed."""
    import threading

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "EBRU_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ebru", "serve", str(models["cond"]), "--port", "0", "--out",
                             str(tmp_path / "out"), "--log-level", "warning", "--limit", "max_steps=5000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    events: list[tuple[str, dict]] = []
    started = threading.Event()

    def stream(url: str, job_id: str) -> None:
        name = None
        with httpx.stream("GET", f"{url}v1/jobs/{job_id}/events", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    if name == "progress":
                        started.set()

    try:
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else "no start line"
        url = m.group(1)
        r = httpx.post(url + "v1/generations", json={"n": 16, "steps": 5000, "sampler": "heun", "seed": 0}, timeout=30)
        job_id = r.json()["job_id"]
        waiting = httpx.post(url + "v1/generations", json={"n": 1, "steps": 1, "seed": 0}, timeout=30)
        assert waiting.status_code == 202  # a waiting job, cancelled at once by the shutdown, must not hold it
        reader = threading.Thread(target=stream, args=(url, job_id), daemon=True)
        reader.start()
        assert started.wait(20)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    reader.join(5)
    err = proc.stderr.read()
    assert code == 130 and "Traceback" not in err, err  # no CancelledError from a stream cut at the 5 s timeout
    assert events[-1][0] == "cancelled" and events[-1][1]["reason"] == "the server is shutting down", events[-3:]
    assert events[-1][1]["step"] < 5000
    assert not list((tmp_path / "out").glob("**/*"))  # neither job wrote anything: no file without its record
