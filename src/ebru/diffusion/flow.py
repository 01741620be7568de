"""Rectified flow (flow matching) in ebru's coordinates: the t <-> sigma map, SD3's shift, velocities, straightness.

Rectified flow (Liu et al. 2022; Lipman et al. 2023; SD3, Esser et al. 2024) noises data along straight
lines, ``x_t = (1 - t) x0 + t eps`` for t in [0, 1], and learns the velocity ``v = eps - x0``. Dividing
by ``1 - t`` gives ebru's variance-exploding variable::

    x = x_t / (1 - t) = x0 + sigma eps,    sigma = t / (1 - t),    t = sigma / (1 + sigma)

so a flow model is one more Denoiser (``Precond(net, "flow")``), trained with the ``flow`` loss
weighting and sampled by every ebru sampler; its probability-flow ODE ``dx_t/dt = v(x_t, t)`` is
ebru's ``dx/dsigma = (x - D(x, sigma)) / sigma`` in other coordinates. t = 1 (pure noise) is
sigma = inf: ebru starts at ``sigma_max`` (80 by default, t = 80/81), dropping the ``(1 - t) x0``
term of 1/81 of the data, as it already does for VP models.

- :func:`sigma_to_t`, :func:`t_to_sigma`: the map above.
- :func:`shift_t`: SD3's resolution shift ``t' = a t / (1 + (a - 1) t)`` (sec. 5.3.2), which is
  ``sigma' = a sigma`` (the ``shift`` option of :class:`~ebru.diffusion.loss.LogNormalSigma` and of the
  ``flow`` schedule).
- :func:`flow_velocity`: ``v(x_t, t)`` of any Denoiser (EDM, VP or flow).
- :func:`straightness`: how far a sampler's ODE paths bend from their chords (Liu et al. 2022, eq. 7).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .samplers import SAMPLERS
from .tensors import check_finite_number, sigma_batch, sigma_view


def sigma_to_t(sigma: Tensor | float) -> Tensor | float:
    """Flow time ``t = sigma / (1 + sigma)`` in [0, 1] of a noise level ``sigma >= 0`` (``inf`` -> 1).

    Takes and returns a Python number or a tensor of any shape.
    """
    if isinstance(sigma, Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
    sigma = float(sigma)
    return 1.0 if sigma == float("inf") else sigma / (1 + sigma)


def t_to_sigma(t: Tensor | float) -> Tensor | float:
    """Noise level ``sigma = t / (1 - t)`` of a flow time t in [0, 1] (t = 1 -> ``inf``).

    Takes and returns a Python number or a tensor of any shape. Raises ValueError for a number outside [0, 1].
    """
    if isinstance(t, Tensor):
        return t / (1 - t)
    t = check_finite_number("t", t)
    if not 0 <= t <= 1:
        raise ValueError(f"flow time t must be in [0, 1], got {t}")
    return float("inf") if t == 1 else t / (1 - t)


def shift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """SD3's timestep shift ``t' = shift t / (1 + (shift - 1) t)`` (Esser et al. 2024, sec. 5.3.2).

    It is exactly ``sigma' = shift * sigma`` under ``sigma = t / (1 - t)``; ``shift`` > 1 moves steps (or
    training) toward more noise (SD3 uses ``sqrt(m / n)`` from a resolution of n to m pixels, 3.0 at 1024^2),
    and ``shift = 1`` is the identity. Raises ValueError unless ``shift`` is a finite number > 0.
    """
    a = check_finite_number("shift", shift, positive=True)
    return a * t / (1 + (a - 1) * t)


def flow_velocity(denoiser: Callable[..., Tensor], x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
    """The rectified-flow velocity ``v(x_t, t) = eps_hat - x0_hat`` of any Denoiser, at ebru's ``x`` and ``sigma``.

    ``x`` is ebru's variable at noise level ``sigma > 0`` (``x_t = x / (1 + sigma)``); with
    ``D = denoiser(x, sigma)``, ``v = (x - (1 + sigma) D) / sigma``, the ``dx_t/dt`` of the ODE in t.
    Shape and dtype of ``x``.
    """
    s = sigma_view(sigma_batch(sigma, x), x)
    return (x - (1 + s) * denoiser(x, sigma, **cond).to(x.dtype)) / s


def straightness(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    sampler: str | Callable[..., Tensor] = "euler",
    **cond: Any,
) -> Tensor:
    """How far the ODE paths a sampler draws bend from their chords, in flow time t (Liu et al. 2022, eq. 7).

    ``S = (1/T) int_0^T |(x_T - x_0) / T - v(x_t, t)|^2 dt`` along each path, where ``x_t`` is the
    path in flow coordinates (``x / (1 + sigma)``), T = ``t(sigmas[0])`` its start (``sigma_max``
    stands in for t = 1) and ``v`` the denoiser's velocity (:func:`flow_velocity`). The integral is the
    sampler's own evaluations, one per step, each weighted by the t-interval it steers (a left Riemann
    sum in t): no extra network calls. S = 0 exactly when every path is a straight line followed at
    constant speed (a point mass of data, or a perfect reflow); the squared norm is averaged over the
    dimensions of a sample (multiply by their number for Liu et al.'s sum).

    Works for any Denoiser, so an EDM or VP model is measured the same way as a flow model.

    Cost: the sampler's own run (its ``nfe(n)`` denoiser calls, e.g. one per step for Euler, under
    ``torch.no_grad()``) plus float64 arithmetic on the samples; on a 1.6M-parameter U-Net the extra work is
    ~1 % of the sampling time. It keeps one float64 velocity (B, ...) per step until the end.

    Args:
        denoiser: ``D(x, sigma, **cond)``.
        x: (B, ...) starting points at noise level ``sigmas[0]`` (e.g. ``sigma_max * noise``).
        sigmas: the sampler's (n + 1,) levels, ending at 0 (any ``SCHEDULES`` entry).
        sampler: a deterministic ``SAMPLERS`` name or sampler callable (default ``euler``).
        **cond: conditioning for the denoiser (e.g. ``class_labels``).

    Returns a float64 tensor (B,): S of each path.

    Raises ValueError for an unknown or stochastic sampler (its paths are not ODE paths) or a
    ``sigmas`` that does not start above 0.
    """
    step_fn = SAMPLERS.resolve(sampler)
    if getattr(step_fn, "stochastic", False):
        raise ValueError(f"straightness needs a deterministic sampler; {sampler!r} is stochastic "
                         f"(choose one of {', '.join(k for k, f in SAMPLERS.items() if not f.stochastic)})")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not float(sigmas[0]) > 0:
        raise ValueError("sigmas must be a 1-D array of at least 2 levels starting above 0")
    d = functools.partial(denoiser, **cond) if cond else denoiser
    steps: list[tuple[float, Tensor]] = []  # (t-interval of a step, the velocity v (B, ...) float64 it steers with)
    state = {"x": x}

    def record(info: dict[str, Any]) -> None:
        s, s_next = float(info["sigma"]), float(info["sigma_next"])
        v = (state["x"].to(torch.float64) - (1 + s) * info["denoised"].to(torch.float64)) / s  # flow_velocity
        steps.append((sigma_to_t(s) - sigma_to_t(s_next), v))
        state["x"] = info["x"]

    with torch.no_grad():
        end = step_fn(d, x, sigmas.to(x.device), callback=record).to(torch.float64)
    t_start, t_end = sigma_to_t(float(sigmas[0])), sigma_to_t(float(sigmas[-1]))
    x_start = x.to(torch.float64) / (1 + float(sigmas[0]))
    chord = (x_start - end / (1 + float(sigmas[-1]))) / (t_start - t_end)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for dt, v in steps:
        total += dt * (chord - v).pow(2).flatten(1).mean(1)
    return total / (t_start - t_end)
