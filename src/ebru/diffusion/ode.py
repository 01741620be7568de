"""A tight-tolerance reference solver for the probability-flow ODE.

:func:`solve_pf_ode` integrates ``dx/dsigma = (x - D(x, sigma)) / sigma`` with an
adaptive Dormand-Prince 5(4) method in ``u = log sigma`` (where the ODE reads
``dx/du = x - D``), in float64. It is what benchmarks and schedule tuning
compare few-step samplers against: a converged solution from the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .tensors import check_finite_number, sigma_batch

# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dopri5(f: Callable[[float, Tensor], Tensor], y: Tensor, u: float, u_end: float, *, rtol: float = 1e-8,
           atol: float = 1e-9, max_steps: int = 100_000, first_step: float = 0.05,
           error_norm: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Integrate ``dy/du = f(u, y)`` from ``u`` to ``u_end`` with adaptive Dormand-Prince 5(4).

    ``y`` is (B, ...): the scaled error is measured per sample (``error_norm``, by
    default the RMS over its entries) and one step size is shared by the batch (the
    worst sample decides). Raises ``RuntimeError`` if ``max_steps`` is exceeded.
    """
    direction = 1.0 if u_end > u else -1.0
    h = direction * min(abs(u_end - u), first_step)
    k1 = f(u, y)
    steps = 0
    while direction * (u_end - u) > 1e-14:
        if steps >= max_steps:
            raise RuntimeError(f"dopri5: no convergence after {max_steps} steps")
        steps += 1
        if direction * (u + h - u_end) > 0:
            h = u_end - u
        ks = [k1]
        for i in range(1, 7):
            yi = y + h * sum(a * k for a, k in zip(_A[i], ks, strict=False))
            ks.append(f(u + _C[i] * h, yi))
        y5 = y + h * sum(b * k for b, k in zip(_B5, ks, strict=True) if b)
        y4 = y + h * sum(b * k for b, k in zip(_B4, ks, strict=True) if b)
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        scaled = (y5 - y4) / scale
        err = float((error_norm(scaled) if error_norm else scaled.pow(2).flatten(1).mean(1).sqrt()).max())
        if err <= 1.0:
            u, y, k1 = u + h, y5, ks[6]  # first-same-as-last
        factor = 5.0 if err == 0 else min(5.0, max(0.2, 0.9 * err ** (-0.2)))
        h = h * factor
    return y


@torch.no_grad()
def solve_pf_ode(denoiser, x: Tensor, sigma_from: float, sigma_to: float, *, rtol: float = 1e-8,
                 atol: float = 1e-9, max_steps: int = 100_000) -> Tensor:
    """Integrate the PF-ODE from ``sigma_from`` to ``sigma_to`` (both > 0) to tolerance.

    One adaptive step size is shared by the batch (the worst sample decides).
    Returns float64. Raises ``RuntimeError`` if ``max_steps`` is exceeded.
    """
    s0 = check_finite_number("sigma_from", sigma_from, positive=True)
    s1 = check_finite_number("sigma_to", sigma_to, positive=True)

    def f(u_: float, y_: Tensor) -> Tensor:
        return y_ - denoiser(y_, sigma_batch(math.exp(u_), y_)).to(torch.float64)

    try:
        return dopri5(f, x.to(torch.float64), math.log(s0), math.log(s1), rtol=rtol, atol=atol, max_steps=max_steps)
    except RuntimeError as e:
        raise RuntimeError(str(e).replace("dopri5", "solve_pf_ode")) from None
