"""ImageDataset built directly from tensors (how tests and in-memory data sets make one)."""

from __future__ import annotations

import pytest
import torch

from ebru.data import ImageDataset


def test_direct_construction_and_conversion():
    images = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).reshape(6, 1, 1, 1)
    ds = ImageDataset(images, torch.arange(6) % 2, class_names=["a", "b"], content_hash="0" * 64, source="toy")
    assert len(ds) == 6 and ds.num_classes == 2 and ds.image_shape == (1, 1, 1)
    x, y = ds.tensors()
    want = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.float64) / 127.5 - 1
    assert torch.allclose(x.flatten().double(), want, atol=1e-7, rtol=0)
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    assert y.tolist() == [0, 1, 0, 1, 0, 1] and ds[-1] == (x[-1], 1)
    x[0] = 5.0
    assert ds[0][0].item() == -1.0  # tensors() returns copies
    assert "6 images 1x1x1, 2 classes" in repr(ds)


def test_unlabelled_and_validation():
    ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.full((2,), -1), class_names=None,
                      content_hash="", source="")
    assert ds.num_classes is None and ds[0][1] == -1
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2), class_names=None, content_hash="", source="")
    with pytest.raises(ValueError, match="labels must have shape"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), class_names=None, content_hash="",
                     source="")
