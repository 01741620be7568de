"""Exact-score oracles: data distributions whose ideal denoiser is known in closed form.

Both classes are Denoisers (``D(x, sigma, **cond)``) for data of any event shape;
they work in float64 internally and return ``x``'s dtype. Use them to test
samplers, guidance and editing against exact answers, or to learn the method:

- :class:`GaussianOracle` - N(mu, Sigma). ``D*(x; s) = mu + Sigma (Sigma + s^2 I)^-1 (x - mu)``
  and the probability-flow ODE has the closed-form solution
  ``x(s) - mu = Q diag(sqrt((l + s^2) / (l + s0^2))) Q^T (x(s0) - mu)`` (eigenpairs (l, Q) of Sigma).
- :class:`GaussianMixture` - sum_k pi_k N(mu_k, Sigma_k), optionally with a class label
  per component. ``D*`` is the posterior-weighted average of the per-component
  denoisers; with ``class_labels`` it restricts to that class (a conditional model),
  without them it is the unconditional mixture, which makes it an exact testbed for
  classifier-free guidance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebru.checks import positive_int

from .tensors import Generator, randn_like, sigma_batch

_F64 = torch.float64


def _flat(x: Tensor, dim: int) -> Tensor:
    if x[0].numel() != dim:
        raise ValueError(f"oracle has dimension {dim}, got samples of shape {tuple(x.shape[1:])}")
    return x.reshape(x.shape[0], dim).to(_F64)


def _sym_eig(cov: Tensor) -> tuple[Tensor, Tensor]:
    cov = (cov + cov.transpose(-1, -2)) / 2
    lam, q = torch.linalg.eigh(cov)
    if bool((lam <= 0).any()):
        raise ValueError("covariance matrices must be positive definite")
    return lam, q


def random_rotation(dim: int, generator: torch.Generator | None = None) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=_F64))
    return q * torch.sign(torch.diagonal(r))


class GaussianOracle:
    """The exact denoiser of N(mean, cov); ``event_shape`` reshapes samples (default (dim,))."""

    def __init__(self, mean: Tensor, cov: Tensor, event_shape: Sequence[int] | None = None):
        self.mean = torch.as_tensor(mean, dtype=_F64).flatten()
        self.dim = self.mean.numel()
        cov = torch.as_tensor(cov, dtype=_F64)
        if cov.shape != (self.dim, self.dim):
            raise ValueError(f"cov must be {self.dim}x{self.dim}, got {tuple(cov.shape)}")
        self.cov = cov
        self.eigvals, self.eigvecs = _sym_eig(cov)
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)

    @classmethod
    def random(cls, dim: int, scale_range: tuple[float, float] = (0.05, 1.0), seed: int = 0) -> GaussianOracle:
        """A random Gaussian with standard deviations log-spaced over ``scale_range``."""
        g = torch.Generator().manual_seed(seed)
        q = random_rotation(dim, g)
        stds = torch.logspace(math.log10(scale_range[0]), math.log10(scale_range[1]), dim, dtype=_F64)
        return cls(torch.randn(dim, generator=g, dtype=_F64) * 0.5, q @ torch.diag(stds**2) @ q.T)

    def _proj(self, x: Tensor) -> Tensor:
        return (_flat(x, self.dim) - self.mean) @ self.eigvecs

    def _unproj(self, y: Tensor, like: Tensor) -> Tensor:
        return (y @ self.eigvecs.T + self.mean).reshape(like.shape).to(like.dtype)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        s2 = sigma_batch(sigma, x).to(_F64)[:, None] ** 2
        return self._unproj(self._proj(x) * self.eigvals / (self.eigvals + s2), x)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """grad_x log p_sigma(x) = (D*(x; sigma) - x) / sigma^2."""
        s2 = sigma_batch(sigma, x).to(_F64)[:, None] ** 2
        y = -self._proj(x) / (self.eigvals + s2)
        return (y @ self.eigvecs.T).reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Exact log-density of the noised data p_sigma at x, per sample (nats)."""
        var = self.eigvals + sigma_batch(sigma, x).to(_F64)[:, None] ** 2
        y = self._proj(x)
        return -0.5 * ((y**2 / var).sum(1) + var.log().sum(1) + self.dim * math.log(2 * math.pi))

    def ode_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE flow from ``sigma_from`` to ``sigma_to`` (may be 0)."""
        ratio = ((self.eigvals + sigma_to**2) / (self.eigvals + sigma_from**2)).sqrt()
        return self._unproj(self._proj(x) * ratio, x)

    def sample(self, n: int, sigma: float = 0.0, generator: Generator = None) -> Tensor:
        """n samples of the data noised to ``sigma``, shape (n, *event_shape)."""
        z = randn_like(torch.empty(n, self.dim, dtype=_F64), generator)
        y = z * (self.eigvals + sigma**2).sqrt()
        return (y @ self.eigvecs.T + self.mean).reshape(n, *self.event_shape)

    def conditional(self, known_idx: Tensor, known_values: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and covariance of the unknown coordinates given the known ones (inpainting truth)."""
        mask = torch.zeros(self.dim, dtype=torch.bool)
        mask[known_idx] = True
        k, u = mask.nonzero().flatten(), (~mask).nonzero().flatten()
        s_uk, s_kk = self.cov[u][:, k], self.cov[k][:, k]
        gain = s_uk @ torch.linalg.inv(s_kk)
        mean = self.mean[u] + (torch.as_tensor(known_values, dtype=_F64) - self.mean[k]) @ gain.T
        return mean, self.cov[u][:, u] - gain @ s_uk.T


