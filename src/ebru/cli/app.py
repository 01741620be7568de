"""The ``ebru`` parser and the one place where a command's outcome becomes an exit status.

Exit statuses (the shell's conventions):

- ``0`` done; ``2`` a user's mistake (a bad argument, a missing or refused file): one line,
  ``ebru: error: <message>``, on stderr;
- ``130`` interrupted (Ctrl-C, SIGINT) anywhere, start-up included: one line, ``ebru: interrupted``;
- ``141`` (128 + SIGPIPE) the reader of stdout went away (``ebru samplers | head -1``): nothing is
  printed, the same status ``seq``, ``cat`` or ``yes`` give, which ``set -o pipefail`` sees;
- ``1`` an unexpected error (a bug): one line that names the exception type.

``ebru --traceback COMMAND ...`` or ``EBRU_DEBUG=1`` print the stack trace above that line, for bug
reports. The parser's own mistakes (unknown flags, bad values) are usage errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence

from ebru import __version__
from ebru.checks import did_you_mean

from . import detect, distill, image, provenance, serve, text, trust, watermark

EXIT_USAGE = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
DEBUG_ENV = "EBRU_DEBUG"


class Parser(argparse.ArgumentParser):
    """argparse with ebru's one-line errors, no flag abbreviations, and a did-you-mean for unknown names.

    Abbreviations are off (``allow_abbrev=False``): a shortened flag such as ``--block`` is refused with
    the full name suggested, rather than accepted and silently meaning another flag once one is added.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.set_defaults(_parser=self)  # the deepest parser that ran, for did-you-mean on unknown flags

    def error(self, message: str) -> None:  # one line, exit 2
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            message += did_you_mean(m.group(1), [c.strip(" '") for c in m.group(2).split(",")])
        self.exit(EXIT_USAGE, f"ebru: error: {' '.join(message.split())} (see '{self.prog} --help')\n")

    def _print_message(self, message: str, file=None) -> None:
        # argparse's own version swallows OSError, so `ebru --help | head -1` would exit 0 with the help lost;
        # here a closed pipe reaches run() like any other.
        if message:
            (file or sys.stderr).write(message)

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            leaf: argparse.ArgumentParser = getattr(parsed, "_parser", self)
            if "--traceback" in extras:
                leaf.error("--traceback is a global flag: put it before the command, e.g. 'ebru --traceback "
                           f"{leaf.prog.removeprefix('ebru ')} ...'")
            flags = [o for a in leaf._actions for o in a.option_strings]
            first = next((x.split("=")[0] for x in extras if x.startswith("-")), None)
            leaf.error(f"unrecognized arguments: {' '.join(extras)}{did_you_mean(first, flags) if first else ''}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``ebru`` parser: global flags, then one sub-command per group module (image, distill, text, trust,
    provenance)."""
    p = Parser(prog="ebru", description="ebru: diffusion models end to end, offline, on PyTorch.",
               epilog="Mistakes print one line and exit 2; Ctrl-C exits 130. --traceback (or EBRU_DEBUG=1) "
                      "shows the stack trace behind an error, for bug reports.")
    p.add_argument("--version", action="version", version=f"ebru {__version__}")
    p.add_argument("--traceback", action="store_true",
                   help=f"on an error, print the stack trace before the one-line message (also: {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    image.register(sub)
    distill.register(sub)
    text.register(sub)
    trust.register(sub)
    provenance.register(sub)
    watermark.register(sub)
    detect.register(sub)
    serve.register(sub)
    return p


def debug_from_env() -> bool:
    """``EBRU_DEBUG`` set to 1 / true / yes / on."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _say(line: str) -> None:
    """Print one line to stderr; a closed stderr is not an error worth another one."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _message(e: BaseException) -> str:
    """An exception's message on one line; an OSError as ``<file>: <reason>``, not ``[Errno N] ...``."""
    if isinstance(e, OSError) and e.strerror and not str(e).startswith(str(getattr(e, "filename", None) or "\0")):
        msg = f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    else:
        msg = str(e)
    return " ".join(msg.split()) or type(e).__name__


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (tests)
        pass


def _parse_and_run(argv: list[str], debug: list[bool]) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error: argparse has printed its line
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    debug[0] = debug[0] or args.traceback
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "flush_denormal", False):
        import torch  # the slow import, only for the commands that compute (not for --help or the trust commands)

        torch.set_flush_denormal(True)  # before any worker thread starts, so they all inherit it (see Trainer)
    return args.func(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, ``ebru: warning: <message>`` (no source path and code line for users)."""
    _say(f"ebru: warning: {' '.join(str(message).split())}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the ``ebru`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (see above)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = [debug_from_env()]  # _parse_and_run adds --traceback once the command line is parsed
    with warnings.catch_warnings():
        if not debug[0]:
            warnings.showwarning = _show_warning
        return _run(argv, debug)


def _run(argv: list[str], debug: list[bool]) -> int:
    try:
        code = _parse_and_run(argv, debug)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at the interpreter's exit
        return code
    except KeyboardInterrupt:
        _say("ebru: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (ValueError, OSError) as e:  # a user's mistake, reported by ebru in one line
        if debug[0]:
            traceback.print_exc()
        _say(f"ebru: error: {_message(e)}")
        return EXIT_USAGE
    except Exception as e:
        if debug[0]:
            traceback.print_exc()
        hint = "" if debug[0] else f"; rerun with 'ebru --traceback ...' or {DEBUG_ENV}=1 for the stack trace"
        _say(f"ebru: error: unexpected {type(e).__name__}: {_message(e)} (please report it{hint})")
        return EXIT_BUG
