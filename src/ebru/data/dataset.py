"""The ``ImageDataset`` protocol shared by every image data set in ebru.

An ``ImageDataset`` keeps its whole content decoded in memory as a uint8 tensor (N, C, H, W)
plus a long tensor of labels, and hands out images as float32 in [-1, 1] (the ebru convention,
``x = u8 / 127.5 - 1``, so 0 -> -1 and 255 -> 1 exactly). ``tensors()`` returns everything at once:
the trainer samples batches from those tensors directly, which is much faster than a DataLoader
for data sets this small.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "uint8_to_float"]


def uint8_to_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (``u8 / 127.5 - 1``; 0 and 255 map to -1 and 1 exactly)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class ImageDataset(Dataset):
    """Base class: an in-memory image data set.

    ``ds[i]`` is ``(image, label)``: a float32 tensor (C, H, W) in [-1, 1] and an ``int`` label
    (-1 when the data set is unlabelled).

    Attributes:
        num_classes: number of classes, or ``None`` when unlabelled.
        class_names: one name per class (index = label), or ``None`` when unlabelled.
        image_shape: ``(C, H, W)``.
        content_hash: hex SHA-256 identifying the data content (see each subclass for what is hashed).
        source: one-line human description of where the data came from.
    """

    num_classes: int | None
    class_names: list[str] | None
    image_shape: tuple[int, int, int]
    content_hash: str
    source: str

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        class_names: list[str] | None,
        content_hash: str,
        source: str,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self._images = images
        self._labels = labels.to(torch.long)
        self.class_names = None if class_names is None else list(class_names)
        self.num_classes = None if class_names is None else len(class_names)
        c, h, w = images.shape[1:]
        self.image_shape = (int(c), int(h), int(w))
        self.content_hash = content_hash
        self.source = source

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images")
        return uint8_to_float(self._images[i]), int(self._labels[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as float32 (N, C, H, W) in [-1, 1] and all labels as long (N,) (fresh copies)."""
        return uint8_to_float(self._images), self._labels.clone()

    @property
    def images_uint8(self) -> Tensor:
        """The stored uint8 images (N, C, H, W), without a copy; do not modify."""
        return self._images

    @property
    def labels(self) -> Tensor:
        """The stored labels (N,) long, without a copy; do not modify."""
        return self._labels

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        classes = "unlabelled" if self.num_classes is None else f"{self.num_classes} classes"
        return (
            f"{type(self).__name__}({len(self)} images {c}x{h}x{w}, {classes}, "
            f"sha256 {self.content_hash[:12]}…, {self.source})"
        )
