"""Gaussian Shading: a multi-bit watermark in the initial noise whose entries stay exactly N(0, 1).

Yang et al., "Gaussian Shading: Provable Performance-Lossless Image Watermarking for Diffusion Models",
CVPR 2024 (reference code ``bsmhmmlf/Gaussian-Shading``). ebru's version, for a sample shape
``(C, H, W)`` with ``D = C * H * W`` noise entries ("chips") and a payload of ``id_bits`` bits:

1. **Payload.** A random ``watermark_id`` (:func:`new_watermark_id`, 32 bits by default) names one
   output; it is not a secret (the local store maps it back to the generation record).
2. **Error correction: a keyed repetition code.** A keyed permutation of the D chips assigns chip
   ``perm[r]`` to bit ``r mod id_bits``, so every bit gets ``D // id_bits`` or one more copies and
   every entry of the noise is used (784 chips at 28x28: 24 or 25 copies of each of 32 bits).
3. **Encryption.** The chip bits are XORed with a ChaCha20 keystream (``cryptography``; key = the
   32-byte watermark secret, the nonce derived from the shape, so each image shape has its own
   stream). The permutation comes from the same key under another nonce. To anyone without the key,
   the chip bits of one image look like fair coins whatever the payload.
4. **Shading.** Entry ``j`` of the noise is drawn from the half of N(0, 1) that its chip bit ``c_j``
   selects: ``z_j = Phi^-1((u_j + c_j) / 2)`` with ``u_j ~ U(0, 1)``. ebru takes ``u_j`` from the very
   draw :func:`ebru.diffusion.sample` makes for that seed, ``n = randn`` (per-sample generators,
   :func:`~ebru.diffusion.tensors.seed_generators`): ``z_j = (2 c_j - 1) |n_j|``, which is the same
   formula with ``u_j = 1 - 2 Phi(-|n_j|)`` (for ``c_j = 1``) or ``2 Phi(-|n_j|)`` (for ``c_j = 0``), each
   exactly U(0, 1) and independent of ``c_j``. With a random id every ``c_j`` is a fair coin, so every
   entry is exactly N(0, 1), and entries carrying different bits are independent. Entries carrying
   the *same* bit are not: their signs are tied through the keystream, so for one key and shape only
   ``2**id_bits`` sign patterns occur. This is Gaussian Shading as published: its losslessness proof
   treats the encrypted bits as fresh uniform bits, and its reference code even uses one fixed sign
   pattern for a whole run, with FID unchanged; ebru's benchmark re-measures FID with and without
   the watermark rather than assume it. Taking ``u`` from ``|n|`` rather than a separate
   ``torch.rand`` also means the watermarked and unmarked draws of one seed differ only in signs,
   ``Phi^-1`` is never evaluated near 1 in float32, and the generators' later draws (stochastic
   samplers, inpainting) are those of the unmarked run.
5. **Detection.** Invert the image to its noise with the same model's probability-flow ODE
   (:func:`ebru.diffusion.invert`), then :meth:`GaussianShading.decode`: undo the keystream's sign
   flips, sum each bit's chips (soft majority: the values, not only their signs) and read the id from
   the sums' signs.

**The p-value.** Detection scores an id by the *soft* correlation of the de-ciphered noise estimate with
the id's code: ``T(id) = sum_j v_j (2 b_j(id) - 1)``, where ``v_j`` is chip ``j`` of the estimate with the
keystream's sign flip undone and ``b_j(id)`` the payload bit chip ``j`` carries. Under the null hypothesis
(an image not marked with this key, so its noise estimate does not depend on the keystream), the signs of
the ``v_j`` are fair coins independent of their magnitudes ``|v_j|`` and of each other, whatever the
image's own structure (the keystream is pseudo-random): given the magnitudes, ``T(id)`` is a weighted
Rademacher sum for every fixed id, and Hoeffding's inequality (Hoeffding 1963, Thm 2) bounds its tail by
``exp(-t**2 / (2 sum_j v_j**2))``. The decoder picks the id that scores best (blind: each bit by the sign of
its soft sum, so ``T = sum_b |S_b|``; or the best of ``candidates``), which inflates the score; a union
bound over every id it could have returned fixes that:
``p_value = min(1, H exp(-score**2 / 2))`` with ``score = T / sqrt(sum_j v_j**2)`` (a z-like number) and
``H = 2**id_bits``, or ``len(candidates)`` with a known list of ids (e.g. the local store's). It is a
valid p-value (``P(p_value <= a) <= a`` under the null), so ``detected = p_value <= fpr`` has
false-positive rate at most ``fpr`` (default 1e-6). Weighting chips by their magnitudes is what a
likelihood-ratio test does for a noise estimate ``v = c + e`` with Gaussian error, and on real
inversions it gains 15-20 % in score over counting agreeing signs (``chip_matches``, still reported as a
plain-language accuracy). Independence of the chip signs on clean images is an assumption to check
empirically (bit means near 0.5, correlations near 0), which ``tests/provenance/test_watermark.py`` does
on fresh noise and ``benchmarks/watermark_robustness.py`` on real images.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import operator
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch import Tensor

from ebru.checks import finite_number, positive_int
from ebru.diffusion import invert
from ebru.diffusion.defaults import SAMPLING
from ebru.diffusion.tensors import randn_like, seed_generators

from .wmkeys import SECRET_BYTES, WatermarkKey

__all__ = [
    "DEFAULT_FPR", "DEFAULT_ID_BITS", "Decoded", "GaussianShading", "binomial_sf", "detect_watermark",
    "fit_to_shape", "invert_to_noise", "key_and_shape", "log_binomial_sf", "new_watermark_id", "payload_accuracy",
]

DEFAULT_ID_BITS = 32
DEFAULT_FPR = 1e-6
MAX_ID_BITS = 63  # ids are Python ints; 63 keeps them in an int64 tensor
_NONCE_DOMAIN = b"ebru/gaussian-shading/v1\0"
_ID_DOMAIN = b"ebru/gaussian-shading/ids/v1\0"
_LN10 = math.log(10.0)


# --------------------------------------------------------------------------- the binomial tail


def log_binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """``ln P(X > k)`` for ``X ~ Binomial(n, p)``, exact up to float64 rounding (a log-space sum).

    ``k < 0`` gives 0 (probability 1), ``k >= n`` gives ``-inf``. Sums the terms
    ``ln C(n, j) + j ln p + (n - j) ln(1 - p)`` for ``j > k`` with ``lgamma`` and ``logsumexp``, so it
    neither overflows nor underflows for the sizes a watermark has (p-values far below 1e-308 stay
    representable as logarithms). Raises ValueError for ``n`` < 0 or ``p`` outside (0, 1).
    """
    n = positive_int("n", n, minimum=0)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    p = finite_number("p", p)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if k < 0:
        return 0.0
    if k >= n:
        return -math.inf
    j = torch.arange(k + 1, n + 1, dtype=torch.float64)
    log_terms = (math.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)
                 + j * math.log(p) + (n - j) * math.log1p(-p))
    return min(0.0, float(torch.logsumexp(log_terms, 0)))


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """``P(X > k)`` for ``X ~ Binomial(n, p)`` (scipy's ``binom.sf`` convention); see :func:`log_binomial_sf`."""
    return math.exp(log_binomial_sf(k, n, p))


# --------------------------------------------------------------------------- payload


def new_watermark_id(id_bits: int = DEFAULT_ID_BITS) -> int:
    """A fresh random watermark id of ``id_bits`` bits, from :mod:`secrets`."""
    return secrets.randbits(positive_int("id_bits", id_bits))


@dataclass(frozen=True)
class Decoded:
    """What :meth:`GaussianShading.decode` read from one noise estimate.

    ``watermark_id``: the decoded id (meaningful only when ``detected``). ``score``: the soft correlation
    of the de-ciphered estimate with that id's code over its norm (``T / sqrt(sum v**2)``, see the module
    docstring; about ``sqrt(D) * (2 * chip_accuracy - 1)`` for a clean estimate, about N(0, 1) for a fixed id
    without the watermark). ``p_value``: ``min(1, hypotheses * exp(-score**2 / 2))``, the Hoeffding and union
    bound on the chance of such a score for some id among ``hypotheses`` (2**id_bits, or the number of
    candidates) on an image without this watermark; ``log10_p_value`` keeps it when it underflows to 0.
    ``detected`` = ``p_value <= fpr``. ``chip_matches``: noise entries whose sign agrees with the id's code,
    out of ``chips`` (= D); ``chip_accuracy`` = chip_matches / chips (0.5 on unrelated noise). ``key_id``:
    the key it was read with (never the secret).
    """

    watermark_id: int
    detected: bool
    p_value: float
    log10_p_value: float
    score: float
    chip_accuracy: float
    chip_matches: int
    chips: int
    id_bits: int
    hypotheses: int
    fpr: float
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def payload_accuracy(decoded: Sequence[Decoded], true_ids: Sequence[int]) -> list[float]:
    """Per sample, the fraction of the id's ``id_bits`` bits decoded right (for benchmarks).

    Raises ValueError when the two lists differ in length.
    """
    decoded, true_ids = list(decoded), [int(t) for t in true_ids]
    if len(decoded) != len(true_ids):
        raise ValueError(f"got {len(decoded)} decoded results for {len(true_ids)} true ids")
    return [1.0 - bin((d.watermark_id ^ t) & ((1 << d.id_bits) - 1)).count("1") / d.id_bits
            for d, t in zip(decoded, true_ids, strict=True)]


# --------------------------------------------------------------------------- the scheme


def _keystream(secret: bytes, purpose: bytes, shape: tuple[int, ...], nbytes: int) -> bytes:
    """ChaCha20 keystream (RFC 8439 block function) for one purpose and shape; counter starts at 0."""
    tag = _NONCE_DOMAIN + purpose + b"\0" + json.dumps(list(shape)).encode("ascii")
    nonce = b"\0" * 4 + hashlib.sha256(tag).digest()[:12]  # cryptography: 4-byte counter || 12-byte nonce
    enc = Cipher(algorithms.ChaCha20(secret, nonce), mode=None).encryptor()
    return enc.update(b"\0" * nbytes)


def key_and_shape(key: WatermarkKey | bytes, shape: Sequence[int]) -> tuple[WatermarkKey, tuple[int, ...]]:
    """A noise mark's key (a :class:`WatermarkKey` or its 32-byte secret) and per-sample noise shape, checked.

    Raises ValueError for another key type or a shape that is not a non-empty sequence of positive integers.
    """
    if isinstance(key, bytes | bytearray):
        key = WatermarkKey.from_secret(bytes(key))
    if not isinstance(key, WatermarkKey):
        raise ValueError(f"key must be a WatermarkKey or its {SECRET_BYTES}-byte secret, got {type(key).__name__}")
    try:
        shape = tuple(positive_int("shape entry", s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of positive integers, got {shape!r}") from None
    if not shape:
        raise ValueError("shape must have at least one dimension")
    return key, shape


def _ids_to_bits(ids: Sequence[int], id_bits: int) -> Tensor:
    """(N, id_bits) bool, bit i = (id >> i) & 1."""
    t = torch.tensor(list(ids), dtype=torch.int64)
    return ((t[:, None] >> torch.arange(id_bits)) & 1).bool()


def _bits_to_ids(bits: Tensor) -> list[int]:
    weights = 1 << torch.arange(bits.shape[1], dtype=torch.int64)
    return [int(v) for v in (bits.long() * weights).sum(1)]


class GaussianShading:
    """Gaussian Shading (Yang et al. 2024) for one sample shape and one key; see the module docstring.

    Args:
        key: a :class:`~ebru.provenance.wmkeys.WatermarkKey` or its 32-byte secret.
        shape: the per-sample shape of the initial noise, e.g. ``(C, H, W)`` (a latent's shape for a
            latent model).
        id_bits: payload size in bits, 1 to 63 and at most D (default 32).

    Raises ValueError for a bad shape, ``id_bits`` or key. Building the keystream and the permutation
    costs a few milliseconds; keep the object for a batch of calls.
    """

    def __init__(self, key: WatermarkKey | bytes, shape: Sequence[int], *, id_bits: int = DEFAULT_ID_BITS):
        key, shape = key_and_shape(key, shape)
        self.shape = shape
        self.chips = math.prod(shape)
        self.id_bits = positive_int("id_bits", id_bits)
        if self.id_bits > MAX_ID_BITS:
            raise ValueError(f"id_bits must be at most {MAX_ID_BITS}, got {self.id_bits}")
        if self.id_bits > self.chips:
            raise ValueError(f"id_bits ({self.id_bits}) cannot exceed the {self.chips} noise entries of shape {shape}")
        self.key_id = key.key_id
        d = self.chips
        # keyed permutation: chip perm[r] carries bit r mod id_bits (repetition code, all D chips used)
        rank_keys = np.frombuffer(_keystream(key.secret, b"permutation", shape, 8 * d), dtype="<u8")
        perm = torch.from_numpy(np.argsort(rank_keys, kind="stable").astype(np.int64))
        bit_of_chip = torch.empty(d, dtype=torch.int64)
        bit_of_chip[perm] = torch.arange(d) % self.id_bits
        self.bit_of_chip = bit_of_chip
        self.copies = torch.bincount(bit_of_chip, minlength=self.id_bits)  # (id_bits,) chips per bit
        # keystream bits that flip each chip
        stream = np.frombuffer(_keystream(key.secret, b"xor", shape, (d + 7) // 8), dtype=np.uint8)
        self.flip = torch.from_numpy(np.unpackbits(stream, bitorder="little")[:d].astype(bool))
        self._id_key = hashlib.sha256(_ID_DOMAIN + key.secret).digest()  # for ids_for; never the secret itself

    def __repr__(self) -> str:
        return f"GaussianShading(shape={self.shape}, id_bits={self.id_bits}, key_id={self.key_id!r})"

    # ----------------------------------------------------------------------------- embedding
    def _check_ids(self, watermark_ids: Sequence[int] | int, n: int | None) -> list[int]:
        if isinstance(watermark_ids, int | np.integer) and not isinstance(watermark_ids, bool):
            watermark_ids = [watermark_ids] * (1 if n is None else n)
        ids = []
        for w in watermark_ids:
            try:
                v = operator.index(w)  # int, numpy and 0-d torch integers; not floats
            except TypeError:
                v = None
            if isinstance(w, bool) or v is None or not 0 <= v < (1 << self.id_bits):
                raise ValueError(f"watermark ids must be integers in [0, 2**{self.id_bits}), got {w!r}")
            ids.append(v)
        if n is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} watermark ids for {n} seeds")
        return ids

    def encode(self, watermark_ids: Sequence[int] | int) -> Tensor:
        """(N, D) bool chip bits (after the keystream) of each id, in the flattened order of ``shape``."""
        bits = _ids_to_bits(self._check_ids(watermark_ids, None), self.id_bits)
        return bits[:, self.bit_of_chip] ^ self.flip

    def ids_for(self, seeds: Sequence[int], context: str = "") -> list[int]:
        """The watermark id of each seed in ``context``: ``HMAC-SHA256(k, context NUL seed)``, first ``id_bits``.

        ``k`` is derived from the key's secret under its own domain. Deterministic, so that a seed keeps
        drawing the same image (the watermark is part of the initial noise), yet distinct across seeds
        and contexts: ebru's pipelines pass the model package's digest as ``context``, so one id names one
        (model, seed), and the generation records in the local store tell the prompts and settings apart.
        Without the key the ids cannot be predicted or linked to seeds. Raises ValueError for a
        non-integer seed.
        """
        ids = []
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
                raise ValueError(f"seeds must be integers, got {seed!r}")
            mac = hmac.new(self._id_key, f"{context}\0{int(seed)}".encode(), hashlib.sha256).digest()
            ids.append(int.from_bytes(mac[:8], "big") >> (64 - self.id_bits))
        return ids

    def noise(self, seeds: Sequence[int], watermark_ids: Sequence[int] | int, *, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> Tensor:
        """Watermarked unit-variance initial noise, (B, *shape), one sample per seed.

        Sample ``i`` is ``(2 c - 1) |n|`` with ``n`` the standard normal draw
        :func:`ebru.diffusion.sample` makes for ``seeds[i]`` in ``dtype`` and ``c`` the chip bits of
        ``watermark_ids[i]`` (one int: the same id for every sample): exactly N(0, 1) per entry, and
        the same seed and id give the same noise whatever the batch. Pass it as ``sample(...,
        seeds=seeds, noise=...)``. Raises ValueError for a non-integer seed, an id out of range or
        lists of different lengths.
        """
        seeds = list(seeds)
        ids = self._check_ids(watermark_ids, len(seeds))
        if not seeds:
            raise ValueError("seeds is empty")
        n = randn_like(torch.empty((len(seeds), *self.shape), dtype=dtype), seed_generators(seeds))
        chips = self.encode(ids).reshape(len(seeds), *self.shape)
        return torch.where(chips, n.abs(), -n.abs()).to(device)

    # ----------------------------------------------------------------------------- detection
    def _flat(self, noise_estimate: Tensor) -> Tensor:
        if not isinstance(noise_estimate, Tensor):
            raise ValueError(f"noise estimate must be a tensor, got {type(noise_estimate).__name__}")
        if tuple(noise_estimate.shape[1:]) != self.shape or noise_estimate.ndim < 2:
            raise ValueError(f"noise estimate has per-sample shape {tuple(noise_estimate.shape[1:])}; this watermark "
                             f"is for shape {self.shape} (resize images first, or use the model they came from)")
        return noise_estimate.detach().reshape(noise_estimate.shape[0], self.chips).to("cpu", torch.float64)

    def extract(self, noise_estimate: Tensor) -> Tensor:
        """(B, D) bool chip signs (``> 0``) of a (B, *shape) noise estimate, before undoing the keystream."""
        return self._flat(noise_estimate) > 0

    def _bit_stats(self, noise_estimate: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per sample and bit: soft sum of the de-ciphered chips, the counts of chips voting 1 and 0; per
        sample: the estimate's norm."""
        v = self._flat(noise_estimate)
        v = torch.where(self.flip, -v, v)  # chip value in the bit's own sign: > 0 votes for bit 1
        b = v.shape[0]
        idx = self.bit_of_chip.expand(b, -1)
        soft = torch.zeros(b, self.id_bits, dtype=torch.float64).scatter_add_(1, idx, v)
        ones = torch.zeros(b, self.id_bits, dtype=torch.int64).scatter_add_(1, idx, (v > 0).long())
        zeros = torch.zeros(b, self.id_bits, dtype=torch.int64).scatter_add_(1, idx, (v < 0).long())
        return soft, ones, zeros, v.square().sum(1).sqrt()

    @staticmethod
    def min_score(fpr: float = DEFAULT_FPR, hypotheses: int = 1 << DEFAULT_ID_BITS) -> float:
        """The lowest ``score`` :meth:`decode` reports as detected at ``fpr`` for ``hypotheses`` ids:
        ``sqrt(2 ln(hypotheses / fpr))`` (8.50 for 2**32 ids at 1e-6; 6.43 for 1,000 candidates)."""
        fpr = finite_number("fpr", fpr, positive=True, maximum=1.0)
        h = positive_int("hypotheses", hypotheses)
        return math.sqrt(2 * max(0.0, math.log(h / fpr)))

    @staticmethod
    def _log10_p(score: float, hypotheses: int) -> float:
        if score <= 0:
            return 0.0
        return min(0.0, math.log10(hypotheses) - score * score / (2 * _LN10))

    def decode(self, noise_estimate: Tensor, *, fpr: float = DEFAULT_FPR,
               candidates: Sequence[int] | None = None) -> list[Decoded]:
        """Read the watermark of each noise estimate (B, *shape): one :class:`Decoded` per sample.

        Without ``candidates``: each bit by soft majority over its chips (the sign of the sum of the
        de-ciphered values), p-value with the union bound over all ``2**id_bits`` ids (see the module
        docstring). With
        ``candidates`` (ids known to exist, e.g. the local store's): the candidate whose chips
        correlate best with the estimate (maximum likelihood), union bound over the distinct
        candidates. Raises ValueError for a wrong shape (with the expected one), an empty or
        out-of-range candidate list, or ``fpr`` outside (0, 1].
        """
        fpr = finite_number("fpr", fpr, positive=True, maximum=1.0)
        soft, ones, zeros, norm = self._bit_stats(noise_estimate)
        if candidates is None:
            bits = soft > 0
            hypotheses = 1 << self.id_bits
        else:
            cands = list(dict.fromkeys(self._check_ids(candidates, None)))
            if not cands:
                raise ValueError("candidates is empty: give at least one watermark id")
            cbits = _ids_to_bits(cands, self.id_bits)  # (N, k)
            score = soft @ (cbits.double() * 2 - 1).T  # (B, N): correlation of the estimate with each id
            bits = cbits[score.argmax(1)]
            hypotheses = len(cands)
        t = torch.where(bits, soft, -soft).sum(1)
        scores = torch.where(norm > 0, t / norm.clamp(min=1e-300), torch.zeros_like(t))
        matches = torch.where(bits, ones, zeros).sum(1)
        out = []
        for wid, m, z in zip(_bits_to_ids(bits), matches.tolist(), scores.tolist(), strict=True):
            log10_p = self._log10_p(z, hypotheses)
            out.append(Decoded(watermark_id=wid, detected=log10_p <= math.log10(fpr), p_value=10.0**log10_p,
                               log10_p_value=log10_p, score=z, chip_accuracy=m / self.chips, chip_matches=m,
                               chips=self.chips, id_bits=self.id_bits, hypotheses=hypotheses, fpr=fpr,
                               key_id=self.key_id))
        return out


# --------------------------------------------------------------------------- detection from images


def fit_to_shape(images: Tensor, shape: Sequence[int]) -> Tensor:
    """Bring (B, C, H, W) images to the spatial size of ``shape`` = (C, H, W) with a plain resize.

    Shrinking in both directions: an area (box) average (``F.interpolate(mode="area")``), which undoes
    a nearest-neighbour or box enlargement by an integer factor exactly. Otherwise (enlarging, or
    shrinking one side only): bilinear, antialiased when it shrinks. No crop, so the aspect ratio
    follows ``shape``. Images already of that size are returned unchanged (the same tensor). Raises
    ValueError for another channel count, or a tensor that is not 4-D (for a shape that is not 3-D,
    the per-sample shape must simply match).
    """
    shape = tuple(shape)
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a tensor, got {type(images).__name__}")
    if len(shape) != 3:
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"images have per-sample shape {tuple(images.shape[1:])}, expected {shape}")
        return images
    if images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
    if images.shape[1] != shape[0]:
        raise ValueError(f"images have {images.shape[1]} channels; the watermark's model makes {shape[0]} "
                         f"(shape {shape})")
    size = shape[1:]
    if tuple(images.shape[2:]) == size:
        return images
    x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    if images.shape[2] >= size[0] and images.shape[3] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def detect_watermark(denoiser, images: Tensor, scheme: GaussianShading, *, sampler: str = "ddim",
                     steps: int = SAMPLING.steps, schedule: str | Callable[..., Tensor] = SAMPLING.schedule,
                     sigma_min: float | None = None, sigma_max: float | None = None,
                     schedule_opts: Mapping[str, Any] | None = None, fpr: float = DEFAULT_FPR,
                     candidates: Sequence[int] | None = None, **cond: Any) -> list[Decoded]:
    """Detect and read the noise watermark of generated images: resize, invert, decode.

    Args:
        denoiser: the model the images are suspected to come from (``D(x, sigma, **cond)``); another
            model inverts to unrelated noise, which decodes as "not detected".
        images: (B, C, H, W) in [-1, 1]; resized to ``scheme.shape`` first (:func:`fit_to_shape`: area
            average when shrinking, bilinear when enlarging).
        scheme: the :class:`GaussianShading` of the key and model shape.
        sampler, steps, schedule, sigma_min, sigma_max, schedule_opts: the inversion
            (:func:`ebru.diffusion.invert`); DDIM inversion on the default grid by default.
        fpr: false-positive target (default 1e-6). candidates: optional known ids (see
            :meth:`GaussianShading.decode`). **cond: conditioning for the denoiser (usually none:
            detection does not know the prompt or class).

    Returns one :class:`Decoded` per image. Raises ValueError for images whose channels differ from
    the scheme's, or bad inversion settings.
    """
    if not isinstance(scheme, GaussianShading):
        raise ValueError(f"scheme must be a GaussianShading, got {type(scheme).__name__}")
    fpr = finite_number("fpr", fpr, positive=True, maximum=1.0)
    z = invert_to_noise(denoiser, images, scheme.shape, sampler=sampler, steps=steps, schedule=schedule,
                        sigma_min=sigma_min, sigma_max=sigma_max, schedule_opts=schedule_opts, **cond)
    return scheme.decode(z, fpr=fpr, candidates=candidates)


def invert_to_noise(denoiser, images: Tensor, shape: Sequence[int], *, sampler: str = "ddim",
                    steps: int = SAMPLING.steps, schedule: str | Callable[..., Tensor] = SAMPLING.schedule,
                    sigma_min: float | None = None, sigma_max: float | None = None,
                    schedule_opts: Mapping[str, Any] | None = None, **cond: Any) -> Tensor:
    """The unit-variance noise estimate (B, *shape) of images (B, C, H, W): resized to ``shape``
    (:func:`fit_to_shape`), then run backwards through ``denoiser``'s probability-flow ODE
    (:func:`ebru.diffusion.invert`). What both of ebru's noise marks read: Gaussian Shading
    (:meth:`GaussianShading.decode`) and Tree-Ring (:meth:`ebru.provenance.treering.TreeRing.detect`).
    Raises ValueError for images of another channel count or bad inversion settings."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__}")
    x = fit_to_shape(images, shape)
    inv = functools.partial(invert, sampler=sampler, steps=steps, schedule=schedule, sigma_min=sigma_min,
                            sigma_max=sigma_max, schedule_opts=schedule_opts)
    return inv(denoiser, x, **cond)
