"""``ImageFolder``: every image file under a folder, decoded once into memory.

Layout rules:

- Image files are found recursively by extension (png, jpg, jpeg, bmp, gif, webp; any case).
  Names starting with ``.`` (hidden files and folders, macOS ``._*`` forks) are ignored.
- When every image lies inside a first-level subfolder, the data set is labelled: the subfolders that
  hold images, sorted by name, are the classes ``0..K-1`` (deeper nesting keeps the first-level label).
  Otherwise it is unlabelled (``num_classes is None``, labels -1).
- Class membership is decided from the file list, before decoding, so a corrupt file never shifts
  the label numbering.

Decoding (Pillow), once, up front, with a progress bar for more than ``PROGRESS_MIN_FILES`` files:

- transparency is composited over white; 16-bit grayscale is scaled to 8 bits; animated images
  use their first frame;
- ``channels=1`` converts with Pillow's ``"L"`` (ITU-R 601-2 luma), ``channels=3`` with ``"RGB"``;
  ``channels=None`` gives 1 if every image is grayscale (a grayscale mode, or R == G == B in every
  pixel) and 3 otherwise;
- ``image_size=S`` resizes so the shorter side is ``S`` (bicubic, antialiased) and center-crops to
  ``S x S``; ``image_size=None`` requires all images to share one size.

Unreadable files are skipped, listed in ``.skipped`` as ``(path, reason)`` and reported once with
``warnings.warn``; ``.report`` is a one-line summary.

``content_hash`` is :func:`ebru.data.hashing.sha256_files` over the files used (relative path and
bytes, in sorted order): it changes when a pixel or a file name changes, not when a file's mtime does,
and it does not cover ``image_size`` / ``channels`` (record those separately).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .dataset import ImageDataset
from .errors import DataMissingError
from .hashing import FilesHasher

__all__ = ["IMAGE_EXTENSIONS", "PROGRESS_MIN_FILES", "ImageFolder", "find_images"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
PROGRESS_MIN_FILES = 500
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive, hidden names skipped), sorted by relative POSIX path."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                p = Path(dirpath) / name
                found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    return [p for _, p in found]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> mode "L" or "RGB" (alpha composited over white, 16-bit scaled to 8-bit)."""
    mode = img.mode
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return out.convert("L") if mode in _GRAY_MODES else out
    if mode in ("L", "RGB"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grayscale: 0..65535 -> 0..255
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L" if mode in _GRAY_MODES else "RGB")


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased when shrinking), then center-crop."""
    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((w, h), resample=Image.Resampling.BICUBIC)
    if (w, h) == (size, size):
        return img
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def utf8_name(name: str) -> str:
    """A file name as UTF-8 text, whatever the locale.

    Linux file names are bytes; Python decodes them with the locale's encoding and keeps
    undecodable bytes as surrogates (under ``LC_ALL=C`` "Café" arrives as ``"Caf\\udcc3\\udca9"``),
    which cannot be written to a UTF-8 file. Names are UTF-8 on every system ebru supports, so
    they are decoded as UTF-8 (bytes that are not valid UTF-8 become U+FFFD).
    """
    return os.fsencode(name).decode("utf-8", errors="replace")


def decode_image(data: bytes, channels: int | None, image_size: int | None) -> np.ndarray:
    """Image bytes -> uint8 (H, W) or (H, W, 3): first frame, L or RGB, optionally resized and center-cropped.

    ``channels`` 1 converts RGB to L; ``None`` keeps RGB but returns (H, W) when R == G == B everywhere
    (grayscale content). Raises whatever Pillow raises for a file it cannot decode.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im.load()
        img = _to_l_or_rgb(im)
        if channels == 1 and img.mode == "RGB":
            img = img.convert("L")
        if image_size is not None:
            img = _resize_center_crop(img, int(image_size))
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 3 and channels is None and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        arr = np.ascontiguousarray(arr[..., 0])  # R == G == B: grayscale content
    return arr


