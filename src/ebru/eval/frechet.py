"""Fréchet distance between Gaussians fitted to features: the FID formula (Heusel et al. 2017).

``FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``

The matrix square root is taken through two symmetric eigendecompositions in
float64 (``tr((S_a S_b)^1/2)`` equals the trace of the square root of the symmetric
PSD matrix ``S_a^1/2 S_b S_a^1/2``), so the result is real and needs no
imaginary-part clean-up as ``scipy.linalg.sqrtm`` does.

FID is biased upwards at small sample counts (the bias falls roughly as 1/N):
always compare figures computed on the same N, and read them beside the floor
that N real images reach (:func:`ebru.eval.evaluate.evaluate_images` reports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureStats:
    """Mean (D,) and covariance (D, D), float64, of ``n`` feature vectors."""

    mu: Tensor
    cov: Tensor
    n: int

    @classmethod
    def from_features(cls, features: Tensor) -> FeatureStats:
        f = features.to(torch.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(f.shape)}")
        n, d = f.shape
        if n <= d:
            raise ValueError(f"FID needs more samples than feature dimensions: N={n} <= D={d} makes the "
                             f"covariance singular; use N > {d} (2,000 or more for figures worth comparing)")
        mu = f.mean(0)
        c = f - mu
        return cls(mu, c.T @ c / (n - 1), n)

    @property
    def dim(self) -> int:
        return int(self.mu.numel())


def _psd_sqrt(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between N(a.mu, a.cov) and N(b.mu, b.cov)."""
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim} (different feature networks?)")
    sa = _psd_sqrt(a.cov)
    inner = sa @ b.cov.to(torch.float64) @ sa
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = a.mu - b.mu
    fd = diff @ diff + a.cov.trace() + b.cov.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)


def fid(features_a: Tensor | FeatureStats, features_b: Tensor | FeatureStats) -> float:
    """FID between two feature sets (or their precomputed statistics)."""
    sa = features_a if isinstance(features_a, FeatureStats) else FeatureStats.from_features(features_a)
    sb = features_b if isinstance(features_b, FeatureStats) else FeatureStats.from_features(features_b)
    return frechet_distance(sa, sb)
