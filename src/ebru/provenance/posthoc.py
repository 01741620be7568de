"""A keyed, blind, post-hoc watermark for any image of 256x256 pixels or more.

For images ebru did not generate (edits, exports, other tools), where the noise watermark of
:mod:`ebru.provenance.watermark` cannot go. A classical spread-spectrum mark on a periodic tile with a
synchronisation template: the tiling of Kalker, Depovere & Maes ("Resolving the translation problem",
SPIE 1999) and Kutter ("Watermarking resisting to translation, rotation and scaling", SPIE 1998),
detected by whitened correlation (Cox, Miller, Bloom, Fridrich & Kalker, *Digital Watermarking and
Steganography*, 2nd ed., 2008, chapters 3-6 for the correlation detector and the prefilter).

1. **The tile.** A ``T x T`` pattern (``T = 128``) is built in the 2-D DFT domain: every frequency
   ``k = (u, v)`` of one half-plane whose radius ``|k| / T`` lies in the band ``[0.06, 0.28]`` cycles
   per pixel gets unit magnitude and a keyed phase ``phi_k``. A keyed 15 % of these coefficients (the
   *sync* set) keep ``phi_k``; every other (*payload*) coefficient is a chip of one coded bit ``c`` and
   gets ``phi_k + pi (1 - c)``. The band starts above most of a photo's energy and ends where JPEG 50,
   a 5-tap blur and a resize to half size still leave enough (measured: ``benchmarks/posthoc_watermark.py``).
2. **The payload.** ``watermark_id`` (``id_bits`` bits, 32 by default) is encoded with the rate-1/2,
   constraint-7 convolutional code of :mod:`ebru.provenance.convcode` (76 coded bits for 32); a keyed
   permutation deals the 1,632 payload coefficients out to the coded bits (21 or 22 chips each at 32 bits).
   Max-log soft decoding of that code gains about 5 dB over a repetition code of the same energy.
3. **Embedding.** The tile (unit RMS) repeats over the image from its top-left corner, is multiplied by
   a mild perceptual mask (:func:`activity_mask`: more in texture, less in flat areas), scaled so the
   marked uint8 image has exactly the requested PSNR or more, and added to the luminance: the same
   ``dY`` to R, G and B, so ``Y = 0.299 R + 0.587 G + 0.114 B`` changes by ``dY`` and Cb, Cr do not.
4. **Detection** (blind: no original). High-pass the luminance, divide it by its local RMS (busy regions
   carry more host noise), fold it modulo ``T`` (the mean of all ``T x T`` tiles: a crop at any offset
   folds onto a cyclic shift of the tile), take its DFT and whiten each band coefficient by the power of
   its 5x5 neighbourhood in frequency. One inverse FFT gives the sync correlation at all ``T^2`` cyclic
   shifts, and one per coded bit its chips' sum at every shift; the shifts with the best sync-plus-
   payload-energy score are decoded, and the one whose re-encoded mark fits best wins.

**The p-value** (null hypothesis: "this image was not marked with this key"). Given the image, the keyed
phases are i.i.d. uniform and independent of it, so at a fixed shift the correlation
``R = sum_k a_k cos(theta_k - phi_k)`` (weights ``a_k`` from the image alone) is a sum of independent
terms ``a_k cos(U_k)``. As ``E exp(l cos U) = I_0(l) <= exp(l^2 / 4)``, each term is sub-Gaussian with
variance proxy ``a_k^2 / 2`` (its variance), so ``P(R >= z sqrt(V)) <= exp(-z^2 / 2)`` with
``V = sum_k a_k^2 / 2``: a Chernoff bound that holds for every image, with no Gaussian approximation.
Two statistics are bounded this way: the sync correlation at the chosen shift (union over the ``T^2``
shifts: ``p_sync = T^2 exp(-z_sync^2 / 2)``) and the correlation of the whole mark re-encoded from the
decoded id (union over the shifts and all ``2^id_bits`` ids: ``p_mark = T^2 2^id_bits exp(-z_mark^2 /
2)``). ``p_value = min(1, 2 min(p_sync, p_mark))`` (Bonferroni over the two) and ``detected = p_value
<= fpr`` (1e-6 by default): an upper bound on the false-positive rate that assumes nothing about the
image, only that the key is secret and random. At 32 bits and ``T = 128``, detection needs
``z_mark >= 9.63`` or ``z_sync >= 6.96``. ``tests/provenance/test_posthoc.py`` checks it empirically
(unmarked photos and a wrong key are not detected).

Limits: the mark survives translation (crops), filtering and re-compression, but not a change of scale
that is not undone (bring the image back to the size it was marked at first), rotation, or
regeneration by a diffusion model or VAE; brightening that saturates most of the image removes it
with the content. Detection needs the key; it does not need the original.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ebru.checks import finite_number, positive_int

from .convcode import coded_length, conv_decode, conv_encode
from .wmkeys import SECRET_BYTES, WatermarkKey

__all__ = [
    "DEFAULT_FPR", "DEFAULT_ID_BITS", "DEFAULT_PSNR", "MIN_EMBED_SIZE", "PosthocMark", "PosthocResult",
    "activity_mask", "psnr",
]

DEFAULT_ID_BITS = 32
DEFAULT_FPR = 1e-6
DEFAULT_PSNR = 40.0
MIN_EMBED_SIZE = 256
MAX_ID_BITS = 64
_DOMAIN = b"ebru/posthoc-watermark/v1\0"
_LUMA = np.array([0.299, 0.587, 0.114])
_LN10 = math.log(10.0)
_HIGHPASS_RADIUS = 4  # 9x9 local mean removed before folding
_NORM_RADIUS, _NORM_FLOOR = 4, 1.0  # local RMS over 9x9, plus 1 grey level
_WHITEN_RADIUS = 2  # 5x5 neighbourhood in frequency, the coefficient itself left out


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images of one shape (peak 255; ``inf`` if equal).

    Over every value of both arrays (all channels); :meth:`PosthocMark.embed` guarantees its PSNR over the
    colour channels, which for RGBA (alpha untouched) is the lower of the two.
    """
    x, _ = _as_array(a, "psnr")
    y, _ = _as_array(b, "psnr")
    if x.shape != y.shape:
        raise ValueError(f"psnr needs two images of one shape, got {x.shape} and {y.shape}")
    return _psnr_of(float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)))


