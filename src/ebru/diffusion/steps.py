"""Step schedules: which noise levels a sampler visits.

``SCHEDULES[name](n, sigma_min, sigma_max, **opts)`` returns a float64 tensor of
``n + 1`` strictly descending levels: ``sigma_max`` first, ``sigma_min`` at index
``n - 1`` (for n >= 2), and exactly ``0`` last, so the final step of every
sampler is an explicit step to clean data.

- ``karras``: EDM's rho-warped spacing (rho = 7).
- ``log_snr``: uniform in log sigma (= log-SNR; k-diffusion's "exponential").
- ``vp_uniform``: uniform in the time of the continuous VP schedule
  (DDIM's uniform timestep spacing, started at the top as Lin et al. insist).
- ``linear``: uniform in sigma (poor; kept as a baseline).
- ``flow``: uniform in the rectified-flow time ``t = sigma / (1 + sigma)`` and then SD3's ``shift``
  (diffusers' ``FlowMatchEulerDiscreteScheduler``), for flow models (any model samples with it).
- :class:`WarpedSchedule`: any monotone warp of log sigma, which is how ebru's
  tuned schedules (:mod:`ebru.diffusion.tuning`) are stored and resized.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .flow import sigma_to_t, t_to_sigma
from .noise import vp_continuous_sigma, vp_continuous_t
from .registry import Registry
from .tensors import check_finite_number

SCHEDULES = Registry("schedule")


def check_schedule_args(n: int, sigma_min: float, sigma_max: float) -> tuple[int, float, float]:
    """Validate ``(n, sigma_min, sigma_max)``; raise ValueError naming the problem."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"steps must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    lo = check_finite_number("sigma_min", sigma_min, positive=True)
    hi = check_finite_number("sigma_max", sigma_max, positive=True)
    if lo >= hi:
        raise ValueError(f"sigma_min ({lo}) must be smaller than sigma_max ({hi})")
    return n, lo, hi


def _finish(levels: Tensor) -> Tensor:
    return torch.cat([levels.to(torch.float64), levels.new_zeros(1, dtype=torch.float64)])


def _ramp(n: int) -> Tensor:
    """n points from 0 to 1 inclusive (a single 0 for n = 1)."""
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


@SCHEDULES.register("karras")
def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
    rho = check_finite_number("rho", rho, positive=True)
    a, b = hi ** (1 / rho), lo ** (1 / rho)
    return _finish((a + _ramp(n) * (b - a)) ** rho)


