"""The watermark attack grid: pure functions from an image to an attacked image.

Every attack takes a ``uint8`` numpy array of shape ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha
is carried through untouched), or a PIL image of mode ``L``, ``RGB`` or ``RGBA``, and returns the same
kind (a PIL image for a PIL image, an array for an array). Nothing is modified in place; randomness
(only :func:`gaussian_noise`) comes from an explicit seed, so a cell of the grid is reproducible.

The grid is the union of Stable Signature's ``run_evals.py`` and the targets of
``shared/reference/trust.md`` section 8 / issue 15: JPEG quality 50 and 75, resize x0.5 and back,
centre crop keeping 50 % of the area (kept at the cropped size: the detector does not know the
translation), Gaussian blur with a 5-tap kernel, Gaussian noise with sigma 0.05 on the [0, 1] scale,
brightness x1.5 and a combination (crop 0.5 + brightness 1.5 + JPEG 80). :data:`ATTACKS` maps each
cell's name to a function ``f(image, seed=0) -> image``; it is shared by the post-hoc mark's
benchmark and the noise watermark's.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from ebru.checks import finite_number, one_of, positive_int

__all__ = [
    "ATTACKS", "apply_attack", "brightness", "centre_crop", "combined", "gaussian_blur", "gaussian_noise",
    "identity", "jpeg", "resize",
]

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _to_array(image: Any) -> tuple[np.ndarray, bool]:
    """``(uint8 array (H, W) / (H, W, 3) / (H, W, 4), was_pil)``; anything else raises one ``ValueError`` line."""
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB", "RGBA"):
            raise ValueError(f"an attack needs a PIL image of mode L, RGB or RGBA, got mode {image.mode!r}")
        return np.asarray(image, dtype=np.uint8), True
    if not isinstance(image, np.ndarray):
        raise ValueError(f"an attack needs a uint8 numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"an attack needs a uint8 image (values 0..255), got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"an attack needs an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image, False


def _back(array: np.ndarray, was_pil: bool) -> Any:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if not was_pil:
        return array
    return Image.fromarray(array, mode=_MODES[1 if array.ndim == 2 else array.shape[2]])


def _split_alpha(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 3 and array.shape[2] == 4:
        return array[:, :, :3], array[:, :, 3]
    return array, None


def _join_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return colour if alpha is None else np.concatenate([colour, alpha[:, :, None]], axis=2)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def identity(image: Any) -> Any:
    """The image unchanged (a copy): the grid's clean cell."""
    array, was_pil = _to_array(image)
    return _back(array.copy(), was_pil)


def jpeg(image: Any, quality: int = 50) -> Any:
    """Encode as baseline JPEG at ``quality`` (1..100, Pillow's IJG scaling, 4:2:0 chroma) and decode.

    Colour images go through Pillow's default chroma subsampling; alpha (if any) is kept as it was.
    """
    quality = positive_int("jpeg quality", quality)
    if quality > 100:
        raise ValueError(f"jpeg quality must be at most 100, got {quality}")
    array, was_pil = _to_array(image)
    colour, alpha = _split_alpha(array)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(colour)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("L" if colour.ndim == 2 else "RGB"), dtype=np.uint8)
    return _back(_join_alpha(out, alpha), was_pil)


def resize(image: Any, factor: float = 0.5, *, back: bool = True) -> Any:
    """Resize by ``factor`` (bicubic, antialiased when shrinking) and, with ``back``, to the original size again.

    The new size is ``max(1, round(H * factor)) x max(1, round(W * factor))``. With ``back=True`` (the grid's
    "resize x0.5"), the output has the input's shape and has lost everything above the smaller size's band.
    """
    factor = finite_number("resize factor", factor, positive=True)
    array, was_pil = _to_array(image)
    h, w = array.shape[:2]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    pil = Image.fromarray(array)
    out = pil.resize(small, Image.Resampling.BICUBIC)
    if back:
        out = out.resize((w, h), Image.Resampling.BICUBIC)
    return _back(np.asarray(out, dtype=np.uint8), was_pil)


def centre_crop(image: Any, area_fraction: float = 0.5) -> Any:
    """The centred ``round(H * sqrt(a)) x round(W * sqrt(a))`` window, kept at that size (not resized back).

    ``a = area_fraction`` in ``(0, 1]``; the window starts at ``((H - h) // 2, (W - w) // 2)``. At 256x256 and
    ``a = 0.5`` that is the 181x181 window at (37, 37): 49.99 % of the area.
    """
    area_fraction = finite_number("crop area fraction", area_fraction, positive=True, maximum=1.0)
    array, was_pil = _to_array(image)
    h, w = array.shape[:2]
    side = math.sqrt(area_fraction)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top, left = (h - ch) // 2, (w - cw) // 2
    return _back(array[top:top + ch, left:left + cw].copy(), was_pil)


