"""Classifier-free guidance as a Denoiser -> Denoiser transform.

``D_w(x, sigma, c) = D(x, sigma, u) + w (D(x, sigma, c) - D(x, sigma, u))``
(Ho & Salimans 2022, written on denoiser outputs). ``u`` is the unconditional
condition (a null label or empty prompt), or a *negative* condition. An optional
guidance interval (Kynkaanniemi et al. 2024) applies guidance only for
``sigma_lo < sigma <= sigma_hi`` and returns the conditional output elsewhere.

Which keywords each pass gets, for a call ``D_w(x, sigma, **cond)``:

- conditional pass: exactly ``cond``;
- unconditional pass with ``uncond=`` (or ``negative=``): ``cond`` with the keys that
  ``uncond`` names replaced by its values (keys it does not name are passed unchanged;
  keys only in ``uncond`` go to this pass alone);
- unconditional pass without ``uncond``: the condition *dropped*, i.e. ``D(x, sigma)``
  with no keywords. That is the model's null condition everywhere in ebru: the nets read
  a missing ``class_labels`` as the null label -1 and missing ``encoder_states`` as the
  null text token, and the oracles as the unconditional mixture (diffusers' default of
  an empty negative prompt, in ebru's terms).

A scale other than 1 with neither ``uncond`` nor any condition in the call cannot form
two different passes and raises ``ValueError`` (it used to return the conditional
denoiser unchanged, silently). When both passes take the same keywords, tensors of
equal trailing shape, they run as one batched forward; otherwise as two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .tensors import check_finite_number, sigma_batch, sigma_view


def missing_uncond_message(scale: float) -> str:
    """The one error for guidance that has no unconditional branch to form."""
    return (f"classifier-free guidance at scale {scale:g} needs an unconditional branch: pass uncond= with the "
            "null condition, e.g. uncond={'class_labels': torch.tensor([-1])} (ebru's null class label) or "
            "uncond={'encoder_states': null_states}, or pass the condition as a keyword (class_labels=...) "
            "so that it can be dropped")


def _merge(cond: Mapping[str, Any], uncond: Mapping[str, Any], batch: int) -> dict[str, Any] | None:
    """Concatenate cond and uncond kwargs along the batch; None if they cannot be batched."""
    if set(cond) != set(uncond):  # a key only one pass takes
        return None
    merged = {}
    for key in cond:
        a, b = cond[key], uncond[key]
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
            ``None`` (default): the condition is dropped (see the module docstring).
        negative: keyword arguments of a negative condition; replaces ``uncond``.
        interval: ``(sigma_lo, sigma_hi)``: guide only where sigma is in (lo, hi].

    Calling it returns a tensor shaped like ``x``. Raises ValueError for a non-finite
    scale or a bad interval (here), and at call time for a scale other than 1 with
    neither ``uncond``/``negative`` nor any condition keyword to drop.
    """

    def __init__(self, denoiser, scale: float, uncond: Mapping[str, Any] | None = None,
                 negative: Mapping[str, Any] | None = None, interval: tuple[float, float] | None = None):
        self.denoiser = denoiser
        self.scale = check_finite_number("guidance scale", scale)
        chosen = negative if negative is not None else uncond
        self.uncond = None if chosen is None else dict(chosen)
        if interval is not None:
            lo, hi = (check_finite_number("guidance interval bound", v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"guidance interval must satisfy 0 <= lo < hi, got {interval}")
            interval = (lo, hi)
        self.interval = interval

    def unconditional_kwargs(self, cond: Mapping[str, Any]) -> dict[str, Any]:
        """The keywords of the unconditional pass for a call with ``cond`` (see the module docstring)."""
        if self.uncond is None:
            if not cond:
                raise ValueError(missing_uncond_message(self.scale))
            return {}
        return {**cond, **self.uncond}

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x)
        if self.scale == 1.0:
            return self.denoiser(x, s, **cond)
        uncond = self.unconditional_kwargs(cond)
        active = torch.ones_like(s, dtype=torch.bool)
        if self.interval is not None:
            active = (s > self.interval[0]) & (s <= self.interval[1])
            if not bool(active.any()):
                return self.denoiser(x, s, **cond)
        b = x.shape[0]
        merged = _merge(cond, uncond, b)
        if merged is not None:
            d_c, d_u = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), **merged).chunk(2)
        else:  # conditions that cannot share a batch: two passes
            d_c, d_u = self.denoiser(x, s, **cond), self.denoiser(x, s, **uncond)
        guided = d_u + self.scale * (d_c - d_u)
        if self.interval is None:
            return guided
        return torch.where(sigma_view(active, x), guided, d_c)
