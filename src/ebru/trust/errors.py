"""Refusals. Every one names the file it is about and the reason, on one line.

All are ``ValueError`` subclasses, so the CLI prints them as ``ebru: error: <file>: <reason>``
and exits with code 2.
"""

from __future__ import annotations

import os


class TrustError(ValueError):
    """A refusal: ``str(e)`` is ``"<file>: <reason>"``; ``e.path`` and ``e.reason`` hold the parts."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = " ".join(reason.split())  # one line, whatever was interpolated into it
        super().__init__(f"{self.path}: {self.reason}")


class UnsafeFileError(TrustError):
    """A weights file that is not strictly valid safetensors (pickle, zip, malformed header, ...)."""


class IntegrityError(TrustError):
    """A package whose files do not match its manifest, or that holds links or unlisted files."""


class SignatureError(TrustError):
    """A signature that is missing where one is required, malformed, or does not verify."""


class UntrustedKeyError(SignatureError):
    """A well-formed signature by a key that is not trusted here (unknown or expired)."""


class KeyFileError(TrustError):
    """A key file that is missing, unreadable, of the wrong kind, or expired."""


class CardError(TrustError):
    """A model card whose YAML front matter is missing or malformed."""


class LicenseError(TrustError):
    """A licence the policy refuses (deny, unknown, or needing an acknowledgement not given)."""


class PolicyError(TrustError):
    """A licence policy file that is not valid."""


class BundleError(TrustError):
    """A pack/unpack bundle that is damaged, truncated or holds unsafe members."""


class AuditError(TrustError):
    """An audit log that cannot be written, or whose hash chain is broken."""
