"""Argument types of the ``ebru`` parser: each converts one command-line string and checks it, before any work.

argparse calls these as ``type=`` functions while it parses, so a value that is not allowed is
refused before a model is loaded or a file written: the function raises
``argparse.ArgumentTypeError`` and the parser prints one line and exits with code 2, e.g.
``ebru: error: argument --steps: must be a positive integer, got 0``. The numeric rules are
``ebru.checks``' (one wording for every entry point); this module only turns a string into the
value they check.

- numbers: :func:`positive_int` (counts, steps, sizes), :func:`nonnegative_int` (seeds),
  :func:`finite_float`, :func:`nonnegative_float`, :func:`probability` (0, 1], :func:`fraction` [0, 1];
- choices: :func:`one_of` (names with a did-you-mean), :func:`sampler`, :func:`schedule` (a name or a
  tuned schedule file saved by ``WarpedSchedule.save``);
- the machine: :func:`device` (cpu, cuda[:N], mps; refused when this machine does not have it);
- outputs: :func:`output_file`, :func:`output_dir`, :func:`new_dir` (writable, checked without writing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ebru import checks

# The checks name the argument first ("steps must be ..."); argparse already names it
# ("argument --steps: ..."), so they are called with this empty name and the message is trimmed.
_UNNAMED = ""


SIGNED_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # the formats ebru.provenance signs


def _refused(error: ValueError) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(str(error).strip())


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1: a count, a number of steps, a size."""
    try:
        return checks.positive_int(_UNNAMED, _integer(text))
    except ValueError as e:
        raise _refused(e) from None


def nonnegative_int(text: str) -> int:
    """An integer >= 0: a seed, or a count where 0 means "none"."""
    try:
        return checks.positive_int(_UNNAMED, _integer(text), minimum=0)
    except ValueError as e:
        raise _refused(e) from None


def _number(text: str, **rules: Any) -> float:
    try:
        return checks.finite_number(_UNNAMED, text, **rules)
    except ValueError as e:
        raise _refused(e) from None


def finite_float(text: str) -> float:
    """A finite number (NaN and the infinities are refused)."""
    return _number(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, positive=True)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, minimum=0.0)


def sigma_interval(text: str) -> tuple[float, float]:
    """``LO,HI``: two finite noise levels with 0 <= LO < HI (a guidance interval in sigma)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two noise levels, e.g. 0.3,5), got {text!r}")
    lo, hi = (nonnegative_float(p.strip()) for p in parts)
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI, got {text!r}")
    return lo, hi


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus mass)."""
    return _number(text, positive=True, maximum=1.0)


def fraction(text: str) -> float:
    """A number in [0, 1] (a confidence threshold)."""
    return _number(text, minimum=0.0, maximum=1.0)


def one_of(name: str, choices: Iterable[str]) -> Callable[[str], str]:
    """A type accepting one of ``choices``; anything else is refused naming the nearest choice."""
    valid = list(choices)

    def check(text: str) -> str:
        try:
            return checks.one_of(name, text, valid)
        except ValueError as e:
            raise _refused(e) from None

    check.__name__ = name
    return check


def sampler(text: str) -> str:
    """A sampler name of ``ebru.diffusion.SAMPLERS``."""
    from ebru.diffusion import SAMPLERS  # torch: imported only when the flag is given

    return one_of("sampler", sorted(SAMPLERS))(text)


def schedule(text: str) -> str | Any:
    """A step schedule: a name of ``ebru.diffusion.SCHEDULES``, or a ``.json`` file saved by ``WarpedSchedule.save``.

    Returns the name, or the loaded :class:`ebru.diffusion.WarpedSchedule` (a callable schedule).
    """
    from ebru.diffusion import SCHEDULES, WarpedSchedule  # torch: imported only when the flag is given

    if text in SCHEDULES:
        return text
    path = Path(text)
    if text.endswith(".json") or os.sep in text or path.is_file():
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"schedule file {text} not found")
        try:
            return WarpedSchedule.load(path)
        except ValueError as e:
            raise _refused(e) from None
    hint = checks.did_you_mean(text, SCHEDULES)
    raise argparse.ArgumentTypeError(f"unknown schedule {text!r}{hint}; valid: {', '.join(sorted(SCHEDULES))}, "
                                     "or a tuned schedule file (.json) saved by WarpedSchedule.save")


DEVICES = ("cpu", "cuda", "mps")


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, refused when this machine does not have it (checked up front)."""
    kind, colon, index = text.partition(":")
    try:
        checks.one_of("device", kind, DEVICES)
    except ValueError as e:
        raise _refused(e) from None
    if kind == "cpu" and not colon:
        return text
    import torch  # the availability check needs torch; only for a device other than the CPU

    if colon and (kind != "cuda" or not index.isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; valid: cpu, cuda, cuda:N, mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device was found"
            raise argparse.ArgumentTypeError(f"{text} is not available on this machine ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if colon and int(index) >= count:
            raise argparse.ArgumentTypeError(f"{text} is not available: this machine has {count} CUDA device(s), "
                                             f"cuda:0 to cuda:{count - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text} is not available on this machine; use --device cpu")
    return text


def _creatable(target: Path, wanted: Path) -> None:
    """Refuse unless ``target`` (which does not exist) could be created: its nearest existing ancestor is a
    writable directory. Nothing is created."""
    ancestor = target
    while not (ancestor.exists() or ancestor.is_symlink()):
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {wanted}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {wanted}: {ancestor} is not writable")
    _try_writing(ancestor, wanted)


def _try_writing(directory: Path, wanted: Path) -> None:
    """Create and remove a temporary file in ``directory``: permission bits do not tell root about read-only
    or virtual file systems (/proc, /sys), so the check tries."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write {wanted}: {directory}: {e.strerror or e}") from None


def output_file(text: str) -> str:
    """A file ebru will write (a grid, a JSON report, a bundle): writable now, checked before any work."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text}: the file is not writable")
    else:
        _creatable(path.parent, path)
    return text


def image_file(text: str) -> str:
    """An image ebru will write (a grid): :func:`output_file`, and an extension of a format ebru signs (every
    output carries a C2PA manifest: ``.png``, ``.jpg``, ``.jpeg``), so a wrong one is refused before any
    sampling, not when the image is saved.
    """
    output_file(text)
    suffix = Path(text).suffix.lower()
    if suffix not in SIGNED_IMAGE_SUFFIXES:
        what = (f"'{suffix}' is not an image format ebru writes (outputs carry a signed C2PA manifest, in PNG or "
                "JPEG)") if suffix else "it has no extension"
        raise argparse.ArgumentTypeError(f"cannot write the image {text}: {what}; give FILE.png (or .jpg)")
    return text


def output_dir(text: str) -> str:
    """A directory ebru will write into (made if missing): writable now, checked before any work."""
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write into {text}: the directory is not writable")
        _try_writing(path, path)
    else:
        _creatable(path, path)
    return text


def new_dir(text: str) -> str:
    """A directory ebru will create, which must not exist yet (``ebru unpack -o``)."""
    path = Path(text)
    if path.exists() or path.is_symlink():
        raise argparse.ArgumentTypeError(f"{text} already exists; give a new directory")
    _creatable(path, path)
    return text
