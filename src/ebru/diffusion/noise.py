"""The forward (noising) process: VP and EDM noise schedules and the closed-form jump.

ebru works in the variance-exploding (EDM) convention ``x = x0 + sigma * eps``.
A variance-preserving (VP/DDPM) process ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
is the same process seen through a scale: dividing by ``sqrt(abar)`` gives a VE
variable with ``sigma = sqrt((1 - abar) / abar)``. This module holds both views and
the conversions between them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .tensors import check_finite_number, sigma_view

# The smallest alpha-bar kept by a zero-terminal-SNR schedule when it is turned into
# sigmas (alpha-bar = 0 would be sigma = inf); diffusers makes the same choice.
ZERO_SNR_ALPHA_BAR = 2.0**-24


def _check_steps(T: int) -> int:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"number of timesteps must be an integer >= 1, got {T!r}")
    return T


def vp_linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                             zero_terminal_snr: bool = False) -> Tensor:
    """DDPM's linear beta schedule (Ho et al. 2020): alpha-bar for t = 1..T (float64).

    ``zero_terminal_snr`` applies :func:`rescale_zero_terminal_snr` (train such
    models with v- or x0-prediction: eps cannot recover x0 from pure noise).
    """
    _check_steps(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    return rescale_zero_terminal_snr(abar) if zero_terminal_snr else abar


def vp_cosine_alphas_cumprod(T: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                             zero_terminal_snr: bool = False) -> Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021), betas clipped at ``max_beta``; see also ``zero_terminal_snr``."""
    _check_steps(T)

    def f(t: Tensor) -> Tensor:
        return torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(T + 1, dtype=torch.float64)
    abar = f(t) / f(torch.zeros((), dtype=torch.float64))
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    abar = torch.cumprod(1 - betas, 0)
    return rescale_zero_terminal_snr(abar) if zero_terminal_snr else abar


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(abar) so the last step has SNR 0.

    The first step keeps its alpha-bar, the last becomes exactly 0 (pure noise), and
    the schedule in between is an affine map of the original sqrt(abar).
    """
    a = alphas_cumprod.to(torch.float64).sqrt()
    a0, aT = a[0].clone(), a[-1].clone()
    if not a0 > aT:
        raise ValueError("alphas_cumprod must decrease to rescale it")
    a = (a - aT) * (a0 / (a0 - aT))
    return a**2


def alphas_cumprod_to_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """VE noise levels ``sqrt((1 - abar) / abar)``; abar = 0 is clamped to 2**-24."""
    abar = alphas_cumprod.to(torch.float64).clamp(min=ZERO_SNR_ALPHA_BAR)
    return ((1 - abar) / abar).sqrt()


def sigmas_to_alphas_cumprod(sigmas: Tensor) -> Tensor:
    """Inverse of :func:`alphas_cumprod_to_sigmas`: ``abar = 1 / (1 + sigma^2)``."""
    return 1 / (1 + sigmas.to(torch.float64) ** 2)


def vp_continuous_sigma(t: Tensor, beta_min: float = 0.1, beta_d: float = 19.9) -> Tensor:
    """Continuous VP (Song et al. 2021, as in EDM): sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)."""
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_continuous_t(sigma: Tensor, beta_min: float = 0.1, beta_d: float = 19.9) -> Tensor:
    """Inverse of :func:`vp_continuous_sigma`."""
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def add_noise(x0: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """The closed-form jump in the VE view: ``x = x0 + sigma * noise`` (any sigma, per sample)."""
    return x0 + sigma_view(sigma, x0) * noise


def q_sample(x0: Tensor, alphas_cumprod: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The closed-form jump q(x_t | x_0) of a discrete VP process.

    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` with ``t`` integer indices
    (0-based, per sample) into ``alphas_cumprod``.
    """
    abar = alphas_cumprod.to(x0.device)[t].to(x0.dtype)
    abar = sigma_view(abar, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


class EDMNoise:
    """The EDM noise range (Karras et al. 2022): sigma in [sigma_min, sigma_max], sigma_data."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min = check_finite_number("sigma_min", sigma_min, positive=True)
        self.sigma_max = check_finite_number("sigma_max", sigma_max, positive=True)
        self.sigma_data = check_finite_number("sigma_data", sigma_data, positive=True)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be < sigma_max ({sigma_max})")

    def __repr__(self) -> str:
        return f"EDMNoise(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, sigma_data={self.sigma_data})"
