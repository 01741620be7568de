"""Tuned step schedules: the noise levels that minimise a sampler's error on a given denoiser.

Classic schedules (Karras rho = 7, log-SNR, VP-uniform) are one-size-fits-all.
:func:`tune_schedule` instead optimises the ``n - 2`` interior levels of an
n-step schedule (sigma_max, sigma_min and the final 0 stay fixed) for one
denoiser, one deterministic sampler and one step budget: it runs the sampler
from a few noise draws, compares the results with a tight-tolerance solution
of the probability-flow ODE from the same noise (:func:`~ebru.diffusion.ode.solve_pf_ode`),
and descends the mean squared error by backpropagating through the sampler
with respect to the levels. Samplers are written with tensor-valued step
coefficients for exactly this purpose.

The result is a :class:`~ebru.diffusion.steps.WarpedSchedule`: pass it as
``schedule=`` anywhere, save it as JSON beside a model, or register it in
``SCHEDULES``. Tune on one set of noise draws and judge on another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .ode import solve_pf_ode
from .samplers import SAMPLERS
from .steps import SCHEDULES, WarpedSchedule, get_sigmas
from .tensors import sigma_batch


def pf_ode_reference(denoiser, x: Tensor, sigma_max: float, sigma_min: float, **ode_opts) -> Tensor:
    """What an exact solver would return from noise ``x`` at ``sigma_max``:
    the ODE solution at ``sigma_min`` followed by the final denoise (every sampler's last step)."""
    x_min = solve_pf_ode(denoiser, x, sigma_max, sigma_min, **ode_opts)
    with torch.no_grad():
        return denoiser(x_min, sigma_batch(sigma_min, x_min)).to(torch.float64)


def _levels(theta: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    u = torch.cat([theta.new_zeros(1), torch.softmax(theta, 0).cumsum(0)])
    u = torch.cat([u[:-1], u.new_ones(1)])  # exact 1 at the end despite round-off
    levels = (math.log(sigma_max) + u * (math.log(sigma_min) - math.log(sigma_max))).exp()
    return torch.cat([levels, levels.new_zeros(1)])


def tune_schedule(
    denoiser,
    sampler: str,
    steps: int,
    x: Tensor,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    init: str = "best",
    reference: Tensor | None = None,
    iters: int = 300,
    lr: float = 0.05,
    sampler_opts: dict | None = None,
    progress: bool = False,
) -> WarpedSchedule:
    """Optimise an ``steps``-step schedule for ``sampler`` on ``denoiser``.

    Args:
        x: a batch of starting points at ``sigma_max`` (noise times sigma_max);
            a few dozen suffice.
        reference: the exact results for ``x``; computed with :func:`pf_ode_reference` if omitted.
        init: schedule to start from: a ``SCHEDULES`` name, or ``"best"`` (default)
            for whichever registered schedule has the lowest error on ``x``.
        iters, lr: Adam iterations and learning rate on the log-gap logits.

    Returns the best schedule seen (lowest training error); its ``info`` records
    the sampler, steps, initial and final error.
    """
    fn = SAMPLERS[sampler]
    if getattr(fn, "stochastic", False):
        raise ValueError(f"sampler {sampler!r} is stochastic; schedules are tuned for deterministic samplers")
    opts = sampler_opts or {}
    if init != "best":
        get_sigmas(init, steps, sigma_min, sigma_max)  # validates the name and range early
    for key in ("s_churn", "eta"):
        if float(opts.get(key, 0) or 0) != 0:
            raise ValueError(f"sampler option {key}={opts[key]} makes {sampler!r} stochastic; "
                             "schedules are tuned for deterministic sampling")
    if steps < 3:  # no interior level to move: sigma_max, sigma_min (n = 2) and 0
        return WarpedSchedule([0.0, 1.0], name=f"tuned-{sampler}-{steps}")
    if reference is None:
        reference = pf_ode_reference(denoiser, x, sigma_max, sigma_min)
    x = x.to(torch.float64)
    if init == "best":
        with torch.no_grad():
            errs = {name: float((fn(denoiser, x, get_sigmas(name, steps, sigma_min, sigma_max), **opts)
                                 - reference).pow(2).mean()) for name in SCHEDULES}
        init = min(errs, key=lambda k: errs[k] if math.isfinite(errs[k]) else math.inf)
    init_sigmas = get_sigmas(init, steps, sigma_min, sigma_max)
    ls = init_sigmas[:-1].log()
    u = (ls[0] - ls) / (ls[0] - ls[-1])
    theta = (u[1:] - u[:-1]).clamp(min=1e-6).log().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)

    def error(th: Tensor) -> Tensor:
        out = fn(denoiser, x, _levels(th, sigma_min, sigma_max), **opts)
        return (out - reference).pow(2).mean()

    best_theta, best, first = theta.detach().clone(), math.inf, None
    iterator = range(iters)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"tuning {sampler} n={steps}", leave=False)
    for _ in iterator:
        loss = error(theta)
        value = float(loss.detach())
        first = value if first is None else first
        if not math.isfinite(value):
            break
        if value < best:
            best, best_theta = value, theta.detach().clone()
        (grad,) = torch.autograd.grad(loss, theta)
        opt.zero_grad()
        theta.grad = grad
        opt.step()
    with torch.no_grad():
        final = float(error(best_theta))
    sig = _levels(best_theta, sigma_min, sigma_max).detach()
    info = {"sampler": sampler, "steps": steps, "init": init, "mse_init": first, "mse_tuned": final,
            "sigma_min": sigma_min, "sigma_max": sigma_max, "sigmas": sig.tolist()}
    return WarpedSchedule.from_sigmas(sig, name=f"tuned-{sampler}-{steps}", info=info)


def rms_error(a: Tensor, b: Tensor) -> float:
    """Root-mean-square distance per sample, averaged over the batch."""
    return float((a.to(torch.float64) - b.to(torch.float64)).flatten(1).pow(2).mean(1).sqrt().mean())


def tune_many(denoiser, samplers: Sequence[str], steps: Sequence[int], x: Tensor, **kw) -> dict:
    """Tune a schedule for every (sampler, steps) pair sharing one reference solve."""
    ref = pf_ode_reference(denoiser, x, kw.get("sigma_max", 80.0), kw.get("sigma_min", 0.002))
    return {(s, n): tune_schedule(denoiser, s, n, x, reference=ref, **kw) for s in samplers for n in steps}
