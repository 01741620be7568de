"""Consistency models, the math: the parameterisation, ECT's loss, consistency distillation.

A consistency function ``f(x, sigma)`` maps every point of a probability-flow ODE trajectory to the
trajectory's point at ``sigma_min`` (Song et al. 2023, "Consistency Models", Def. 1), so one call turns
noise into a sample. The boundary condition ``f(x, sigma_min) = x`` is built into the parameterisation
(Song et al. 2023, eq. 7; ECT, Geng et al. 2025, "Consistency Models Made Easy")::

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),    c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)      (1)

with ``sd`` = sigma_data: at ``sigma = sigma_min``, ``c_skip = 1`` and ``c_out = 0`` exactly.

**The teacher's preconditioning.** ECT tunes a pretrained EDM model into a consistency model: the network F
keeps EDM's ``c_in = 1 / sqrt(sigma^2 + sd^2)`` and ``c_noise = ln(sigma) / 4``; only ``c_skip`` and ``c_out``
change, from EDM's ``sd^2 / (sigma^2 + sd^2)`` and ``sigma sd / sqrt(sigma^2 + sd^2)`` to (1).
:class:`ConsistencyDenoiser` wraps the teacher's *Denoiser* ``D = c_skip^EDM x + c_out^EDM F`` (ebru's
:class:`~ebru.diffusion.Precond`, whatever its prediction) rather than its raw network::

    f = c_skip x + rho (D - c_skip^EDM x),      rho = c_out / c_out^EDM = (sigma - sigma_min) / sigma            (2)

For an EDM teacher the bracket is ``c_out^EDM F``, so (2) is (1) with the teacher's very network, c_in and
c_noise: ECT's ``ECMPrecond``. For an eps, v, x0 or flow teacher (2) reads the network's output in EDM's
coordinates, ``F = (D - c_skip^EDM x) / c_out^EDM``. Either way ``f -> D`` for ``sigma >> sigma_min`` (the
difference is O(sigma_min / sigma)), so the student starts as the teacher's denoiser, and ``f(x, sigma_min)
= x`` exactly for any network.

**ECT's loss** (Geng et al. 2025, sec. 3; ``locuslab/ect`` ``training/loss.py``). Per sample::

    t ~ LogNormal(P_mean, P_std)          (ECT: -1.1, 2.0), kept within [sigma_min, sigma_max]
    r = max(t (1 - q^-(s + 1) n(t)), sigma_min),   n(t) = 1 + k sigmoid(-b t)   (the "sigmoid" mapping)         (3)
    x_t = x0 + t eps,  x_r = x0 + r eps   (one noise: consistency *tuning* needs no teacher forward)
    L = (sqrt(|f(x_t, t) - sg f(x_r, r)|^2 + c^2) - c) / (t - r)                                               (4)

``s`` is the training stage: ``t - r`` shrinks by ``q`` (ECT: 2) at every stage (:func:`ect_stage`), from
diffusion training (stage 0 sends small ``t`` to ``r = sigma_min``) towards the consistency condition.
``sg`` is stop-gradient: the target is the student itself, under the same dropout mask, without
gradient. ``|.|^2`` sums over the sample's dimensions; ``sqrt(d^2 + c^2) - c`` is the pseudo-Huber metric
(iCT, Song & Dhariwal 2024: ``c = 0.00054 sqrt(dim)``) and ``1 / (t - r)`` ECT's weighting. ECT clamps
``r`` at 0 with target ``x0``; here ``r >= sigma_min``, where the target ``f(x_r, sigma_min) = x_r`` is what
the boundary condition makes it.

For data concentrated at one point every trajectory is the ray ``x = mu + sigma eps``, so ``x_r`` lies on
``x_t``'s trajectory and (4) is exactly zero at the exact consistency function. For spread-out data
``x0 + r eps`` is on the trajectory only on average over ``x0`` given ``x_t`` (``E[x_r | x_t]`` is the Euler
step below), which is why ECT shrinks ``t - r`` as training goes on.

**Consistency distillation** (Song et al. 2023, Alg. 2; LCM, Luo et al. 2023) for a guided teacher: ``x_r``
is one Euler (= DDIM) step of the *teacher's* guided ODE from ``x_t`` (:func:`cd_point`)::

    x_r = x_t + (r - t) (x_t - D_w(x_t, t)) / t                                                               (5)

and the loss is (4) with that ``x_r``. The guidance scale ``w`` is a student input exactly as in
progressive distillation (:class:`~ebru.diffusion.distill.GuidanceInput`, LCM's w-conditioning).

**Sampling**: ``SAMPLERS["consistency"]`` (:func:`ebru.diffusion.samplers.consistency`), Song et al. 2023,
Alg. 1: ``x = f(x_T, sigma_0)``, then for each next level ``x = f(x + sqrt(sigma_i^2 - sigma_min^2) z,
sigma_i)``. ECT samples two steps at ``sigma = 80`` then ``0.821``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebru.checks import finite_number, positive_int

from .defaults import SAMPLING
from .distill import ddim_step
from .tensors import sigma_batch, sigma_view

ECT_P_MEAN, ECT_P_STD = -1.1, 2.0  # ECT's log-normal noise levels (ct_train.py --mean, --std)
ECT_Q, ECT_K, ECT_B = 2.0, 8.0, 1.0  # the Delta t decay per stage and the sigmoid mapping's k, b (ECT's defaults)
ECT_LAST_SIGMA = 0.821  # ECT's (and iCT's) second level of 2-step sampling, after sigma_max
HUBER_PER_SQRT_DIM = 0.00054  # iCT's pseudo-Huber constant: c = 0.00054 sqrt(dim)


# ---------------------------------------------------------------------------------------- the parameterisation
def consistency_scalings(sigma: Tensor, sigma_min: float, sigma_data: float) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of eq. (1) at ``sigma`` (any shape): exactly (1, 0) at ``sigma = sigma_min``."""
    sd2 = sigma_data**2
    return sd2 / ((sigma - sigma_min) ** 2 + sd2), (sigma - sigma_min) * sigma_data / (sigma**2 + sd2).sqrt()


class ConsistencyDenoiser(nn.Module):
    """A consistency function ``f(x, sigma, **cond)`` around a teacher's Denoiser, eq. (2).

    Args:
        denoiser: the network as a Denoiser (a :class:`~ebru.diffusion.Precond`, any prediction); it keeps its
            ``c_in`` and ``c_noise``.
        sigma_min: the boundary level: ``f(x, sigma_min) = x`` exactly (default EDM's 0.002).
        sigma_data: ``sd`` of eq. (1) (default 0.5, EDM's for images in [-1, 1]).

    Called like a Denoiser (``x`` (B, ...), ``sigma`` a number or (B,) tensor, every ``sigma >= sigma_min``),
    so samplers, guidance and :class:`~ebru.diffusion.distill.GuidanceInput` take it unchanged. Raises
    ValueError for a ``sigma`` below ``sigma_min`` (a consistency function is defined on [sigma_min, sigma_max]).
    """

    def __init__(self, denoiser: Callable[..., Tensor], sigma_min: float = SAMPLING.sigma_min,
                 sigma_data: float = 0.5):
        super().__init__()
        self.denoiser = denoiser
        self.sigma_min = finite_number("consistency sigma_min", sigma_min, positive=True)
        self.sigma_data = finite_number("consistency sigma_data", sigma_data, positive=True)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x)
        if bool((s.detach() < self.sigma_min).any()):
            raise ValueError(f"a consistency model is defined for sigma >= sigma_min = {self.sigma_min:g}, "
                             f"got sigma = {float(s.detach().min()):g}")
        sv = sigma_view(s, x)
        c_skip, _ = consistency_scalings(sv, self.sigma_min, self.sigma_data)
        rho = (sv - self.sigma_min) / sv
        c_skip_edm = self.sigma_data**2 / (sv**2 + self.sigma_data**2)
        d = self.denoiser(x, s, **cond).to(x.dtype)
        f = (c_skip - rho * c_skip_edm) * x + rho * d
        return torch.where(sv == self.sigma_min, x, f)  # the boundary, exactly, whatever the network returns


