"""``ebru ca init``, ``ebru provenance verify`` and ``ebru provenance find``: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ebru.cli import main
from ebru.provenance import write_signed_png


@pytest.fixture(autouse=True)
def c2pa_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("EBRU_C2PA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("EBRU_PROVENANCE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebru: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def signed(tmp_path, name="a.png", wid=4242):
    img = (np.random.default_rng(wid).random((16, 16)) * 255).astype(np.uint8)
    return write_signed_png(img, tmp_path / name, model_digest="e1" * 32, license="mit",
                            parameters={"sampler": "euler", "steps": 4, "guidance": 1.0, "seed": 3},
                            watermark_id=wid, watermark_key_id="feedfacecafebeef")


def test_ca_init_writes_the_four_files_and_refuses_to_overwrite(capsys, tmp_path):
    code, out, err = run(capsys, "ca", "init", "--org", "Lab One", "--days", "90")
    assert code == 0 and err == ""
    assert f"root:      {tmp_path / 'ca' / 'root.pem'}" in out and "move it offline" in out
    assert "O=Lab One" in out
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["root.key", "root.pem", "signer.key", "signer.pem"]
    code, out, err = run(capsys, "ca", "init")
    assert code == 2 and out == ""
    one_error_line(err, r"already holds a C2PA CA .*pass --force")
    code, _, _ = run(capsys, "ca", "init", "--force", "--dir", str(tmp_path / "elsewhere"))
    assert code == 0 and (tmp_path / "elsewhere" / "signer.pem").exists()
    code, _, err = run(capsys, "ca", "init", "--days", "0")
    assert code == 2
    one_error_line(err, r"--days")


def test_verify_trusted_is_exit_0_with_one_line_per_file(capsys, tmp_path):
    run(capsys, "ca", "init")
    a, b = signed(tmp_path, "a.png", 1), signed(tmp_path, "b.png", 2)
    code, out, err = run(capsys, "provenance", "verify", str(a.path), str(b.path))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{a.path}: Trusted — signed by ") and "watermark id 1" in lines[0]
    assert "model e1e1e1e1e1e1e1e1…" in lines[0]


def test_verify_reports_every_file_and_exits_2_unless_all_trusted(capsys, tmp_path):
    run(capsys, "ca", "init")
    good = signed(tmp_path).path
    data = bytearray(good.read_bytes())
    data[-30] ^= 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    code, out, err = run(capsys, "provenance", "verify", str(good), str(bad), str(text))
    assert code == 2
    lines = out.splitlines()
    assert [ln.split(": ", 1)[1].split(" ")[0] for ln in lines] == ["Trusted", "Invalid", "Error"]
    assert "not a PNG or JPEG image" in lines[2]
    one_error_line(err, r"2 of 3 file\(s\) not Trusted")

    report_file = tmp_path / "report.json"
    code, out2, err = run(capsys, "provenance", "verify", "--json", str(report_file), str(good), str(bad), str(text))
    assert code == 2 and out2 == out
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert [r["state"] for r in report] == ["Trusted", "Invalid", "Error"]
    assert report[0]["manifest"]["generation"]["watermark"]["id"] == 4242
    assert report[0]["manifest"]["local_record"] == "matches"


def test_verify_against_another_root_is_valid_and_exit_2(capsys, tmp_path):
    run(capsys, "ca", "init")
    good = signed(tmp_path).path
    run(capsys, "ca", "init", "--dir", str(tmp_path / "other"))
    code, out, err = run(capsys, "provenance", "verify", "--anchors", str(tmp_path / "other" / "root.pem"), str(good))
    assert code == 2 and ": Valid — " in out and "not under the trusted root" in out
    code, out, err = run(capsys, "provenance", "verify", "--anchors", str(tmp_path / "none.pem"), str(good))
    assert code == 2 and out == ""
    one_error_line(err, r"none\.pem: trust anchors file not found")
    (tmp_path / "junk.pem").write_text("not a certificate", encoding="utf-8")
    code, out, err = run(capsys, "provenance", "verify", "--anchors", str(tmp_path / "junk.pem"), str(good))
    assert code == 2 and out == ""
    one_error_line(err, r"junk\.pem: not a PEM certificate bundle")


def test_find_by_id_and_by_file(capsys, tmp_path):
    run(capsys, "ca", "init")
    s = signed(tmp_path)
    code, out, err = run(capsys, "provenance", "find", "--id", "4242")
    assert code == 0 and err == ""
    assert f"record:    {s.path.absolute()}" in out and f"sha256:    {s.sha256}" in out
    assert "watermark: id 4242, key feedfacecafebeef" in out and f"manifest:  {s.label}" in out
    assert "signature: valid, signed by CN=" in out
    code, out2, _ = run(capsys, "provenance", "find", str(s.path), "--json", str(tmp_path / "r.json"))
    assert code == 0 and out2 == out
    [entry] = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert entry["record"]["sha256"] == s.sha256 and entry["manifest"]["label"] == s.label
    assert entry["envelope"]["payloadType"] == "application/vnd.in-toto+json"


def test_find_errors_are_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "provenance", "find", "--id", "99")
    assert code == 2 and out == ""
    one_error_line(err, r"no generation record for watermark id 99")
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    code, _, err = run(capsys, "provenance", "find", str(other))
    assert code == 2
    one_error_line(err, r"no generation record for this file's SHA-256 .* or its post-hoc mark .*--model MODEL_DIR")
    code, _, err = run(capsys, "provenance", "find")
    assert code == 2
    one_error_line(err, r"give FILE or --id N")
    code, _, err = run(capsys, "provenance", "find", "--id", "-1")
    assert code == 2
    one_error_line(err, r"--id")
    code, _, err = run(capsys, "provenance", "find", str(tmp_path / "missing.png"))
    assert code == 2
    one_error_line(err, r"missing\.png: cannot read the file")
