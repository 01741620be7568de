"""The Denoiser contract and the preconditioning wrappers that turn networks into Denoisers.

A **Denoiser** is any callable ``D(x, sigma, **cond) -> x0_hat`` for
``x = x0 + sigma * eps``. ``sigma`` is a Python number, a 0-d tensor or a (B,)
tensor of per-sample noise levels. Samplers, guidance and editing only ever see
this interface.

A raw network ``F(x_in, c_noise, **cond)`` becomes a Denoiser through
:class:`Precond` (Karras et al. 2022, Table 1)::

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

with one set of scalings per prediction target:

============  =======================  ==============================  =====================
prediction    c_skip                   c_out                           c_in
============  =======================  ==============================  =====================
``eps``       1                        -sigma                          1/sqrt(sigma^2+sd^2)
``x0``        0                        1                               1/sqrt(sigma^2+sd^2)
``v``         sd^2/(sigma^2+sd^2)      -sigma sd/sqrt(sigma^2+sd^2)    1/sqrt(sigma^2+sd^2)
``edm``       sd^2/(sigma^2+sd^2)      sigma sd/sqrt(sigma^2+sd^2)     1/sqrt(sigma^2+sd^2)
``flow``      1/(1+sigma)              -sigma/(1+sigma)                1/(1+sigma)
============  =======================  ==============================  =====================

``sd`` is sigma_data (0.5 for ``edm`` on images in [-1, 1], 1.0 otherwise, which is
exactly the VP convention: the network sees ``sqrt(abar) x`` and eps/v mean what
they mean in DDPM and Salimans & Ho). ``c_noise`` defaults to EDM's ``ln(sigma)/4``;
:func:`vp_denoiser` instead feeds DDPM's (fractional) timestep index.

``flow`` is rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023; SD3,
Esser et al. 2024): the path ``x_t = (1 - t) x0 + t eps`` is ebru's ``x = x0 + sigma eps``
divided by ``1 + sigma``, with ``sigma = t / (1 - t)`` (``t = sigma / (1 + sigma)``), and the
network predicts the velocity ``v = eps - x0`` from ``x_t = c_in x``. Then
``x0_hat = x_t - t v_hat`` is the row above. sigma_data plays no part (it is accepted and
ignored; default 1.0). Its ``c_noise`` is ``t`` itself, in [0, 1) (diffusers' flow models
take ``1000 t``: wrap one with ``noise_embedding=lambda s: 1000 * s / (1 + s)``). The helpers
for the t <-> sigma map, SD3's shift and a straightness measure are in :mod:`ebru.diffusion.flow`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .noise import alphas_cumprod_to_sigmas
from .tensors import check_finite_number, sigma_batch, sigma_view

PREDICTIONS = ("eps", "x0", "v", "edm", "flow")


class Denoiser(Protocol):
    """``D(x, sigma, **cond) -> x0_hat`` with ``x = x0 + sigma * eps``."""

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor: ...


def scalings(prediction: str, sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in)`` for a prediction target (see the module table); ``flow`` ignores ``sigma_data``.

    Raises ValueError for an unknown ``prediction``.
    """
    if prediction == "flow":
        c_in = 1 / (1 + sigma)
        return c_in, -sigma * c_in, c_in
    sd2 = sigma_data**2
    c_in = 1 / (sigma**2 + sd2).sqrt()
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if prediction == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    c_skip = sd2 / (sigma**2 + sd2)
    if prediction == "v":
        return c_skip, -sigma * sigma_data * c_in, c_in
    if prediction == "edm":
        return c_skip, sigma * sigma_data * c_in, c_in
    raise ValueError(f"unknown prediction {prediction!r}; valid choices: {', '.join(PREDICTIONS)}")


def edm_noise_embedding(sigma: Tensor) -> Tensor:
    """EDM's ``c_noise = ln(sigma) / 4``."""
    return sigma.log() / 4


def flow_noise_embedding(sigma: Tensor) -> Tensor:
    """Rectified flow's ``c_noise = t = sigma / (1 + sigma)``, in [0, 1) (the default of ``prediction="flow"``)."""
    return sigma / (1 + sigma)


