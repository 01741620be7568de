"""Reconstruction metrics of an autoencoder: PSNR, SSIM and rFID, written in torch.

- :func:`psnr`: 10 log10(range^2 / MSE) per image, in dB (``inf`` for identical images).
- :func:`ssim`: the structural similarity of Wang et al. 2004 (IEEE TIP 13(4), eq. 13) per image, with their
  11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, averaged over the
  positions the whole window covers ("valid") and over channels: scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
- :func:`rfid`: the Fréchet distance between the feature-network features of the originals and of their
  reconstructions (LDM's rFID, Rombach et al. 2022, table 8), with ebru's Fashion-MNIST network by default.
- :func:`reconstruction_report`: the three as one dict, what ``ebru eval AE_DIR`` prints.

Images are (N, C, H, W) in [-1, 1] (``data_range`` = 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import extract_features, network_fingerprint
from .frechet import fid

PSNR_CAP_DB = 100.0  # reports cap each image's PSNR here, so identical images give a finite mean (and valid JSON)


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.ndim != 4 or x.shape != y.shape:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (x, y)]
        raise ValueError(f"need two (N, C, H, W) image batches of one shape, got {shapes[0]} and {shapes[1]}")
    return x.double(), y.double()


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio (N,) in dB: ``10 log10(data_range^2 / mean((x - y)^2))`` per image; inf when equal.

    ``x``, ``y``: (N, C, H, W) of one shape; ``data_range`` = 2 for [-1, 1] images. Raises ValueError otherwise.
    """
    x, y = _pair(x, y)
    mse = (x - y).square().mean((1, 2, 3))
    return 10 * torch.log10(data_range**2 / mse)  # mse 0 gives +inf


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """The normalised 1-D Gaussian (size,) of SSIM's window, float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-r.square() / (2 * sigma**2))
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, batch: int = 256) -> Tensor:
    """Mean structural similarity (N,) per image (Wang et al. 2004, eq. 13; see the module docstring).

    ``x``, ``y``: (N, C, H, W) with H, W >= ``window``, taken ``batch`` images at a time (the local statistics
    of 10,000 RGB 64x64 images at once would need 28 GB). Identical images give exactly 1. Raises ValueError
    for mismatched shapes or images smaller than the window.
    """
    x, y = _pair(x, y)
    _, _, h, w = x.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {h}x{w}")
    return torch.cat([_ssim(x[i:i + batch], y[i:i + batch], data_range, window, sigma, k1, k2)
                      for i in range(0, len(x), batch)])


def _ssim(x: Tensor, y: Tensor, data_range: float, window: int, sigma: float, k1: float, k2: float) -> Tensor:
    c = x.shape[1]
    g = gaussian_window(window, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)  # "valid": only positions the whole window covers

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s.mean((1, 2, 3))


def rfid(originals: Tensor, reconstructions: Tensor, feature_net: nn.Module, batch: int = 500) -> float:
    """rFID: the Fréchet distance between ``feature_net``'s features of ``originals`` and of ``reconstructions``."""
    _pair(originals, reconstructions)
    a = extract_features(feature_net, originals, batch=batch)
    b = extract_features(feature_net, reconstructions, batch=batch)
    return fid(a, b)


def reconstruction_report(originals: Tensor, reconstructions: Tensor, *, feature_net: nn.Module | None = None,
                          metrics: tuple[str, ...] = ("psnr", "ssim", "rfid")) -> dict[str, Any]:
    """PSNR (dB, the mean over images of each one's PSNR capped at 100 dB), SSIM (mean) and rFID of a batch.

    ``reconstructions`` are clamped to [-1, 1] first (as they would be saved). ``feature_net`` is needed for
    ``rfid`` (its fingerprint goes into the report). Raises ValueError for an unknown metric.
    """
    unknown = [m for m in metrics if m not in ("psnr", "ssim", "rfid")]
    if unknown:
        raise ValueError(f"unknown reconstruction metric {unknown[0]!r}; valid: psnr, ssim, rfid")
    recon = reconstructions.clamp(-1, 1)
    report: dict[str, Any] = {"images": len(originals)}
    if "psnr" in metrics:
        report["psnr"] = float(psnr(originals, recon).clamp(max=PSNR_CAP_DB).mean())
    if "ssim" in metrics:
        report["ssim"] = float(ssim(originals, recon).mean())
    if "rfid" in metrics:
        if feature_net is None:
            raise ValueError("rfid needs a feature network")
        report["rfid"] = rfid(originals, recon, feature_net)
        report["feature_net"] = network_fingerprint(feature_net)
    return report


def format_reconstruction_report(report: dict[str, Any]) -> str:
    """The report as aligned lines, for ``ebru eval``."""
    rows = []
    for key, label, fmt in (("psnr", "PSNR", "{:.2f} dB"), ("ssim", "SSIM", "{:.4f}"), ("rfid", "rFID", "{:.3f}")):
        if key in report:
            v = report[key]
            rows.append(f"{label:<6}{fmt.format(v) if math.isfinite(v) else v}")
    return "\n".join(rows)


__all__ = ["PSNR_CAP_DB", "format_reconstruction_report", "gaussian_window", "psnr", "reconstruction_report", "rfid",
           "ssim"]
