"""How ``ebru`` ends: one error line and exit 2 for a mistake, 130 for an interrupt, 141 for a closed pipe,
1 for a bug; ``--traceback`` and ``EBRU_DEBUG=1`` show the stack trace behind the line."""

from __future__ import annotations

import re

import pytest

from ebru.cli import image, main

TRACE = "Traceback (most recent call last)"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def failing_samplers(monkeypatch, error: BaseException) -> None:
    """Make ``ebru samplers`` raise ``error`` (the parser is built per call, so it picks this up)."""

    def boom(args):
        raise error

    monkeypatch.setattr(image, "_cmd_samplers", boom)


def test_a_user_error_is_one_line_without_a_trace(capsys, tmp_path):
    code, out, err = run(capsys, "verify", str(tmp_path / "missing"))
    assert (code, out) == (2, "")
    assert TRACE not in err and len(err.splitlines()) == 1 and err.startswith("ebru: error: ")


@pytest.mark.parametrize("how", ["--traceback", "EBRU_DEBUG=1"])
def test_traceback_flag_and_debug_env_show_the_stack(capsys, monkeypatch, tmp_path, how):
    argv = ["verify", str(tmp_path / "missing")]
    if how == "--traceback":
        argv.insert(0, "--traceback")
    else:
        monkeypatch.setenv("EBRU_DEBUG", "1")
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == TRACE + ":" and re.search(r'File ".*ebru/cli/trust\.py", line \d+, in _cmd_verify', err)
    assert lines[-1].startswith("ebru: error: ") and "missing" in lines[-1]


@pytest.mark.parametrize("value", ["0", ""])
def test_debug_env_off_values(capsys, monkeypatch, tmp_path, value):
    monkeypatch.setenv("EBRU_DEBUG", value)
    _, _, err = run(capsys, "verify", str(tmp_path / "missing"))
    assert TRACE not in err


def test_an_unexpected_error_is_one_line_exit_1_and_asks_for_the_trace(capsys, monkeypatch):
    failing_samplers(monkeypatch, RuntimeError("boom\nsecond line"))
    code, _, err = run(capsys, "samplers")
    assert code == 1 and TRACE not in err
    # the facts: unexpected, the exception's type and text (on one line), and how to see the trace
    assert re.search(r"^ebru: error: unexpected RuntimeError: boom second line .*report.*--traceback.*EBRU_DEBUG=1",
                     err) and err.count("\n") == 1
    code, _, err = run(capsys, "--traceback", "samplers")
    assert code == 1 and err.startswith(TRACE) and "in boom" in err


def test_an_os_error_names_the_file_not_the_errno(capsys, monkeypatch):
    failing_samplers(monkeypatch, PermissionError(13, "Permission denied", "/data/out.png"))
    code, _, err = run(capsys, "samplers")
    assert code == 2 and err.count("\n") == 1
    assert re.match(r"ebru: error: /data/out\.png: Permission denied$", err) and "Errno" not in err and "13" not in err
    failing_samplers(monkeypatch, FileNotFoundError("bundle not found: b.tar"))
    err = run(capsys, "samplers")[2]
    assert err.count("\n") == 1 and re.match(r"ebru: error: bundle not found: b\.tar$", err)


def test_an_interrupt_inside_a_command_is_one_line_and_130(capsys, monkeypatch):
    failing_samplers(monkeypatch, KeyboardInterrupt())
    assert run(capsys, "samplers") == (130, "", "ebru: interrupted\n")


def test_a_broken_pipe_inside_a_command_is_quiet_and_141(capsys, monkeypatch):
    failing_samplers(monkeypatch, BrokenPipeError(32, "Broken pipe"))
    assert run(capsys, "samplers") == (141, "", "")
