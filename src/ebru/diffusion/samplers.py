"""Samplers: pure functions that integrate the reverse process over a sigma array.

``SAMPLERS[name](denoiser, x, sigmas, *, generator=None, callback=None, **opts) -> x``

``x`` is given at noise level ``sigmas[0]`` and the result is at ``sigmas[-1]``
(normally 0). Conditioning is bound into the denoiser beforehand (see
:func:`ebru.diffusion.sample`), so samplers see only ``D(x, sigma)``. Each
registered sampler carries ``nfe(n)`` (denoiser calls for an n-step schedule
ending in 0), ``order`` (global order of accuracy on the probability-flow ODE,
0 for stochastic samplers) and ``stochastic``.

Every step to ``sigma = 0`` is explicit: it returns the denoiser output.
Step coefficients are tensor operations on ``sigmas``, so a sampler is
differentiable with respect to its schedule (that is how :mod:`ebru.diffusion.tuning`
optimises schedules).

The ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 3
with s = 1); the exponential-integrator samplers use lambda = -log sigma.

**The sigma array.** Every sampler first passes ``sigmas`` through
:func:`check_sigmas`, one rule for all of them:

- ``sigmas`` must be a 1-D array of finite levels >= 0 that never increases.
  An increasing pair (``[80, 1, 10, 0]``), a negative level, NaN or infinity raises a
  ``ValueError`` naming the index and the values: these samplers integrate toward
  lower noise only (run an inversion by other means).
- A repeated level (``[80, 10, 1, 1, 0.1, 0]``) is a zero-length step and is
  *skipped*: no denoiser call, no noise drawn, no callback, and the multistep
  history (DPM-Solver++ 2M/3M, UniPC) is left as it was. The result is therefore
  exactly what the same sampler returns with the repeated level removed. (Before,
  the multistep samplers divided by the zero step, ``r = h_prev / h``, and returned
  NaN; k-diffusion has the same fault.)

Strictly decreasing arrays (every ``SCHEDULES`` entry) are sampled exactly as
before this rule existed: the check only decides which steps run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ebru.checks import positive_int

from .defaults import SAMPLING
from .registry import Registry
from .tensors import Generator, check_finite_number, randn_like, sigma_batch

SAMPLERS = Registry("sampler")

Callback = Callable[[dict[str, Any]], None] | None


def _nfe_n(n: int) -> int:
    return n


def _nfe_heun(n: int) -> int:
    return 2 * n - 1


def _prepare(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_sigmas(sigmas: Tensor | Sequence[float], x: Tensor | None = None) -> tuple[Tensor, list[int]]:
    """Validate a sampler's sigma array and list the steps that move.

    Args:
        sigmas: (n + 1,) noise levels, first the level of ``x``; a tensor (kept as
            it is, so gradients flow to it) or a sequence of numbers (made a float64
            tensor on ``x``'s device).
        x: the samples, only for the device of a converted sequence.

    Returns:
        ``(sigmas, steps)``: the array as a tensor, and the indices ``i`` with
        ``sigmas[i + 1] < sigmas[i]``. A step with ``sigmas[i + 1] == sigmas[i]`` is
        zero-length and left out: samplers skip it (see the module docstring).

    Raises:
        ValueError: ``sigmas`` is not 1-D with at least one level, or holds NaN,
            an infinity, a negative level or an increasing pair (named by index).
    """
    if not isinstance(sigmas, Tensor):
        try:
            sigmas = torch.as_tensor(list(sigmas), dtype=torch.float64,
                                     device=x.device if x is not None else None)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"sigmas must be a 1-D tensor or sequence of numbers, got {sigmas!r}") from None
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a 1-D array of at least one noise level, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach()
    if not bool(torch.isfinite(s).all()):
        i = int((~torch.isfinite(s)).nonzero()[0])
        raise ValueError(f"sigmas must be finite, got sigmas[{i}] = {float(s[i])}")
    if bool((s < 0).any()):
        i = int((s < 0).nonzero()[0])
        raise ValueError(f"sigmas must be >= 0, got sigmas[{i}] = {float(s[i]):g}")
    up = s[1:] > s[:-1]
    if bool(up.any()):
        i = int(up.nonzero()[0])
        raise ValueError(f"sigmas must not increase: sigmas[{i + 1}] = {float(s[i + 1]):g} > "
                         f"sigmas[{i}] = {float(s[i]):g} (samplers run from high noise to low)")
    return sigmas, (s[1:] < s[:-1]).nonzero().flatten().tolist()


def _call(denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    return denoiser(x, sigma_batch(sigma, x)).to(x.dtype)


def _report(callback: Callback, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def _churn(x: Tensor, sigma: Tensor, n: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
           generator: Generator) -> tuple[Tensor, Tensor]:
    """EDM Algorithm 2's noise injection: raise sigma to sigma_hat = sigma (1 + gamma)."""
    gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= float(sigma.detach()) <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * randn_like(x, generator)
    return x, sigma_hat


@SAMPLERS.register("euler", nfe=_nfe_n, order=1, stochastic=False)
def euler(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
          s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Euler's method on the PF-ODE (EDM Alg. 2 without the Heun correction). NFE = n.

    With ``s_churn > 0`` noise is added before each step (stochastic). A repeated
    level is skipped (no churn either) and does not count in ``n`` of ``s_churn / n``.
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    n = len(steps)
    for i in steps:
        x, s = _churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = _call(denoiser, x, s)
        x = denoised if bool(sigmas[i + 1] == 0) else x + (sigmas[i + 1] - s) * (x - denoised) / s
        _report(callback, i, x, s, sigmas[i + 1], denoised)
    return x


@SAMPLERS.register("heun", nfe=_nfe_heun, order=2, stochastic=False)
def heun(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
         s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 1/2). NFE = 2n - 1.

    The last step (to sigma = 0) is an Euler step. ``s_churn``, ``s_tmin``,
    ``s_tmax`` and ``s_noise`` are Algorithm 2's stochasticity knobs
    (EDM ImageNet-64: 40, 0.05, 50, 1.003). A repeated level is skipped, as in :func:`euler`.
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    n = len(steps)
    for i in steps:
        x, s = _churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise, generator)
        s_next = sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            d = (x - denoised) / s
            x_pred = x + (s_next - s) * d
            d_next = (x_pred - _call(denoiser, x_pred, s_next)) / s_next
            x = x + (s_next - s) * (d + d_next) / 2
        _report(callback, i, x, s, s_next, denoised)
    return x


def _ancestral_levels(s: Tensor, s_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of an eta-scaled DDPM posterior step from s to s_next."""
    up = (eta * (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()).clamp(max=s_next) if eta else s_next * 0
    return (s_next**2 - up**2).sqrt(), up


@SAMPLERS.register("ddim", nfe=_nfe_n, order=1, stochastic=False)
def ddim(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
         eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021) in the VE view. NFE = n.

    ``x' = D + sigma_down * (x - D) / sigma + sigma_up * z`` with
    ``sigma_up = eta * sigma' sqrt(1 - sigma'^2/sigma^2)`` and
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``. ``eta = 0`` is deterministic
    (= Euler = DPM-Solver++(1)); ``eta = 1`` is DDPM's ancestral sampler. A repeated
    level is skipped (no noise is drawn for it).
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            down, up = _ancestral_levels(s, s_next, eta)
            x = denoised + down * (x - denoised) / s
            if eta:
                x = x + up * randn_like(x, generator)
        _report(callback, i, x, s, s_next, denoised)
    return x


@SAMPLERS.register("ddpm", nfe=_nfe_n, order=0, stochastic=True)
def ddpm(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) with the posterior variance. NFE = n.

    Draws from the Gaussian posterior q(x' | x, x0 = D): mean
    ``D + (sigma'/sigma)^2 (x - D)``, variance ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2``.
    A repeated level is skipped (no noise is drawn for it).
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            std = s_next * (s**2 - s_next**2).sqrt() / s
            x = denoised + (s_next / s) ** 2 * (x - denoised) + std * randn_like(x, generator)
        _report(callback, i, x, s, s_next, denoised)
    return x


@SAMPLERS.register("dpmpp_2m", nfe=_nfe_n, order=2, stochastic=False)
def dpmpp_2m(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep 2nd order in data prediction. NFE = n.

    ``x' = (sigma'/sigma) x - expm1(-h) D_i`` with ``h = log(sigma/sigma')`` and
    ``D_i = (1 + 1/(2r)) D - 1/(2r) D_prev``, ``r = h_prev / h``; the first step is
    DDIM and the step to 0 returns the denoiser output. A repeated level is skipped
    and leaves ``D_prev`` and ``h_prev`` as they were (a zero ``h`` would make ``r``
    infinite and the next step NaN).
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    old, h_last = None, None
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            h = (s / s_next).log()
            d = denoised
            if old is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x - torch.expm1(-h) * d
            h_last = h
        old = denoised
        _report(callback, i, x, s, s_next, denoised)
    return x


@SAMPLERS.register("dpmpp_2m_sde", nfe=_nfe_n, order=0, stochastic=True)
def dpmpp_2m_sde(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
                 eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion's form). NFE = n.

    ``eta`` scales the injected noise (0 gives a deterministic 2nd-order solver);
    ``solver_type`` is ``"midpoint"`` or ``"heun"``. Noise is drawn independently
    each step from ``generator``. A repeated level is skipped, as in :func:`dpmpp_2m`.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    old, h_last = None, None
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            h = (s / s_next).log()
            eta_h = eta * h
            x = (s_next / s) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    coef = -torch.expm1(-h - eta_h) / (-h - eta_h) + 1
                else:
                    coef = -0.5 * torch.expm1(-h - eta_h)
                x = x + coef * (denoised - old) / r
            if eta:
                x = x + randn_like(x, generator) * s_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
            h_last = h
        old = denoised
        _report(callback, i, x, s, s_next, denoised)
    return x


@SAMPLERS.register("dpmpp_3m", nfe=_nfe_n, order=3, stochastic=False)
def dpmpp_3m(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
             eta: float = 0.0, s_noise: float = 1.0, lower_order_final: bool | None = None) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022), multistep 3rd order. NFE = n.

    Uses the two previous denoiser outputs for first and second divided
    differences (phi_2, phi_3 exponential-integrator weights). ``eta > 0`` turns it
    into k-diffusion's 3M SDE variant.

    The second divided difference ``d2`` estimates ``h^2 D''/2``, whose exact
    weight in the exponential integrator is ``-2 phi_3``. The DPM-Solver and
    k-diffusion reference code use ``-phi_3``, which measures as 2nd order on the
    Gaussian oracle; with ``-2 phi_3`` the measured order is 3 (tests/test_convergence.py).

    ``lower_order_final`` takes the last step before ``sigma = 0`` at second order, as
    DPM-Solver's and diffusers' code do below 15 steps (the default, ``None``, means
    exactly that). On coarse grids the third-order term hurts on learned models at
    small sigma: on the Fashion-MNIST model of benchmarks/quality_vs_nfe.py (500
    samples, Karras) FID goes from 17.1 to 14.4 at 5 steps and from 36.6 to 30.6 at
    10 with it; 2M gives 15.0 and 12.8. Below 20 steps prefer ``dpmpp_2m`` or ``unipc``.

    A repeated level is skipped and leaves the history as it was; ``n`` above counts
    the steps that move, so the result equals that of the array without the repeat.
    """
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    n = len(steps)
    if lower_order_final is None:
        lower_order_final = n < 15
    # the last step before the step to sigma = 0 (-1: none)
    last_nonzero = (steps[-2] if n > 1 else -1) if n > 0 and bool(sigmas[-1] == 0) else (steps[-1] if n else -1)
    d1_prev = d2_prev = None  # previous denoised outputs
    h_1 = h_2 = None
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        if bool(s_next == 0):
            x = denoised
        else:
            h = (s / s_next).log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised
            phi_2 = torch.expm1(-h_eta) / h_eta + 1
            if h_2 is not None and not (lower_order_final and i == last_nonzero):
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d1_prev) / r0
                d1_1 = (d1_prev - d2_prev) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - 2 * phi_3 * d2  # exact Taylor weight (see docstring)
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d1_prev) / (h_1 / h)
            if eta:
                x = x + randn_like(x, generator) * s_next * (-torch.expm1(-2 * h * eta)).sqrt() * s_noise
            h_1, h_2 = h, h_1
        d1_prev, d2_prev = denoised, d1_prev
        _report(callback, i, x, s, s_next, denoised)
    return x


