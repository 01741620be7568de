"""Tree-Ring: an optional zero-bit watermark in the Fourier transform of the initial noise.

Wen, Kirchenbauer, Geiping and Goldstein, "Tree-Ring Watermarks: Fingerprints for Diffusion Images that are
Invisible and Robust", NeurIPS 2023 (reference code ``YuxinWenRick/tree-ring-watermark``, its "ring" key). It
is ebru's *second* signal beside :mod:`ebru.provenance.watermark` (Gaussian Shading): it carries no id, only
"this image started from noise keyed by this key", and it costs nothing extra at detection (the same inverted
noise is read twice).

**Embedding** (:meth:`TreeRing.apply`). For one channel ``c`` of the initial noise (default the last, as the
reference code marks Stable Diffusion's fourth latent channel), take the centred 2-D Fourier transform
(``fftshift(fft2(z_c, norm="ortho"))``: white N(0, 1) noise has coefficients of unit power) and overwrite
the coefficients inside a disc of ``radius`` around the centre (the low frequencies) with the key: one real
value per ring (ring ``i`` holds the coefficients at distance ``d`` with ``ceil(d) = i``, the centre in
ring 1), drawn N(0, 1) from a ChaCha20 keystream of the watermark secret. Rings are symmetric about the
centre and the values real, so the pattern keeps the transform Hermitian and the noise real; ring-constant
values make the key invariant to rotations of the image about its centre. The marked noise is *not*
exactly Gaussian any more (the disc is the same for every image of one key): that is Tree-Ring's known
cost, and why it is off by default and Gaussian Shading, which is lossless, is always on.

**Detection** (:meth:`TreeRing.detect`, on noise from :func:`ebru.diffusion.invert`). The masked coefficients,
each conjugate pair once, as a real vector ``v`` of ``dof`` entries (real and imaginary parts of a complex
coefficient times sqrt(2), the real centre as it is: white noise makes every entry N(0, 1)), and the key as the
vector ``u`` built the same way. The score is their cosine ``c = <u, v> / (|u| |v|)`` (about 1 with a clean mark).
Tree-Ring's paper compares ``|k - y|**2`` with a non-central chi-squared law whose variance is estimated from ``y``
itself; with that estimate the distance is a function of ``c`` alone, and the chi-squared tail then overstates
p-values (on fresh noise ebru measured 0.1 % of p-values under 0.05, for a nominal 5 %), so ebru uses the exact
law of ``c`` instead: under the null hypothesis that ``v`` is isotropic Gaussian (any variance), ``(1 + c) / 2``
follows Beta((dof - 1) / 2, (dof - 1) / 2), and ``p_value = P(C >= c)`` is its upper tail
(:func:`log_cosine_sf`). That null is an assumption about the inverted noise, not a guarantee like Gaussian
Shading's Hoeffding bound: the low frequencies of real images are neither white nor isotropic. Its false-positive
rate is therefore measured, on un-marked generations and real images (``benchmarks/tree_ring.py``), not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ebru.checks import finite_number, positive_int

from .watermark import _keystream, key_and_shape
from .wmkeys import WatermarkKey

__all__ = ["TreeRing", "TreeRingResult", "log_betainc", "log_cosine_sf"]

DEFAULT_FPR = 1e-6  # as Gaussian Shading's (ebru.provenance.watermark.DEFAULT_FPR)


# --------------------------------------------------------------------------- the null law


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Numerical Recipes 6.4, modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_001):
        for aa in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def log_betainc(a: float, b: float, x: float) -> float:
    """``ln I_x(a, b)``, the regularised incomplete beta function (the Beta(a, b) CDF at ``x``), without underflow.

    The continued fraction (Numerical Recipes 6.4) in log space where it converges fast, ``x < (a + 1) / (a + b
    + 2)``; otherwise through ``1 - I_{1-x}(b, a)``. Tails far below 1e-308 stay representable. Raises ValueError
    for ``a`` or ``b`` <= 0 or ``x`` outside [0, 1].
    """
    a, b = finite_number("a", a, positive=True), finite_number("b", b, positive=True)
    x = finite_number("x", x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0:
        return -math.inf
    if x == 1.0:
        return 0.0
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    if x < (a + 1.0) / (a + b + 2.0):
        return a * math.log(x) + b * math.log1p(-x) - log_beta - math.log(a) + math.log(_betacf(a, b, x))
    upper = b * math.log1p(-x) + a * math.log(x) - log_beta - math.log(b) + math.log(_betacf(b, a, 1.0 - x))
    return math.log1p(-math.exp(upper)) if upper < 0 else -math.inf


def log_cosine_sf(c: float, dim: int) -> float:
    """``ln P(C >= c)`` for ``C`` the cosine between a fixed vector and an isotropic random one in ``dim`` >= 2
    dimensions: ``(1 + C) / 2 ~ Beta((dim - 1) / 2, (dim - 1) / 2)``, so ``P(C >= c) = I_{(1 - c) / 2}`` of that
    Beta (by its symmetry). Exact for any isotropic law (a Gaussian of any variance). Raises ValueError for
    ``dim`` < 2 or ``c`` outside [-1, 1]."""
    dim = positive_int("dim", dim, minimum=2)
    c = finite_number("c", c)
    if not -1.0 <= c <= 1.0:
        raise ValueError(f"c must be in [-1, 1], got {c}")
    alpha = (dim - 1) / 2
    return log_betainc(alpha, alpha, (1.0 - c) / 2)


# --------------------------------------------------------------------------- the scheme


@dataclass(frozen=True)
class TreeRingResult:
    """What :meth:`TreeRing.detect` read from one noise estimate.

    ``detected`` = ``p_value <= fpr``; ``p_value`` (``log10_p_value`` keeps it when it underflows) is the tail of
    ``correlation`` under the isotropic null (see the module docstring); ``correlation``: the cosine between the
    masked coefficients and the key (about 0 without the mark, near 1 with a clean one); ``dof``: the real degrees
    of freedom it is taken over; ``key_id``: the key it was read with.
    """

    detected: bool
    p_value: float
    log10_p_value: float
    correlation: float
    dof: int
    fpr: float
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ring_values(secret: bytes, shape: tuple[int, ...], radius: int, n: int) -> Tensor:
    """``n`` keyed N(0, 1) values (Box-Muller over a ChaCha20 keystream) for one shape and radius."""
    stream = _keystream(secret, b"tree-ring/radius=%d" % radius, shape, 16 * n)
    u = (np.frombuffer(stream, dtype="<u8").reshape(n, 2).astype(np.float64) + 0.5) / 2.0 ** 64  # in (0, 1)
    return torch.from_numpy(np.sqrt(-2 * np.log(u[:, 0])) * np.cos(2 * np.pi * u[:, 1]))


class TreeRing:
    """Tree-Ring's ring key (Wen et al. 2023) for one noise shape and one key; see the module docstring.

    Args:
        key: a :class:`~ebru.provenance.wmkeys.WatermarkKey` or its 32-byte secret (the same key as Gaussian
            Shading's; the two draw from separate keystreams).
        shape: the per-sample noise shape ``(C, H, W)``; H and W at least 8.
        radius: the disc's radius in frequency bins; default ``round(min(H, W) * 10 / 64)`` (the reference
            code's 10 on 64x64 latents), at least 2 and at most ``min(H, W) // 2 - 1``.
        channel: the channel that carries the key (default the last); negative counts from the end.

    Raises ValueError for a bad key, shape, radius or channel.
    """

    def __init__(self, key: WatermarkKey | bytes, shape: Sequence[int], *, radius: int | None = None,
                 channel: int = -1):
        key, shape = key_and_shape(key, shape)
        if len(shape) != 3 or min(shape[1:]) < 8:
            raise ValueError(f"Tree-Ring needs a (C, H, W) noise shape with H, W >= 8, got {shape}")
        c, h, w = shape
        limit = min(h, w) // 2 - 1
        radius = max(2, round(min(h, w) * 10 / 64)) if radius is None else positive_int("radius", radius)
        if not 1 <= radius <= limit:
            raise ValueError(f"radius must be between 1 and {limit} for {h}x{w} noise, got {radius}")
        if isinstance(channel, bool) or not isinstance(channel, int) or not -c <= channel < c:
            raise ValueError(f"channel must be an integer in [{-c}, {c}) for {c} channels, got {channel!r}")
        self.shape, self.radius, self.channel = shape, radius, channel % c
        self.key_id = key.key_id
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64) - h // 2,
                                torch.arange(w, dtype=torch.float64) - w // 2, indexing="ij")
        dist = (yy.square() + xx.square()).sqrt()
        self.mask = dist <= radius  # (H, W) over the fftshift-ed transform
        ring = dist.ceil().clamp(min=1).long()  # the reference code's nested discs: ring i = ceil(distance)
        values = _ring_values(key.secret, shape, radius, radius)
        self.pattern = torch.zeros(h, w, dtype=torch.float64)
        self.pattern[self.mask] = values[ring[self.mask] - 1]
        # each conjugate pair once: centred index (u, v) pairs with (-u, -v); keep the lexicographically larger
        uu, vv = yy.long(), xx.long()
        mirror_u, mirror_v = _mirror(uu, h), _mirror(vv, w)
        own = (uu == mirror_u) & (vv == mirror_v)  # self-conjugate: real coefficients (the centre, Nyquist bins)
        keep = (uu > mirror_u) | ((uu == mirror_u) & (vv >= mirror_v))
        self._complex = self.mask & keep & ~own
        self._real = self.mask & own
        self.dof = 2 * int(self._complex.sum()) + int(self._real.sum())

    def __repr__(self) -> str:
        return f"TreeRing(shape={self.shape}, radius={self.radius}, channel={self.channel}, key_id={self.key_id!r})"

    def _check(self, z: Tensor, what: str) -> None:
        if not isinstance(z, Tensor):
            raise ValueError(f"{what} must be a tensor, got {type(z).__name__}")
        if z.ndim != 4 or tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"{what} has shape {tuple(z.shape)}; this Tree-Ring key is for (B, *{self.shape})")

    def _spectrum(self, plane: Tensor) -> Tensor:
        return torch.fft.fftshift(torch.fft.fft2(plane.to(torch.float64), norm="ortho"), dim=(-2, -1))

    def apply(self, noise: Tensor) -> Tensor:
        """The noise (B, C, H, W) with the key written into its channel's low frequencies (a new tensor).

        Other channels, and the frequencies outside the disc, are unchanged. Raises ValueError for another
        shape.
        """
        self._check(noise, "noise")
        spec = self._spectrum(noise[:, self.channel])
        spec[:, self.mask] = self.pattern[self.mask].to(spec.dtype)
        plane = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="ortho").real
        out = noise.clone()
        out[:, self.channel] = plane.to(noise.dtype)
        return out

    def detect(self, noise_estimate: Tensor, *, fpr: float = DEFAULT_FPR) -> list[TreeRingResult]:
        """Test each noise estimate (B, C, H, W) for the key: one :class:`TreeRingResult` per sample.

        Raises ValueError for another shape or ``fpr`` outside (0, 1].
        """
        fpr = finite_number("fpr", fpr, positive=True, maximum=1.0)
        self._check(noise_estimate, "noise estimate")
        spec = self._spectrum(noise_estimate.detach().cpu()[:, self.channel])
        key = self._vector(self.pattern.to(torch.complex128).expand(1, -1, -1))[0]
        out = []
        for v in self._vector(spec):
            norm = float(v.norm()) * float(key.norm())
            c = min(1.0, max(-1.0, float(v @ key) / norm)) if norm > 0 and math.isfinite(norm) else 0.0
            log10_p = log_cosine_sf(c, self.dof) / math.log(10)
            out.append(TreeRingResult(detected=log10_p <= math.log10(fpr), p_value=10.0 ** log10_p,
                                      log10_p_value=log10_p, correlation=c, dof=self.dof, fpr=fpr,
                                      key_id=self.key_id))
        return out

    def _vector(self, spec: Tensor) -> Tensor:
        """(B, dof) real vectors of the masked coefficients of (B, H, W) centred spectra: each conjugate pair once,
        its real and imaginary parts times sqrt(2), then the real self-conjugate ones (N(0, 1) entries for white
        noise)."""
        yc, yr = spec[:, self._complex], spec[:, self._real].real
        return torch.cat([math.sqrt(2) * yc.real, math.sqrt(2) * yc.imag, yr], dim=1)


def _mirror(u: Tensor, n: int) -> Tensor:
    """The centred frequency index that pairs with ``u`` under conjugation, for an axis of ``n`` bins.

    Centred indices run from ``-(n // 2)`` to ``(n - 1) // 2``; ``-u`` wraps for the Nyquist bin of an even axis.
    """
    m = -u
    return torch.where(m > (n - 1) // 2, m - n, m)
