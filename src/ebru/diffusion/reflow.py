"""Reflow, the math: straighten a flow model's paths by training on its own (noise, sample) pairs.

Reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast", sec. 2.3 and Alg. 1; "2-rectified flow") takes a
flow model, the *teacher*, draws pairs from its deterministic ODE, ``x0 = Phi(z)`` for noise ``z``
(:func:`make_pairs`), and trains a *student* on the straight lines between each pair::

    x_t = (1 - t) x0 + t n,    target velocity  n - x0                                       (1)

(:func:`reflow_loss`). The coupling (z, Phi(z)) is deterministic, so its lines cross far less than those
of independent (noise, data) draws, and the student's paths are straighter (Liu et al., Thm. 3.6): on a
perfectly straightened field every path is a line followed at constant speed and one Euler step is exact.

How it maps onto ebru (``shared/reference/wave2.md``, "How it maps onto ebru's D(x, sigma)").
ebru's variable is ``x = x_t / (1 - t) = x0 + sigma n`` with ``sigma = t / (1 - t)`` (``Precond(net,
"flow")``), so the line (1) is a line in ebru's x too, ``D* = x0`` along it, and the velocity MSE is ebru's
``flow`` weighting of the x0 error (``((1 + sigma) / sigma)^2 |D - x0|^2 = |v_hat - (n - x0)|^2``).

The noise, exactly. A pair's ``z`` is the standard normal draw of its seed, the draw
:func:`ebru.diffusion.sample` makes for that seed (so pair i is sample i of the teacher). ebru's samplers
start at ``sigma_max`` with ``x = sigma_max z``, i.e. at flow time ``T = sigma_max / (1 + sigma_max)`` with
``x_T = T z``, not at t = 1 with ``x_1 = z`` (``sigma = inf``). Liu et al.'s line through ``z`` itself
passes ``(1 - T) x0 = x0 / (1 + sigma_max)`` away from that start (1/81 of the data at ebru's 80), an error
a one-step student would carry into every sample. The line used here goes through ebru's start::

    n = z - x0 / sigma_max     (:func:`line_noise`),  so  x0 + sigma_max n = sigma_max z             (2)

i.e. ``x_t = (1 - t) x0 + t n`` passes ``x_T = T z`` exactly; its velocity is ``n - x0 = z - x0 / T``. A
student that learns the straight field then maps ebru's start ``sigma_max z`` to ``x0`` in one Euler step,
and in any number of Euler steps (each stays on the line). ``sigma_max = inf`` gives Liu et al.'s ``n = z``.

The time distribution of the loss (:func:`reflow_time`): ``uniform``, t ~ U(0, T] (Liu et al.'s, with t = 1
replaced by ebru's start T, since a student never runs above ``sigma_max``), the default; or ``lognormal``,
the flow training distribution ``ln sigma ~ N(p_mean, p_std^2)`` (SD3's logit-normal). A few-step student is
evaluated only on its grid, first at ``sigma_max``; logit-normal(0, 1) almost never draws there
(P(sigma > 20) = 0.13 %), uniform t draws t in [t(20), T] 3.6 % of the time. 2-RF++ (Lee et al. 2024)
makes the same point with a U-shaped t distribution.

- :func:`make_pairs`: the teacher's (noise, ODE sample) pairs, per-sample seeds, deterministic samplers only.
- :func:`line_noise`, :func:`reflow_loss`, :func:`reflow_time`: the loss and its time distribution.
- :func:`reflow_grid`: a reflowed student's N-step Euler grid, uniform in flow time from T to 0.
- :class:`CouplingDenoiser`: the exact minimiser of the reflow loss for a finite set of pairs (an oracle).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ebru.checks import one_of, positive_int

from .flow import sigma_to_t, t_to_sigma
from .loss import LogNormalSigma, denoising_loss
from .samplers import SAMPLERS, check_sigmas
from .tensors import check_finite_number, randn_like, seed_generators, sigma_batch

REFLOW_TIMES = ("uniform", "lognormal")


# ---------------------------------------------------------------------------------------- the pairs
def deterministic_sampler(sampler: str | Callable[..., Tensor], what: str = "reflow pairs") -> Callable[..., Tensor]:
    """The ``SAMPLERS`` entry (or callable) ``sampler``; ValueError for an unknown or stochastic one.

    A stochastic sampler (``ddpm``, the SDE samplers) draws no ODE solution, so its pairs are no coupling of
    the teacher's flow; the message lists the deterministic samplers.
    """
    fn = SAMPLERS.resolve(sampler)
    if getattr(fn, "stochastic", False):
        ok = ", ".join(k for k, f in SAMPLERS.items() if not f.stochastic)
        raise ValueError(f"{what} need a deterministic sampler (the teacher's ODE); {sampler!r} is stochastic "
                         f"(choose one of {ok})")
    return fn


def make_pairs(
    denoiser: Callable[..., Tensor],
    n: int,
    shape: Sequence[int],
    sigmas: Tensor | Sequence[float],
    sampler: str | Callable[..., Tensor] = "dpmpp_2m",
    seeds: Sequence[int] | int | None = None,
    batch: int = 64,
    *,
    cond: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """The teacher's (noise, sample) pairs: ``z_i`` and its deterministic ODE solution ``x0_i`` (Liu et al. 2022).

    Pair i draws ``z_i`` (shape ``shape``) from its own generator seeded ``seeds[i]``, exactly as
    :func:`ebru.diffusion.sample` does, starts the sampler at ``x = sigmas[0] * z_i`` and runs it down to
    ``sigmas[-1] = 0``: ``x0_i`` is ``sample(denoiser, ..., seeds=[seeds[i]])`` on the same grid. Pair i
    therefore depends on its seed alone, not on ``batch`` nor on its place in a batch (up to the batch
    dependence of the network's own arithmetic). See the module docstring for how ``z`` relates to the
    flow's t = 1 noise (the line through ebru's start, :func:`line_noise`).

    Args:
        denoiser: the teacher, ``D(x, sigma, **cond)``; a guided teacher is passed already guided (e.g.
            :class:`~ebru.diffusion.guidance.ClassifierFreeGuidance`).
        n: number of pairs.
        shape: one sample's shape, e.g. (C, H, W).
        sigmas: (steps + 1,) the sampler's levels, strictly from ``sigma_max`` down to exactly 0 (a
            ``SCHEDULES`` grid, e.g. ``get_sigmas("karras", 10, 0.002, 80)``).
        sampler: a deterministic ``SAMPLERS`` name or sampler callable (default ``dpmpp_2m``).
        seeds: one integer per pair, or a first seed (then ``seed, seed + 1, ...``); default ``0..n-1``.
        batch: pairs per sampler call.
        cond: condition keywords for the denoiser; a tensor whose first dimension is ``n`` holds one row per
            pair (e.g. ``class_labels`` (n,)) and is sliced with the batch, any other value is passed as is.
        device: where the denoiser runs; dtype: the noise and the pairs' dtype.
        progress: a progress bar over the batches.

    Returns ``(z, x0)``, two tensors of shape ``(n, *shape)`` and ``dtype``, on the CPU.

    Raises ValueError (before any sampling) for a bad count, shape, seed list or batch, an unknown or
    stochastic sampler, or a ``sigmas`` that does not run from above 0 down to exactly 0.
    """
    n = positive_int("number of pairs", n)
    batch = positive_int("pair batch size", batch)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes (one sample's), got {shape}")
    if seeds is None:
        seeds = list(range(n))
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds, seeds + n))
    seeds = list(seeds)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} pairs")
    seed_generators(seeds)  # refuses a seed that is not an integer, before any sampling
    step_fn = deterministic_sampler(sampler)
    sigmas, _ = check_sigmas(torch.as_tensor(sigmas, dtype=torch.float64) if not isinstance(sigmas, Tensor)
                             else sigmas)
    if len(sigmas) < 2 or not float(sigmas[0]) > 0 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must run from sigma_max > 0 down to exactly 0 (a pair is the ODE's solution at "
                         f"sigma = 0), got {len(sigmas)} levels from {float(sigmas[0]):g} to {float(sigmas[-1]):g}")
    sigmas = sigmas.to(device)
    cond = dict(cond or {})
    rows = {k for k, v in cond.items() if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n}

    from tqdm.auto import tqdm

    zs, xs = [], []
    starts = range(0, n, batch)
    for i in tqdm(starts, desc=f"reflow pairs ({n})", unit="batch", disable=not progress, leave=False):
        j = min(i + batch, n)
        z = randn_like(torch.empty((j - i, *shape), dtype=dtype), seed_generators(seeds[i:j]))
        part = {k: (v[i:j].to(device) if k in rows else v) for k, v in cond.items()}
        d = functools.partial(denoiser, **part) if part else denoiser
        with torch.no_grad():  # sample()'s start: noise times sigmas[0] in the noise's dtype
            x0 = step_fn(d, z.to(device) * sigmas[0].to(dtype), sigmas)
        zs.append(z)
        xs.append(x0.to("cpu", dtype))
    return torch.cat(zs), torch.cat(xs)


# ---------------------------------------------------------------------------------------- the loss
def line_noise(z: Tensor, x0: Tensor, sigma_max: float) -> Tensor:
    """The t = 1 noise ``n = z - x0 / sigma_max`` of the line from ``x0`` through ebru's start ``sigma_max z``, eq. (2).

    ``x0 + sigma_max n = sigma_max z`` exactly; ``sigma_max = inf`` gives ``z`` (Liu et al.'s line).
    Shapes (B, ...). Raises ValueError unless ``sigma_max`` is a number > 0 (``inf`` allowed).
    """
    s = float(sigma_max)
    if math.isinf(s) and s > 0:
        return z
    s = check_finite_number("sigma_max", s, positive=True)
    return z - x0 / s


def reflow_loss(student: Callable[..., Tensor], z: Tensor, x0: Tensor, sigma: Tensor | float, *,
                sigma_max: float, cond: Mapping[str, Any] | None = None) -> Tensor:
    """Per-sample reflow loss (B,): the velocity MSE on the straight line of each pair (Liu et al. 2022, eq. 1).

    ``x_t = (1 - t) x0 + t n`` at ``t = sigma / (1 + sigma)``, target velocity ``n - x0``, with ``n =
    line_noise(z, x0, sigma_max)``; in ebru's form ``x = x0 + sigma n`` and the loss is ``((1 + sigma) /
    sigma)^2 mean |D(x, sigma) - x0|^2`` (the ``flow`` weighting), which is ``mean |v_hat - (n - x0)|^2`` for
    any Denoiser. Zero exactly for a student whose velocity is ``n - x0`` along each line.

    Args:
        student: the Denoiser being trained, ``D(x, sigma, **cond)``.
        z, x0: (B, ...) the pairs (:func:`make_pairs`).
        sigma: (B,) noise levels > 0 (:func:`reflow_time`), or one number.
        sigma_max: where the student's sampler starts (the pairs' ``sigmas[0]``); ``inf`` for Liu et al.'s line.
        cond: the student's condition keywords (e.g. ``class_labels`` (B,)).
    """
    n = line_noise(z, x0, sigma_max)
    return denoising_loss(student, x0, sigma_batch(sigma, x0), n, "flow", **dict(cond or {}))


class UniformTimeSigma:
    """Flow time ``t ~ U(0, T]``, ``T = sigma_max / (1 + sigma_max)``, as noise levels ``sigma = t / (1 - t)``.

    Liu et al.'s reflow draws t uniformly in [0, 1]; here t = 1 is ebru's start T (a student never runs
    above ``sigma_max``). ``t = T (1 - u)`` with u ~ U[0, 1), so t is never 0. Calling it with ``(n,
    generator)`` returns n float64 sigmas in (0, sigma_max], shape (n,).
    """

    def __init__(self, sigma_max: float):
        self.sigma_max = check_finite_number("sigma_max", sigma_max, positive=True)
        self.t_max = sigma_to_t(self.sigma_max)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        sigma = t_to_sigma(self.t_max * (1 - u))
        return torch.where(u == 0, torch.full_like(sigma, self.sigma_max), sigma)  # exact at the start


def reflow_time(kind: str, sigma_max: float, p_mean: float = 0.0, p_std: float = 1.0) -> Callable[..., Tensor]:
    """The reflow loss's noise-level distribution, ``(n, generator) -> (n,)`` float64 sigmas.

    ``uniform``: :class:`UniformTimeSigma` (t ~ U(0, T], the default of the reflow task); ``lognormal``:
    ``ln sigma ~ N(p_mean, p_std^2)``, the flow training distribution (SD3's logit-normal; ``p_mean = 0``,
    ``p_std = 1`` in ebru's flow recipes). See the module docstring for the choice. Raises ValueError for
    another ``kind`` (naming the nearest).
    """
    one_of("reflow time distribution", kind, REFLOW_TIMES)
    if kind == "uniform":
        return UniformTimeSigma(sigma_max)
    return LogNormalSigma(p_mean, p_std)


def reflow_grid(steps: int, sigma_max: float) -> Tensor:
    """A reflowed student's ``steps``-step grid: ``steps + 1`` float64 levels uniform in flow time from ``T`` to 0.

    ``t_k = T (1 - k / N)``, ``sigma_k = t_k / (1 - t_k)``: first exactly ``sigma_max``, last exactly 0. On
    a straight path each Euler step covers an equal share of the line. (ebru's ``flow`` schedule is uniform
    in t too but ends at ``sigma_min`` before its final step to 0, which would spend one of a few steps on
    almost nothing.) Raises ValueError for a bad ``steps`` or ``sigma_max``.
    """
    n = positive_int("steps", steps)
    s_max = check_finite_number("sigma_max", sigma_max, positive=True)
    t = sigma_to_t(s_max) * (1 - torch.arange(n + 1, dtype=torch.float64) / n)
    s = t_to_sigma(t)
    s[0], s[-1] = s_max, 0.0
    return s


# ---------------------------------------------------------------------------------------- the oracle
class CouplingDenoiser:
    """The exact minimiser of the reflow loss for a finite set of pairs: ``D(x, sigma) = x0`` of the nearest line.

    The loss ``E |v(x_t, t) - (n - x0)|^2`` over a coupling is minimised by ``v*(x_t, t) = E[n - x0 | x_t]``;
    for finitely many pairs whose lines do not meet at time t, the point ``x0_i + sigma n_i`` of line i (ebru's
    x) determines the pair, so ``D*(x, sigma) = x0_i`` there (velocity ``n_i - x0_i``, the straight field).
    Off the lines it answers the pair of the nearest line point. Every Euler step from a point of line i
    stays on it, so the Euler sampler maps ``sigma_max z_i`` to ``x0_i`` in any number of steps.

    Args:
        z, x0: (P, ...) the pairs; sigma_max: where their lines start (:func:`line_noise`).

    Computes (B, P) distances per call: an oracle for tests and small sets, not a model.
    """

    def __init__(self, z: Tensor, x0: Tensor, sigma_max: float):
        self.x0 = x0.to(torch.float64).flatten(1)
        self.noise = line_noise(z.to(torch.float64), x0.to(torch.float64), sigma_max).flatten(1)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x).to(torch.float64)
        points = self.x0[None] + s[:, None, None] * self.noise[None]  # (B, P, d)
        dist = (x.to(torch.float64).flatten(1)[:, None] - points).pow(2).sum(-1)
        return self.x0[dist.argmin(1)].reshape(x.shape).to(x.dtype)
