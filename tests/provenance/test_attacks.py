"""The attack grid (ebru.provenance.attacks): exact answers for every attack, kinds kept, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ebru.provenance.attacks import (
    ATTACKS,
    apply_attack,
    brightness,
    centre_crop,
    combined,
    gaussian_blur,
    gaussian_noise,
    identity,
    jpeg,
    resize,
)


def _image(h=256, w=256, c=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    img = smooth[..., None] + rng.normal(0, 8, (h, w, c))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8) if c > 1 else np.clip(np.rint(img[..., 0]), 0, 255).astype(
        np.uint8)


def test_grid_names():
    assert list(ATTACKS) == ["none", "jpeg50", "jpeg75", "resize0.5", "crop0.5", "blur", "noise0.05",
                             "brightness1.5", "combined"]


def test_identity_copies():
    img = _image()
    out = identity(img)
    assert out is not img and np.array_equal(out, img)
    assert np.array_equal(apply_attack("none", img), img)


def test_jpeg_changes_bytes_and_quality_orders_the_error():
    img = _image()
    e50 = np.abs(jpeg(img, 50).astype(int) - img).mean()
    e95 = np.abs(jpeg(img, 95).astype(int) - img).mean()
    assert e50 > e95 > 0
    assert jpeg(img, 50).shape == img.shape and jpeg(img, 50).dtype == np.uint8
    assert np.array_equal(jpeg(img, 75), jpeg(img, 75))  # deterministic


def test_jpeg_keeps_alpha_and_grey():
    rgba = np.dstack([_image(), np.full((256, 256), 77, np.uint8)])
    out = jpeg(rgba, 50)
    assert out.shape == (256, 256, 4) and (out[:, :, 3] == 77).all()
    grey = _image(c=1)
    assert jpeg(grey, 50).shape == (256, 256)


def test_pil_in_pil_out():
    pil = Image.fromarray(_image())
    for name, attack in ATTACKS.items():
        out = attack(pil)
        assert isinstance(out, Image.Image) and out.mode == "RGB", name


def test_resize_back_and_not():
    img = _image()
    assert resize(img, 0.5).shape == img.shape
    assert resize(img, 0.5, back=False).shape == (128, 128, 3)
    flat = np.full((256, 256, 3), 90, np.uint8)
    assert np.array_equal(resize(flat, 0.5), flat)
    # halving keeps what lies well below the new Nyquist frequency: a slow ramp survives almost exactly
    ramp = np.repeat(np.linspace(40, 200, 256)[None, :, None], 256, 0).repeat(3, 2).round().astype(np.uint8)
    assert np.abs(resize(ramp, 0.5).astype(int) - ramp)[8:-8, 8:-8].max() <= 1


def test_centre_crop_is_the_centred_window_of_the_asked_area():
    img = _image()
    out = centre_crop(img, 0.5)
    assert out.shape == (181, 181, 3)
    assert np.array_equal(out, img[37:218, 37:218])
    assert abs(181 * 181 / 256 ** 2 - 0.5) < 1e-3
    rect = _image(300, 500)
    out = centre_crop(rect, 0.25)
    assert out.shape == (150, 250, 3) and np.array_equal(out, rect[75:225, 125:375])
    assert np.array_equal(centre_crop(img, 1.0), img)


def test_gaussian_blur_exact_on_flat_and_impulse():
    flat = np.full((64, 64, 3), 200, np.uint8)
    assert np.array_equal(gaussian_blur(flat), flat)
    imp = np.zeros((21, 21), np.uint8)
    imp[10, 10] = 255
    out = gaussian_blur(imp, 5).astype(float)
    x = np.arange(5) - 2.0
    k = np.exp(-0.5 * (x / 1.1) ** 2)
    k /= k.sum()
    assert np.array_equal(out[8:13, 8:13], np.rint(255 * np.outer(k, k)))
    assert out[:8].sum() == 0 and out[13:].sum() == 0


def test_gaussian_noise_is_seeded_and_has_the_asked_sigma():
    grey = np.full((200, 200, 3), 128, np.uint8)
    a, b, c = gaussian_noise(grey, 0.05, seed=3), gaussian_noise(grey, 0.05, seed=3), gaussian_noise(grey, 0.05, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    expected = np.clip(np.rint(128 + 255 * 0.05 * np.random.default_rng(3).standard_normal(grey.shape)), 0, 255)
    assert np.array_equal(a, expected)
    assert abs((a.astype(float) - 128).std() - 12.75) < 0.2
    assert np.array_equal(gaussian_noise(grey, 0.0), grey)
    assert np.array_equal(ATTACKS["noise0.05"](grey, seed=3), a)


def test_brightness_scales_and_clips():
    img = np.array([[0, 100, 170, 171, 255]], np.uint8)
    assert brightness(img, 1.5).tolist() == [[0, 150, 255, 255, 255]]
    assert brightness(img, 0.5).tolist() == [[0, 50, 85, 86, 128]]  # round half to even: 85.5 -> 86, 127.5 -> 128
    assert np.array_equal(brightness(img, 1.0), img)


def test_combined_is_the_composition():
    img = _image()
    assert np.array_equal(combined(img), jpeg(brightness(centre_crop(img, 0.5), 1.5), 80))
    assert np.array_equal(ATTACKS["combined"](img), combined(img))


def test_bad_input_one_line():
    img = _image()
    with pytest.raises(ValueError, match="uint8"):
        jpeg(img.astype(np.float32), 50)
    with pytest.raises(ValueError, match="shape"):
        brightness(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        identity(Image.new("P", (8, 8)))
    with pytest.raises(ValueError, match="numpy array or a PIL image"):
        identity([[1, 2]])
    with pytest.raises(ValueError, match="quality"):
        jpeg(img, 101)
    with pytest.raises(ValueError, match="crop area fraction"):
        centre_crop(img, 1.5)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(img, 4)
    with pytest.raises(ValueError, match=r"unknown attack 'blurr'.*did you mean 'blur'"):
        apply_attack("blurr", img)
    with pytest.raises(ValueError, match="seed"):
        gaussian_noise(img, 0.05, seed=-1)
