"""Infilling templates: text with gaps of given lengths, ``"It is a truth [25] that a single man"``.

A gap is ``[N]`` (N tokens) or ``[___]`` (one token per underscore). Every other character,
brackets included, is given text, which the infilled result keeps byte for byte: the
given segments are copied, never re-decoded.
"""

from __future__ import annotations

import re

from .errors import TextInputError

_GAP = re.compile(r"\[(\d+|_+)\]")


def parse_template(template: str, gap_length: int | None = None) -> list[str | int]:
    """Segments of ``template``: given text (str) and gap lengths (int); ``gap_length`` overrides every gap."""
    parts: list[str | int] = []
    pos = 0
    for m in _GAP.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        spec = m.group(1)
        n = gap_length if gap_length is not None else (len(spec) if spec[0] == "_" else int(spec))
        if n <= 0:
            raise TextInputError(f"gap {m.group(0)} has length {n}: gap lengths must be positive")
        parts.append(n)
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if not any(isinstance(p, int) for p in parts):
        raise TextInputError("the infill template has no gaps: mark each gap as [N] (N tokens) or [____] "
                             "(one token per underscore)")
    return parts
