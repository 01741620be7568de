"""JSON parsing without the lenient corners: duplicate keys and NaN/Infinity are refused.

Python's ``json`` keeps the *last* of two equal keys while other parsers keep the first
(Trail of Bits, TOB-SFTN-7), so a file can say different things to an auditor and to a loader.
Every JSON document ebru.trust reads (safetensors headers, manifests, signatures, configs,
audit entries) goes through :func:`loads`, which refuses such documents instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import TrustError


class _Refused(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Refused(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused(f"non-standard number {name}")


def loads(text: str | bytes, path: str | os.PathLike, what: str = "JSON",
          error: type[TrustError] = TrustError) -> Any:
    """Parse ``text`` as strict JSON; any problem raises ``error(path, ...)`` naming ``what``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(path, f"{what} is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except _Refused as e:
        raise error(path, f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise error(path, f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(path, f"{what} is nested too deeply") from None
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise error(path, f"{what} is not acceptable JSON ({str(e).splitlines()[0]})") from None


def dumps_canonical(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the form hashed by the audit log."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
