"""Reading an image someone hands ebru (to detect a watermark in it, or to mark it): whole, bounded, one-line errors.

Pillow is the reader; ebru adds what a hostile or damaged file needs: a size cap on the file, Pillow's
decompression-bomb limit as an error (Pillow itself only warns between the limit and twice it), a full
decode so that a truncated file fails here rather than later, and one :class:`ProvenanceError` line
naming the file for each refusal.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ProvenanceError

MAX_FILE_BYTES = 256 * 1024 * 1024  # a larger "image" is refused before it is read


def open_image(path: str | os.PathLike, mode: str | None = None) -> Image.Image:
    """The image at ``path``, fully decoded, converted to ``mode`` ("L", "RGB") when given.

    Raises :class:`ProvenanceError` (one line, naming the file) for a missing or unreadable file, a
    directory, a file over :data:`MAX_FILE_BYTES`, something that is not an image, a truncated or damaged
    image, and an image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise ProvenanceError(p, "is a directory, not an image")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ProvenanceError(p, f"refused: {size} bytes is more than the {MAX_FILE_BYTES} an image may have")
        data = p.read_bytes()
    except OSError as e:
        raise ProvenanceError(p, f"cannot read the file ({e.strerror})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProvenanceError(p, f"refused: the image's size exceeds Pillow's decompression-bomb limit of "
                                 f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise ProvenanceError(p, "not an image Pillow can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ProvenanceError(p, f"the image is damaged or truncated ({reason})") from None
    if im.width < 1 or im.height < 1:
        raise ProvenanceError(p, f"the image has an empty size {im.width}x{im.height}")
    if mode is not None and im.mode != mode:
        im = im.convert("RGBA").convert(mode) if im.mode in ("P", "LA", "PA") else im.convert(mode)
    return im


def image_array(path: str | os.PathLike, channels: int) -> np.ndarray:
    """The image at ``path`` as a writable uint8 array (H, W, channels): grey for 1 channel, RGB for 3 (see
    :func:`open_image`). Writable (a copy, not Pillow's read-only buffer), so ``torch.from_numpy`` takes it
    without a warning."""
    if channels not in (1, 3):
        raise ValueError(f"images have 1 or 3 channels, not {channels}")
    arr = np.array(open_image(path, "L" if channels == 1 else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr
