"""Few-step distillation, the math: progressive distillation in EDM (sigma) form.

Progressive distillation (Salimans & Ho 2022, Algorithm 2) trains a student to take in ONE
deterministic DDIM step what its teacher takes in TWO, then makes the student the next teacher and
halves again: 2N -> N -> N/2 -> ... steps. Written for ebru's Denoiser ``D(x, sigma)`` (``x = x0 +
sigma eps``), the deterministic DDIM step is Euler's step in sigma (Karras et al. 2022, eq. 3)::

    x' = x + (sigma' - sigma) (x - D(x, sigma)) / sigma                                   (1)

The teacher goes ``sigma_t -> sigma_mid -> sigma_s`` with two steps (1) and lands on ``x_s``. The
student's regression target ``x0~`` is the denoiser output for which one step (1) from ``sigma_t``
lands exactly on ``x_s``; solving the linear step (1) for D gives (Salimans & Ho, Alg. 2, with
alpha = 1 in the variance-exploding view)::

    x0~ = (sigma_t x_s - sigma_s x_t) / (sigma_t - sigma_s)                                (2)

At ``sigma_s = 0`` (the last step) (2) is ``x_s`` itself: the teacher's two-step result.

Grids. The first teacher samples an ``n_T``-step grid of one of ebru's schedules (e.g. Karras rho = 7,
:mod:`ebru.diffusion.steps`); each student's N-step grid is every other level of its teacher's
2N-step grid (:func:`student_sigmas`), so every grid of the halving nests in the first one, and the
student's interval ``[sigma_2i, sigma_2i+2]`` is exactly two of its teacher's. The grid a student
was made for is not an ordinary ``n``-step schedule (``karras(N)`` ends at ``sigma_min``, the halved
grid does not), so a student package records its grid and samples it through :class:`GridSchedule`.

Weighting. Salimans & Ho train on ``max(|x - x^|^2, |eps - eps^|^2)``, the "truncated SNR"
weighting: on the x0 error it is ``lambda(sigma) = max(SNR, 1) = max(1 / sigma^2, 1)`` in the VE view
(SNR = alpha^2 / sigma_VP^2 = 1 / sigma^2). It is the default here; any of ebru's
:data:`~ebru.diffusion.loss.WEIGHTINGS` (e.g. ``edm``) may be chosen instead.

Guidance. Everything here is a pure function of tensors and Denoiser callables, so a guided teacher is
just another Denoiser: :class:`~ebru.diffusion.guidance.ClassifierFreeGuidance` for one scale, or
:class:`PerSampleGuidance` for one scale per sample (read from its ``guidance=`` keyword). A student that
takes the scale as an input (LCM's w-conditioning, Luo et al. 2023) is a :class:`GuidanceInput`: the scale's
:func:`guidance_features` enter its network's pooled-vector input, whose last layer starts at zero, so the
student starts as exactly the teacher and needs one network call per step instead of two.

Methods. :data:`DISTILL_METHODS` names the methods ``ebru distill`` knows; :data:`IMPLEMENTED_METHODS` those it
runs: progressive distillation (here), consistency tuning / distillation (:mod:`ebru.diffusion.consistency`,
which reuses :func:`ddim_step` as consistency distillation's teacher step) and reflow of flow models
(:mod:`ebru.diffusion.reflow`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ebru.checks import one_of, positive_int

from .loss import WEIGHTINGS
from .tensors import sigma_batch, sigma_view

DISTILL_METHODS = ("progressive", "consistency", "reflow")
IMPLEMENTED_METHODS = ("progressive", "consistency", "reflow")
TRUNCATED_SNR = "truncated_snr"


# ---------------------------------------------------------------------------------------- the step
def ddim_step(x: Tensor, denoised: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """One deterministic DDIM (= Euler-in-sigma) step, eq. (1): ``x + (sigma' - sigma) (x - D) / sigma``.

    Args:
        x: (B, ...) samples at ``sigma`` (> 0).
        denoised: (B, ...) the denoiser output ``D(x, sigma)``.
        sigma, sigma_next: numbers or (B,) tensors; ``sigma_next = 0`` returns ``denoised`` exactly.

    Returns the (B, ...) samples at ``sigma_next``. Same step as ``SAMPLERS["euler"]`` and ``["ddim"]``
    (eta = 0).
    """
    s, s_next = sigma_view(sigma_batch(sigma, x), x), sigma_view(sigma_batch(sigma_next, x), x)
    stepped = x + (s_next - s) * (x - denoised) / s
    return torch.where(s_next == 0, denoised, stepped)


def teacher_two_steps(teacher: Callable[..., Tensor], x: Tensor, sigma_t: Tensor | float,
                      sigma_mid: Tensor | float, sigma_s: Tensor | float, **cond: Any) -> Tensor:
    """The teacher's two DDIM steps ``sigma_t -> sigma_mid -> sigma_s`` from ``x`` (B, ...); returns ``x_s``.

    ``teacher`` is a Denoiser ``D(x, sigma, **cond)`` (guided or not); sigmas are numbers or (B,)
    tensors with ``sigma_t > sigma_mid > sigma_s >= 0``. Two teacher calls, no gradient bookkeeping
    here (wrap the call in ``torch.no_grad()`` when training).
    """
    s_t, s_mid, s_s = (sigma_batch(s, x) for s in (sigma_t, sigma_mid, sigma_s))
    x_mid = ddim_step(x, teacher(x, s_t, **cond).to(x.dtype), s_t, s_mid)
    return ddim_step(x_mid, teacher(x_mid, s_mid, **cond).to(x.dtype), s_mid, s_s)


def progressive_target(x_t: Tensor, x_s: Tensor, sigma_t: Tensor | float, sigma_s: Tensor | float) -> Tensor:
    """The student's x0 target, eq. (2): ``(sigma_t x_s - sigma_s x_t) / (sigma_t - sigma_s)``.

    One DDIM step from ``(x_t, sigma_t)`` to ``sigma_s`` with ``D = x0~`` lands exactly on ``x_s``
    (Salimans & Ho 2022, Alg. 2). ``sigma_s = 0`` gives exactly ``x_s``. Shapes: (B, ...); sigmas numbers or
    (B,) tensors with ``sigma_t > sigma_s >= 0``.
    """
    s_t, s_s = sigma_view(sigma_batch(sigma_t, x_t), x_t), sigma_view(sigma_batch(sigma_s, x_t), x_t)
    return torch.where(s_s == 0, x_s, (s_t * x_s - s_s * x_t) / (s_t - s_s))


# ---------------------------------------------------------------------------------------- the grids
def possible_student_steps(teacher_steps: int) -> list[int]:
    """The step counts progressive distillation reaches from ``teacher_steps`` by halving: n/2, n/4, ... (>= 1).

    E.g. 32 -> [16, 8, 4, 2, 1]; 24 -> [12, 6, 3]; an odd count -> [] (it cannot be halved).
    """
    n = positive_int("teacher steps", teacher_steps)
    out = []
    while n % 2 == 0:
        n //= 2
        out.append(n)
    return out


def halving_rounds(teacher_steps: int, student_steps: int) -> list[tuple[int, int]]:
    """The rounds ``[(2N, N), ...]`` from ``teacher_steps`` down to ``student_steps``, first round first.

    Raises ValueError (one line, listing the counts that are possible) unless ``student_steps`` is
    ``teacher_steps / 2^k`` for some k >= 1.
    """
    n_t = positive_int("teacher steps", teacher_steps)
    n_s = positive_int("student steps", student_steps)
    possible = possible_student_steps(n_t)
    if n_s not in possible:
        can = (f"one of {', '.join(map(str, possible))}" if possible
               else "none: an odd count cannot be halved (choose an even teacher step count)")
        raise ValueError(f"progressive distillation halves the teacher's {n_t} steps each round, so the student's "
                         f"step count must be {n_t} / 2^k: {can}; got {n_s}")
    rounds = []
    while n_t > n_s:
        rounds.append((n_t, n_t // 2))
        n_t //= 2
    return rounds


def student_sigmas(teacher_sigmas: Tensor) -> Tensor:
    """Every other level of a teacher's 2N-step grid (2N + 1 levels, last 0): the student's N-step grid.

    Raises ValueError unless ``teacher_sigmas`` is 1-D with an odd number (>= 3) of levels ending in 0.
    """
    s = torch.as_tensor(teacher_sigmas)
    if s.ndim != 1 or len(s) < 3 or len(s) % 2 == 0 or float(s[-1]) != 0.0:
        raise ValueError(f"a teacher grid must be 2N + 1 levels ending in 0 (an even step count), got "
                         f"{len(s) if s.ndim == 1 else tuple(s.shape)} levels")
    return s[::2].clone()


def halving_grids(sigmas: Tensor, student_steps: int) -> list[Tensor]:
    """The grids of every round: ``sigmas`` (the first teacher's n-step grid), then halved until ``student_steps``.

    Returns ``[grid_n, grid_n/2, ..., grid_student]``; ``grid_k`` has k + 1 levels and nests in the
    previous one. Raises ValueError for a count halving cannot reach (see :func:`halving_rounds`).
    """
    s = torch.as_tensor(sigmas)
    grids = [s]
    for _ in halving_rounds(len(s) - 1, student_steps):
        grids.append(student_sigmas(grids[-1]))
    return grids


def step_sigmas(teacher_sigmas: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sigma_t, sigma_mid, sigma_s)`` (each (B,)) of student steps ``index`` (B,) on the teacher's 2N grid.

    Student step i goes from teacher level 2i over 2i + 1 to 2i + 2. Raises ValueError for an index
    outside ``[0, N)``.
    """
    s = torch.as_tensor(teacher_sigmas)
    n = (len(s) - 1) // 2
    i = torch.as_tensor(index, dtype=torch.long, device=s.device)
    if i.numel() and (int(i.min()) < 0 or int(i.max()) >= n):
        raise ValueError(f"student step index must be in [0, {n}), got values in [{int(i.min())}, {int(i.max())}]")
    return s[2 * i], s[2 * i + 1], s[2 * i + 2]


class GridSchedule:
    """A step schedule that is one fixed grid: what a distilled student samples.

    Called like every ``SCHEDULES`` entry, ``(n, sigma_min, sigma_max) -> (n + 1,)`` float64 levels, it
    returns its grid for ``n`` equal to its step count and raises ValueError naming that count for
    any other ``n`` (the range arguments are ignored: the grid is the one the student was made for).

    Args:
        sigmas: ``N + 1`` strictly descending levels ending in exactly 0.
        name: how the schedule is shown (``ebru sample``'s grid title, reports).
    """

    def __init__(self, sigmas: Sequence[float] | Tensor, name: str = "distilled"):
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().clone()
        if s.ndim != 1 or len(s) < 2 or float(s[-1]) != 0.0 or not bool((s[1:] < s[:-1]).all()) \
                or not bool(torch.isfinite(s).all()):
            raise ValueError("a grid schedule needs at least 2 finite, strictly descending levels ending in 0")
        self.sigmas = s
        self.steps = len(s) - 1
        self.name = name

    def __call__(self, n: int, sigma_min: float | None = None, sigma_max: float | None = None) -> Tensor:
        if n != self.steps:
            raise ValueError(f"the {self.name} grid has {self.steps} steps, not {n}")
        return self.sigmas.clone()

    def __repr__(self) -> str:
        return f"{self.name} ({self.steps} steps: {', '.join(f'{v:.4g}' for v in self.sigmas.tolist())})"

    __str__ = __repr__


# ---------------------------------------------------------------------------------------- the loss
def truncated_snr_weight(sigma: Tensor) -> Tensor:
    """``max(1 / sigma^2, 1)``: Salimans & Ho's ``max(|x - x^|^2, |eps - eps^|^2)`` on the x0 error (VE view)."""
    return (sigma**-2).clamp(min=1.0)


def distill_weightings() -> tuple[str, ...]:
    """The weighting names a distillation loss takes: ``truncated_snr``, then every ``WEIGHTINGS`` name."""
    return (TRUNCATED_SNR, *sorted(WEIGHTINGS))


def distill_weight(weighting: str, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """The loss weight (B,) at the student's noise levels ``sigma`` (B,).

    ``weighting``: ``truncated_snr`` (progressive distillation's, the default) or one of ebru's
    ``WEIGHTINGS`` (``edm`` gets ``sigma_data``). Raises ValueError for another name, naming the nearest.
    """
    one_of("distillation weighting", weighting, distill_weightings())
    if weighting == TRUNCATED_SNR:
        return truncated_snr_weight(sigma)
    options = {"sigma_data": sigma_data} if "sigma_data" in WEIGHTINGS[weighting].options else {}
    return WEIGHTINGS[weighting](sigma, **options)


def progressive_loss(student: Callable[..., Tensor], teacher: Callable[..., Tensor], x0: Tensor, noise: Tensor,
                     teacher_sigmas: Tensor, index: Tensor, *, weighting: str = "truncated_snr",
                     sigma_data: float = 0.5, cond: dict[str, Any] | None = None,
                     student_cond: dict[str, Any] | None = None) -> Tensor:
    """Per-sample progressive-distillation loss (B,) (Salimans & Ho 2022, Alg. 2 in sigma form).

    Args:
        student: the Denoiser being trained, ``D(x, sigma, **cond, **student_cond)``.
        teacher: the frozen Denoiser (already guided for a guided teacher), ``D(x, sigma, **cond)``.
        x0: (B, ...) clean data; noise: (B, ...) standard normal.
        teacher_sigmas: the teacher's 2N-step grid (2N + 1 levels ending in 0).
        index: (B,) student step of each sample, in ``[0, N)``.
        weighting, sigma_data: see :func:`distill_weight`.
        cond: condition keywords both networks take (e.g. ``class_labels``).
        student_cond: keywords only the student takes (e.g. a guidance-scale input).

    ``x_t = x0 + sigma_t noise``; the target (2) comes from the teacher's two steps under
    ``torch.no_grad()``; the loss is ``lambda(sigma_t) mean |D_student(x_t, sigma_t) - x0~|^2``.
    """
    cond = dict(cond or {})
    s_t, s_mid, s_s = (v.to(device=x0.device) for v in step_sigmas(teacher_sigmas, index.to(teacher_sigmas.device)))
    s_t, s_mid, s_s = (v.to(x0.dtype) for v in (s_t, s_mid, s_s))
    x_t = x0 + sigma_view(s_t, x0) * noise
    with torch.no_grad():
        x_s = teacher_two_steps(teacher, x_t, s_t, s_mid, s_s, **cond)
        target = progressive_target(x_t, x_s, s_t, s_s)
    pred = student(x_t, s_t, **cond, **(student_cond or {}))
    err = (pred.to(target.dtype) - target) ** 2
    return distill_weight(weighting, s_t, sigma_data) * err.flatten(1).mean(1)



# ---------------------------------------------------------------------------------------- guidance as an input
GUIDANCE_FEATURES = 16  # width of a student's guidance-scale features (its network's pooled input)
GUIDANCE_KEYS = ("encoder_pooled", "guidance_features")  # the network inputs a guidance-scale input may use


def guidance_features(w: Tensor, dim: int = GUIDANCE_FEATURES) -> Tensor:
    """Guidance scales (B,) -> (B, dim) sinusoidal features ``[cos(f_k w), sin(f_k w)]``, float32.

    ``f_k = pi 2^u_k`` with ``u_k`` evenly spaced in [-4, 1] (periods 32 down to 1 in w), so scales from
    0 to ~15 are told apart at every resolution. A distilled student reads them through its network's
    pooled-vector input, whose last layer starts at zero (LCM's w-conditioning, Luo et al. 2023).
    """
    dim = positive_int("guidance feature width", dim)
    if dim % 2:
        raise ValueError(f"guidance feature width must be even, got {dim}")
    freqs = torch.pi * 2.0 ** torch.linspace(-4.0, 1.0, dim // 2, dtype=torch.float64, device=w.device)
    arg = w.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([arg.cos(), arg.sin()], dim=1).to(torch.float32)


class GuidanceInput(torch.nn.Module):
    """A Denoiser whose network takes the guidance scale as an input: ``D(x, sigma, guidance=w, **cond)``.

    ``w`` (a number or (B,) tensor; default ``default``) goes to the wrapped Denoiser as
    ``<key> = guidance_features(w)``: one network call per step where classifier-free guidance makes two.
    ``key`` is the network input that reads it: ``encoder_pooled`` (default; a class-conditional or
    unconditional student, whose pooled input is free) or ``guidance_features`` (a text-to-image student,
    whose pooled input carries the sentence vector: ``ebru.nets``' ``guidance_dim``). Wraps a distilled
    student (its ``config.json`` says ``guidance_input``, and ``guidance_input.input`` names a key other
    than the default).
    """

    def __init__(self, denoiser: Callable[..., Tensor], default: float, dim: int = GUIDANCE_FEATURES,
                 key: str = "encoder_pooled"):
        super().__init__()
        self.denoiser = denoiser
        self.default = float(default)
        self.dim = dim
        self.key = one_of("guidance input", key, GUIDANCE_KEYS)

    def forward(self, x: Tensor, sigma: Tensor | float, guidance: Tensor | float | None = None,
                **cond: Any) -> Tensor:
        w = sigma_batch(self.default if guidance is None else guidance, x)
        return self.denoiser(x, sigma, **{self.key: guidance_features(w, self.dim).to(x.device)}, **cond)


class PerSampleGuidance:
    """Classifier-free guidance with one scale per sample, read from the ``guidance`` keyword.

    ``D_w(x, sigma, guidance=w, **cond) = D(x, sigma, uncond) + w (D(x, sigma, cond) - D(x, sigma, uncond))``
    (Ho & Salimans 2022) with ``w`` a number or (B,) tensor: the guided teacher of a student that
    takes ``w`` as an input. ``uncond`` replaces the condition's keys in the unconditional pass (e.g.
    ``{"class_labels": tensor([-1])}``); the condition's values are tensors with a batch dimension (or a
    batch of 1), and both passes run as one batch.
    """

    def __init__(self, denoiser: Callable[..., Tensor], uncond: dict[str, Any]):
        self.denoiser = denoiser
        self.uncond = dict(uncond)

    def __call__(self, x: Tensor, sigma: Tensor | float, guidance: Tensor | float = 1.0, **cond: Any) -> Tensor:
        s = sigma_batch(sigma, x)
        w = sigma_view(sigma_batch(guidance, x), x)
        b = x.shape[0]
        both = {}
        for key, c in cond.items():  # tensors with a batch dimension (a batch of 1 broadcasts)
            u = self.uncond.get(key, c)
            c = c.expand(b, *c.shape[1:]) if c.shape[0] == 1 else c
            u = u.expand(b, *u.shape[1:]) if u.shape[0] == 1 else u
            both[key] = torch.cat([c, u.to(c.device, c.dtype)])
        d_c, d_u = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), **both).chunk(2)
        return d_u + w * (d_c - d_u)