class GaussianMixture:
    """The exact denoiser of a Gaussian mixture, optionally class-conditional.

    Args:
        weights: (K,) mixture weights (normalised here).
        means: (K, d) component means.
        covs: (K, d, d) component covariances.
        labels: optional (K,) integer class of each component. Then
            ``D(x, sigma, class_labels=y)`` is the exact conditional denoiser for
            class y (per sample); ``class_labels=None`` or a label < 0 gives the
            unconditional mixture.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, labels: Tensor | None = None,
                 event_shape: Sequence[int] | None = None):
        self.means = torch.as_tensor(means, dtype=_F64)
        k, self.dim = self.means.shape
        w = torch.as_tensor(weights, dtype=_F64)
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers")
        self.log_weights = (w / w.sum()).log()
        covs = torch.as_tensor(covs, dtype=_F64)
        if covs.shape != (k, self.dim, self.dim):
            raise ValueError(f"covs must have shape ({k}, {self.dim}, {self.dim}), got {tuple(covs.shape)}")
        self.covs = covs
        self.eigvals, self.eigvecs = _sym_eig(covs)  # (K, d), (K, d, d)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)

    @classmethod
    def random(cls, dim: int = 16, components: int = 8, narrow: tuple[float, float] = (0.02, 0.2),
               spread: float = 1.0, classes: int | None = None, seed: int = 0) -> GaussianMixture:
        """Random well-separated anisotropic components with stds in ``narrow``, means ~ N(0, spread^2).

        ``classes``: ``None`` (no labels) or an integer >= 1; component k gets label
        ``k % classes``. Raises ValueError for ``classes`` 0 or not an integer.
        """
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=_F64) * spread
        covs = []
        for _ in range(components):
            q = random_rotation(dim, g)
            u = torch.rand(dim, generator=g, dtype=_F64)
            stds = narrow[0] * (narrow[1] / narrow[0]) ** u
            covs.append(q @ torch.diag(stds**2) @ q.T)
        weights = 0.5 + torch.rand(components, generator=g, dtype=_F64)
        if classes is not None:
            classes = positive_int("classes", classes)  # 0 is refused, not read as "no labels"
        labels = torch.arange(components) % classes if classes is not None else None
        return cls(weights, means, torch.stack(covs), labels)

    def _log_resp(self, y: Tensor, var: Tensor, class_labels: Tensor | None) -> Tensor:
        logp = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        logp = logp + self.log_weights
        if class_labels is not None:
            if self.labels is None:
                raise ValueError("this mixture has no component labels; pass class_labels=None")
            cl = torch.as_tensor(class_labels, device=logp.device).reshape(-1, 1)
            keep = (self.labels[None, :] == cl) | (cl < 0)
            if not bool(keep.any(1).all()):
                raise ValueError(f"class label not in this mixture's labels {sorted(set(self.labels.tolist()))}")
            logp = logp.masked_fill(~keep, -math.inf)
        return logp

    def _parts(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        xf = _flat(x, self.dim)
        s2 = sigma_batch(sigma, x).to(_F64)[:, None, None] ** 2
        y = torch.einsum("bkd,kde->bke", xf[:, None, :] - self.means, self.eigvecs)  # (B, K, d)
        return y, self.eigvals + s2

    def __call__(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None, **cond) -> Tensor:
        y, var = self._parts(x, sigma)
        resp = torch.softmax(self._log_resp(y, var, class_labels), dim=1)  # (B, K)
        post = torch.einsum("bke,kde->bkd", y * self.eigvals / var, self.eigvecs) + self.means
        return (resp[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0, class_labels: Tensor | None = None) -> Tensor:
        """log p_sigma(x), or log p_sigma(x | y) with ``class_labels`` (normalised within the class)."""
        y, var = self._parts(x, sigma)
        joint = torch.logsumexp(self._log_resp(y, var, class_labels), dim=1)
        if class_labels is None:
            return joint
        cl = torch.as_tensor(class_labels).reshape(-1, 1)
        keep = (self.labels[None, :] == cl) | (cl < 0)
        return joint - torch.logsumexp(self.log_weights.masked_fill(~keep, -math.inf), dim=1)

    def score(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        s2 = sigma_batch(sigma, x).to(_F64).reshape((-1,) + (1,) * (x.ndim - 1)) ** 2
        return ((self(x.to(_F64), sigma, class_labels) - x.to(_F64)) / s2).to(x.dtype)

    def sample(self, n: int, sigma: float = 0.0, generator: Generator = None,
               class_labels: Tensor | None = None) -> Tensor:
        """n samples noised to ``sigma``; with ``class_labels`` (per sample) from that class."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        logits = self.log_weights.expand(n, -1)
        if class_labels is not None:
            cl = torch.as_tensor(class_labels).reshape(-1, 1).expand(n, 1)
            logits = logits.masked_fill(self.labels[None, :] != cl, -math.inf)
        comp = torch.multinomial(logits.exp(), 1, generator=g).squeeze(1)
        z = torch.randn(n, self.dim, generator=g, dtype=_F64)
        y = z * (self.eigvals[comp] + sigma**2).sqrt()
        x = torch.einsum("bd,bed->be", y, self.eigvecs[comp]) + self.means[comp]
        return x.reshape(n, *self.event_shape)
