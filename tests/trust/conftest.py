"""Set-up for the ebru.trust tests.

- Isolation: the audit log, the config directory (trusted keys, licence policy) and the state
  directory all live in the test's tmp_path; ebru's environment variables are cleared, so the
  developer's own keys or policy never leak into a test.
- No network at all: on top of the suite-wide connect() guard, creating any socket and resolving
  any name raises, so the whole verify-and-load path is shown to run offline.
"""

from __future__ import annotations

import socket

import pytest
import torch

from ebru.trust import generate_key, write_package


class NoNetworkError(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NoNetworkError("network access is disabled in the ebru.trust tests")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(socket, "socket", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


CARD = """---
license: mit
base_model: null
datasets:
  - toy
intended_use: tests
---

# A toy model
"""


def toy_weights() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2, 3])}


@pytest.fixture
def make_package(tmp_path):
    """``make_package(name, card=..., sign_key=..., **kw)`` writes a small package under tmp_path."""

    def make(name: str = "pkg", card: str = CARD, weights=None, config=None, **kw):
        return write_package(tmp_path / name, config or {"kind": "toy", "n": 1}, weights or toy_weights(), card,
                             {"created_by": "tests", "dataset": "toy", "dataset_hash": "0" * 64}, **kw)

    return make


@pytest.fixture
def keys(tmp_path):
    """Signing keys and a trusted-keys directory holding the public halves of the trusted ones.

    ``keys.ed`` / ``keys.ec`` are trusted (Ed25519, ECDSA P-256); ``keys.stranger`` is not.
    """

    class Keys:
        pass

    k = Keys()
    k.dir = tmp_path / "keys"
    k.trusted = tmp_path / "trusted"
    k.trusted.mkdir()
    for attr, name, alg in (("ed", "ed", "ed25519"), ("ec", "ec", "ecdsa-p256"), ("stranger", "stranger", "ed25519")):
        priv, pub = generate_key(k.dir, name, alg)
        setattr(k, attr, priv)
        if attr != "stranger":
            (k.trusted / pub.name).write_bytes(pub.read_bytes())
    return k
