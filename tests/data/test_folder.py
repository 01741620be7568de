"""ImageFolder on small image folders generated with Pillow."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ebru.data.folder as folder_mod
from ebru.data import DataMissingError, ImageDataset, ImageFolder, sha256_files


def save(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, format=fmt)
    return path


def rgb(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gray(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def as_float(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> float64 (C, H, W) in [-1, 1], the reference for the float32 output."""
    t = torch.from_numpy(arr.astype(np.float64))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t / 127.5 - 1


def same(x: torch.Tensor, arr: np.ndarray) -> bool:
    """``x`` (float32, from the data set) is ``arr`` mapped to [-1, 1], to float32 rounding."""
    return x.dtype == torch.float32 and torch.allclose(x.double(), as_float(arr), atol=1e-7, rtol=0)


def quiet(*args, **kw) -> ImageFolder:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder must not warn
        return ImageFolder(*args, **kw)


def test_labelled_subfolders(tmp_path):
    a, b, c = rgb(1), rgb(2), rgb(3)
    save(tmp_path / "dog" / "z.png", c)
    save(tmp_path / "cat" / "b.png", b)
    save(tmp_path / "cat" / "a.png", a)
    save(tmp_path / "dog" / "deep" / "er" / "d.bmp", rgb(4))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    ds = quiet(tmp_path)
    assert isinstance(ds, ImageDataset)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == ["cat/a.png", "cat/b.png", "dog/deep/er/d.bmp",
                                                                      "dog/z.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.image_shape == (3, 8, 8) and len(ds) == 4
    x, y = ds[0]
    assert y == 0 and same(x, a)
    assert same(ds[3][0], c) and ds[3][1] == 1
    xs, ys = ds.tensors()
    assert xs.shape == (4, 3, 8, 8) and xs.dtype == torch.float32 and ys.tolist() == [0, 0, 1, 1]
    assert ds.skipped == [] and "4 of 4 image files used, 0 skipped" in ds.report


def test_unlabelled_flat_and_mixed(tmp_path):
    save(tmp_path / "a.png", rgb(1))
    save(tmp_path / "b.jpg", rgb(2))
    ds = quiet(tmp_path)
    assert ds.num_classes is None and ds.class_names is None
    assert ds.labels.tolist() == [-1, -1] and ds[1][1] == -1
    save(tmp_path / "sub" / "c.png", rgb(3))  # one at top level -> still unlabelled
    ds = quiet(tmp_path)
    assert ds.num_classes is None and len(ds) == 3


def test_hidden_files_and_extensions(tmp_path):
    save(tmp_path / "x" / "A.PNG", rgb(1))
    save(tmp_path / "x" / "b.webp", rgb(2), fmt="WEBP")
    save(tmp_path / "x" / "c.gif", gray(3))
    save(tmp_path / "x" / ".hidden.png", rgb(4))
    save(tmp_path / ".cache" / "d.png", rgb(5))
    ds = quiet(tmp_path)
    assert [p.name for p in ds.files] == ["A.PNG", "b.webp", "c.gif"]
    assert ds.class_names == ["x"]


def test_channel_inference(tmp_path):
    g1, g2, c = gray(1), gray(2), rgb(3)
    save(tmp_path / "g" / "1.png", g1)
    save(tmp_path / "g" / "2.png", g2)
    save(tmp_path / "g" / "3.png", np.stack([g2] * 3, -1))  # RGB file with gray content
    ds = quiet(tmp_path / "g")
    assert ds.image_shape == (1, 8, 8)
    assert same(ds[0][0], g1) and torch.equal(ds[2][0], ds[1][0])

    save(tmp_path / "g" / "4.png", c)
    ds = quiet(tmp_path / "g")
    assert ds.image_shape == (3, 8, 8)
    assert same(ds[0][0], np.stack([g1] * 3, -1))  # gray replicated
    assert same(ds[3][0], c)

    forced = quiet(tmp_path / "g", channels=1)
    assert forced.image_shape == (1, 8, 8)
    assert same(forced[3][0], np.asarray(Image.fromarray(c).convert("L")))
    assert same(forced[0][0], g1)
    assert quiet(tmp_path / "g", channels=3).image_shape == (3, 8, 8)
    with pytest.raises(ValueError, match="channels must be"):
        ImageFolder(tmp_path / "g", channels=2)


def test_alpha_and_16_bit(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red-ish pixel, the rest fully transparent
    save(tmp_path / "a" / "rgba.png", rgba)
    ds = quiet(tmp_path / "a")
    img = ds.images_uint8[0]
    assert img[:, 0, 0].tolist() == [200, 0, 0]
    assert (img[:, 1:, :] == 255).all()  # transparent -> white
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0..65535
    Image.fromarray(deep).save(tmp_path / "b.png")  # 16-bit grayscale PNG
    (tmp_path / "b16").mkdir()
    (tmp_path / "b.png").rename(tmp_path / "b16" / "b.png")
    ds = quiet(tmp_path / "b16")
    assert ds.image_shape == (1, 4, 4)
    assert ds.images_uint8[0, 0].flatten().tolist() == [round(v * 4369 / 257) for v in range(16)]


def test_resize_and_center_crop(tmp_path):
    # 12 wide x 4 high: shorter side already 4, so only the center third survives, exactly
    band = np.zeros((4, 12, 3), np.uint8)
    band[:, :4] = (255, 0, 0)
    band[:, 4:8] = (0, 255, 0)
    band[:, 8:] = (0, 0, 255)
    save(tmp_path / "crop" / "band.png", band)
    ds = quiet(tmp_path / "crop", image_size=4)
    assert ds.image_shape == (3, 4, 4)
    assert ds.images_uint8[0].permute(1, 2, 0).reshape(-1, 3).unique(dim=0).tolist() == [[0, 255, 0]]

    # mixed sizes become one size; compare with Pillow's own resize-then-crop
    tall, wide = rgb(1, h=20, w=10), rgb(2, h=9, w=30)
    save(tmp_path / "mix" / "tall.png", tall)
    save(tmp_path / "mix" / "wide.png", wide)
    save(tmp_path / "mix" / "const.png", np.full((16, 16, 3), 77, np.uint8))
    ds = quiet(tmp_path / "mix", image_size=5)
    assert ds.image_shape == (3, 5, 5)
    assert (ds.images_uint8[0] == 77).all()  # bicubic of a constant is that constant
    ref = Image.fromarray(tall).resize((5, 10), Image.Resampling.BICUBIC).crop((0, 2, 5, 7))
    assert torch.equal(ds.images_uint8[1], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    ref = Image.fromarray(wide).resize((17, 5), Image.Resampling.BICUBIC).crop((6, 0, 11, 5))
    assert torch.equal(ds.images_uint8[2], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    assert "resized to 5x5" in ds.source


def test_mixed_sizes_without_image_size(tmp_path):
    save(tmp_path / "a.png", rgb(1, 8, 8))
    save(tmp_path / "b.png", rgb(2, 6, 10))
    with pytest.raises(ValueError) as e:
        ImageFolder(tmp_path)
    msg = str(e.value)
    assert "a.png is 8x8" in msg and "b.png is 10x6" in msg and "image_size" in msg and "\n" not in msg


def test_corrupt_files_skipped_and_counted(tmp_path):
    good = [save(tmp_path / f"{i}.png", rgb(i, 32, 32)) for i in range(3)]
    (tmp_path / "junk.png").write_bytes(np.random.default_rng(0).bytes(500))
    buf = io.BytesIO()
    Image.fromarray(rgb(9, 64, 64)).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.warns(UserWarning, match="2 skipped") as rec:
        ds = ImageFolder(tmp_path)
    assert len(rec) == 1
    assert len(ds) == 3 and ds.files == good
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["junk.png", "trunc.png"]
    assert all(reason for _, reason in ds.skipped)
    assert ds.report.startswith(f"{tmp_path}: 3 of 5 image files used, 2 skipped (")
    assert "junk.png" in ds.report and "\n" not in ds.report
    assert ds.content_hash == sha256_files(good, tmp_path)  # skipped files are not part of the hash


def test_empty_and_unreadable_folders(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        ImageFolder(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"no readable image in .*: all 1 image files were skipped"):
            ImageFolder(tmp_path)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataMissingError, match="nope") as e:
        ImageFolder(tmp_path / "nope")
    assert isinstance(e.value, FileNotFoundError) and e.value.path == str(tmp_path / "nope")
    f = save(tmp_path / "a.png", rgb(1))
    with pytest.raises(ValueError, match="not a folder"):
        ImageFolder(f)


def test_content_hash_tracks_pixels_and_names_not_mtime(tmp_path):
    arr = rgb(1)
    p = save(tmp_path / "c" / "a.png", arr)
    save(tmp_path / "c" / "b.png", rgb(2))
    h0 = quiet(tmp_path).content_hash
    assert h0 == sha256_files([tmp_path / "c" / "b.png", p], tmp_path)
    os.utime(p, (1_000_000_000, 1_000_000_000))
    assert quiet(tmp_path).content_hash == h0
    arr2 = arr.copy()
    arr2[3, 4, 1] ^= 1
    save(p, arr2)
    h1 = quiet(tmp_path).content_hash
    assert h1 != h0
    p.rename(tmp_path / "c" / "a2.png")
    assert quiet(tmp_path).content_hash not in (h0, h1)


def test_progress_bar_above_threshold(tmp_path, monkeypatch, capsys):
    for i in range(3):
        save(tmp_path / f"{i}.png", gray(i, 4, 4))
    quiet(tmp_path)
    assert "decoding" not in capsys.readouterr().err
    monkeypatch.setattr(folder_mod, "PROGRESS_MIN_FILES", 2)
    quiet(tmp_path)
    err = capsys.readouterr().err
    assert re.search(rf"decoding {re.escape(tmp_path.name)}:.* \d/3 ", err), err  # the folder, out of 3 files


def test_bad_image_size(tmp_path):
    save(tmp_path / "a.png", rgb(1))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="image_size"):
            ImageFolder(tmp_path, image_size=bad)
