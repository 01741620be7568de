"""Training: noise-level distributions, loss weightings and the denoising loss.

Every loss here is written on the denoiser output, ``lambda(sigma) * |D(x0 + sigma n, sigma) - x0|^2``,
whatever the network predicts; the weightings below say how each classic
objective looks in that form (SNR = 1 / sigma^2 in the VE view):

- ``edm``: lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (Karras et al. 2022).
- ``snr``: lambda = 1 / sigma^2, i.e. DDPM's L_simple on eps.
- ``min_snr``: lambda = min(SNR, gamma) (Hang et al. 2023), default gamma = 5.
- ``v``: lambda = SNR + 1, i.e. plain MSE on v (sigma_data = 1).
- ``uniform``: lambda = 1, plain MSE on x0.
- ``flow``: lambda = ((1 + sigma) / sigma)^2 = 1 / t^2, i.e. plain MSE on the rectified-flow
  velocity ``v = eps - x0`` (Liu et al. 2022; SD3): ``x0_hat - x0 = -t (v_hat - v)``.

Options go by keyword (``WEIGHTINGS["min_snr"](sigma, gamma=2)`` or ``denoising_loss(...,
weighting_opts={"gamma": 2})``): ``edm`` takes ``sigma_data``, ``min_snr`` takes ``gamma``,
the others none. An unknown option key or an invalid value raises ValueError, as unknown
config keys do; pass ``sigma_data`` only to ``edm``.

SD3's logit-normal timestep distribution ``logit(t) ~ N(m, s^2)`` is exactly
``LogNormalSigma(p_mean=m, p_std=s)``, since ``logit(t) = ln(t / (1 - t)) = ln sigma``; its
resolution shift ``t' = a t / (1 + (a - 1) t)`` is ``sigma' = a sigma``, i.e. ``shift=a`` here
(the same distribution as ``p_mean = m + ln a``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ebru.checks import finite_number, unknown_key_message

from .noise import vp_continuous_sigma
from .registry import Registry
from .tensors import check_finite_number, sigma_batch, sigma_view

WEIGHTINGS = Registry("loss weighting")


def _register_weighting(name: str):
    """Register ``fn(sigma, *, option=default, ...)`` under ``name``, refusing unknown option keys.

    The registered callable takes ``(sigma, **options)``; an option the weighting does not
    have raises ValueError naming it, the nearest valid one and all of them. Its
    ``options`` attribute lists the valid keys.
    """

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        valid = tuple(list(inspect.signature(fn).parameters)[1:])

        @functools.wraps(fn)
        def checked(sigma: Tensor, **options: Any) -> Tensor:
            for key in options:
                if key not in valid:
                    where = f"{name} weighting option"
                    if not valid:
                        raise ValueError(f"unknown {where} key {key!r}; the {name} weighting takes no options")
                    raise ValueError(unknown_key_message(key, valid, where))
            return fn(sigma, **options)

        return WEIGHTINGS.register(name, checked, options=valid)

    return add


@_register_weighting("edm")
def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """``(sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2`` (Karras et al. 2022, eq. 8). ``sigma_data`` > 0."""
    sd = finite_number("edm weighting option sigma_data", sigma_data, positive=True)
    return (sigma**2 + sd**2) / (sigma * sd) ** 2


@_register_weighting("snr")
def snr_weight(sigma: Tensor) -> Tensor:
    """``1 / sigma^2``: DDPM's L_simple on eps (Ho et al. 2020). No options."""
    return sigma**-2


@_register_weighting("min_snr")
def min_snr_weight(sigma: Tensor, gamma: float = 5.0) -> Tensor:
    """``min(1 / sigma^2, gamma)`` (Hang et al. 2023, Min-SNR-gamma on x0). ``gamma`` > 0."""
    gamma = finite_number("min_snr weighting option gamma", gamma, positive=True)
    return (sigma**-2).clamp(max=gamma)


@_register_weighting("v")
def v_weight(sigma: Tensor) -> Tensor:
    """``1 / sigma^2 + 1``: plain MSE on v with sigma_data = 1 (Salimans & Ho 2022). No options."""
    return sigma**-2 + 1


@_register_weighting("flow")
def flow_weight(sigma: Tensor) -> Tensor:
    """``((1 + sigma) / sigma)^2 = 1 / t^2``: plain MSE on the rectified-flow velocity. No options.

    With ``t = sigma / (1 + sigma)`` and ``v = eps - x0``, any x0-prediction is ``x0_hat = x_t - t v_hat``,
    so ``lambda |x0_hat - x0|^2 = |v_hat - v|^2`` exactly (Liu et al. 2022; Esser et al. 2024, eq. 2-3).
    """
    return ((1 + sigma) / sigma) ** 2


@_register_weighting("uniform")
def uniform_weight(sigma: Tensor) -> Tensor:
    """``1``: plain MSE on x0. No options."""
    return torch.ones_like(sigma)


def _uniform(n: int, generator: torch.Generator | None, stratified: bool) -> Tensor:
    """n uniforms in (0, 1); stratified: one per interval [i/n, (i+1)/n), shuffled."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if stratified:
        u = (torch.randperm(n, generator=generator).to(torch.float64) + u) / n
    return u


class LogNormalSigma:
    """EDM's training distribution: ln sigma ~ N(p_mean, p_std^2) (EDM: -1.2, 1.2; EDM2: -0.4, 1.0).

    It is also SD3's logit-normal distribution of the flow time ``t = sigma / (1 + sigma)``:
    ``logit(t) = ln sigma``, so ``logit-normal(m, s)`` (Esser et al. 2024, sec. 3.1; their best,
    ``rf/lognorm(0.00, 1.00)``) is ``LogNormalSigma(m, s)``.

    Args:
        p_mean, p_std: mean and standard deviation of ln sigma (``p_std`` > 0).
        stratified: one uniform per interval ``[i/n, (i+1)/n)`` of the inverse CDF, shuffled.
        shift: SD3's resolution shift ``t' = shift t / (1 + (shift - 1) t)`` (sec. 5.3.2), which is
            ``sigma' = shift * sigma``: the same distribution as ``p_mean + ln(shift)``. Default 1
            (none); must be > 0.

    Calling it with ``(n, generator)`` returns n float64 sigmas, shape (n,). Raises ValueError for a
    non-finite ``p_mean`` or a ``p_std`` or ``shift`` that is not a finite number > 0.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, stratified: bool = False, shift: float = 1.0):
        self.p_mean = check_finite_number("p_mean", p_mean)
        self.p_std = check_finite_number("p_std", p_std, positive=True)
        self.shift = check_finite_number("shift", shift, positive=True)
        self.stratified = stratified

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = _uniform(n, generator, self.stratified).clamp(1e-12, 1 - 1e-12)
        z = math.sqrt(2) * torch.erfinv(2 * u - 1)
        return (self.p_mean + math.log(self.shift) + self.p_std * z).exp()


