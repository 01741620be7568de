"""Latent diffusion (Rombach et al. 2022): a Denoiser over an autoencoder's latents, and sampling through it.

:class:`LatentDenoiser` is a Denoiser ``D(z, sigma, **cond)`` over *scaled* latents ``z = scale * E(x)`` (the
latent model's own), plus the autoencoder that maps images to latents and back: ``encode`` once (img2img,
inpainting), sample in latent space with any ebru sampler, ``decode`` once at the end. Because it is a
Denoiser, guidance and the editing transforms wrap it unchanged; :meth:`LatentDenoiser.sample` does the
bookkeeping (latent shape, encoding the init image, the mask brought to latent resolution, the known region
restored in pixel space at the end, and a NaN check that names the step).

The autoencoder is any object with ``encode(x)`` (returning a posterior with ``mode()``, or a tensor),
``decode(z)`` and an integer ``factor`` (``ebru.nets.Autoencoder`` is one); ``scale`` is its latent scale
factor (1 / std of training latents; Stable Diffusion's 0.18215). ``pad`` background (-1) pixels are added on
each side of an image before encoding and cropped off after decoding (an autoencoder trained on Fashion-MNIST
padded from 28 to 32 pixels has ``pad = 2``); image shapes are always the unpadded ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .sample import sample as sample_fn


class LatentDenoiser:
    """A Denoiser over scaled latents with the autoencoder that encodes and decodes (see the module docstring).

    Args:
        denoiser: the latent model, ``D(z, sigma, **cond) -> z0_hat`` over (B, C_z, H/f, W/f) scaled latents.
        autoencoder: ``encode`` / ``decode`` / ``factor`` (an ``ebru.nets.Autoencoder``).
        scale: the latent scale factor (> 0): ``z = scale * mode(E(x))``, ``x = decode(z / scale)``.
        pad: background pixels added on each side before encoding and cropped after decoding (>= 0).
    """

    def __init__(self, denoiser: Any, autoencoder: Any, scale: float, pad: int = 0):
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0 or scale == float("inf"):
            raise ValueError(f"the latent scale factor must be a positive number, got {scale!r}")
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        self.scale = float(scale)
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
        self.pad = pad
        self.factor = int(getattr(autoencoder, "factor", 1))
        for name in ("sigma_min", "sigma_max"):  # sample()'s defaults come from the latent model
            if hasattr(denoiser, name):
                setattr(self, name, getattr(denoiser, name))

    def __call__(self, z: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """The latent Denoiser: ``denoiser(z, sigma, **cond)``."""
        return self.denoiser(z, sigma, **cond)

    def latent_shape(self, image_shape: Sequence[int], channels: int) -> tuple[int, int, int]:
        """(channels, (H + 2 pad) / f, (W + 2 pad) / f) for images (C, H, W); ValueError in one line when f does
        not divide the padded H or W."""
        _, h, w = (int(s) + 2 * self.pad for s in image_shape)
        f = self.factor
        if h % f or w % f:
            padded = f" (padded by {self.pad} on each side)" if self.pad else ""
            raise ValueError(f"image size {h - 2 * self.pad}x{w - 2 * self.pad}{padded} is not divisible by the "
                             f"autoencoder's factor f={f}")
        return (channels, h // f, w // f)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Scaled latents ``scale * mode(E(pad(x)))`` of images (B, C, H, W) in [-1, 1]."""
        self.latent_shape(x.shape[1:], 1)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=-1.0)
        post = self.autoencoder.encode(x)
        return self.scale * (post if isinstance(post, Tensor) else post.mode())

    @torch.no_grad()
    def decode(self, z: Tensor, preview: bool = False) -> Tensor:
        """Images ``D(z / scale)`` (B, C, H, W), padding cropped, from scaled latents; ValueError if ``z`` holds
        NaN or inf. ``preview``: decode with the autoencoder's tiny preview decoder (``decode_preview``, TAESD's
        role: cheap enough for every step's live preview) when it has one (its ``preview`` is not None)."""
        if not bool(torch.isfinite(z).all()):
            raise ValueError("the latents to decode hold NaN or inf values")
        cheap = preview and getattr(self.autoencoder, "preview", None) is not None
        x = (self.autoencoder.decode_preview if cheap else self.autoencoder.decode)(z / self.scale)
        p = self.pad
        return x[:, :, p:x.shape[2] - p, p:x.shape[3] - p] if p else x

    def sample(self, image_shape: Sequence[int], latent_channels: int, num: int, *, init: Tensor | None = None,
               mask: Tensor | None = None, callback: Any = None, **kwargs: Any) -> Tensor:
        """``num`` images of ``image_shape`` (C, H, W): sample latents with :func:`ebru.diffusion.sample`, decode once.

        ``init`` (num, C, H, W) is encoded once (img2img, or inpainting with ``mask`` (num, 1 or C, H, W), 1 =
        regenerate): the mask is brought to latent resolution by max-pooling over each f x f cell (a latent
        cell is regenerated if any of its pixels is), and the known pixels of ``init`` are restored in pixel
        space after decoding. ``kwargs`` go to :func:`ebru.diffusion.sample` (sampler, steps, seeds, guidance,
        strength, class labels, ...). Raises ValueError for a size f does not divide, and for NaN latents,
        naming the step where they appeared.
        """
        shape = (num, *self.latent_shape(image_shape, latent_channels))
        z_init = z_mask = None
        if init is not None:
            if tuple(init.shape) != (num, *map(int, image_shape)):
                raise ValueError(f"init has shape {tuple(init.shape)}, expected {(num, *image_shape)}")
            z_init = self.encode(init)
        if mask is not None:
            if init is None:
                raise ValueError("mask needs init: the image whose unmasked region is kept")
            m = mask.to(init.dtype).amax(dim=1, keepdim=True)
            if self.pad:  # the padding is background to keep
                m = F.pad(m, (self.pad,) * 4, value=0.0)
            z_mask = F.max_pool2d(m, self.factor) if self.factor > 1 else m

        def check(info: dict[str, Any]) -> None:
            if not bool(torch.isfinite(info["x"]).all()):
                raise ValueError(f"NaN or inf latents at sampling step {info['i'] + 1} "
                                 f"(sigma {float(info['sigma']):.4g}): the latent model diverged")
            if callback is not None:
                callback(info)

        z = sample_fn(self, shape, init=z_init, mask=z_mask, callback=check, **kwargs)
        x = self.decode(z)
        if mask is not None:
            regen = mask.to(x.device, x.dtype).amax(dim=1, keepdim=True)
            x = regen * x + (1 - regen) * init.to(x.device, x.dtype)
        return x


__all__ = ["LatentDenoiser"]
