"""Refusals about outputs (manifests, certificates, generation records): one line each.

:class:`ProvenanceError` is a :class:`ebru.trust.errors.TrustError` (so a ``ValueError``): the CLI
prints it as ``ebru: error: <file>: <reason>`` and exits with code 2.
"""

from __future__ import annotations

from ebru.trust.errors import TrustError


class ProvenanceError(TrustError):
    """A file that cannot be signed or verified, a signing certificate C2PA refuses, or a damaged record store.

    ``str(e)`` is ``"<file>: <reason>"``; ``e.path`` and ``e.reason`` hold the parts.
    """
