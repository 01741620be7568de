"""Autoencoder packages: load one through ``ebru.load``, reconstruct images, and score it (``ebru eval AE_DIR``).

An autoencoder package (``kind = "autoencoder"``, written by :mod:`ebru.tasks.autoencoder`) holds the network
config with its latent ``scale_factor``, the ``pad`` its training data got, and the EMA weights.
:func:`reconstruct` pads images as in training, encodes them to the posterior mode, decodes and crops the
padding off again, so the metrics compare images of the data's own size. :func:`evaluate_autoencoder`
reports PSNR, SSIM and rFID (:mod:`ebru.eval.reconstruction`) on held-out images (Fashion-MNIST's test split
by default), rFID with ebru's Fashion-MNIST feature network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ebru.data import ImageDataset
from ebru.eval.evaluate import resolve_feature_net
from ebru.eval.features import expected_input_shape
from ebru.eval.reconstruction import reconstruction_report
from ebru.nets import Autoencoder
from ebru.tasks.autoencoder import load_training_images
from ebru.tasks.latent import LatentSpace
from ebru.trust import LoadedModel

RECONSTRUCTION_METRICS = ("psnr", "ssim", "rfid")


def load_autoencoder(model_dir: str | os.PathLike | LoadedModel, device: str | torch.device = "cpu",
                     **load_options: Any) -> tuple[Autoencoder, dict[str, Any]]:
    """Verify (``ebru.load``) and build an autoencoder package; returns (the network in eval mode, its config).

    ``load_options`` go to ``ebru.load``. Raises ValueError, naming the file, for a package of another kind.
    """
    space, model = LatentSpace.from_autoencoder_package(model_dir, device, **load_options)  # one check, one build
    return space.autoencoder, model.config


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: Tensor, pad: int = 0, batch: int = 250, progress: bool = False) -> Tensor:
    """Reconstructions (N, C, H, W) of ``images`` (N, C, H, W) in [-1, 1], clamped to [-1, 1].

    Each batch is padded by ``pad`` background (-1) pixels per side, encoded to the posterior mode, decoded,
    and cropped back to H x W.
    """
    device = next(ae.parameters()).device
    out = []
    for i in tqdm(range(0, len(images), batch), desc="reconstruct", disable=not progress, leave=False):
        x = F.pad(images[i:i + batch].to(device).float(), (pad, pad, pad, pad), value=-1.0)
        r = ae.decode(ae.encode(x).mode())
        out.append(r[:, :, pad:r.shape[2] - pad, pad:r.shape[3] - pad].clamp(-1, 1).cpu())
    return torch.cat(out)


def evaluate_autoencoder(model_dir: str | os.PathLike | LoadedModel, *, data: str | ImageDataset = "fashion-mnist:test",
                         n: int | None = 2000, metrics: tuple[str, ...] = RECONSTRUCTION_METRICS,
                         feature_net: nn.Module | None = None, batch: int = 250, device: str = "cpu",
                         progress: bool = False, **load_options: Any) -> dict[str, Any]:
    """Score an autoencoder package on held-out images: PSNR, SSIM, rFID (see the module docstring).

    ``data``: a data set spec (default Fashion-MNIST's test split) or an ``ImageDataset``; ``n``: its first ``n``
    images (None: all).
    rFID needs images the feature network takes (1x28x28 for ebru's); for others ask for psnr,ssim.
    Returns the report dict (also the figures' settings: images, data, timing).
    """
    bad = [m for m in metrics if m not in RECONSTRUCTION_METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r} for an autoencoder; valid: {', '.join(RECONSTRUCTION_METRICS)}")
    ae, config = load_autoencoder(model_dir, device, **load_options)
    ds = data if isinstance(data, ImageDataset) else load_training_images(data)  # Fashion scenes specs too
    images = ds.tensors()[0]
    if n is not None:
        images = images[:n]
    if tuple(images.shape[1:]) != tuple(config.get("data_image_shape", images.shape[1:])):
        raise ValueError(f"the autoencoder was trained on {'x'.join(map(str, config['data_image_shape']))} images, "
                         f"and {data} has {'x'.join(map(str, images.shape[1:]))}")
    net = None
    if "rfid" in metrics:
        net = resolve_feature_net(feature_net)
        want = expected_input_shape(net)
        if want is not None and want != tuple(images.shape[1:]):
            raise ValueError(f"rFID uses a feature network that takes {'x'.join(map(str, want))} images, and these "
                             f"are {'x'.join(map(str, images.shape[1:]))}: ask for --metrics psnr,ssim")
    t0 = time.perf_counter()
    recon = reconstruct(ae, images, config.get("pad", 0), batch=batch, progress=progress)
    seconds = time.perf_counter() - t0
    report = reconstruction_report(images, recon, feature_net=net, metrics=tuple(metrics))
    report.update({"model": str(Path(getattr(model_dir, "path", model_dir))), "kind": "autoencoder",
                   "data": ds.source if isinstance(data, ImageDataset) else data,
                   "factor": config.get("factor"), "latent_shape": config.get("latent_shape"),
                   "scale_factor": config.get("scale_factor"), "reconstruct_images_per_s": len(images) / seconds})
    return report


__all__ = ["RECONSTRUCTION_METRICS", "evaluate_autoencoder", "load_autoencoder", "reconstruct"]
