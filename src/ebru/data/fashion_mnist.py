"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the original IDX files, offline.

The files come from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
The root is, in order: the ``root`` argument, the environment variable ``EBRU_FASHION_MNIST``,
``/usr/share/datasets/fashion-mnist``. Uncompressed files (the same names without ``.gz``) are
accepted too.

``content_hash`` is the SHA-256 of the decompressed images file followed by the decompressed labels
file of the split (``sha256(images_idx_bytes + labels_idx_bytes)``), so it does not depend on the gzip
compression level or on whether the files are compressed at all. Known values for the official files:

- train: ``d9ef4273af5c2e360155dad0c06bd939447bf37a6620db007d69fc79e4732045``
- test:  ``30214f3fe91405cb8ea60b11ecf0914a65dd6a6ca8e13c13a62eb434f2d9fe56``

Decoded splits are cached per process (keyed by path, size and mtime of both files).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .dataset import ImageDataset
from .errors import DataMissingError

__all__ = ["CLASS_NAMES", "DEFAULT_ROOT", "ENV_VAR", "KNOWN_HASHES", "FashionMNIST", "read_idx"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "EBRU_FASHION_MNIST"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
KNOWN_HASHES = {
    "train": "d9ef4273af5c2e360155dad0c06bd939447bf37a6620db007d69fc79e4732045",
    "test": "30214f3fe91405cb8ea60b11ecf0914a65dd6a6ca8e13c13a62eb434f2d9fe56",
}
_FILES = {"train": "train", "test": "t10k"}
_INSTALL = (
    "install it with `apt-get install dataset-fashion-mnist` "
    f"(or set {ENV_VAR} to a folder with the IDX files)"
)
IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_raw(path: Path) -> bytes:
    """The file's bytes, decompressed when the name ends in .gz; any decoding problem is a ValueError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError as e:
        raise ValueError(f"{path}: truncated gzip stream ({_one_line(e)})") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip data ({_one_line(e)})") from e


def read_idx(data: bytes, magic: int, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Parse an IDX byte string of unsigned bytes with the expected ``magic`` into a uint8 array.

    Checks the magic number (which fixes the element type and the number of dimensions), that the
    header is complete, and that the payload is exactly the size the dimensions say. Errors are
    one-line ValueErrors naming ``name``.
    """
    if len(data) < 4:
        raise ValueError(f"{name}: file too short for an IDX header ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{name}: bad IDX magic number {got}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing data"
        shape = "x".join(map(str, dims))
        raise ValueError(f"{name}: {problem}: {len(data)} bytes, expected {expected} for {shape} entries")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class _Split:
    images: Tensor  # (N, 1, 28, 28) uint8
    labels: Tensor  # (N,) long
    content_hash: str


_CACHE: dict[tuple, _Split] = {}
_LOCK = threading.Lock()


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The folder to read Fashion-MNIST from: ``root``, else ``$EBRU_FASHION_MNIST``, else the Debian path."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        p = root / name
        if p.is_file():
            return p
    why = f"no {stem}.gz" if root.is_dir() else "no such folder"
    raise DataMissingError(f"Fashion-MNIST not found in {root} ({why}): {_INSTALL}", path=root)


def _load(images_path: Path, labels_path: Path) -> _Split:
    img_raw = _read_raw(images_path)
    lab_raw = _read_raw(labels_path)
    images = read_idx(img_raw, IMAGES_MAGIC, images_path)
    labels = read_idx(lab_raw, LABELS_MAGIC, labels_path)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path.name}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..{len(CLASS_NAMES) - 1}")
    h = hashlib.sha256(img_raw)
    h.update(lab_raw)
    return _Split(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        content_hash=h.hexdigest(),
    )


def clear_cache() -> None:
    """Forget the decoded splits cached in this process."""
    with _LOCK:
        _CACHE.clear()


class FashionMNIST(ImageDataset):
    """Fashion-MNIST: 60000 train / 10000 test grayscale images 1x28x28, 10 classes (6000 / 1000 each).

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding the IDX files; default ``$EBRU_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.

    Raises:
        DataMissingError: the files are not there (the message says how to install them).
        ValueError: a file is corrupt or truncated (the message names the file and the problem).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None) -> None:
        if split not in _FILES:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        folder = resolve_root(root)
        images_path = _find(folder, f"{_FILES[split]}-images-idx3-ubyte")
        labels_path = _find(folder, f"{_FILES[split]}-labels-idx1-ubyte")
        key = tuple(
            (str(p.resolve()), st.st_size, st.st_mtime_ns)
            for p in (images_path, labels_path)
            for st in [p.stat()]
        )
        with _LOCK:
            data = _CACHE.get(key)
            if data is None:
                data = _CACHE[key] = _load(images_path, labels_path)
        self.split = split
        self.root = folder
        super().__init__(
            data.images,
            data.labels,
            class_names=CLASS_NAMES,
            content_hash=data.content_hash,
            source=f"Fashion-MNIST {split} split ({data.images.shape[0]} images) from {folder}",
        )