@SCHEDULES.register("log_snr")
def log_snr(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log sigma (half the log-SNR up to sign)."""
    n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
    return _finish((math.log(hi) + _ramp(n) * (math.log(lo) - math.log(hi))).exp())


@SCHEDULES.register("vp_uniform")
def vp_uniform(n: int, sigma_min: float, sigma_max: float, beta_min: float = 0.1, beta_d: float = 19.9) -> Tensor:
    """Uniform in the time t of the continuous VP schedule, from t(sigma_max) to t(sigma_min)."""
    n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
    t_hi = vp_continuous_t(torch.tensor(hi, dtype=torch.float64), beta_min, beta_d)
    t_lo = vp_continuous_t(torch.tensor(lo, dtype=torch.float64), beta_min, beta_d)
    levels = vp_continuous_sigma(t_hi + _ramp(n) * (t_lo - t_hi), beta_min, beta_d)
    levels[0], levels[-1] = hi, lo if n > 1 else hi  # exact endpoints despite round-off
    return _finish(levels)


@SCHEDULES.register("linear")
def linear(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in sigma."""
    n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
    return _finish(hi + _ramp(n) * (lo - hi))


@SCHEDULES.register("flow")
def flow(n: int, sigma_min: float, sigma_max: float, shift: float = 1.0) -> Tensor:
    """Uniform in flow time t, then shifted: diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps``.

    diffusers takes ``t = linspace(1, t_min, n)`` and ``t' = shift t / (1 + (shift - 1) t)``
    (Esser et al. 2024, sec. 5.3.2), i.e. ``sigma' = shift * sigma``. Here the levels are
    ``shift * sigma(u)`` with u uniform in t between ``t(sigma_max / shift)`` and ``t(sigma_min / shift)``,
    so that the shifted levels start at exactly ``sigma_max`` and reach exactly ``sigma_min`` (the
    contract of every schedule). ``sigma_max`` stands in for diffusers' t = 1 (sigma = inf): at 80 the
    first level is t = 80/81, and starting from pure noise there drops the ``(1 - t) x0`` term, 1/81 of
    the data (the approximation ebru already makes for VP models). ``shift`` > 1 spends more steps at
    high noise; it must be a finite number > 0, else ValueError.
    """
    n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
    shift = check_finite_number("shift", shift, positive=True)
    u_hi, u_lo = sigma_to_t(hi / shift), sigma_to_t(lo / shift)
    levels = shift * t_to_sigma(u_hi + _ramp(n) * (u_lo - u_hi))
    levels[0], levels[-1] = hi, lo if n > 1 else hi  # exact endpoints despite round-off
    return _finish(levels)


class WarpedSchedule:
    """A schedule given by a monotone warp ``u(r)`` of log sigma, r in [0, 1].

    ``sigma(r) = exp(log sigma_max + u(r) (log sigma_min - log sigma_max))`` with
    ``u(0) = 0``, ``u(1) = 1``; ``u`` is piecewise linear through ``knots``
    (increasing values at evenly spaced r). For ``n = len(knots)`` steps it
    reproduces the knots exactly; for other ``n`` it interpolates, so one tuned
    shape serves nearby step counts and other sigma ranges.
    """

    def __init__(self, knots: Sequence[float], name: str = "warped", info: dict | None = None):
        k = torch.as_tensor(list(knots), dtype=torch.float64)
        if k.ndim != 1 or len(k) < 2:
            raise ValueError("a warped schedule needs at least 2 knots")
        if abs(float(k[0])) > 1e-9 or abs(float(k[-1]) - 1) > 1e-9 or not bool((k[1:] > k[:-1]).all()):
            raise ValueError("warp knots must increase strictly from 0 to 1")
        self.knots = k
        self.name = name
        self.info = dict(info or {})

    def warp(self, r: Tensor) -> Tensor:
        m = len(self.knots) - 1
        pos = r.clamp(0, 1) * m
        lo = pos.floor().long().clamp(max=m - 1)
        w = pos - lo
        return (1 - w) * self.knots[lo] + w * self.knots[lo + 1]

    def __call__(self, n: int, sigma_min: float, sigma_max: float) -> Tensor:
        n, lo, hi = check_schedule_args(n, sigma_min, sigma_max)
        u = self.warp(_ramp(n))
        return _finish((math.log(hi) + u * (math.log(lo) - math.log(hi))).exp())

    @classmethod
    def from_sigmas(cls, sigmas: Tensor, name: str = "warped", info: dict | None = None) -> WarpedSchedule:
        """The warp whose ``n``-step schedule is exactly ``sigmas`` (n + 1 levels ending in 0)."""
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach()
        if len(s) < 3 or float(s[-1]) != 0.0:
            raise ValueError("need at least 2 nonzero levels followed by a final 0")
        ls = s[:-1].log()
        return cls(((ls[0] - ls) / (ls[0] - ls[-1])).tolist(), name=name, info=info)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "knots": self.knots.tolist(), "info": self.info}, indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WarpedSchedule:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(d["knots"], name=d.get("name", "warped"), info=d.get("info"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a warped-schedule file ({e})") from None

    def __repr__(self) -> str:
        return f"WarpedSchedule({self.name!r}, {len(self.knots)} knots)"


def get_sigmas(schedule: str | object, n: int, sigma_min: float, sigma_max: float, **opts) -> Tensor:
    """Resolve a schedule by name (or take a callable) and build ``n + 1`` levels."""
    fn = SCHEDULES.resolve(schedule)
    check_schedule_args(n, sigma_min, sigma_max)
    sig = torch.as_tensor(fn(n, sigma_min, sigma_max, **opts), dtype=torch.float64)
    if sig.shape != (n + 1,) or float(sig[-1]) != 0.0 or not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError(f"schedule {schedule!r} must return {n + 1} strictly descending levels ending in 0")
    return sig
