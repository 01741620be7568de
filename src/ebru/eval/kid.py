"""Kernel Inception Distance (Bińkowski et al. 2018) over any feature space.

KID is the squared MMD between the two feature distributions under the cubic
polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, estimated without bias on random
subsets and averaged; the spread over subsets is reported with it. Unlike FID it is
unbiased at small N, so it is the figure to trust when samples are few.
"""

from __future__ import annotations

import torch
from torch import Tensor


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> Tensor:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef) ** degree


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 between samples ``x`` (m, D) and ``y`` (n, D) with the cubic polynomial kernel."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(features_a: Tensor, features_b: Tensor, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of the unbiased MMD^2 over ``subsets`` random subsets of ``subset_size`` per side.

    ``subset_size`` is capped at the smaller set; subsets are drawn with a fixed
    ``seed`` so the figure is reproducible.
    """
    a, b = features_a.to(torch.float64), features_b.to(torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(a.shape)} vs {tuple(b.shape)}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:size]],
                                       b[torch.randperm(len(b), generator=g)[:size]]) for _ in range(subsets)],
                        dtype=torch.float64)
    return float(vals.mean()), float(vals.std()) if subsets > 1 else 0.0