class SameSize:
    """Refuse (ValueError, one line) images of different sizes in a folder read without ``image_size``."""

    def __init__(self, root: str):
        self.root = root
        self.first: tuple[str, tuple[int, int]] | None = None

    def check(self, rel: str, arr: np.ndarray) -> None:
        size = (arr.shape[1], arr.shape[0])
        if self.first is None:
            self.first = (rel, size)
        elif size != self.first[1]:
            (r0, (w0, h0)) = self.first
            raise ValueError(f"images in {self.root} differ in size: {r0} is {w0}x{h0}, {rel} is {size[0]}x{size[1]}; "
                             "pass image_size=N to resize and center-crop")


def stack_images(arrays: list[np.ndarray], channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) from (H, W) / (H, W, 3) arrays; C = ``channels``, else 1 when all are gray, else 3."""
    c = channels or (1 if all(a.ndim == 2 for a in arrays) else 3)
    h, w = arrays[0].shape[:2]
    images = torch.empty((len(arrays), c, h, w), dtype=torch.uint8)
    out = images.numpy()
    for i, a in enumerate(arrays):
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # gray broadcasts to every channel
    return images


class ImageFolder(ImageDataset):
    """Image files under ``root``, decoded into memory; see the module docstring for the rules.

    Args:
        root: the folder.
        image_size: resize the shorter side to this and center-crop to square; ``None`` keeps the
            original size, which must then be the same for every image.
        channels: 1 (grayscale) or 3 (RGB); ``None`` infers 1 if every image is grayscale, else 3.

    Attributes (besides :class:`ImageDataset`'s):
        root: the folder, as given.
        files: the image files used, in order (``ds[i]`` comes from ``files[i]``).
        skipped: ``(path, reason)`` for each unreadable file.

    Raises:
        DataMissingError: ``root`` does not exist.
        ValueError: ``root`` is not a folder, holds no readable image, or images differ in size
            while ``image_size`` is ``None``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if not root.exists():
            raise DataMissingError(f"image folder not found: {root}", path=root)
        if not root.is_dir():
            raise ValueError(f"not a folder: {root}")
        self.root = root
        candidates = find_images(root)
        if not candidates:
            exts = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
            raise ValueError(f"no image files ({exts}) in {root}")

        rels = [utf8_name(p.relative_to(root).as_posix()) for p in candidates]
        labelled = all("/" in r for r in rels)
        class_names = sorted({r.split("/", 1)[0] for r in rels}) if labelled else None
        class_index = {name: i for i, name in enumerate(class_names or [])}

        hasher = FilesHasher()
        arrays: list[np.ndarray] = []
        labels: list[int] = []
        self.files: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        same_size = SameSize(str(root))
        bar = tqdm(
            zip(candidates, rels), total=len(candidates), desc=f"decoding {root.name or root}", unit="img",
            disable=len(candidates) <= PROGRESS_MIN_FILES, leave=False,
        )
        for path, rel in bar:
            try:
                data = path.read_bytes()
                arr = decode_image(data, channels, image_size)
            except Exception as e:  # a bad file is skipped and reported, never a crash mid-run
                self.skipped.append((str(path), _one_line(e)))
                continue
            if image_size is None:
                try:
                    same_size.check(rel, arr)
                except ValueError:
                    bar.close()
                    raise
            hasher.add(rel, data)
            arrays.append(arr)
            labels.append(class_index[rel.split("/", 1)[0]] if labelled else -1)
            self.files.append(path)
        bar.close()
        self._total = len(candidates)

        if not arrays:
            raise ValueError(
                f"no readable image in {root}: all {len(candidates)} image files were skipped "
                f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})"
            )
        images = stack_images(arrays, channels)
        del arrays

        what = f"{len(class_names)} classes" if class_names is not None else "unlabelled"
        size = f", resized to {image_size}x{image_size}" if image_size is not None else ""
        super().__init__(
            images,
            torch.tensor(labels, dtype=torch.long),
            class_names=class_names,
            content_hash=hasher.hexdigest(),
            source=f"image folder {utf8_name(str(root))} ({len(self.files)} images, {what}{size})",
        )
        if self.skipped:
            warnings.warn(self.report, stacklevel=2)

    @property
    def report(self) -> str:
        """One line: how many files were used and skipped, with the first few reasons."""
        line = f"{self.root}: {len(self.files)} of {self._total} image files used, {len(self.skipped)} skipped"
        if self.skipped:
            shown = "; ".join(f"{os.path.relpath(p, self.root)}: {why}" for p, why in self.skipped[:3])
            more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            line += f" ({shown}{more})"
        return line
