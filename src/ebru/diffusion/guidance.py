"""Classifier-free guidance as a Denoiser -> Denoiser transform.

``D_w(x, sigma, c) = D(x, sigma, u) + w (D(x, sigma, c) - D(x, sigma, u))``
(Ho & Salimans 2022, written on denoiser outputs). ``u`` is the unconditional
condition (a null label or empty prompt), or a *negative* condition. The
conditional and unconditional passes run as one batched forward. An optional
guidance interval (Kynkaanniemi et al. 2024) applies guidance only for
``sigma_lo < sigma <= sigma_hi`` and returns the conditional output elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .tensors import check_finite_number, sigma_batch, sigma_view


def _merge(cond: Mapping[str, Any], uncond: Mapping[str, Any], batch: int) -> dict[str, Any] | None:
    """Concatenate cond and uncond kwargs along the batch; None if they cannot be batched."""
    merged = {}
    for key in set(cond) | set(uncond):
        a = cond.get(key, uncond.get(key))
        b = uncond.get(key, a)
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            if a.ndim == 0 or b.ndim == 0 or a.shape[1:] != b.shape[1:]:
                return None
            a = a.expand(batch, *a.shape[1:]) if a.shape[0] == 1 else a
            b = b.expand(batch, *b.shape[1:]) if b.shape[0] == 1 else b
            if a.shape[0] != batch or b.shape[0] != batch:
                return None
            merged[key] = torch.cat([a, b.to(a.device, a.dtype)])
        elif a is b or (not isinstance(a, Tensor) and not isinstance(b, Tensor) and a == b):
            merged[key] = a
        else:
            return None
    return merged


class ClassifierFreeGuidance:
    """Wrap a conditional Denoiser with classifier-free guidance.

    Args:
        denoiser: ``D(x, sigma, **cond)`` that accepts both conditional and
            unconditional keyword arguments.
        scale: guidance scale w (1 = the conditional denoiser, 0 = unconditional).
        uncond: keyword arguments of the unconditional pass, e.g.
            ``{"class_labels": torch.tensor([-1])}``; tensors with batch 1 broadcast.
        negative: keyword arguments of a negative condition; replaces ``uncond``.
        interval: ``(sigma_lo, sigma_hi)``: guide only where sigma is in (lo, hi].
    """

    def __init__(self, denoiser, scale: float, uncond: Mapping[str, Any] | None = None,
                 negative: Mapping[str, Any] | None = None, interval: tuple[float, float] | None = None):
        self.denoiser = denoiser
        self.scale = check_finite_number("guidance scale", scale)
        self.uncond = dict(negative if negative is not None else (uncond or {}))
        if interval is not None:
            lo, hi = (check_finite_number("guidance interval bound", v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")
            interval = (lo, hi)
        self.interval = interval

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x)
        if self.scale == 1.0:
            return self.denoiser(x, s, **cond)
        active = torch.ones_like(s, dtype=torch.bool)
        if self.interval is not None:
            active = (s > self.interval[0]) & (s <= self.interval[1])
            if not bool(active.any()):
                return self.denoiser(x, s, **cond)
        b = x.shape[0]
        merged = _merge(cond, self.uncond, b)
        if merged is not None:
            d_c, d_u = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), **merged).chunk(2)
        else:  # conditions that cannot share a batch: two passes
            d_c, d_u = self.denoiser(x, s, **cond), self.denoiser(x, s, **self.uncond)
        guided = d_u + self.scale * (d_c - d_u)
        if self.interval is None:
            return guided
        return torch.where(sigma_view(active, x), guided, d_c)
