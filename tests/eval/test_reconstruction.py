"""PSNR, SSIM and rFID of reconstructions: exact values on known cases, and SSIM against scikit-image."""

from __future__ import annotations

import math

import pytest
import torch

from ebru.eval.reconstruction import PSNR_CAP_DB, psnr, reconstruction_report, rfid, ssim


def images(n=3, c=1, size=28, seed=0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_psnr_of_identical_images_is_inf_and_a_known_mse_gives_the_known_psnr():
    x = images()
    assert torch.equal(psnr(x, x), torch.full((3,), math.inf, dtype=torch.float64))
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 on a range of 2: 10 log10(4 / 0.01) = 26.0206 dB
    y[1, :, :14] += 0.2  # half the pixels off by 0.2: MSE 0.02
    got = psnr(x, y)
    assert got[0].item() == pytest.approx(10 * math.log10(400), abs=1e-9)
    assert got[1].item() == pytest.approx(10 * math.log10(200), abs=1e-9)
    assert got[2].item() == math.inf
    assert psnr(x * 0.5 + 0.5, x * 0.5 + 0.5 + 0.1, data_range=1.0)[0].item() == pytest.approx(20.0, abs=1e-9)


def test_ssim_exact_cases():
    x = images(c=2)
    assert torch.equal(ssim(x, x), torch.ones(3, dtype=torch.float64))
    # two constant images a and b: the variance terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, -0.3, (0.01 * 2) ** 2
    const = {"size": (1, 1, 16, 16), "dtype": torch.float64}
    got = ssim(torch.full(fill_value=a, **const), torch.full(fill_value=b, **const))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # SSIM is symmetric, and below 1 for different images
    assert ssim(x, x.flip(-1)).max() < 1
    torch.testing.assert_close(ssim(x, x.flip(-1)), ssim(x.flip(-1), x))


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = images(n=2, size=32), images(n=2, size=32, seed=1)
    y = 0.7 * x + 0.3 * y  # related images: SSIM well inside (0, 1)
    got = ssim(x, y)
    for i in range(2):
        want = metrics.structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), data_range=2.0, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False)
        assert got[i].item() == pytest.approx(want, abs=1e-9)


def test_rfid_and_the_report():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 4))
    x = images(n=40, size=16).float()
    assert rfid(x, x, net) == pytest.approx(0.0, abs=1e-3)
    report = reconstruction_report(x, x.clone(), feature_net=net)
    assert report["psnr"] == PSNR_CAP_DB and report["ssim"] == 1.0 and report["images"] == 40
    assert report["rfid"] == pytest.approx(0.0, abs=1e-3) and len(report["feature_net"]) == 64
    # reconstructions are clamped to [-1, 1] before scoring, as they would be saved
    assert reconstruction_report(x, x * 3, metrics=("psnr",))["psnr"] < PSNR_CAP_DB
    assert reconstruction_report(x.clamp(-1, 1), torch.full_like(x, 5.0), metrics=("psnr",))["psnr"] == pytest.approx(
        float(psnr(x, torch.ones_like(x)).mean()))
    with pytest.raises(ValueError, match="unknown reconstruction metric 'lpips'"):
        reconstruction_report(x, x, metrics=("lpips",))
    with pytest.raises(ValueError, match="one shape"):
        psnr(x, x[:, :, :8])


def test_ssim_in_chunks_is_ssim_at_once():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 3, 16, 16, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(7, 3, 16, 16, generator=g)).clamp(-1, 1)
    torch.testing.assert_close(ssim(x, y, batch=3), ssim(x, y, batch=256))
