"""ebru: diffusion models end to end, offline, on PyTorch.

``ebru.load(MODEL_DIR, policy=...)`` is the one way to load a model package: it verifies the
manifest, the signature and the licence before the strict read (see :mod:`ebru.trust`). It is
imported on first use, so ``import ebru`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "load":
        from ebru.trust import load

        return load
    raise AttributeError(f"module 'ebru' has no attribute {name!r}")
