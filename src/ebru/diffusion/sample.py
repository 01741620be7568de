"""``sample()``: one call from a Denoiser to samples, with per-sample seeds.

Sample ``i`` is drawn from its own generator seeded with ``seeds[i]`` (initial
noise and every stochastic step), so a given seed yields the same sample
whatever the batch size or its position in the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .defaults import SAMPLING
from .editing import Inpaint, img2img_start
from .guidance import ClassifierFreeGuidance, missing_uncond_message
from .samplers import SAMPLERS, Callback
from .steps import get_sigmas
from .tensors import check_finite_number, randn_like, seed_generators


def _progress_callback(total: int, desc: str, user: Callback) -> tuple[Callback, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def cb(info: dict[str, Any]) -> None:
        bar.update(1)
        if user is not None:
            user(info)

    return cb, bar.close


def sample(
    denoiser,
    shape: Sequence[int],
    *,
    sampler: str | Callable[..., Tensor] = SAMPLING.sampler,
    steps: int = SAMPLING.steps,
    schedule: str | Callable[..., Tensor] = SAMPLING.schedule,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    seeds: Sequence[int] | int | None = None,
    noise: Tensor | None = None,
    sampler_opts: Mapping[str, Any] | None = None,
    schedule_opts: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callback = None,
    progress: bool = False,
    **cond: Any,
) -> Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` from ``denoiser``.

    Args:
        denoiser: ``D(x, sigma, **cond)``.
        shape: full batch shape ``(B, ...)``.
        sampler, steps, schedule, sigma_min, sigma_max: see ``SAMPLERS`` and ``SCHEDULES``;
            ``steps`` counts schedule intervals (NFE depends on the sampler) and must be
            an integer >= 1. Defaults come from ``ebru.diffusion.defaults.SAMPLING``
            (dpmpp_2m, 20, karras). The sigma range defaults to the denoiser's
            ``sigma_min``/``sigma_max`` attributes (set by :func:`vp_denoiser`), else
            ``SAMPLING.sigma_min``/``sigma_max`` (EDM's 0.002 and 80). Only ``None``
            selects a default: 0, NaN or a wrong type raises ValueError.
        seeds: one integer per sample, or a first seed (then ``seed, seed+1, ...``);
            default ``0..B-1``.
        noise: optional (B, ...) unit-variance initial noise of ``shape`` (e.g. a watermarked draw,
            :meth:`ebru.provenance.GaussianShading.noise`) used instead of the seeded draw; the sampler
            starts from ``noise * sigma_max``. The seeded draw is still made and discarded, so every
            later draw from the per-sample generators (stochastic steps, inpainting's own noise) is
            the same as without ``noise``. Raises ValueError for another shape or a non-finite entry.
        guidance_scale, uncond, guidance_interval: classifier-free guidance
            (see :class:`~ebru.diffusion.guidance.ClassifierFreeGuidance`); scale ``None``
            (default): no guidance. Without ``uncond`` the unconditional pass drops
            ``**cond`` (the model's null condition); a scale other than 1 with neither
            ``uncond`` nor ``**cond`` raises ValueError.
        init, strength: img2img (SDEdit) from ``init`` at ``strength``.
        mask: with ``init``, inpaint where ``mask`` is 1 and keep ``init`` where it is 0.
        callback: called after every step with a dict (i, x, sigma, sigma_next, denoised).
        progress: show a progress bar.
        **cond: conditioning passed to the denoiser (e.g. ``class_labels``).

    Returns a tensor of ``shape`` and ``dtype`` on ``device``. Raises ValueError for
    a bad argument (unknown names list the valid choices) before any sampling.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    batch = shape[0]
    if seeds is None:
        seeds = list(range(batch))
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds, seeds + batch))
    seeds = list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    step_fn = SAMPLERS.resolve(sampler)
    sigma_min = getattr(denoiser, "sigma_min", SAMPLING.sigma_min) if sigma_min is None else sigma_min
    sigma_max = getattr(denoiser, "sigma_max", SAMPLING.sigma_max) if sigma_max is None else sigma_max
    sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max, **(schedule_opts or {})).to(device)
    gens = seed_generators(seeds)
    seeded = randn_like(torch.empty(shape, dtype=dtype), gens).to(device)
    if noise is None:
        noise = seeded
    else:
        if not isinstance(noise, Tensor):
            raise ValueError(f"noise must be a tensor of shape {shape}, got {type(noise).__name__}")
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise must be finite (it holds NaN or an infinity)")
        noise = noise.to(device, dtype)

    d = denoiser
    if guidance_scale is not None:
        d = ClassifierFreeGuidance(d, guidance_scale, uncond=uncond, interval=guidance_interval)
        if d.scale != 1.0 and uncond is None and not cond:  # fail before sampling, not at its first step
            raise ValueError(missing_uncond_message(d.scale))
    if mask is not None and init is None:
        raise ValueError("mask needs init: the image whose unmasked region is kept")
    strength = check_finite_number("strength", strength)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if init is not None:
        init = init.to(device, dtype)
        if tuple(init.shape) != shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
        if mask is not None:
            d = Inpaint(d, init, mask.to(device), noise=randn_like(init, gens))
        if strength < 1.0 or mask is None:
            x, sigmas = img2img_start(init, sigmas, strength, noise)
        else:
            x = noise * sigmas[0].to(dtype)
    else:
        x = noise * sigmas[0].to(dtype)
    if cond:
        d = functools.partial(d, **cond)

    close = None
    if progress:
        callback, close = _progress_callback(len(sigmas) - 1, getattr(step_fn, "__name__", "sample"), callback)
    try:
        with torch.no_grad():
            return step_fn(d, x, sigmas, generator=gens, callback=callback, **(sampler_opts or {}))
    finally:
        if close is not None:
            close()