def _gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: Any, kernel_size: int = 5, sigma: float | None = None) -> Any:
    """Separable Gaussian blur with an odd ``kernel_size``-tap kernel, reflect padding (torchvision's convention).

    ``sigma`` defaults to torchvision's ``0.3 * ((kernel_size - 1) / 2 - 1) + 0.8`` (1.1 for 5 taps), the blur of
    Stable Signature's grid. Each channel is blurred alone; alpha is kept.
    """
    kernel_size = positive_int("blur kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"blur kernel_size must be odd, got {kernel_size}")
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    sigma = finite_number("blur sigma", sigma, positive=True)
    array, was_pil = _to_array(image)
    colour, alpha = _split_alpha(array)
    k = _gaussian_kernel(kernel_size, sigma)
    r = kernel_size // 2
    x = colour.astype(np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if min(x.shape[:2]) <= r:
        raise ValueError(f"a {kernel_size}-tap blur needs an image larger than {r} pixels per side, got {x.shape[:2]}")
    pad = np.pad(x, ((r, r), (0, 0), (0, 0)), mode="reflect")
    x = sum(k[i] * pad[i:i + x.shape[0]] for i in range(kernel_size))
    pad = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="reflect")
    x = sum(k[i] * pad[:, i:i + x.shape[1]] for i in range(kernel_size))
    out = _to_uint8(x)
    if colour.ndim == 2:
        out = out[:, :, 0]
    return _back(_join_alpha(out, alpha), was_pil)


def gaussian_noise(image: Any, sigma: float = 0.05, seed: int = 0) -> Any:
    """Add i.i.d. N(0, (255 sigma)^2) noise (``sigma`` on the [0, 1] scale) to every colour value, round and clip.

    The noise is ``numpy.random.default_rng(seed).standard_normal(shape)``: the same seed gives the same image.
    """
    sigma = finite_number("noise sigma", sigma, minimum=0.0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"noise seed must be a non-negative integer, got {seed!r}")
    array, was_pil = _to_array(image)
    colour, alpha = _split_alpha(array)
    noise = np.random.default_rng(seed).standard_normal(colour.shape)
    return _back(_join_alpha(_to_uint8(colour + 255.0 * sigma * noise), alpha), was_pil)


def brightness(image: Any, factor: float = 1.5) -> Any:
    """Multiply every colour value by ``factor``, round and clip to 0..255 (PIL's ``ImageEnhance.Brightness``).

    Values above ``255 / factor`` saturate at 255: what a brightened photo loses.
    """
    factor = finite_number("brightness factor", factor, minimum=0.0)
    array, was_pil = _to_array(image)
    colour, alpha = _split_alpha(array)
    return _back(_join_alpha(_to_uint8(colour.astype(np.float64) * factor), alpha), was_pil)


def combined(image: Any, area_fraction: float = 0.5, factor: float = 1.5, quality: int = 80) -> Any:
    """Centre crop (``area_fraction``), then brightness (``factor``), then JPEG (``quality``): the combined cell."""
    return jpeg(brightness(centre_crop(image, area_fraction), factor), quality)


def _fixed(fn: Callable[..., Any], **params: Any) -> Callable[..., Any]:
    def attack(image: Any, seed: int = 0) -> Any:
        return fn(image, **params)

    attack.__name__ = fn.__name__
    attack.__doc__ = f"{fn.__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())}); ``seed`` is unused."
    return attack


def _noise(image: Any, seed: int = 0) -> Any:
    return gaussian_noise(image, 0.05, seed)


_noise.__doc__ = "gaussian_noise(sigma=0.05, seed=seed)."

#: The grid: cell name -> ``f(image, seed=0) -> image`` (only the noise cell uses ``seed``).
ATTACKS: dict[str, Callable[..., Any]] = {
    "none": _fixed(identity),
    "jpeg50": _fixed(jpeg, quality=50),
    "jpeg75": _fixed(jpeg, quality=75),
    "resize0.5": _fixed(resize, factor=0.5),
    "crop0.5": _fixed(centre_crop, area_fraction=0.5),
    "blur": _fixed(gaussian_blur, kernel_size=5),
    "noise0.05": _noise,
    "brightness1.5": _fixed(brightness, factor=1.5),
    "combined": _fixed(combined),
}


def apply_attack(name: str, image: Any, seed: int = 0) -> Any:
    """``ATTACKS[name](image, seed)``; an unknown name raises ``ValueError`` naming the nearest cell."""
    return ATTACKS[one_of("attack", name, ATTACKS)](image, seed)
