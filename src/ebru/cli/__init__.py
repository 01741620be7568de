"""The ``ebru`` command line: thin shells over :mod:`ebru.pipelines`, one module per command group.

- :mod:`ebru.cli.app` — the parser, global flags (``--traceback``, ``--version``) and exit statuses;
- :mod:`ebru.cli.image` — ``demo``, ``samplers``, ``quickstart``, ``train``, ``sample``, ``eval``;
- :mod:`ebru.cli.text` — ``ebru text ...``;
- :mod:`ebru.cli.trust` — ``keys``, ``sign``, ``verify``, ``package``, ``pack``, ``unpack``, ``inspect``, ``audit``;
- :mod:`ebru.cli.options` — flags several commands share (trust, training, device, seed, guidance);
- :mod:`ebru.cli.argtypes` — the ``type=`` checks every value passes before any work starts.

``main`` is the ``ebru`` entry point (``pyproject.toml``) and ``python -m ebru``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ebru argv`` (default ``sys.argv[1:]``) and return its exit status (see :mod:`ebru.cli.app`)."""
    try:
        from .app import run  # inside the handler, so that Ctrl-C while the parser's modules load is one line too
    except KeyboardInterrupt:
        print("ebru: interrupted", file=sys.stderr)
        return 130
    return run(argv)


__all__ = ["main"]
