"""Editing by intervening mid-process: img2img (SDEdit) and inpainting (with RePaint resampling).

- :func:`img2img_start` - SDEdit (Meng et al. 2022): noise a given image to an
  intermediate level and run only the tail of the schedule. ``strength`` in (0, 1]
  is the share of the schedule's steps that run (diffusers' semantics): 1 starts
  from pure noise, small values stay close to the image.
- :class:`Inpaint` - a Denoiser transform. ``mask`` is 1 where new content is
  generated and 0 where ``image`` is kept (diffusers' convention). Every call sees
  the known region re-noised to the current sigma and returns it exactly, so the
  final sample keeps the known pixels bit for bit.
- :func:`repaint` - RePaint (Lugmayr et al. 2022): after each step, jump back to the
  previous noise level ``resample - 1`` times so the generated region can
  harmonise with the known one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .samplers import SAMPLERS, Callback
from .tensors import Generator, check_finite_number, randn_like, sigma_view


def img2img_start(image: Tensor, sigmas: Tensor, strength: float, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(x_start, sigmas_tail)`` for SDEdit at ``strength``.

    The last ``int(n * strength)`` steps of the n-step schedule run, starting from
    ``image + sigmas_tail[0] * noise``.
    """
    strength = check_finite_number("strength", strength)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = len(sigmas) - 1
    k = min(int(n * strength), n)
    if k < 1:
        raise ValueError(f"strength {strength} with {n} steps runs no step; raise steps or strength")
    if noise.shape != image.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match image shape {tuple(image.shape)}")
    tail = sigmas[n - k:]
    return image + tail[0].to(image.dtype) * noise, tail


def _check_mask(mask: Tensor, image: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ValueError("mask must be a tensor")
    try:
        torch.broadcast_shapes(mask.shape, image.shape)
        if torch.broadcast_shapes(mask.shape, image.shape) != image.shape:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to image shape "
                         f"{tuple(image.shape)}") from None
    if bool(((mask < 0) | (mask > 1)).any()):
        raise ValueError("mask values must lie in [0, 1] (1 = generate, 0 = keep)")
    return mask.to(image.dtype)


class Inpaint:
    """Denoiser transform for inpainting: keep ``image`` where ``mask`` is 0.

    The known region is re-noised as ``image + sigma * noise`` before each call;
    ``noise`` is fixed per sample (the known region then follows its own exact
    ODE path) unless ``fresh_noise`` asks for a new draw every call, as RePaint does.
    """

    def __init__(self, denoiser, image: Tensor, mask: Tensor, noise: Tensor | None = None,
                 generator: Generator = None, fresh_noise: bool = False):
        self.denoiser = denoiser
        self.image = image
        self.mask = _check_mask(mask, image)
        self.generator = generator
        self.fresh_noise = fresh_noise
        if noise is not None and noise.shape != image.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match image shape {tuple(image.shape)}")
        self.noise = noise if noise is not None else (None if fresh_noise else randn_like(image, generator))

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        if x.shape != self.image.shape:
            raise ValueError(f"sample shape {tuple(x.shape)} does not match image shape {tuple(self.image.shape)}")
        noise = randn_like(self.image, self.generator) if self.fresh_noise else self.noise
        known = self.image.to(x.dtype) + sigma_view(sigma, x) * noise.to(x.dtype)
        x_in = self.mask * x + (1 - self.mask) * known
        d = self.denoiser(x_in, sigma, **cond)
        return self.mask * d + (1 - self.mask) * self.image.to(d.dtype)


def repaint(denoiser, image: Tensor, mask: Tensor, x: Tensor, sigmas: Tensor, *, sampler: str = "ddpm",
            resample: int = 10, generator: Generator = None, callback: Callback = None, **sampler_opts) -> Tensor:
    """RePaint-style inpainting: each step is repeated ``resample`` times with a jump back in between.

    Each step runs ``SAMPLERS[sampler]`` over one interval with the :class:`Inpaint`
    transform (fresh known-region noise, as in RePaint); between repeats the
    sample is re-noised from sigma_{i+1} back to sigma_i. Single-step samplers
    (ddpm, ddim, euler, heun) are meant here: multistep history does not carry
    over the jumps. ``resample=1`` is plain replacement inpainting.
    """
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an integer >= 1, got {resample!r}")
    step = SAMPLERS[sampler]
    d = Inpaint(denoiser, image, mask, generator=generator, fresh_noise=True)
    for i in range(len(sigmas) - 1):
        pair = sigmas[i:i + 2]
        reps = resample if bool(pair[1] > 0) else 1
        for r in range(reps):
            x_new = step(d, x, pair, generator=generator, **sampler_opts)
            x = x_new + (pair[0] ** 2 - pair[1] ** 2).sqrt() * randn_like(x_new, generator) if r < reps - 1 else x_new
        if callback is not None:
            callback({"i": i, "x": x, "sigma": pair[0], "sigma_next": pair[1], "denoised": x})
    return x
