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

from .defaults import SAMPLING
from .tensors import check_finite_number, sigma_view

# alpha-bar = 0 (zero terminal SNR) would be sigma = inf. Its finite stand-in is at least the
# level of alpha-bar = 2**-24, the value diffusers substitutes (sigma ~ 4096); see alphas_cumprod_to_sigmas.
ZERO_SNR_ALPHA_BAR = 2.0**-24
ZERO_SNR_SIGMA = math.sqrt((1 - ZERO_SNR_ALPHA_BAR) / ZERO_SNR_ALPHA_BAR)


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
    """VE noise levels ``sigma = sqrt((1 - abar) / abar)`` (float64, same shape).

    Every ``abar > 0`` maps exactly, however small: no floor, so distinct alpha-bars stay
    distinct levels (a floor at 2**-24 used to merge the last three levels of
    ``vp_linear_alphas_cumprod(1000, zero_terminal_snr=True)`` and every level past
    t ~ 1800 of a 2000-step linear table, which then could not be sampled).

    ``abar = 0`` is zero terminal SNR (Lin et al. 2024), sigma = inf, and gets a finite
    stand-in: for the last entry of a 1-D table, the larger of ``ZERO_SNR_SIGMA``
    (abar = 2**-24, diffusers' choice, ~4096) and the geometric continuation of the two
    levels before it (``s[-2]**2 / s[-3]``, or ``2 s[-2]`` after a single level), so the
    table stays strictly increasing; anywhere else, ``ZERO_SNR_SIGMA``.

    Raises ValueError if an entry is NaN or outside [0, 1].
    """
    abar = torch.as_tensor(alphas_cumprod).to(torch.float64)
    if not bool(((abar >= 0) & (abar <= 1)).all()):
        raise ValueError("alphas_cumprod must lie in [0, 1] (alpha-bar is a signal fraction)")
    zero = abar == 0
    sig = ((1 - abar) / abar.masked_fill(zero, 1.0)).sqrt()
    if not bool(zero.any()):
        return sig
    stand_in = ZERO_SNR_SIGMA
    if abar.ndim == 1 and bool(zero[-1]) and len(abar) >= 2 and not bool(zero[-2]):
        prev = sig[:-1]
        cont = float(prev[-1] ** 2 / prev[-2]) if len(prev) >= 2 and float(prev[-2]) > 0 else 2 * float(prev[-1])
        stand_in = max(stand_in, cont)
    return sig.masked_fill(zero, stand_in)


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
    """The EDM noise range (Karras et al. 2022): sigma in [sigma_min, sigma_max], sigma_data.

    The range defaults to ``ebru.diffusion.defaults.SAMPLING`` (0.002, 80: EDM Table 1);
    ``sigma_data`` to 0.5 (images in [-1, 1]). Raises ValueError for a non-finite or
    non-positive value or ``sigma_min >= sigma_max``.
    """

    def __init__(self, sigma_min: float = SAMPLING.sigma_min, sigma_max: float = SAMPLING.sigma_max,
                 sigma_data: float = 0.5):
        self.sigma_min = check_finite_number("sigma_min", sigma_min, positive=True)
        self.sigma_max = check_finite_number("sigma_max", sigma_max, positive=True)
        self.sigma_data = check_finite_number("sigma_data", sigma_data, positive=True)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be < sigma_max ({sigma_max})")

    def __repr__(self) -> str:
        return f"EDMNoise(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, sigma_data={self.sigma_data})"