class VPUniformTSigma:
    """Continuous VP training: t ~ U(eps_t, 1), sigma = sigma_VP(t) (Song et al. 2021)."""

    def __init__(self, beta_min: float = 0.1, beta_d: float = 19.9, eps_t: float = 1e-5, stratified: bool = False):
        self.beta_min, self.beta_d, self.eps_t = beta_min, beta_d, eps_t
        self.stratified = stratified

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = self.eps_t + (1 - self.eps_t) * _uniform(n, generator, self.stratified)
        return vp_continuous_sigma(t, self.beta_min, self.beta_d)


class DiscreteSigma:
    """DDPM training: a timestep drawn uniformly from a table of sigmas (see noise.alphas_cumprod_to_sigmas)."""

    def __init__(self, sigmas: Tensor, stratified: bool = False):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        self.stratified = stratified

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = _uniform(n, generator, self.stratified)
        idx = (u * len(self.sigmas)).long().clamp(max=len(self.sigmas) - 1)
        return self.sigmas[idx]


def denoising_loss(
    denoiser: Callable[..., Tensor],
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    weighting: str | Callable[..., Tensor] = "edm",
    weighting_opts: dict[str, Any] | None = None,
    **cond: Any,
) -> Tensor:
    """Per-sample weighted denoising loss ``lambda(sigma) * mean |D(x0 + sigma n, sigma) - x0|^2``.

    ``weighting`` is a ``WEIGHTINGS`` name or a callable ``(sigma, **weighting_opts)``;
    ``weighting_opts`` are that weighting's options (``edm``: ``sigma_data``;
    ``min_snr``: ``gamma``; ``snr``, ``v``, ``flow``, ``uniform``: none).

    Returns a (B,) tensor; average it (or weight it further) to train. Raises
    ValueError for an unknown weighting or option key (naming the valid ones) and for
    an invalid option value (e.g. ``gamma <= 0``).
    """
    s = sigma_batch(sigma, x0)
    weight = WEIGHTINGS.resolve(weighting)(s, **(weighting_opts or {}))
    x = x0 + sigma_view(s, x0) * noise
    err = (denoiser(x, s, **cond) - x0) ** 2
    return weight * err.flatten(1).mean(1)
