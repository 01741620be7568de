"""FashionMNIST: the real files (skipped when the Debian package is absent) and synthetic IDX files."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ebru.data import DataMissingError, FashionMNIST, ImageDataset
from ebru.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, ENV_VAR, KNOWN_HASHES, clear_cache, read_idx

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
HAVE_REAL = all((Path(DEFAULT_ROOT) / f).is_file() for f in FILES)
real = pytest.mark.skipif(
    not HAVE_REAL, reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(autouse=True)
def _default_root(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def train():
    return FashionMNIST("train", root=DEFAULT_ROOT)


@pytest.fixture(scope="module")
def test_split():
    return FashionMNIST("test", root=DEFAULT_ROOT)


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x0800 + arr.ndim if magic is None else magic
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, split: str = "train") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def synthetic(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    return images, np.arange(n, dtype=np.uint8) % 10


# ---------------------------------------------------------------- real data


@real
def test_shapes_and_types(train, test_split):
    assert isinstance(train, ImageDataset) and isinstance(train, torch.utils.data.Dataset)
    assert (len(train), len(test_split)) == (60000, 10000)
    assert train.image_shape == test_split.image_shape == (1, 28, 28)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert type(y) is int and y == 9  # the first training image is an ankle boot
    assert test_split[0][1] == 9 and test_split[1][1] == 2
    assert train[-1][1] == train.labels[-1].item()
    with pytest.raises(IndexError):
        train[60000]


@real
def test_value_range_and_tensors(test_split):
    x, y = test_split.tensors()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.long
    assert x.min().item() == -1.0 and x.max().item() == 1.0  # endpoints reached exactly
    assert torch.allclose(x.double(), test_split.images_uint8.double() / 127.5 - 1, atol=1e-7, rtol=0)
    for i in (0, 1234, 9999):
        xi, yi = test_split[i]
        assert torch.equal(xi, x[i]) and yi == y[i].item()


@real
def test_class_balance_and_names(train, test_split):
    assert train.class_names == test_split.class_names == CLASS_NAMES
    assert train.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                 "Sneaker", "Bag", "Ankle boot"]
    assert train.num_classes == 10
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test_split.labels.bincount(), torch.full((10,), 1000))


@real
def test_content_hash_known_stable_and_split_specific(train, test_split):
    def independent(prefix):
        h = hashlib.sha256()
        for kind in ("images-idx3", "labels-idx1"):
            with gzip.open(Path(DEFAULT_ROOT) / f"{prefix}-{kind}-ubyte.gz") as f:
                h.update(f.read())
        return h.hexdigest()

    assert test_split.content_hash == KNOWN_HASHES["test"] == independent("t10k")
    assert train.content_hash == KNOWN_HASHES["train"]
    assert train.content_hash != test_split.content_hash
    clear_cache()
    assert FashionMNIST("test").content_hash == test_split.content_hash  # fresh decode, same hash


@real
def test_env_var_and_uncompressed_copy(tmp_path, monkeypatch):
    for f in FILES[2:]:
        (tmp_path / f).symlink_to(Path(DEFAULT_ROOT) / f)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    ds = FashionMNIST("test")
    assert ds.root == tmp_path and str(tmp_path) in ds.source
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in FILES[2:]:
        with gzip.open(Path(DEFAULT_ROOT) / f) as src:
            (raw / f.removesuffix(".gz")).write_bytes(src.read())
    assert FashionMNIST("test", root=raw).content_hash == KNOWN_HASHES["test"]  # hash of decompressed bytes


@real
def test_truncated_copy_of_real_labels(tmp_path):
    for f in FILES[2:]:
        shutil.copy(Path(DEFAULT_ROOT) / f, tmp_path / f)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: truncated gzip") as e:
        FashionMNIST("test", root=tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- missing files


def test_missing_root_raises_with_install_line(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataMissingError) as e:
        FashionMNIST(root=missing)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg and ENV_VAR in msg
    assert "\n" not in msg
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(DataMissingError, match="nowhere"):
        FashionMNIST("test")


def test_missing_one_file_is_named(tmp_path):
    images, labels = synthetic()
    write_split(tmp_path, images, labels, split="t10k")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match=r"t10k-labels-idx1-ubyte\.gz"):
        FashionMNIST("test", root=tmp_path)


def test_bad_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        FashionMNIST("validation")


# ---------------------------------------------------------------- synthetic IDX files


def test_synthetic_round_trip(tmp_path):
    images, labels = synthetic()
    write_split(tmp_path, images, labels)
    ds = FashionMNIST("train", root=tmp_path)
    assert len(ds) == 12 and ds.image_shape == (1, 28, 28)
    assert torch.equal(ds.images_uint8[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist()
    assert torch.equal(ds[0][0], torch.full((1, 28, 28), -1.0))
    assert torch.equal(ds[1][0], torch.full((1, 28, 28), 1.0))
    expected = hashlib.sha256(idx_bytes(images) + idx_bytes(labels)).hexdigest()
    assert ds.content_hash == expected


@pytest.mark.parametrize(
    ("which", "corrupt", "match"),
    [
        ("images", lambda b: gzip.compress(gzip.decompress(b)[:-100]), "images-idx3-ubyte.gz: truncated: "),
        ("images", lambda b: gzip.compress(gzip.decompress(b) + b"x"), "trailing data"),
        ("images", lambda b: b[: len(b) // 2], "images-idx3-ubyte.gz: truncated gzip stream"),
        ("images", lambda b: b"not gzip at all", "images-idx3-ubyte.gz: corrupt gzip data"),
        ("images", lambda b: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(b)[4:]), "bad IDX magic number 2049"),
        ("labels", lambda b: gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(b)[4:]), "bad IDX magic number 2051"),
        ("labels", lambda b: gzip.compress(gzip.decompress(b)[:6]), "truncated IDX header"),
        ("labels", lambda b: gzip.compress(b"\x00\x00"), "too short"),
    ],
)
def test_corrupt_files_raise_one_line_value_error(tmp_path, which, corrupt, match):
    images, labels = synthetic()
    write_split(tmp_path, images, labels)
    path = tmp_path / f"train-{which}-idx{3 if which == 'images' else 1}-ubyte.gz"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as e:
        FashionMNIST("train", root=tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_inconsistent_files(tmp_path):
    images, labels = synthetic()
    write_split(tmp_path / "count", images, labels[:-1])
    with pytest.raises(ValueError, match="11 labels for 12 images"):
        FashionMNIST(root=tmp_path / "count")
    write_split(tmp_path / "range", images, np.full(12, 10, np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        FashionMNIST(root=tmp_path / "range")
    write_split(tmp_path / "dims", np.zeros((3, 32, 32), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="32x32, expected 28x28"):
        FashionMNIST(root=tmp_path / "dims")


def test_read_idx_known_answer():
    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 7, 8, 9, 10])
    assert read_idx(data, 2051).tolist() == [[[7, 8]], [[9, 10]]]


def test_cache_follows_file_changes(tmp_path):
    images, labels = synthetic()
    write_split(tmp_path, images, labels)
    first = FashionMNIST(root=tmp_path)
    assert FashionMNIST(root=tmp_path).images_uint8 is first.images_uint8  # cached
    images2 = images.copy()
    images2[5, 3, 3] ^= 1
    write_split(tmp_path, images2, labels)
    st = os.stat(tmp_path / "train-images-idx3-ubyte.gz")
    os.utime(tmp_path / "train-images-idx3-ubyte.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = FashionMNIST(root=tmp_path)
    assert second.content_hash != first.content_hash
    assert second.images_uint8[5, 0, 3, 3] != first.images_uint8[5, 0, 3, 3]
