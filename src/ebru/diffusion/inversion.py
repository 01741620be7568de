"""Probability-flow ODE inversion: from an image back to the noise that a deterministic sampler maps to it.

:func:`invert` runs the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al.
2022, eq. 3 with s = 1) *upwards*: the image is taken as ``x`` at the lowest nonzero level of the
sampling grid (``sigma_min``), and the solver steps through the same grid in reverse, up to
``sigma_max``. The result divided by ``sigma_max`` is the estimate of the unit-variance noise that
:func:`ebru.diffusion.sample` starts from (``x = noise * sigma_max``). This is "DDIM inversion"
(Song et al. 2021, sec. 4.3; Mokady et al. 2023), which Gaussian Shading (Yang et al. 2024) and
Tree-Ring (Wen et al. 2023) use to read a watermark from the initial noise.

Why not run :data:`~ebru.diffusion.samplers.SAMPLERS` on an ascending grid: they refuse one
(``check_sigmas``), and each special-cases the step to ``sigma = 0``. The inversion steps are written
here instead, one per first- or second-order method:

- ``ddim`` / ``euler`` (the same step in ebru's variance-exploding view, ``eta = 0``):
  ``x' = x + (s' - s) (x - D(x, s)) / s`` with ``s' > s``. The slope is taken at the *lower* level
  (the point we have), which is the standard DDIM inversion approximation; it is first order.
- ``heun``: the same predictor, corrected with the slope at the upper level (EDM's Algorithm 1 run
  upwards). Second order, 2 denoiser calls per step.

A grid of ``steps`` sampling intervals has ``steps`` nonzero levels, so the inversion takes
``steps - 1`` steps (the sampler's last step, ``sigma_min -> 0``, returns ``D(x, sigma_min)`` and is
not inverted: at ``sigma_min = 0.002`` the difference is far below image precision).

The round trip sample -> invert is not exact with finitely many steps even on an exact denoiser:
the sampler and the inversion evaluate the slope at different ends of each interval. For a Gaussian
data distribution both are linear maps with closed forms (see ``tests/diffusion/test_inversion.py``),
and the error shrinks as the number of steps grows (order 1 for ``ddim``, 2 for ``heun``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .defaults import SAMPLING
from .registry import Registry
from .samplers import Callback
from .steps import get_sigmas
from .tensors import sigma_batch

__all__ = ["INVERTERS", "inversion_sigmas", "invert"]

#: inversion steppers by the name of the sampler they reverse:
#: ``fn(denoiser, x, sigmas_ascending, *, callback) -> x`` at ``sigmas_ascending[-1]``.
INVERTERS = Registry("inversion sampler")


def _call(denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    return denoiser(x, sigma_batch(sigma, x)).to(x.dtype)


def _report(callback: Callback, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def _euler_up(denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback = None) -> Tensor:
    """First-order (DDIM / Euler) inversion: ``x' = x + (s' - s) (x - D(x, s)) / s`` for ascending s -> s'."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        x = x + (s_next - s) * (x - denoised) / s
        _report(callback, i, x, s, s_next, denoised)
    return x


INVERTERS.register("ddim", _euler_up, nfe=lambda n: n - 1, order=1)
INVERTERS.register("euler", _euler_up, nfe=lambda n: n - 1, order=1)


@INVERTERS.register("heun", nfe=lambda n: 2 * (n - 1), order=2)
def _heun_up(denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback = None) -> Tensor:
    """Second-order (Heun) inversion: EDM's Algorithm 1 step taken from s up to s'."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        d = (x - denoised) / s
        x_pred = x + (s_next - s) * d
        d_next = (x_pred - _call(denoiser, x_pred, s_next)) / s_next
        x = x + (s_next - s) * (d + d_next) / 2
        _report(callback, i, x, s, s_next, denoised)
    return x


def inversion_sigmas(steps: int, sigma_min: float, sigma_max: float,
                     schedule: str | Callable[..., Tensor] = SAMPLING.schedule, **schedule_opts: Any) -> Tensor:
    """The ascending grid an inversion walks: the sampling grid's nonzero levels, reversed.

    Returns a float64 tensor of ``steps`` levels, ``sigma_min`` first (for ``steps >= 2``) and
    ``sigma_max`` last. Raises ValueError for a bad schedule, step count or range (as ``get_sigmas``).
    """
    return get_sigmas(schedule, steps, sigma_min, sigma_max, **schedule_opts)[:-1].flip(0)


def invert(denoiser, x0: Tensor, *, sampler: str | Callable[..., Tensor] = "ddim", steps: int = SAMPLING.steps,
           schedule: str | Callable[..., Tensor] = SAMPLING.schedule, sigma_min: float | None = None,
           sigma_max: float | None = None, schedule_opts: Mapping[str, Any] | None = None,
           callback: Callback = None, **cond: Any) -> Tensor:
    """Estimate the unit-variance initial noise from which a deterministic sampler produced ``x0``.

    Args:
        denoiser: ``D(x, sigma, **cond)``, the model that generated ``x0`` (inversion with another
            model gives another noise).
        x0: (B, ...) images or latents, as the sampler returned them (images in [-1, 1]).
        sampler: the inversion step (see :data:`INVERTERS`): ``"ddim"`` (= ``"euler"``, first order,
            the usual choice) or ``"heun"`` (second order, twice the denoiser calls), or a callable
            with the signature of the :data:`INVERTERS` entries.
        steps, schedule, sigma_min, sigma_max, schedule_opts: the sampling grid, as for
            :func:`ebru.diffusion.sample`; defaults from ``SAMPLING`` and the denoiser's own
            ``sigma_min``/``sigma_max`` attributes when it has them. The inversion walks the grid's
            ``steps`` nonzero levels upwards (:func:`inversion_sigmas`), ``steps - 1`` steps.
        callback: called after every step with a dict (i, x, sigma, sigma_next, denoised); here
            ``sigma_next > sigma``.
        **cond: conditioning passed to the denoiser (e.g. ``class_labels``).

    Returns:
        ``x(sigma_max) / sigma_max``: a tensor of ``x0``'s shape, float32 for half-precision input,
        else ``x0``'s dtype. For a perfect inversion of a sample of :func:`~ebru.diffusion.sample`
        it is that sample's initial noise.

    Raises:
        ValueError: an unknown sampler (naming the nearest), or a bad step count or sigma range
            (``steps`` must be an integer >= 2: one level leaves nothing to integrate).
    """
    step_fn = INVERTERS.resolve(sampler)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps == 1:
        raise ValueError("steps must be >= 2 for an inversion: a 1-step grid has a single nonzero level")
    sigma_min = getattr(denoiser, "sigma_min", SAMPLING.sigma_min) if sigma_min is None else sigma_min
    sigma_max = getattr(denoiser, "sigma_max", SAMPLING.sigma_max) if sigma_max is None else sigma_max
    if not isinstance(x0, Tensor) or x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a (B, ...) tensor with B >= 1, got {getattr(x0, 'shape', type(x0))}")
    sigmas = inversion_sigmas(steps, sigma_min, sigma_max, schedule, **(schedule_opts or {})).to(x0.device)
    x = x0.float() if x0.dtype in (torch.float16, torch.bfloat16) else x0
    d = functools.partial(denoiser, **cond) if cond else denoiser
    with torch.no_grad():
        x = step_fn(d, x, sigmas, callback=callback)
    return x / sigmas[-1].to(x.dtype)
