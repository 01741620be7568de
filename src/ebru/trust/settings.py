"""Where ebru.trust looks for trusted keys, the licence policy and the audit log.

=========================  ==========================================  =====================================
what                       environment variable                        default
=========================  ==========================================  =====================================
trusted public keys        ``EBRU_TRUSTED_KEYS`` (a directory)         ``$XDG_CONFIG_HOME/ebru/trusted_keys``
licence policy             ``EBRU_LICENSE_POLICY`` (a TOML file)       ``$XDG_CONFIG_HOME/ebru/license_policy.toml``,
                                                                       else the built-in policy
audit log                  ``EBRU_AUDIT_LOG`` (a file, or ``off``)     ``$XDG_STATE_HOME/ebru/audit.jsonl``
private-key passphrase     ``EBRU_KEY_PASSPHRASE``                     none (keys are unencrypted)
=========================  ==========================================  =====================================

``XDG_CONFIG_HOME`` defaults to ``~/.config`` and ``XDG_STATE_HOME`` to ``~/.local/state``.
Explicit arguments (``--trusted-keys``, ``--policy``, ``--log``) always win over these.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_TRUSTED_KEYS = "EBRU_TRUSTED_KEYS"
ENV_POLICY = "EBRU_LICENSE_POLICY"
ENV_AUDIT_LOG = "EBRU_AUDIT_LOG"
ENV_PASSPHRASE = "EBRU_KEY_PASSPHRASE"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "ebru"


def default_trusted_keys_dir() -> Path:
    return config_dir() / "trusted_keys"


def default_policy_path() -> Path:
    return config_dir() / "license_policy.toml"


def default_audit_log() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "ebru" / "audit.jsonl"


def env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def passphrase() -> bytes | None:
    value = os.environ.get(ENV_PASSPHRASE)
    return value.encode() if value else None
