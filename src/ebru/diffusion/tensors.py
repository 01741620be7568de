"""Small tensor helpers shared by the diffusion core: sigma shapes and noise draws."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebru.checks import check_finite_number

__all__ = ["Generator", "check_finite_number", "randn_like", "seed_generators", "sigma_batch", "sigma_view"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def sigma_view(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Reshape a scalar or per-sample ``sigma`` to broadcast against ``x`` (B, ...).

    Accepts a Python number, a 0-d tensor, a (B,) tensor or a tensor already of
    shape (B, 1, ..., 1). The result has shape (B or 1, 1, ..., 1) and x's dtype
    unless sigma is float64 (kept, so oracles stay exact).
    """
    if not isinstance(sigma, Tensor):
        sigma = torch.tensor(float(sigma), dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma.reshape((1,) * x.ndim)
    if sigma.ndim == 1:
        if sigma.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
        return sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    return sigma


def sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A (B,) tensor of noise levels for the batch ``x``; keeps autograd through ``sigma``."""
    if not isinstance(sigma, Tensor):
        return x.new_full((x.shape[0],), float(sigma))
    if sigma.ndim > 1:
        sigma = sigma.reshape(sigma.shape[0], -1)
        if sigma.shape[1] != 1:
            raise ValueError(f"sigma must hold one level per sample, got shape {tuple(sigma.shape)}")
        sigma = sigma[:, 0]
    if sigma.ndim == 1 and sigma.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
    return sigma.to(x.dtype) * x.new_ones(x.shape[0])


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like ``x``.

    ``generator`` may be one ``torch.Generator`` or a sequence of them, one per
    sample: then sample ``i`` draws only from ``generator[i]``, so a sample's
    noise does not depend on the batch it is in. Noise is drawn on the
    generator's device (CPU by default) and moved to ``x.device``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
    ).to(x.device)


def seed_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per seed: the per-sample seeding that makes samples batch-independent."""
    gens = []
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ValueError(f"seeds must be integers, got {s!r}")
        gens.append(torch.Generator(device=device).manual_seed(s))
    return gens
