"""ebru.data: image data sets held in memory, with content hashes for provenance.

- :class:`ImageDataset`: the protocol (``ds[i] -> (image (C,H,W) in [-1,1], label)``, ``tensors()``,
  ``num_classes``, ``class_names``, ``image_shape``, ``content_hash``, ``source``).
- :class:`FashionMNIST`: the offline Debian copy of Fashion-MNIST.
- :class:`ImageFolder`: any folder of images, labelled by first-level subfolders.
- :class:`CaptionedImages` (``captions``): images with captions, from a captioned folder
  (``metadata.jsonl`` or ``.txt`` sidecars); :class:`FashionScenes` (``scenes``): tinted Fashion-MNIST
  items on a dark canvas with captions generated from each scene's specification.
- :func:`load_dataset`: one entry point by name or path; :func:`load_captioned`: the same for captioned
  data; :func:`random_hflip`: batched augmentation;
  :func:`sha256_file` and friends: content hashes.

Depends on torch, numpy, Pillow and tqdm, and on ``ebru.checks`` (the row below).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import scenes
from .captions import CaptionedImages, is_captioned_folder, load_captioned_folder
from .dataset import ImageDataset
from .errors import DataMissingError
from .fashion_mnist import FashionMNIST
from .folder import ImageFolder
from .hashing import sha256_bytes, sha256_file, sha256_files
from .scenes import COLOURS, FashionScenes, Item, Scene, ScenePrompt, eval_prompts, load_scenes
from .transforms import random_hflip

__all__ = [
    "COLOURS",
    "DATASET_NAMES",
    "CaptionedImages",
    "DataMissingError",
    "FashionMNIST",
    "FashionScenes",
    "ImageDataset",
    "ImageFolder",
    "Item",
    "Scene",
    "ScenePrompt",
    "eval_prompts",
    "is_captioned_folder",
    "load_captioned",
    "load_captioned_folder",
    "load_dataset",
    "load_scenes",
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


def load_captioned(spec: str | os.PathLike, **kw):
    """Captioned images by name or folder path (what the ``text2image`` task trains on).

    ``"fashion-scenes"`` or ``"fashion-scenes:<preset>"`` gives :class:`ebru.data.scenes.FashionScenes`
    (keyword ``image_size`` must be None or the preset's canvas); a folder gives
    :func:`ebru.data.captions.load_captioned_folder` (keywords ``image_size``, ``channels``).
    Raises ValueError (one line) for an unknown name or a folder without captions, and
    ``DataMissingError`` when the scenes' Fashion-MNIST is not installed.
    """
    text = os.fspath(spec)
    if scenes.is_scene_spec(text):
        size = kw.pop("image_size", None)
        data = load_scenes(text)
        if size is not None and size != data.image_shape[-1]:
            raise ValueError(f"{text} has {data.image_shape[-1]}x{data.image_shape[-1]} canvases; "
                             f"image_size={size} is not supported (leave it unset)")
        return data
    if isinstance(spec, os.PathLike) or _looks_like_path(text):
        return load_captioned_folder(text, **kw)
    raise ValueError(f"unknown captioned data set {text!r}: use 'fashion-scenes' (or 'fashion-scenes:quickstart', "
                     "'fashion-scenes:full') or a folder with metadata.jsonl or .txt caption files")
