"""The post-hoc watermark (ebru.provenance.posthoc): round trips, PSNR, the required attacks, the null, bad input.

Photos: matplotlib's grace_hopper (matplotlib is one of ebru's dependencies), crops of it, and, where
scikit-image is installed, its sample photos.
"""

from __future__ import annotations

import math

import matplotlib.cbook as cbook
import numpy as np
import pytest
from PIL import Image

from ebru.provenance.attacks import ATTACKS, centre_crop
from ebru.provenance.posthoc import PosthocMark, PosthocResult, activity_mask, psnr
from ebru.provenance.wmkeys import WatermarkKey

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        return np.asarray(im.convert("RGB"))  # 600 x 512


@pytest.fixture(scope="module")
def photos(hopper) -> list[np.ndarray]:
    """Three 256x256 crops of grace_hopper (face, shoulder, background) and the whole 600x512 photo."""
    return [np.ascontiguousarray(hopper[y:y + 256, x:x + 256]) for y, x in ((40, 120), (300, 0), (344, 256))] + [hopper]


@pytest.fixture(scope="module")
def mark() -> PosthocMark:
    return PosthocMark(KEY)


IDS = [0x00000000, 0xFFFFFFFF, 0x9E3779B9, 0x12345678]


@pytest.fixture(scope="module")
def marked(mark, photos) -> list[np.ndarray]:
    return [mark.embed(p, i) for p, i in zip(photos, IDS)]


def test_round_trip_recovers_the_id(mark, marked):
    for img, wid in zip(marked, IDS):
        r = mark.detect(img, true_id=wid)
        assert isinstance(r, PosthocResult)
        assert r.detected and r.watermark_id == wid and r.bit_accuracy == 1.0 and r.offset == (0, 0)
        assert r.p_value < 1e-12 and r.log10_p < -12
        assert [int(b > 0) for b in r.soft_bits] == [(wid >> (31 - i)) & 1 for i in range(32)]


def test_psnr_at_least_the_target(mark, photos, marked):
    for p, m in zip(photos, marked):
        assert 40.0 <= psnr(p, m) < 40.3
    strong = PosthocMark(KEY, psnr=35.0).embed(photos[0], 7)
    assert 35.0 <= psnr(photos[0], strong) < 35.3
    assert psnr(photos[0], photos[0]) == math.inf


def test_psnr_formula():
    a = np.zeros((2, 2), np.uint8)
    b = np.array([[0, 0], [0, 2]], np.uint8)  # MSE = 1
    assert psnr(a, b) == pytest.approx(20 * math.log10(255))


def test_embed_changes_only_luma(mark, photos, marked):
    d = marked[0].astype(int) - photos[0].astype(int)
    # the same dY on R, G and B wherever nothing clipped (integer + dY rounds alike): Cb and Cr unchanged
    inside = ((marked[0] > 0) & (marked[0] < 255)).all(-1)
    assert inside.mean() > 0.9
    assert np.array_equal(d[..., 0][inside], d[..., 1][inside]) and np.array_equal(d[..., 0][inside], d[..., 2][inside])


def test_embed_is_deterministic_and_keyed(mark, photos):
    a, b = mark.embed(photos[0], 5), mark.embed(photos[0], 5)
    assert np.array_equal(a, b)
    p1, p2 = mark.tile_pattern(5), PosthocMark(OTHER_KEY).tile_pattern(5)
    assert p1.shape == (128, 128) and np.mean(p1 ** 2) == pytest.approx(1.0)
    assert abs(float(np.mean(p1 * p2))) < 0.05  # another key: an unrelated pattern
    assert abs(float(np.mean(p1 * mark.tile_pattern(6)))) < 0.99  # another id: another pattern


@pytest.mark.parametrize("attack, floor", [("jpeg50", 0.95), ("resize0.5", 0.95), ("crop0.5", 0.90),
                                           ("jpeg75", 0.95), ("blur", 0.95), ("noise0.05", 0.95),
                                           ("brightness1.5", 0.95)])
def test_required_attacks(mark, marked, attack, floor):
    for i, (img, wid) in enumerate(zip(marked, IDS)):
        r = mark.detect(ATTACKS[attack](img, seed=i), true_id=wid)
        assert r.bit_accuracy >= floor and r.detected, (attack, i, r.bit_accuracy, r.log10_p)


def test_crop_finds_the_translation(mark, marked):
    # the 181x181 centre window of a 256x256 image starts at (37, 37): the tile grid moves by -37 = 91 mod 128
    r = mark.detect(centre_crop(marked[0], 0.5), true_id=IDS[0])
    assert r.offset == (91, 91) and r.watermark_id == IDS[0]
    r = mark.detect(marked[3][5:, 17:], true_id=IDS[3])  # an off-centre crop of the whole photo
    assert r.offset == (-5 % 128, -17 % 128) and r.watermark_id == IDS[3]


def test_combined_attack(mark, marked):
    accs = [mark.detect(ATTACKS["combined"](img), true_id=wid).bit_accuracy for img, wid in zip(marked, IDS)]
    assert np.mean(accs) >= 0.90


def test_unmarked_and_wrong_key_are_not_detected(mark, photos, marked, hopper):
    rng = np.random.default_rng(0)
    clean = list(photos) + [np.ascontiguousarray(hopper[y:y + 256, x:x + 256])
                            for y, x in zip(rng.integers(0, 344, 12), rng.integers(0, 256, 12))]
    clean.append(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))  # white noise
    other = PosthocMark(OTHER_KEY)
    for img in clean + [ATTACKS["jpeg75"](c) for c in clean[:4]]:
        r = mark.detect(img)
        assert not r.detected and r.p_value > 1e-2, r
    for img in marked:  # marked under KEY, read under OTHER_KEY
        r = other.detect(img)
        assert not r.detected and r.p_value > 1e-2, r


