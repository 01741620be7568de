"""load_dataset: names, splits and paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.data import FashionMNIST, ImageFolder, load_dataset

from .test_fashion_mnist import real, synthetic, write_split


@real
def test_fashion_mnist_names():
    ds = load_dataset("fashion-mnist:test")
    assert isinstance(ds, FashionMNIST) and len(ds) == 10000
    assert load_dataset("fashion-mnist").split == "train"
    assert load_dataset("Fashion_MNIST:test", image_size=28, channels=1).split == "test"


def test_fashion_mnist_root_and_bad_options(tmp_path):
    write_split(tmp_path, *synthetic(), split="t10k")
    assert len(load_dataset("fashion-mnist:test", root=tmp_path)) == 12
    with pytest.raises(ValueError, match="image_size=32 is not supported"):
        load_dataset("fashion-mnist:test", root=tmp_path, image_size=32)
    with pytest.raises(ValueError, match=r"unknown Fashion-MNIST split 'val'.*fashion-mnist:test"):
        load_dataset("fashion-mnist:val")


def test_paths_and_unknown_names(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "a.png")
    for spec in (str(tmp_path), tmp_path, f"{tmp_path}/"):
        ds = load_dataset(spec, image_size=4)
        assert isinstance(ds, ImageFolder) and ds.image_shape == (1, 4, 4) and len(ds) == 1
        assert ds.root == tmp_path and torch.equal(ds[0][0], torch.full((1, 4, 4), -1.0))  # black -> -1
    monkeypatch.chdir(tmp_path.parent)
    by_name = load_dataset(tmp_path.name)  # an existing folder by bare name
    assert isinstance(by_name, ImageFolder) and [p.name for p in by_name.files] == ["a.png"]
    assert by_name.image_shape == (1, 6, 6)
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'.*fashion-mnist"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(str(Path(tmp_path) / "missing"))
