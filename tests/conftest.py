"""Shared test set-up for ebru.diffusion.

- No network: every test runs with ``socket.socket.connect`` (and ``connect_ex``)
  and ``socket.create_connection`` replaced by a function that raises, so a test
  that reaches for the network fails loudly instead of hanging or passing by luck.
- Fixed randomness: ``torch.manual_seed(0)`` before every test. Tests that need
  specific draws use their own ``torch.Generator``.
- One intra-op thread: the tensors here are tiny (a few thousand numbers), and on
  a shared 2-core machine torch's thread pool spins against other processes. That
  made the Gaussian-mixture oracle about 100x slower (25 ms instead of 0.25 ms per
  call), which would blow the suite's time budget. Results do not depend on it.
"""

from __future__ import annotations

import socket

import pytest
import torch

torch.set_num_threads(1)


class NetworkDisabledError(RuntimeError):
    """Raised by any attempt to open a network connection during the tests."""


def _refuse(*args, **kwargs):
    raise NetworkDisabledError("network access is disabled in the ebru test suite")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def private_state(tmp_path_factory):
    """Keep the suite's audit log, feature cache and trusted-key lookups out of the user's home."""
    state = tmp_path_factory.mktemp("ebru-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_AUDIT_LOG", str(state / "audit.jsonl"))
        mp.setenv("EBRU_CACHE", str(state / "cache"))
        mp.setenv("XDG_CONFIG_HOME", str(state / "config"))
        mp.setenv("XDG_STATE_HOME", str(state / "state"))
        yield