SAMPLERS.register("dpmpp_3m_sde", nfe=_nfe_n, order=0, stochastic=True)(
    lambda denoiser, x, sigmas, *, eta=1.0, **kw: dpmpp_3m(denoiser, x, sigmas, eta=eta, **kw)
)


@SAMPLERS.register("consistency", nfe=_nfe_n, order=0, stochastic=True)
def consistency(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
                sigma_min: float = SAMPLING.sigma_min) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1). NFE = n.

    ``denoiser`` is a consistency function ``f(x, sigma)`` (:class:`~ebru.diffusion.consistency.ConsistencyDenoiser`),
    which maps a point at any level to its trajectory's point at ``sigma_min``. Each step evaluates ``f`` and
    noises the result again to the next level: ``x = f(x, sigma_i)``, then
    ``x = x + sqrt(sigma_{i+1}^2 - sigma_min^2) z`` unless ``sigma_{i+1} = 0``, where the result is ``f``'s
    output. One step (``[sigma_max, 0]``) is one call of ``f``; ECT samples ``[80, 0.821, 0]``. With an
    ordinary denoiser it is "denoise, then noise again" (a restart sampler). A repeated level is skipped.

    Raises ValueError for a level between 0 and ``sigma_min`` (it cannot be noised to) or a bad ``sigma_min``.
    """
    sigma_min = check_finite_number("sigma_min", sigma_min)
    if sigma_min < 0:
        raise ValueError(f"sigma_min must be >= 0, got {sigma_min:g}")
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    low = [i for i in steps if 0 < float(sigmas[i + 1]) < sigma_min]
    if low:
        raise ValueError(f"the consistency sampler noises to each level with sqrt(sigma^2 - sigma_min^2): "
                         f"sigmas[{low[0] + 1}] = {float(sigmas[low[0] + 1]):g} is below sigma_min = {sigma_min:g}")
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        x = denoised
        if not bool(s_next == 0):
            x = denoised + (s_next**2 - sigma_min**2).sqrt() * randn_like(x, generator)
        _report(callback, i, x, s, s_next, denoised)
    return x


def _unipc_coefficients(rks: Tensor, h: Tensor, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """UniPC's linear system (Zhao et al. 2023, Alg. 2 / diffusers' bh form) in data prediction.

    Returns ``(R, b, B_h)`` with R[k, j] = rks[j]^k and b[k] = phi_{k+2}(h) (k+1)! / B_h.
    """
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b = [], []
    factorial = 1
    for k in range(1, len(rks) + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b), b_h


@SAMPLERS.register("unipc", nfe=_nfe_n, order=3, stochastic=False)
def unipc(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator = None, callback: Callback = None,
          order: int = 2, variant: str = "bh2", corrector: bool = True) -> Tensor:
    """UniPC (Zhao et al. 2023): multistep predictor UniP-p plus the corrector UniC. NFE = n.

    The corrector reuses the model output at the new point, so it costs no extra
    evaluation and raises the order by one: ``order=2`` (the default, "UniPC-3")
    is 3rd order overall. ``variant`` picks B(h): ``"bh2"`` (expm1, default) or
    ``"bh1"``. Orders ramp up over the first steps and the step to 0 returns the
    denoiser output. A repeated level is skipped whole (no evaluation, no
    correction), so the history and the corrector see the array without the repeat.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an integer from 1 to 4, got {order!r}")
    x = _prepare(x)
    sigmas, steps = check_sigmas(sigmas, x)
    lams: list[Tensor] = []  # -log sigma of past evaluation points
    outs: list[Tensor] = []  # denoiser outputs there
    x_last = None  # state at the start of the previous step (for the corrector)
    last_order = 0
    for i in steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoiser, x, s)
        lam = -s.log()
        if corrector and x_last is not None:
            # UniC: re-do the previous step with this evaluation as an extra node.
            x = _uni_update(x_last, lams[-1], lam, outs[-1], lams[-last_order:-1][::-1],
                            outs[-last_order:-1][::-1], denoised, last_order, variant)
        lams.append(lam)
        outs.append(denoised)
        if bool(s_next == 0):
            x = denoised
        else:
            p = min(order, len(outs))
            x_last = x
            x = _uni_update(x, lam, -s_next.log(), denoised, lams[-p:-1][::-1], outs[-p:-1][::-1], None, p, variant)
            last_order = p
        _report(callback, i, x, s, s_next, denoised)
    return x


