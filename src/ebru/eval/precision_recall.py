"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour manifolds.

Each set's manifold is the union of balls around its points, each ball reaching the
point's k-th nearest neighbour within the same set. **Precision** is the share of
generated samples inside the real manifold (fidelity); **recall** the share of real
samples inside the generated manifold (coverage). The paper uses k = 3 and equal
set sizes; :func:`precision_recall` subsamples the larger set to the smaller one's
size with a fixed seed so the two radii are estimated alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


def knn_radii(x: Tensor, k: int, batch: int = 1000) -> Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(x)}")
    out = []
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i:i + batch], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (0)
    return torch.cat(out)


def coverage(points: Tensor, centres: Tensor, radii: Tensor, batch: int = 1000) -> float:
    """Share of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    inside = 0
    for i in range(0, len(points), batch):
        d = torch.cdist(points[i:i + batch], centres)
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / len(points)


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3, seed: int = 0,
                     equalize: bool = True) -> tuple[float, float]:
    """``(precision, recall)`` of ``fake`` features against ``real`` features."""
    r, f = real.to(torch.float64), fake.to(torch.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(r.shape)} vs {tuple(f.shape)}")
    if equalize and len(r) != len(f):
        g = torch.Generator().manual_seed(seed)
        n = min(len(r), len(f))
        r = r[torch.randperm(len(r), generator=g)[:n]] if len(r) > n else r
        f = f[torch.randperm(len(f), generator=g)[:n]] if len(f) > n else f
    precision = coverage(f, r, knn_radii(r, k))
    recall = coverage(r, f, knn_radii(f, k))
    return precision, recall
