"""Fixtures for ebru.encoders: the MiniLM encoder is loaded once per test session (about 2 s)."""

from __future__ import annotations

import pytest

from ebru.encoders import default_encoder


@pytest.fixture(scope="session")
def minilm():
    return default_encoder(max_length=32)