class Precond(nn.Module):
    """Wrap a network ``F(x_in, c_noise, **cond)`` as a Denoiser for one prediction target.

    Args:
        net: the raw network; it receives ``c_in * x`` and a (B,) tensor ``c_noise``.
        prediction: ``"eps"``, ``"x0"``, ``"v"``, ``"edm"`` or ``"flow"`` (velocity ``eps - x0``
            of rectified flow; see the module docstring).
        sigma_data: data standard deviation; default 0.5 for ``edm``, else 1.0 (``flow`` ignores it).
        noise_embedding: maps (B,) sigmas to the network's noise input; default
            ``ln(sigma)/4``, or ``t = sigma / (1 + sigma)`` for ``flow``.

    Raises ValueError for an unknown ``prediction`` or a ``sigma_data`` that is not a finite number > 0.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        prediction: str = "edm",
        sigma_data: float | None = None,
        noise_embedding: Callable[[Tensor], Tensor] | None = None,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid choices: {', '.join(PREDICTIONS)}")
        self.net = net
        self.prediction = prediction
        default_sd = 0.5 if prediction == "edm" else 1.0
        self.sigma_data = check_finite_number("sigma_data", sigma_data if sigma_data is not None else default_sd,
                                              positive=True)
        default_embedding = flow_noise_embedding if prediction == "flow" else edm_noise_embedding
        self.noise_embedding = noise_embedding or default_embedding

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return scalings(self.prediction, sigma, self.sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x)
        c_skip, c_out, c_in = (sigma_view(c, x) for c in self.scalings(s))
        out = self.net(c_in * x, self.noise_embedding(s), **cond)
        return c_skip * x + c_out * out.to(x.dtype)

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
        """What the raw network should output for ``x = x0 + sigma * noise`` (its regression target).

        With this target the wrapped Denoiser returns exactly ``x0``; the EDM loss
        ``lambda(sigma) |D - x0|^2`` equals ``|F - target|^2`` when
        ``lambda = 1 / c_out^2`` (for ``flow``, the velocity ``noise - x0`` and the ``flow``
        weighting ``((1 + sigma) / sigma)^2``).
        """
        s = sigma_batch(sigma, x0)
        c_skip, c_out, _ = (sigma_view(c, x0) for c in self.scalings(s))
        x = x0 + sigma_view(s, x0) * noise
        if self.prediction == "eps":
            return noise
        if self.prediction == "flow":
            return noise - x0
        return (x0 - c_skip * x) / c_out


class DiscreteTimesteps:
    """Map VE sigmas to (fractional) timestep indices of a discrete VP alpha-bar table.

    Index ``t`` (0-based) has ``sigma_t = sqrt((1 - abar_t) / abar_t)``; between two
    table entries the timestep is interpolated linearly in ``log sigma``, so
    ``t_to_sigma(sigma_to_t(s)) == s`` for every s in [sigma_min, sigma_max].

    A zero-terminal-SNR table (last alpha-bar exactly 0) gets a finite top level above
    the one before it (see :func:`~ebru.diffusion.noise.alphas_cumprod_to_sigmas`).

    Raises ValueError unless ``alphas_cumprod`` is a 1-D table of at least 2 entries in
    [0, 1) that strictly decreases (only the last may be 0); the message names the
    first offending pair.
    """

    def __init__(self, alphas_cumprod: Tensor):
        abar = torch.as_tensor(alphas_cumprod)
        if abar.ndim != 1 or len(abar) < 2:
            raise ValueError("alphas_cumprod must be a 1-D table with at least 2 entries")
        sig = alphas_cumprod_to_sigmas(abar)
        if float(sig[0]) <= 0:
            raise ValueError(f"alphas_cumprod[0] must be < 1 (sigma > 0), got {float(abar[0])}")
        bad = (sig[1:] <= sig[:-1]).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"alphas_cumprod must be strictly decreasing, but entries {i} and {i + 1} are "
                             f"{float(abar[i]):.6g} and {float(abar[i + 1]):.6g}"
                             + (" (only the last entry may be 0)" if float(abar[i]) == 0 else ""))
        self.sigmas = sig
        self.log_sigmas = sig.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        ls = self.log_sigmas.to(sigma.device)
        log_s = sigma.to(torch.float64).log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return (lo + w).to(sigma.dtype)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        ls = self.log_sigmas.to(t.device)
        t = t.to(torch.float64).clamp(0, len(ls) - 1)
        lo = t.floor().long().clamp(max=len(ls) - 2)
        w = t - lo
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def __call__(self, sigma: Tensor) -> Tensor:
        return self.sigma_to_t(sigma)


def vp_denoiser(net: Callable[..., Tensor], alphas_cumprod: Tensor, prediction: str = "eps") -> Precond:
    """A Denoiser for a DDPM-style network ``F(sqrt(abar) x0 + sqrt(1-abar) eps, t)``.

    ``t`` is the (fractional) 0-based timestep index; ``prediction`` is what the
    network was trained to output (``eps``, ``v`` or ``x0``). Sample it with any
    sampler between ``denoiser.sigma_min`` and ``denoiser.sigma_max`` (what
    :func:`~ebru.diffusion.sample` does by default). A zero-terminal-SNR table
    (``zero_terminal_snr=True``; train it with ``v`` or ``x0``) has a finite
    ``sigma_max`` above its second-to-last level. Raises ValueError for another
    ``prediction`` or a bad table (see :class:`DiscreteTimesteps`).
    """
    if prediction not in ("eps", "v", "x0"):
        raise ValueError(f"VP networks predict 'eps', 'v' or 'x0', got {prediction!r}")
    steps = DiscreteTimesteps(alphas_cumprod)
    d = Precond(net, prediction, sigma_data=1.0, noise_embedding=steps)
    d.timesteps = steps
    d.sigma_min, d.sigma_max = steps.sigma_min, steps.sigma_max
    return d

