"""The ``ebru`` parser as a whole: every command's flags are checked the same way, before any work.

These tests walk the parser's sub-commands, so a command added later is held to the same rules:
the same trust flags on every command that loads or decides on a package; no integer, number,
output path or device accepted without its check; one error line and exit 2 for each refusal.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ebru.cli import argtypes, main
from ebru.cli.app import build_parser
from ebru.cli.options import TRUST_FLAGS


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(``"text generate"``, parser) for every leaf command."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, (*path, name))


COMMANDS = dict(commands(build_parser()))
# A positional naming a package or a bundle: the command loads it or decides whether to accept it.
PACKAGE_ARGS = {"model_dir", "bundle"}
# `ebru sign` vouches for a package with the signer's own key; it decides nothing about trusting one.
NOT_DECIDING = {"sign"}


def positionals(parser):
    return [a for a in parser._actions if not a.option_strings]


def options(parser):
    return [a for a in parser._actions if a.option_strings]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebru: error: "), err
    return lines[0]


def placeholders(name: str) -> list[str]:
    """The command words and a value for each positional argument (never read: parsing fails first)."""
    return [*name.split(), *["X.png" if a.type is argtypes.image_file else "X" for a in positionals(COMMANDS[name])]]


def test_the_walk_finds_every_command():
    assert {"sample", "eval", "train", "text generate", "text infill", "keys generate", "audit show", "unpack"} \
        <= set(COMMANDS)


def test_every_command_that_loads_or_decides_on_a_package_takes_the_same_trust_flags():
    deciding = {name for name, p in COMMANDS.items()
                if PACKAGE_ARGS & {a.dest for a in positionals(p)} and name not in NOT_DECIDING}
    assert deciding == {"sample", "eval", "text generate", "text infill", "text eval", "verify", "package", "pack",
                        "unpack", "serve"}

    def definition(parser, flag):
        a = next(a for a in options(parser) if flag in a.option_strings)
        return (a.option_strings, a.dest, a.default, a.nargs, a.const, a.type, a.metavar, type(a).__name__)

    reference = {flag: definition(COMMANDS["verify"], flag) for flag in TRUST_FLAGS}
    for name in deciding:
        assert {flag: definition(COMMANDS[name], flag) for flag in TRUST_FLAGS} == reference, name
    # and no other command half-takes them (keys list reads the trusted keys only)
    for name, p in COMMANDS.items():
        given = {f for a in options(p) for f in a.option_strings if f in TRUST_FLAGS}
        assert given in (set(), set(TRUST_FLAGS)) or (name, given) == ("keys list", {"--trusted-keys"}), name


CHECKED_NUMBERS = {argtypes.positive_int, argtypes.nonnegative_int, argtypes.finite_float, argtypes.nonnegative_float,
                   argtypes.positive_float, argtypes.probability, argtypes.fraction}


def test_no_number_is_accepted_unchecked():
    for name, p in COMMANDS.items():
        for a in options(p):
            numeric = isinstance(a.default, int | float) and not isinstance(a.default, bool)
            if numeric or a.type in (int, float):
                assert a.type in CHECKED_NUMBERS, (name, a.option_strings)


def _typed(kind):
    return [(name, a.option_strings[-1]) for name, p in COMMANDS.items() for a in options(p) if a.type is kind]


@pytest.mark.parametrize(("name", "flag"), _typed(argtypes.positive_int))
def test_every_count_refuses_zero_and_negatives_in_one_line(capsys, name, flag):
    for value in ("0", "-2", "1.5"):
        code, out, err = run(capsys, *placeholders(name), flag, value)
        assert (code, out) == (2, "")
        line = one_error_line(err)
        assert re.search(rf"argument (-\w/)?{flag}: must be (a positive integer|an integer), got '?{value}", line)


@pytest.mark.parametrize(("name", "flag"), _typed(argtypes.nonnegative_int))
def test_every_seed_refuses_negatives(capsys, name, flag):
    code, _, err = run(capsys, *placeholders(name), flag, "-1")
    assert code == 2 and re.search(rf"argument {flag}: must be an integer >= 0, got -1", one_error_line(err))


def test_the_integer_checks_accept_what_they_should():
    assert argtypes.positive_int("3") == 3 and argtypes.nonnegative_int("0") == 0
    assert argtypes.probability("1") == 1.0 and argtypes.fraction("0") == 0.0
    assert argtypes.positive_float("0.3") == 0.3
    for fn, bad in ((argtypes.finite_float, "inf"), (argtypes.probability, "0"), (argtypes.fraction, "1.01"),
                    (argtypes.positive_float, "0"), (argtypes.positive_float, "nan"),
                    (argtypes.nonnegative_float, "-0.5"), (argtypes.finite_float, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


OUTPUTS = {"out", "grid", "out_dir", "json"}
OUTPUT_TYPES = {argtypes.output_file, argtypes.image_file, argtypes.output_dir, argtypes.new_dir}


def test_every_output_path_is_checked_before_any_work():
    found = [(name, a) for name, p in COMMANDS.items() for a in options(p) if a.dest in OUTPUTS]
    assert len(found) >= 10
    for name, a in found:
        assert a.type in OUTPUT_TYPES, (name, a.option_strings)


@pytest.mark.parametrize(("name", "flag"), [(name, a.option_strings[-1]) for name, p in COMMANDS.items()
                                            for a in options(p) if a.dest in OUTPUTS])
def test_an_unwritable_output_is_refused_in_one_line(capsys, tmp_path, name, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    code, out, err = run(capsys, *placeholders(name), flag, str(blocker / "out" / "x.png"))
    assert (code, out) == (2, "")
    assert re.search(rf"argument (-o/)?{flag}: cannot write .*: {re.escape(str(blocker))} is not a directory",
                     one_error_line(err))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_on_a_file_system_that_refuses_writes_is_refused_even_for_root(tmp_path):
    """Permission bits say root may write anywhere; /proc refuses all the same, so the check must try."""
    for fn in (argtypes.output_file, argtypes.output_dir, argtypes.new_dir):
        with pytest.raises(argparse.ArgumentTypeError, match=r"cannot write /proc/ebru-test/x: /proc"):
            fn("/proc/ebru-test/x")


def test_output_checks_name_the_fault(tmp_path):
    existing = tmp_path / "file.json"
    existing.write_text("{}", encoding="utf-8")
    assert argtypes.output_file(str(existing)) == str(existing)
    later = str(tmp_path / "new" / "deeper" / "r.json")
    assert argtypes.output_file(later) == later  # made later, under a writable dir
    assert argtypes.output_dir(str(tmp_path / "new-dir")) == str(tmp_path / "new-dir")
    for fn, path, fact in ((argtypes.output_file, tmp_path, "is a directory"),
                           (argtypes.output_dir, existing, "exists and is not a directory"),
                           (argtypes.new_dir, tmp_path, "already exists")):
        with pytest.raises(argparse.ArgumentTypeError, match=fact):
            fn(str(path))
    assert not (tmp_path / "new").exists() and not (tmp_path / "new-dir").exists()  # checking wrote nothing


DEVICE_COMMANDS = [name for name, p in COMMANDS.items() for a in options(p) if "--device" in a.option_strings]


def test_every_device_flag_is_checked():
    assert {"sample", "text generate", "text infill", "text eval"} <= set(DEVICE_COMMANDS)
    for name in DEVICE_COMMANDS:
        assert next(a for a in options(COMMANDS[name]) if a.dest == "device").type is argtypes.device


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_a_device_this_machine_lacks_is_refused_up_front(capsys, monkeypatch, name):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, *placeholders(name), "--device", "cuda")
    assert (code, out) == (2, "")  # the model X does not exist: the device is refused before anything is read
    assert re.search(r"argument --device: cuda is not available on this machine .*use --device cpu",
                     one_error_line(err))
    code, _, err = run(capsys, *placeholders(name), "--device", "cdua")
    assert code == 2 and re.search(r"unknown device 'cdua' \(did you mean 'cuda'\?\)", one_error_line(err))


def test_abbreviated_and_unknown_flags_are_refused_with_the_full_name(capsys):
    code, _, err = run(capsys, "text", "generate", "X", "--block", "4")
    assert code == 2 and re.search(r"unrecognized arguments: --block 4 \(did you mean '--block-length'\?\)",
                                   one_error_line(err))
    code, _, err = run(capsys, "smaple")
    assert code == 2 and re.search(r"invalid choice: 'smaple'.*\(did you mean 'sample'\?\)", one_error_line(err))
    code, _, err = run(capsys, "samplers", "--traceback")
    assert code == 2 and re.search(r"--traceback is a global flag: put it before the command", one_error_line(err))


def test_sample_usage_tells_the_truth(capsys):
    code, out, _ = run(capsys, "sample", "--help")
    assert code == 0
    usage = " ".join(out.split("\n\n")[0].split())
    assert re.search(r"^usage: ebru sample MODEL_DIR \(--grid FILE\.png \| --out-dir DIR \| both\) \[-n N\]", usage)
    assert "--schedule NAME|FILE.json" in usage
    assert re.search(r"at least one of --grid and --out-dir is required", out)
    assert re.search(r"number of images \(default 16\)", out)
    flat = " ".join(out.split())
    assert re.search(r"0 ignores the class, 1 is plain conditional sampling, larger follows the class harder, "
                     r"negative pushes samples away", flat)


def test_text_help_names_the_real_flags_and_counts_tokens(capsys):
    _, out, _ = run(capsys, "text", "generate", "--help")
    assert "--block-length B" in out and "--block " not in out
    _, out, _ = run(capsys, "text", "infill", "--help")
    flat = " ".join(out.split())
    assert re.search(r"Gaps are counted in tokens, not characters", flat)
    assert re.search(r"--text TEXT text with gaps, counted in tokens: \[N\] = N tokens", flat)


def test_help_and_no_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--traceback" in out
    code, out, err = run(capsys)
    assert (code, out) == (2, "") and err.startswith("usage: ebru")
    code, _, err = run(capsys, "text")
    assert code == 2 and "usage: ebru text" in err
