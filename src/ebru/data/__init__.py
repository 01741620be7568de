"""ebru.data: image data sets held in memory, with content hashes for provenance.

- :class:`ImageDataset`: the protocol (``ds[i] -> (image (C,H,W) in [-1,1], label)``, ``tensors()``,
  ``num_classes``, ``class_names``, ``image_shape``, ``content_hash``, ``source``).
- :class:`FashionMNIST`: the offline Debian copy of Fashion-MNIST.
- :class:`ImageFolder`: any folder of images, labelled by first-level subfolders.
- :func:`load_dataset`: one entry point by name or path; :func:`random_hflip`: batched augmentation;
  :func:`sha256_file` and friends: content hashes.

Depends on torch, numpy, Pillow and tqdm only (nothing else in ebru).
"""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import ImageDataset
from .errors import DataMissingError
from .fashion_mnist import FashionMNIST
from .folder import ImageFolder
from .hashing import sha256_bytes, sha256_file, sha256_files
from .transforms import random_hflip

__all__ = [
    "DATASET_NAMES",
    "DataMissingError",
    "FashionMNIST",
    "ImageDataset",
    "ImageFolder",
    "load_dataset",
    "random_hflip",
    "sha256_bytes",
    "sha256_file",
    "sha256_files",
]

DATASET_NAMES = ("fashion-mnist", "fashion-mnist:train", "fashion-mnist:test")
_ALIASES = {"fashion-mnist", "fashion_mnist", "fashionmnist"}


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~")) or Path(spec).exists()


def load_dataset(spec: str | os.PathLike, **kw) -> ImageDataset:
    """A data set by name or folder path.

    ``"fashion-mnist"`` (train) or ``"fashion-mnist:train"`` / ``"fashion-mnist:test"`` give
    :class:`FashionMNIST` (keyword: ``root``); anything that looks like a path (contains a slash,
    starts with ``.`` or ``~``, or exists) gives :class:`ImageFolder` (keywords: ``image_size``,
    ``channels``). Names win over a folder of the same name in the working directory; write
    ``./fashion-mnist`` for the folder. For Fashion-MNIST, ``image_size`` and ``channels`` are accepted
    only as ``None`` or its native 28 and 1, so callers can pass them uniformly.
    """
    if isinstance(spec, os.PathLike):
        return ImageFolder(spec, **kw)
    name, _, split = spec.strip().partition(":")
    if name.lower() in _ALIASES:
        split = split or "train"
        if split not in ("train", "test"):
            raise ValueError(f"unknown Fashion-MNIST split {split!r} in {spec!r}; valid: {', '.join(DATASET_NAMES)}")
        for key, native in (("image_size", 28), ("channels", 1)):
            value = kw.pop(key, None)
            if value is not None and value != native:
                raise ValueError(f"Fashion-MNIST is 1x28x28; {key}={value!r} is not supported (use None or {native})")
        return FashionMNIST(split=split, **kw)
    if _looks_like_path(spec):
        return ImageFolder(spec, **kw)
    raise ValueError(f"unknown data set {spec!r}: valid names are {', '.join(DATASET_NAMES)}, or a folder path")
