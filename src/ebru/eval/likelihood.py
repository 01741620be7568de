"""Likelihood of data under a diffusion model, in nats and bits per dimension.

Two estimators, both for any Denoiser ``D(x, sigma)``:

**Probability-flow ODE** (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", appendix D). The PF-ODE ``dx/du = x - D(x, e^u)`` in ``u = log sigma`` is a
continuous normalising flow, so by the instantaneous change of variables

    log p_{sigma_min}(x) = log N(x(sigma_max); 0, sigma_max^2 I) + int_{u_min}^{u_max} div_x (x - D) du,

integrated with adaptive Dormand-Prince. ``div (x - D) = d - tr(dD/dx)`` is exact
(``d`` backward passes, small ``d`` only) or Hutchinson's unbiased
``e^T (dD/dx) e`` with Rademacher probes ``e`` held fixed along the path (FFJORD).
The prior replaces the true marginal at ``sigma_max``; for data of per-dimension
variance ``v`` that costs at most ``d v / (2 sigma_max^2)`` nats.

**Variational bound** of the discretised chain ``sigma_1 < ... < sigma_T`` (DDPM's
L_T + sum L_{t-1} + L_0, written in the VE coordinates of the Denoiser contract;
the VP chain ``x_t = sqrt(abar_t) z_t`` is an invertible rescaling of it, so its
terms are the same numbers). With ``z_i = x0 + sigma_i eps``:

- prior ``L_T = KL(N(x0, sigma_T^2) || N(0, 1 + sigma_T^2))`` (VP's N(0, I) at t = T),
- diffusion ``L_{i-1} = (1/sigma_{i-1}^2 - 1/sigma_i^2) / 2 * E|x0 - D(z_i, sigma_i)|^2``,
- reconstruction ``L_0 = -log p(x0 | z_1)``: a Gaussian N(D(z_1, sigma_1), sigma_1^2),
  discretised to the 256 levels of 8-bit data with open end bins (DDPM), or
  continuous for real-valued data.

It upper-bounds the NLL whatever the model; with the exact denoiser it tends to the
exact NLL as the grid is refined. For images, bits/dim of the ODE figure assume
uniform dequantisation (:func:`dequantize`), those of the discrete bound do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ebru.diffusion.ode import dopri5
from ebru.diffusion.tensors import check_finite_number, sigma_batch

LN2 = math.log(2.0)


def _model_dtype(denoiser: Callable) -> torch.dtype:
    if isinstance(denoiser, nn.Module):
        p = next(denoiser.parameters(), None)
        if p is not None:
            return p.dtype
    return torch.float64


def _divergence_of_denoiser(d: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """tr(dD/dx) per sample: exact when ``probes`` is None, else Hutchinson averaged over probes."""
    if probes is None:
        flat = d.flatten(1)
        div = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            div += g.flatten(1)[:, i].to(torch.float64)
        return div
    div = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for k, e in enumerate(probes):
        e = e.to(x.dtype)
        (g,) = torch.autograd.grad(d, x, grad_outputs=e, retain_graph=k < len(probes) - 1)
        div += (g * e).flatten(1).sum(1).to(torch.float64)
    return div / len(probes)


def ode_log_likelihood(denoiser: Callable[..., Tensor], x: Tensor, *, sigma_min: float = 0.002,
                       sigma_max: float = 80.0, trace: str = "hutchinson", probes: int = 1,
                       generator: torch.Generator | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       **cond) -> Tensor:
    """``log p_{sigma_min}(x)`` in nats per sample (B,), float64, through the PF-ODE.

    ``trace``: ``"exact"`` (one backward pass per dimension) or ``"hutchinson"``
    (``probes`` Rademacher vectors, drawn from ``generator``).
    """
    s0 = check_finite_number("sigma_min", sigma_min, positive=True)
    s1 = check_finite_number("sigma_max", sigma_max, positive=True)
    if s1 <= s0:
        raise ValueError(f"sigma_max ({s1}) must exceed sigma_min ({s0})")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if trace == "hutchinson" and probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    shape, b = x.shape, x.shape[0]
    dim = x[0].numel()
    dtype = _model_dtype(denoiser)
    eps = None
    if trace == "hutchinson":
        eps = torch.randint(0, 2, (probes, *shape), generator=generator, device="cpu").to(x.device, torch.float64)
        eps = eps * 2 - 1

    def f(u: float, y: Tensor) -> Tensor:
        xs = y[:, :dim].reshape(shape)
        with torch.enable_grad():
            xi = xs.to(dtype).detach().requires_grad_(True)
            d = denoiser(xi, sigma_batch(math.exp(u), xi), **cond)
            div_d = _divergence_of_denoiser(d, xi, eps)
        dx = xs - d.detach().to(torch.float64)
        return torch.cat([dx.flatten(1), (dim - div_d)[:, None]], 1)

    def norm(err: Tensor) -> Tensor:  # the log-density column counts as much as the whole image
        return torch.maximum(err[:, :dim].pow(2).mean(1).sqrt(), err[:, dim].abs())

    y0 = torch.cat([x.detach().to(torch.float64).flatten(1), torch.zeros(b, 1, dtype=torch.float64,
                                                                         device=x.device)], 1)
    y1 = dopri5(f, y0, math.log(s0), math.log(s1), rtol=rtol, atol=atol, error_norm=norm)
    xt, delta = y1[:, :dim], y1[:, dim]
    log_prior = -0.5 * (xt.pow(2).sum(1) / s1**2 + dim * math.log(2 * math.pi * s1**2))
    return log_prior + delta


def bits_per_dim(nll_nats: Tensor, dims: int, *, dequantized: bool = True, levels: int = 256,
                 data_range: float = 2.0) -> Tensor:
    """Convert an NLL in nats per sample to bits per dimension.

    ``dequantized``: the NLL is of continuous data made from ``levels`` evenly spaced
    values over ``data_range`` by uniform dequantisation; bits/dim of the discrete
    data are then at most ``nll / (d ln 2) - log2(bin width)``.
    """
    bpd = nll_nats / (dims * LN2)
    if dequantized:
        bpd = bpd - math.log2(data_range / (levels - 1))
    return bpd


def dequantize(x: Tensor, *, levels: int = 256, data_range: float = 2.0,
               generator: torch.Generator | None = None) -> Tensor:
    """Spread each quantised value uniformly over its bin (half a step either side)."""
    w = data_range / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device="cpu").to(x.device)
    return x.to(torch.float64) + (u - 0.5) * w


def _log_bin_prob(x0: Tensor, mean: Tensor, std: float, levels: int = 256) -> Tensor:
    """log P(bin of x0) under N(mean, std^2) with DDPM's bins (open at both ends), per entry."""
    half = 1.0 / (levels - 1)
    a = (x0 - half - mean) / std
    b = (x0 + half - mean) / std
    lo_edge, hi_edge = x0 < -1 + half / 2, x0 > 1 - half / 2
    log_cdf_b, log_cdf_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    log_sf_a, log_sf_b = torch.special.log_ndtr(-a), torch.special.log_ndtr(-b)
    # Phi(b) - Phi(a), computed on the side of the distribution where it does not cancel
    left = log_cdf_b + torch.log1p(-torch.exp((log_cdf_a - log_cdf_b).clamp_max(0)).clamp_max(1 - 1e-16))
    right = log_sf_a + torch.log1p(-torch.exp((log_sf_b - log_sf_a).clamp_max(0)).clamp_max(1 - 1e-16))
    mid = torch.where(a > 0, right, left)
    return torch.where(lo_edge, log_cdf_b, torch.where(hi_edge, log_sf_a, mid))