def test_p_value_bound():
    # the Chernoff step: E exp(l cos U) = I_0(l) <= exp(l^2 / 4) for every l
    lam = np.linspace(0, 60, 601)
    assert (np.log(np.i0(lam)) <= lam ** 2 / 4 + 1e-12).all()
    m = PosthocMark(KEY)
    # p = min(1, 2 min(T^2 exp(-z_sync^2/2), T^2 2^32 exp(-z_mark^2/2))), T = 128
    assert m._log_p(0.0, 0.0) == 0.0
    assert m._log_p(8.0, 0.0) == pytest.approx(math.log(2 * 128 ** 2) - 32.0)
    assert m._log_p(0.0, 11.0) == pytest.approx(math.log(2 * 128 ** 2 * 2 ** 32) - 60.5)
    # the operating points at FPR 1e-6: z_sync 6.96, z_mark 9.63
    z_sync = math.sqrt(2 * (math.log(2 * 128 ** 2) - math.log(1e-6)))
    z_mark = math.sqrt(2 * (math.log(2 * 128 ** 2 * 2 ** 32) - math.log(1e-6)))
    assert (round(z_sync, 2), round(z_mark, 2)) == (6.96, 9.63)


def test_detect_fpr_changes_only_the_decision(mark, marked):
    r = mark.detect(marked[0])
    strict = mark.detect(marked[0], fpr=10 ** (r.log10_p - 1))
    assert r.detected and not strict.detected and strict.watermark_id == r.watermark_id


def test_grey_rgba_and_pil(mark, photos):
    grey = np.ascontiguousarray(photos[0][..., 1])
    g = mark.embed(grey, 77)
    assert g.shape == grey.shape and psnr(grey, g) >= 40.0
    assert mark.detect(g).watermark_id == 77
    assert mark.detect(g[..., None]).watermark_id == 77  # (H, W, 1)
    rgba = np.dstack([photos[0], np.full(grey.shape, 200, np.uint8)])
    out = mark.embed(rgba, 78)
    assert out.shape == rgba.shape and (out[..., 3] == 200).all() and mark.detect(out).watermark_id == 78
    pil = mark.embed(Image.fromarray(photos[0]), 79)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and mark.detect(pil).watermark_id == 79


def test_watermark_key_object_and_sub_key(photos):
    key = WatermarkKey(name="t", secret=KEY)
    a = PosthocMark(key).embed(photos[0], 3)
    assert np.array_equal(a, PosthocMark(KEY).embed(photos[0], 3))
    assert PosthocMark(KEY)._subkey != KEY  # a domain-separated hash of the secret, not the secret


def test_flat_image_is_not_detected(mark):
    flat = np.full((256, 256, 3), 128, np.uint8)
    r = mark.detect(flat)
    assert not r.detected and r.p_value == 1.0
    marked_flat = mark.embed(flat, 9)  # a flat image still takes the mark (the mask is uniform there)
    assert psnr(flat, marked_flat) >= 40.0 and mark.detect(marked_flat).watermark_id == 9


def test_activity_mask():
    flat = np.full((64, 64), 50.0)
    assert np.allclose(activity_mask(flat), 1.0)
    half = np.full((64, 64), 50.0)
    half[:, 32:] = np.random.default_rng(0).normal(128, 40, (64, 32))
    m = activity_mask(half)
    assert m[:, :24].mean() < 0.5 < 2.0 > m[:, 40:].mean() > 1.0


def test_bad_input_one_line(mark, photos):
    with pytest.raises(ValueError, match=r"at least 256x256 pixels, got 300x255"):
        mark.embed(np.zeros((255, 300, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="uint8"):
        mark.embed(photos[0].astype(np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        mark.embed(np.zeros((256, 256, 2), np.uint8), 1)
    with pytest.raises(ValueError, match="mode 'P'"):
        mark.embed(Image.new("P", (256, 256)), 1)
    with pytest.raises(ValueError, match=r"detection needs at least 128x128 pixels, got 100x300"):
        mark.detect(np.zeros((300, 100, 3), np.uint8))
    for bad in (-1, 2 ** 32, True, 1.0):
        with pytest.raises(ValueError, match="watermark_id"):
            mark.embed(photos[0], bad)
    with pytest.raises(ValueError, match="watermark_id"):
        mark.detect(photos[0], true_id=2 ** 32)
    with pytest.raises(ValueError, match="32 bytes"):
        PosthocMark(b"short")
    with pytest.raises(ValueError, match="id_bits"):
        PosthocMark(KEY, id_bits=65)
    with pytest.raises(ValueError, match="psnr"):
        PosthocMark(KEY, psnr=20)
    with pytest.raises(ValueError, match="fpr"):
        mark.detect(photos[0], fpr=0)
    with pytest.raises(ValueError, match="one shape"):
        psnr(photos[0], photos[1][:100])


def test_short_payload(photos):
    m = PosthocMark(KEY, id_bits=8)
    r = m.detect(m.embed(photos[0], 200), true_id=200)
    assert r.watermark_id == 200 and r.bit_accuracy == 1.0 and len(r.soft_bits) == 8


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_scikit_image_photos(name):
    data = pytest.importorskip("skimage.data")
    img = np.ascontiguousarray(getattr(data, name)()[:256, :256, :3])
    m = PosthocMark(KEY)
    marked = m.embed(img, 0xCAFE)
    assert psnr(img, marked) >= 40.0
    for attack, floor in (("jpeg50", 0.95), ("resize0.5", 0.95), ("crop0.5", 0.90)):
        assert m.detect(ATTACKS[attack](marked), true_id=0xCAFE).bit_accuracy >= floor, attack
    assert not m.detect(img).detected