def _psnr_of(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _as_array(image: Any, what: str) -> tuple[np.ndarray, str | None]:
    """``(uint8 (H, W) / (H, W, 3) / (H, W, 4) array, PIL mode or None)``; one ``ValueError`` line otherwise."""
    if isinstance(image, Image.Image):
        mode = image.mode
        if mode not in ("L", "RGB", "RGBA"):
            raise ValueError(f"{what} needs a PIL image of mode L, RGB or RGBA, got mode {mode!r} "
                             "(convert it first, e.g. image.convert('RGB'))")
        return np.asarray(image, dtype=np.uint8), mode
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} needs a uint8 numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} needs a uint8 image (values 0..255), got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"{what} needs an image of shape (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    return (image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image), None


def _luma(array: np.ndarray) -> np.ndarray:
    """Y (float64, 0..255) of an (H, W) or (H, W, 3|4) uint8 array (BT.601 weights; alpha ignored)."""
    if array.ndim == 2:
        return array.astype(np.float64)
    return array[:, :, :3].astype(np.float64) @ _LUMA


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2 radius + 1)^2`` window around each pixel (edge-replicated), by summed-area tables."""
    n = 2 * radius + 1
    c = np.pad(np.pad(x, radius, mode="edge"), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = x.shape
    return (c[n:n + h, n:n + w] - c[:h, n:n + w] - c[n:n + h, :w] + c[:h, :w]) / (n * n)


def activity_mask(luma: np.ndarray, *, radius: int = 3, floor: float = 8.0, low: float = 0.25,
                  high: float = 3.0) -> np.ndarray:
    """Perceptual strength map ``(H, W)``: local luma standard deviation (7x7) plus ``floor``, mean-normalised.

    ``luma`` is float ``(H, W)`` in 0..255. Returns float64 with mean 1 before clipping to ``[low, high]``:
    texture hides a stronger mark and flat areas (sky, skin) get less, the contrast-masking rule of
    Kutter & Winkler ("A vision-based masking model for spread-spectrum image watermarking", IEEE TIP
    2002) reduced to one activity measure. ``floor`` (grey levels) keeps the map mild: a stronger mask
    would hide the mark better but loses detection strength where the detector's normalisation looks
    hardest (flat areas); 8 keeps about 92 % of an unmasked mark's correlation on our photo set.
    """
    mean = _box_mean(luma, radius)
    var = np.maximum(_box_mean(luma * luma, radius) - mean * mean, 0.0)
    act = np.sqrt(var) + floor
    return np.clip(act / act.mean(), low, high)


@dataclass(frozen=True)
class PosthocResult:
    """What :meth:`PosthocMark.detect` found in one image.

    - ``detected``: ``p_value <= fpr``.
    - ``p_value``: an upper bound on the chance that an image *not* marked with this key scores this
      high (module docstring); ``log10_p`` keeps its exponent when it underflows to 0.
    - ``watermark_id``: the decoded id, an int in ``[0, 2**id_bits)`` (noise when not detected).
    - ``soft_bits``: per id bit, most significant first, the max-log decoder's margin (> 0 means 1).
    - ``bit_accuracy``: the fraction of id bits equal to ``true_id``'s, when ``detect`` was given one.
    - ``offset``: ``(dy, dx)``, the cyclic shift found: pixel ``(y, x)`` of this image was pixel
      ``(y - dy, x - dx)`` (modulo the tile) of the marked one; ``(0, 0)`` when nothing was cropped.
    - ``z_sync`` / ``z_mark``: the sync and whole-mark correlations in null standard deviations.
    """

    detected: bool
    p_value: float
    log10_p: float
    watermark_id: int
    soft_bits: tuple[float, ...]
    bit_accuracy: float | None
    offset: tuple[int, int]
    z_sync: float
    z_mark: float
    fpr: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``--json`` output and benchmarks)."""
        return asdict(self)