def _uni_update(x: Tensor, lam_s: Tensor, lam_t: Tensor, m0: Tensor, lam_prev: list[Tensor],
                m_prev: list[Tensor], m_t: Tensor | None, p: int, variant: str) -> Tensor:
    """One UniP-p step (``m_t`` None) or UniC-p correction (``m_t`` the output at the new point).

    VE data-prediction form: ``x_t = (sigma_t/sigma_s) x - expm1(-h) m0 - B(h) sum_k rho_k D_k``
    with D_k = (m_k - m0) / r_k, r_k = (lambda_k - lambda_s) / h.
    """
    h = lam_t - lam_s
    base = torch.exp(-h) * x - torch.expm1(-h) * m0
    rks = [(lp - lam_s) / h for lp in lam_prev]
    diffs = [(mp - m0) / rk for mp, rk in zip(m_prev, rks, strict=True)]
    if m_t is None:
        if p == 1:
            return base
        R, b, b_h = _unipc_coefficients(torch.stack([*rks, torch.ones_like(h)]), h, variant)
        rhos = torch.full_like(h, 0.5).reshape(1) if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        return base - b_h * sum(r * d for r, d in zip(rhos, diffs, strict=True))
    R, b, b_h = _unipc_coefficients(torch.stack([*rks, torch.ones_like(h)]), h, variant)
    rhos = torch.full_like(h, 0.5).reshape(1) if p == 1 else torch.linalg.solve(R, b)
    corr = sum((r * d for r, d in zip(rhos[:-1], diffs, strict=True)), torch.zeros_like(x))
    return base - b_h * (corr + rhos[-1] * (m_t - m0))


def sampler_nfe(sampler: str | Callable[..., Tensor], n: int) -> int:
    """Denoiser evaluations a registered sampler makes for an n-step schedule ending in 0
    (strictly decreasing: repeated levels are skipped and cost nothing).

    Raises ValueError for an unknown sampler or ``n`` not an integer >= 1.
    """
    fn = SAMPLERS.resolve(sampler)
    n = positive_int("steps", n)
    return fn.nfe(n) if hasattr(fn, "nfe") else n


def steps_for_nfe(sampler: str | Callable[..., Tensor], nfe: int) -> int:
    """The largest step count whose NFE does not exceed ``nfe``.

    Raises ValueError if ``nfe`` is not an integer >= 1 (0 is refused, not rounded up to a step).
    """
    nfe = positive_int("nfe", nfe)
    n = 1
    while sampler_nfe(sampler, n + 1) <= nfe:
        n += 1
    return n