def variational_bound(denoiser: Callable[..., Tensor], x0: Tensor, sigmas: Tensor, *, terms: int | None = None,
                      decoder: str = "discrete", generator: torch.Generator | None = None,
                      **cond) -> dict[str, Tensor]:
    """Per-sample upper bound on -log p(x0) in nats: ``{"prior", "diffusion", "reconstruction", "total"}``.

    ``sigmas``: the chain's noise levels (any order; sorted ascending here), e.g.
    :func:`ebru.diffusion.alphas_cumprod_to_sigmas` of a VP model's table.
    ``terms``: number of diffusion terms evaluated, stratified over the chain with a
    random offset and reweighted (an unbiased estimate); ``None`` sums all of them.
    ``decoder``: ``"discrete"`` for 8-bit data on the grid ``k / 127.5 - 1``,
    ``"gaussian"`` for continuous data.
    """
    if decoder not in ("discrete", "gaussian"):
        raise ValueError(f"decoder must be 'discrete' or 'gaussian', got {decoder!r}")
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().sort().values
    if len(s) < 2 or bool((s <= 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError("sigmas must hold at least 2 finite, positive noise levels")
    if bool((s[1:] <= s[:-1]).any()):
        raise ValueError("sigmas must be distinct")
    x0 = x0.to(torch.float64)
    if decoder == "discrete":
        grid = (x0 + 1) * 127.5
        if bool((grid - grid.round()).abs().max() > 1e-3) or bool((x0.abs() > 1 + 1e-9).any()):
            raise ValueError("decoder='discrete' needs 8-bit data on the grid k / 127.5 - 1; "
                             "use decoder='gaussian' for continuous data")
    dtype = _model_dtype(denoiser)
    b = x0.shape[0]
    n_pairs = len(s) - 1

    def denoise_noisy(sigma: float) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device="cpu").to(x0.device)
        z = (x0 + sigma * eps).to(dtype)
        with torch.no_grad():
            d = denoiser(z, sigma_batch(sigma, z), **cond).to(torch.float64)
        return d

    # prior: KL(N(x0, sT^2 I) || N(0, (1 + sT^2) I))
    s_t2 = float(s[-1]) ** 2
    prior = 0.5 * ((s_t2 + x0.pow(2)) / (1 + s_t2) - 1 + math.log((1 + s_t2) / s_t2)).flatten(1).sum(1)

    # diffusion terms, pair j = (s[j], s[j+1])
    if terms is None or terms >= n_pairs:
        picks = [(j, 1.0) for j in range(n_pairs)]
    else:
        if terms < 1:
            raise ValueError(f"terms must be >= 1, got {terms}")
        offset = float(torch.rand((), generator=generator, dtype=torch.float64))
        spacing = n_pairs / terms
        picks = [(min(int((k + offset) * spacing), n_pairs - 1), spacing) for k in range(terms)]
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for j, weight in picks:
        lo, hi = float(s[j]), float(s[j + 1])
        err = (x0 - denoise_noisy(hi)).pow(2).flatten(1).sum(1)
        diffusion += weight * 0.5 * (1 / lo**2 - 1 / hi**2) * err

    s1 = float(s[0])
    mean = denoise_noisy(s1)
    if decoder == "discrete":
        recon = -_log_bin_prob(x0, mean, s1).flatten(1).sum(1)
    else:
        recon = (0.5 * ((x0 - mean) / s1).pow(2) + 0.5 * math.log(2 * math.pi * s1**2)).flatten(1).sum(1)
    return {"prior": prior, "diffusion": diffusion, "reconstruction": recon,
            "total": prior + diffusion + recon}