# ---------------------------------------------------------------------------------------- ECT's schedule
def ect_stage(images_seen: int, stage_images: int, stages: int) -> int:
    """The training stage ``s`` of eq. (3): ``images_seen // stage_images``, at most ``stages - 1``.

    ECT reduces ``t - r`` by ``q`` every ``double`` ticks (``cur_tick // double_ticks``); counted here in
    images so that it does not depend on the batch size. Raises ValueError for counts that are not integers
    (``images_seen >= 0``, the others >= 1).
    """
    seen = positive_int("images seen", images_seen, minimum=0)
    return min(seen // positive_int("stage images", stage_images), positive_int("stages", stages) - 1)


def ect_r(t: Tensor, stage: int, *, q: float = ECT_Q, k: float = ECT_K, b: float = ECT_B,
          sigma_min: float = SAMPLING.sigma_min) -> Tensor:
    """The level ``r < t`` of eq. (3) for noise levels ``t`` (any shape) at training ``stage``.

    ``r = max(t (1 - q^-(stage + 1) (1 + k sigmoid(-b t))), sigma_min)`` (ECT's "sigmoid" mapping, Geng et al.
    2025, eq. 18, with r kept at or above the boundary). Same dtype as ``t``.
    """
    decay = float(q) ** -(positive_int("stage", stage, minimum=0) + 1)
    ratio = 1 - decay * (1 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=sigma_min)


def pseudo_huber(sq: Tensor, c: float) -> Tensor:
    """``sqrt(sq + c^2) - c`` of squared distances ``sq`` (any shape): ~``sq / 2c`` near 0, ~``sqrt(sq)`` far."""
    return (sq + c * c).sqrt() - c


def default_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant ``0.00054 sqrt(dim)`` for samples of ``dim`` numbers (784 -> 0.0151)."""
    return HUBER_PER_SQRT_DIM * math.sqrt(positive_int("sample size", dim))


# ---------------------------------------------------------------------------------------- the losses
def consistency_loss(f: Callable[..., Tensor], x_t: Tensor, t: Tensor, x_r: Tensor, r: Tensor, *,
                     huber_c: float, cond: dict[str, Any] | None = None) -> Tensor:
    """Per-sample loss (4), (B,): ``(pseudo_huber(|f(x_t, t) - sg f(x_r, r)|^2, c)) / (t - r)``.

    Args:
        f: the consistency function being trained, ``f(x, sigma, **cond)``.
        x_t, x_r: (B, ...) the two points; ``t``, ``r``: (B,) their levels, ``t >= r``.
        huber_c: the pseudo-Huber constant c > 0.
        cond: condition keywords of ``f`` (class labels, a guidance scale).

    The target ``f(x_r, r)`` is computed without gradient under the same random state as ``f(x_t, t)``, so a
    network with dropout drops the same units in both (ECT's shared dropout mask). A sample with ``t == r``
    (only ``t = sigma_min``, where both points are the boundary) has loss 0.
    """
    c = finite_number("pseudo-Huber c", huber_c, positive=True)
    cond = dict(cond or {})
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(x_t.device) if x_t.is_cuda else None
    f_t = f(x_t, t, **cond)
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, x_t.device)
    with torch.no_grad():
        f_r = f(x_r, r, **cond)
    sq = ((f_t - f_r.to(f_t.dtype)) ** 2).flatten(1).sum(1)
    gap = (t - r).to(sq.dtype)
    moving = gap > 0
    return torch.where(moving, pseudo_huber(sq, c) / torch.where(moving, gap, torch.ones_like(gap)), 0.0 * sq)


def ect_loss(f: Callable[..., Tensor], x0: Tensor, noise: Tensor, t: Tensor, r: Tensor, *, huber_c: float,
             cond: dict[str, Any] | None = None) -> Tensor:
    """ECT's per-sample consistency-tuning loss (B,): (4) with ``x_t = x0 + t noise``, ``x_r = x0 + r noise``.

    ``x0``, ``noise``: (B, ...); ``t``, ``r``: (B,) levels from :func:`ect_r`. No teacher: the data and the
    student itself give the target (Geng et al. 2025).
    """
    x_t = x0 + sigma_view(t, x0) * noise
    x_r = x0 + sigma_view(r, x0) * noise
    return consistency_loss(f, x_t, t, x_r, r, huber_c=huber_c, cond=cond)


def cd_point(teacher: Callable[..., Tensor], x_t: Tensor, t: Tensor, r: Tensor, **cond: Any) -> Tensor:
    """``x_r`` of eq. (5): one Euler (= DDIM) step of the teacher's ODE from ``(x_t, t)`` to ``r``, no gradient.

    ``teacher`` is a Denoiser ``D(x, sigma, **cond)``, guided or not (e.g.
    :class:`~ebru.diffusion.distill.PerSampleGuidance`); ``x_t`` (B, ...), ``t``, ``r`` (B,). The same step as
    ``SAMPLERS["euler"]`` over ``[t, r]``.
    """
    with torch.no_grad():
        return ddim_step(x_t, teacher(x_t, t, **cond).to(x_t.dtype), t, r)


def cd_loss(f: Callable[..., Tensor], teacher: Callable[..., Tensor], x0: Tensor, noise: Tensor, t: Tensor,
            r: Tensor, *, huber_c: float, cond: dict[str, Any] | None = None) -> Tensor:
    """Consistency-distillation per-sample loss (B,): (4) with ``x_r`` the teacher's Euler step (5) from
    ``x_t = x0 + t noise``. ``cond`` goes to both the teacher and the student (class labels and, for a student
    that takes the guidance scale as an input, ``guidance``)."""
    cond = dict(cond or {})
    x_t = x0 + sigma_view(t, x0) * noise
    x_r = cd_point(teacher, x_t, t, r, **cond)
    return consistency_loss(f, x_t, t, x_r, r, huber_c=huber_c, cond=cond)
