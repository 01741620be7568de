"""Named registries (``SCHEDULES``, ``SAMPLERS``, ...) with helpful errors.

A registry is a plain ``dict`` from name to callable. Looking up a name that is
not there raises :class:`UnknownNameError`, a ``ValueError`` (and ``KeyError``)
whose message lists the valid choices and the nearest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. Both a ``KeyError`` and a ``ValueError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(dict):
    """A dict of named callables whose failed look-ups name the valid choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, obj: T | None = None, **attrs: Any):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``.

        Keyword ``attrs`` are set on the object (for example ``nfe`` on samplers).
        """

        def add(fn: T) -> T:
            for key, value in attrs.items():
                setattr(fn, key, value)
            self[name] = fn
            return fn

        return add if obj is None else add(obj)

    def __missing__(self, name: Any):
        choices = sorted(self)
        near = difflib.get_close_matches(str(name), choices, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; valid choices: {', '.join(choices)}"
        )

    def resolve(self, name_or_fn: str | Callable[..., Any]) -> Callable[..., Any]:
        """Return ``self[name]`` for a string, or the callable itself."""
        if callable(name_or_fn):
            return name_or_fn
        if not isinstance(name_or_fn, str):
            raise ValueError(f"{self.kind} must be a name or a callable, got {type(name_or_fn).__name__}")
        return self[name_or_fn]