class PosthocMark:
    """The post-hoc watermark under one key: ``embed`` and ``detect``.

    ``key`` is a 32-byte secret or a :class:`~ebru.provenance.wmkeys.WatermarkKey`: the same key as the
    noise watermark, from which this scheme derives its own sub-key ``SHA-256("ebru/posthoc-watermark/
    v1\\0" || secret)``, so the two schemes' keyed streams never coincide. ``id_bits`` (1..64) is the
    payload length; ``psnr`` (dB, 30..60) the strength: the marked image's PSNR over its colour channels
    is at least this. ``tile``, ``band``, ``sync_fraction`` and ``candidates`` are design constants
    exposed for experiments; detection must use the values that embedded.

    Images are uint8 arrays ``(H, W)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA; alpha untouched) or
    PIL images of mode ``L``, ``RGB`` or ``RGBA``. Bad input raises ``ValueError`` with one line.
    """

    def __init__(self, key: WatermarkKey | bytes, *, id_bits: int = DEFAULT_ID_BITS, psnr: float = DEFAULT_PSNR,
                 tile: int = 128, band: tuple[float, float] = (0.06, 0.28), sync_fraction: float = 0.15,
                 candidates: int = 4):
        secret = key.secret if isinstance(key, WatermarkKey) else key
        if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
            got = f"{len(secret)} bytes" if isinstance(secret, bytes | bytearray) else type(secret).__name__
            raise ValueError(f"a post-hoc watermark key must be {SECRET_BYTES} bytes (a watermark key's secret), "
                             f"got {got}")
        self.id_bits = positive_int("id_bits", id_bits)
        if self.id_bits > MAX_ID_BITS:
            raise ValueError(f"id_bits must be at most {MAX_ID_BITS}, got {id_bits}")
        self.psnr = finite_number("psnr", psnr, minimum=30.0, maximum=60.0)
        self.tile = positive_int("tile", tile, minimum=16)
        if self.tile % 2:
            raise ValueError(f"tile must be even, got {tile}")
        if len(band) != 2:
            raise ValueError(f"band must be (low, high) in cycles/pixel, got {band!r}")
        lo = finite_number("band low", band[0], positive=True)
        hi = finite_number("band high", band[1], maximum=0.5)
        if lo >= hi:
            raise ValueError(f"band must be (low, high) with 0 < low < high <= 0.5 cycles/pixel, got {band!r}")
        self.band = (lo, hi)
        self.sync_fraction = finite_number("sync_fraction", sync_fraction, minimum=0.05, maximum=0.95)
        self.candidates = positive_int("candidates", candidates)
        self._subkey = hashlib.sha256(_DOMAIN + bytes(secret)).digest()
        self._layout()

    def __repr__(self) -> str:
        return (f"PosthocMark(id_bits={self.id_bits}, psnr={self.psnr}, tile={self.tile}, band={self.band}, "
                f"sync_fraction={self.sync_fraction})")

    # ---- the keyed layout -------------------------------------------------------------------------

    def _stream(self, purpose: str, count: int) -> np.ndarray:
        """``count`` keyed uniform floats in [0, 1): SHAKE-256 of the sub-key, the purpose and the layout."""
        label = f"{purpose}/T={self.tile}/band={self.band[0]:.6f},{self.band[1]:.6f}/bits={self.id_bits}"
        raw = hashlib.shake_256(self._subkey + label.encode("utf-8")).digest(8 * count)
        return (np.frombuffer(raw, dtype="<u8") >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def _layout(self) -> None:
        t = self.tile
        f = np.fft.fftfreq(t) * t  # integer frequencies -T/2 .. T/2 - 1
        u, v = np.meshgrid(f, f, indexing="ij")  # u along rows (y), v along columns (x)
        radius = np.hypot(u, v) / t
        half = (v > 0) | ((v == 0) & (u > 0))  # one of each conjugate pair
        nyquist = (np.abs(u) == t // 2) | (np.abs(v) == t // 2)
        rows, cols = np.nonzero(half & ~nyquist & (radius >= self.band[0]) & (radius <= self.band[1]))
        n = rows.size
        self._n_coded = coded_length(self.id_bits)
        n_sync = round(self.sync_fraction * n)
        if n_sync < 1 or n - n_sync < self._n_coded:
            raise ValueError(f"the band holds {n} coefficients at tile {t}: too few for a sync set and "
                             f"{self._n_coded} coded bits; widen the band or the tile")
        order = np.argsort(self._stream("assign", n), kind="stable")
        self._is_sync = np.zeros(n, dtype=bool)
        self._is_sync[order[:n_sync]] = True
        self._chip = np.full(n, -1, dtype=np.int64)  # the coded bit each payload coefficient carries
        self._chip[order[n_sync:]] = np.arange(n - n_sync) % self._n_coded
        self._rows, self._cols = rows, cols
        self._phase = np.exp(2j * np.pi * self._stream("phase", n))

    def _id_bits(self, watermark_id: int) -> list[int]:
        return [(watermark_id >> (self.id_bits - 1 - i)) & 1 for i in range(self.id_bits)]

    def _signs(self, watermark_id: int) -> np.ndarray:
        """+1 / -1 per band coefficient: +1 on the sync set, the chip's coded bit on the payload."""
        coded = conv_encode(np.array(self._id_bits(watermark_id))).astype(np.float64) * 2.0 - 1.0
        signs = np.ones(self._chip.size)
        pay = ~self._is_sync
        signs[pay] = coded[self._chip[pay]]
        return signs

    def tile_pattern(self, watermark_id: int) -> np.ndarray:
        """The unit-RMS ``(tile, tile)`` float64 pattern that carries ``watermark_id`` (before the mask)."""
        spec = np.zeros((self.tile, self.tile), dtype=np.complex128)
        coef = self._signs(self._check_id(watermark_id)) * self._phase
        spec[self._rows, self._cols] = coef
        spec[-self._rows % self.tile, -self._cols % self.tile] = np.conj(coef)
        pattern = np.fft.ifft2(spec).real
        return pattern / np.sqrt(np.mean(pattern ** 2))

    def _check_id(self, watermark_id: Any) -> int:
        if isinstance(watermark_id, bool) or not isinstance(watermark_id, int | np.integer):
            raise ValueError(f"watermark_id must be an integer, got {type(watermark_id).__name__}")
        watermark_id = int(watermark_id)
        if not 0 <= watermark_id < 2 ** self.id_bits:
            raise ValueError(f"watermark_id must be in [0, 2**{self.id_bits}), got {watermark_id}")
        return watermark_id

    # ---- embedding --------------------------------------------------------------------------------

    def embed(self, image: Any, watermark_id: int) -> Any:
        """Mark ``image`` (uint8, at least 256x256) with ``watermark_id``; returns the same kind and shape.

        The PSNR of the result against ``image`` over its colour channels is at least ``self.psnr``.
        Raises ``ValueError`` (one line) for an image under 256x256, a wrong dtype, shape or PIL mode, or
        an id outside ``[0, 2**id_bits)``.
        """
        array, mode = _as_array(image, "post-hoc watermark embed")
        watermark_id = self._check_id(watermark_id)
        h, w = array.shape[:2]
        if h < MIN_EMBED_SIZE or w < MIN_EMBED_SIZE:
            raise ValueError(f"the post-hoc watermark needs an image of at least {MIN_EMBED_SIZE}x{MIN_EMBED_SIZE} "
                             f"pixels, got {w}x{h} (width x height)")
        reps = (h // self.tile + 1, w // self.tile + 1)
        shaped = activity_mask(_luma(array)) * np.tile(self.tile_pattern(watermark_id), reps)[:h, :w]
        target = 255.0 ** 2 * 10.0 ** (-self.psnr / 10.0)  # the largest mean squared error allowed
        # rounding to uint8 adds about 1/12 to the MSE: aim below it, then shrink until the bound holds
        scale = math.sqrt(max(target - 1.0 / 12.0, 0.5 * target) / np.mean(shaped ** 2))
        shaped = shaped.astype(np.float32)  # float32 from here on: a 12-megapixel photo stays under 1 GB
        colour = array.astype(np.float32) if array.ndim == 2 else array[:, :, :3].astype(np.float32)
        for _ in range(20):
            delta = np.float32(scale) * shaped
            marked = np.clip(np.rint(colour + (delta if colour.ndim == 2 else delta[:, :, None])), 0, 255)
            mse = float(np.mean(np.square(marked - colour), dtype=np.float64))
            if mse <= target:
                break
            scale *= 0.995 * math.sqrt(target / mse)
        else:  # pragma: no cover - the MSE shrinks with the scale, so this is never reached
            raise RuntimeError("could not meet the PSNR bound")
        out = array.copy()
        if out.ndim == 2:
            out[:] = marked
        else:
            out[:, :, :3] = marked
        return Image.fromarray(out, mode=mode) if mode else out

    # ---- detection --------------------------------------------------------------------------------

    def _front(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The band coefficients of the folded, normalised luma, and their whitening weights."""
        t = self.tile
        y = _luma(array)
        y = y - _box_mean(y, _HIGHPASS_RADIUS)  # what lies below the band, and the crop edges' leakage
        y = y / (np.sqrt(np.maximum(_box_mean(y * y, _NORM_RADIUS), 0.0)) + _NORM_FLOOR)
        h, w = y.shape
        pad = ((0, -h % t), (0, -w % t))
        shape = ((h - 1) // t + 1, t, (w - 1) // t + 1, t)
        total = np.pad(y, pad).reshape(shape).sum(axis=(0, 2))
        count = np.pad(np.ones_like(y), pad).reshape(shape).sum(axis=(0, 2))  # >= 1: the image is >= T x T
        folded = total / count
        full = np.fft.fft2(folded - folded.mean())
        power = np.abs(full) ** 2
        near = sum(np.roll(power, (dy, dx), axis=(0, 1))
                   for dy in range(-_WHITEN_RADIUS, _WHITEN_RADIUS + 1)
                   for dx in range(-_WHITEN_RADIUS, _WHITEN_RADIUS + 1) if dy or dx)
        return full[self._rows, self._cols], 1.0 / np.maximum(near[self._rows, self._cols], 1e-12)

    def detect(self, image: Any, *, true_id: int | None = None, fpr: float = DEFAULT_FPR) -> PosthocResult:
        """Look for this key's mark in ``image`` (uint8, at least ``tile x tile`` pixels; no original needed).

        ``true_id`` (optional) fills ``bit_accuracy``; ``fpr`` in ``(0, 1]`` sets ``detected``. An unmarked,
        foreign-key or destroyed image is reported as not detected, never an error; raises ``ValueError``
        (one line) for a wrong dtype, shape or PIL mode, an image smaller than the tile, or a bad ``true_id``.
        """
        array, _ = _as_array(image, "post-hoc watermark detect")
        fpr = finite_number("fpr", fpr, positive=True, maximum=1.0)
        if true_id is not None:
            true_id = self._check_id(true_id)
        t = self.tile
        h, w = array.shape[:2]
        if h < t or w < t:
            raise ValueError(f"post-hoc watermark detection needs at least {t}x{t} pixels, got {w}x{h}")
        spec, weight = self._front(array)
        g = weight * spec * np.conj(self._phase)  # a_k e^{i (theta_k - phi_k)}
        a2 = np.abs(g) ** 2
        sync, pay = self._is_sync, ~self._is_sync
        v_sync, v_all = 0.5 * float(a2[sync].sum()), 0.5 * float(a2.sum())
        if v_sync <= 0.0:  # a flat image: nothing to correlate
            return self._result(0.0, 0, np.zeros(self.id_bits), (0, 0), 0.0, 0.0, true_id=true_id, fpr=fpr)
        # every cyclic shift d at once: R(d) = Re sum_k g_k exp(2 pi i k.d / T), by one inverse FFT
        grid = np.zeros((t, t), dtype=np.complex128)
        grid[self._rows[sync], self._cols[sync]] = g[sync]
        z_sync_all = np.fft.ifft2(grid).real * (t * t) / math.sqrt(v_sync)
        # the payload's energy locates the shift too: each coded bit's chip sum at every shift, in null sd
        per_bit = np.zeros((self._n_coded, t, t), dtype=np.complex128)
        per_bit[self._chip[pay], self._rows[pay], self._cols[pay]] = g[pay]
        sd = np.sqrt(0.5 * np.bincount(self._chip[pay], weights=a2[pay], minlength=self._n_coded))
        z_bits = np.abs(np.fft.ifft2(per_bit).real * (t * t) / np.maximum(sd, 1e-300)[:, None, None])
        n = self._n_coded  # sum of |z| over the coded bits, standardised under the null (half-normal terms)
        energy = (z_bits.sum(axis=0) - n * math.sqrt(2 / math.pi)) / math.sqrt(n * (1 - 2 / math.pi))
        score = z_sync_all + energy
        best = None
        for flat in np.argsort(score.ravel())[::-1][: self.candidates]:
            dy, dx = divmod(int(flat), t)
            chips = (g * np.exp(2j * np.pi * (self._rows * dy + self._cols * dx) / t)).real
            soft = conv_decode(np.bincount(self._chip[pay], weights=chips[pay], minlength=n))
            wid = int("".join("1" if b > 0 else "0" for b in soft), 2)
            z_mark = float(np.sum(chips * self._signs(wid))) / math.sqrt(v_all)
            z_sync = float(z_sync_all[dy, dx])
            log_p = self._log_p(z_sync, z_mark)
            if best is None or log_p < best[0]:
                best = (log_p, wid, soft, (dy, dx), z_sync, z_mark)
        return self._result(*best, true_id=true_id, fpr=fpr)

    def _log_p(self, z_sync: float, z_mark: float) -> float:
        """``ln min(1, 2 min(p_sync, p_mark))`` (module docstring)."""
        log_shifts = 2.0 * math.log(self.tile)
        log_sync = log_shifts - 0.5 * max(z_sync, 0.0) ** 2
        log_mark = log_shifts + self.id_bits * math.log(2.0) - 0.5 * max(z_mark, 0.0) ** 2
        return min(0.0, math.log(2.0) + min(log_sync, log_mark))

    def _result(self, log_p: float, wid: int, soft: np.ndarray, offset: tuple[int, int], z_sync: float,
                z_mark: float, *, true_id: int | None, fpr: float) -> PosthocResult:
        acc = None
        if true_id is not None:
            acc = float(np.mean([(b > 0) == bool(c) for b, c in zip(soft, self._id_bits(true_id))]))
        return PosthocResult(detected=log_p <= math.log(fpr), p_value=math.exp(log_p), log10_p=log_p / _LN10,
                             watermark_id=wid, soft_bits=tuple(float(b) for b in soft), bit_accuracy=acc,
                             offset=offset, z_sync=z_sync, z_mark=z_mark, fpr=fpr)
