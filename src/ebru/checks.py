"""Argument checks shared by every layer of ebru: one wording for every entry point.

Each check returns the value it accepted (converted: ``int``, ``float``) or raises a
``ValueError`` (or the subclass passed as ``error``) whose message names the argument, what
it must be and what it got, in one line. ``did_you_mean`` and :func:`one_of` name the
nearest valid choice, as ``difflib`` ranks them, the way git and pip do.

This module is the bottom row of ebru's layer contract (see ``pyproject.toml``): it
imports nothing from ebru, and everything may import it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


def did_you_mean(name: Any, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice nearest to ``name``, or ``""`` when none is near."""
    near = difflib.get_close_matches(str(name), sorted(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def one_of(name: str, value: Any, choices: Iterable[str], *, error: type[ValueError] = ValueError) -> str:
    """``value`` if it is one of ``choices``; else ``error`` naming the nearest choice and listing them all."""
    choices = list(choices)
    if value not in choices:
        raise error(f"unknown {name} {value!r}{did_you_mean(value, choices)}; valid choices: {', '.join(choices)}")
    return value


def unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    """The one message for a key that a config (TOML table, JSON object, ``--set``) does not have.

    Names the nearest valid key when one is near, else lists them all.
    """
    valid = sorted(valid)
    hint = did_you_mean(key, valid)
    return f"unknown {where} key {key!r}" + (hint if hint else f"; valid keys: {', '.join(valid)}")


def positive_int(name: str, value: Any, *, minimum: int = 1, error: type[ValueError] = ValueError) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum`` (``bool`` and ``2.0`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{name} must be {what}, got {value!r}")
    return int(value)


def optional_positive_int(name: str, value: Any, *, minimum: int = 1,
                          error: type[ValueError] = ValueError) -> int | None:
    """``None``, or :func:`positive_int` of ``value``."""
    return None if value is None else positive_int(name, value, minimum=minimum, error=error)


def finite_number(name: str, value: Any, *, positive: bool = False, minimum: float | None = None,
                  maximum: float | None = None, error: type[ValueError] = ValueError) -> float:
    """``float(value)`` if it is a finite number (``> 0`` with ``positive``; within ``[minimum, maximum]``).

    Raises ``error`` naming ``name`` for a non-number, NaN, an infinity or a value out of range.
    """
    if isinstance(value, bool):
        raise error(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise error(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise error(f"{name} must be > 0, got {v}")
    if minimum is not None and v < minimum:
        raise error(f"{name} must be >= {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise error(f"{name} must be <= {maximum:g}, got {v:g}")
    return v


def check_finite_number(name: str, value: Any, *, positive: bool = False) -> float:
    """:func:`finite_number` under the name the diffusion core has always used."""
    return finite_number(name, value, positive=positive)
