"""The consistency task: a teacher tuned (or distilled) into a consistency model that samples in 1 to N steps.

``consistency_distill`` (:class:`ConsistencyDistillTask`) is one training run (the math is
:mod:`ebru.diffusion.consistency`). The student is the teacher's network at the teacher's (EMA) weights
under the consistency parameterisation (:class:`~ebru.diffusion.consistency.ConsistencyDenoiser`: the
teacher's ``c_in`` and ``c_noise``, ``f(x, sigma_min) = x`` exactly), so it starts as the teacher's denoiser.

- An unconditional teacher is *tuned* (ECT, Geng et al. 2025): ``x_t = x0 + t eps`` and ``x_r = x0 + r eps``
  with the same noise, no teacher forward; ``r`` follows ECT's shrinking ``t - r`` over training stages.
- A class-conditional or text-to-image (guided) teacher is *distilled* (Song et al. 2023; LCM, Luo et al.
  2023): ``x_r`` is one Euler step of the teacher's classifier-free-guided ODE from ``x_t``, and the guidance
  scale is the student's input (or one scale is distilled into its weights) exactly as in progressive
  distillation (:class:`~ebru.tasks.distill.DistillTask`'s guidance plan; a text-to-image teacher's captions,
  encodings and null condition as described there).

One global batch draws, from the trainer's generator: image indices, ``t`` from ECT's log-normal (kept
within the teacher's ``[sigma_min, sigma_max]``) and ``r`` from ``t`` and the stage, noise, dropped labels
and flips, the guidance scale of each sample and, for a text-to-image teacher, one caption of each image.
The stage is ``images_seen // stage_images`` (at most ``stages - 1``), from the counters the Trainer passes
in (``set_progress``), so a resumed run continues bit for bit.

Settings, the ``[distill]`` table: ``teacher``, ``schedule``, ``guidance`` and the trust options as
:mod:`ebru.tasks.distill`, and

================  ========================================================================================
``steps``         the student's default step count N >= 1 (default 1); it samples any count
``last_sigma``    the lowest level of its grid (default 0.821, ECT's: 2 steps are ``[80, 0.821, 0]``)
``q``             ``t - r`` shrinks by q each stage (default 2); ``k``, ``b``: ECT's sigmoid mapping (8, 1)
``stage_images``  images per stage (default 8192); ``stages``: how many (default 8, then the last stays)
``huber_c``       the pseudo-Huber constant (default iCT's ``0.00054 sqrt(C H W)``)
``p_mean``        ``p_std``: the log-normal of ``t`` (ECT's -1.1, 2.0)
================  ========================================================================================

The student's grid is ``schedule`` (default ``karras``) with N levels from the teacher's ``sigma_max`` down to
``last_sigma``, then 0: ``[80, 0]`` for one step, ECT's ``[80, 0.821, 0]`` for two. Its package records
``distilled`` (method ``consistency``, sampler ``consistency``, steps, grid, the boundary ``consistency:
{sigma_min, sigma_data}``, the loss and its settings, the teacher) and samples with those by default; its
``sampling.sigma_min`` is ``last_sigma``, so any other step count gets the grid of the same family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ebru.checks import finite_number, one_of, positive_int
from ebru.diffusion import SCHEDULES, Precond, get_sigmas
from ebru.diffusion.consistency import (
    ECT_B,
    ECT_K,
    ECT_LAST_SIGMA,
    ECT_P_MEAN,
    ECT_P_STD,
    ECT_Q,
    ConsistencyDenoiser,
    cd_loss,
    default_huber_c,
    ect_loss,
    ect_r,
    ect_stage,
)
from ebru.diffusion.distill import GridSchedule

from .base import TASKS, TrainState
from .distill import COMMON_KEYS, DistillTask, teacher_record

CONSISTENCY_SAMPLER = "consistency"
CONSISTENCY_KEYS = ("steps", "last_sigma", "q", "k", "b", "stage_images", "stages", "huber_c", "p_mean", "p_std")
STAGE_IMAGES = 8192  # ECT doubles every 3.2M images of a 25.6M-image run; ebru's CPU budgets see ~50k


@dataclass(frozen=True)
class ConsistencySettings:
    """The consistency keys of the ``[distill]`` table, checked (see the module docstring)."""

    steps: int = 1
    last_sigma: float = ECT_LAST_SIGMA
    q: float = ECT_Q
    k: float = ECT_K
    b: float = ECT_B
    stage_images: int = STAGE_IMAGES
    stages: int = 8
    huber_c: float | None = None
    p_mean: float = ECT_P_MEAN
    p_std: float = ECT_P_STD

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ConsistencySettings:
        """Raises ValueError (one line, naming the key) for a value of the wrong kind or out of range."""
        d = {key: table[key] for key in CONSISTENCY_KEYS if key in table}
        for key in ("steps", "stage_images", "stages"):
            if key in d:
                d[key] = positive_int(f"distill.{key}", d[key])
        for key in ("last_sigma", "huber_c", "p_std"):
            if d.get(key) is not None:
                d[key] = finite_number(f"distill.{key}", d[key], positive=True)
        for key in ("k", "b", "p_mean"):
            if key in d:
                d[key] = finite_number(f"distill.{key}", d[key])
        if "q" in d:
            d["q"] = finite_number("distill.q", d["q"])
            if d["q"] <= 1:
                raise ValueError(f"distill.q must be > 1 (t - r shrinks by q each stage), got {d['q']:g}")
        if d.get("k", 0.0) < 0 or d.get("b", 0.0) < 0:
            raise ValueError("distill.k and distill.b must be >= 0 (ECT's mapping n(t) = 1 + k sigmoid(-b t))")
        return cls(**d)


def consistency_grid(steps: int, sigma_max: float, last_sigma: float, schedule: str = "karras") -> Tensor:
    """The student's ``steps``-step grid (float64, ``steps + 1`` levels, last 0): ``schedule``'s levels from
    ``sigma_max`` down to ``last_sigma``.

    One step is ``[sigma_max, 0]``, two ``[sigma_max, last_sigma, 0]`` (ECT's ``[80, 0.821, 0]``). Raises
    ValueError unless ``0 < last_sigma < sigma_max``.
    """
    steps = positive_int("steps", steps)
    if not 0 < last_sigma < sigma_max:
        raise ValueError(f"the last level of a consistency grid must be in (0, sigma_max = {sigma_max:g}), "
                         f"got {last_sigma:g}")
    grid = get_sigmas(one_of("schedule", schedule, sorted(SCHEDULES)), steps, last_sigma, sigma_max).clone()
    grid[0] = sigma_max  # the ends exactly (a schedule's arithmetic may round them)
    if steps > 1:
        grid[-2] = last_sigma
    return grid


@TASKS.register("consistency_distill")
class ConsistencyDistillTask(DistillTask):
    """Consistency tuning (ECT) of an unconditional teacher, or consistency distillation of a guided one.

    Arguments as :class:`~ebru.tasks.distill.DistillTask`. Raises ValueError (one line) as it does, for a
    teacher that is a distilled student (consistency starts from a diffusion model), a consistency setting of
    the wrong kind (naming the key), and a ``last_sigma`` outside the teacher's ``(sigma_min, sigma_max)``.
    """

    name = "consistency_distill"
    method = "consistency"
    sampler = CONSISTENCY_SAMPLER
    keys = COMMON_KEYS + CONSISTENCY_KEYS

    def setup(self) -> None:
        """The consistency settings, the boundary, the student's grid and its schedule."""
        self.ect = ConsistencySettings.from_table(self.cfg.distill)
        s = self.sampling_range
        self.sigma_min, self.sigma_max = float(s["sigma_min"]), float(s["sigma_max"])
        if not self.sigma_min < self.ect.last_sigma < self.sigma_max:
            raise ValueError(f"distill.last_sigma must be between the teacher's sigma_min and sigma_max "
                             f"({self.sigma_min:g}, {self.sigma_max:g}), got {self.ect.last_sigma:g}")
        self.sigma_data = float(self.precond.get("sigma_data") or 0.5)
        self.schedule = self.settings.schedule or "karras"
        self.student_sigmas = consistency_grid(self.ect.steps, self.sigma_max, self.ect.last_sigma, self.schedule)
        self.huber_c = self.ect.huber_c or default_huber_c(int(self.images[0].numel()))
        self.items_seen = 0

    def wants_teacher(self) -> bool:
        """Only distillation (a class-conditional teacher) calls the teacher; tuning needs no teacher forward."""
        return self.conditional

    @property
    def steps(self) -> int:
        """The student's default step count N."""
        return len(self.student_sigmas) - 1

    def set_progress(self, step: int, items_seen: int) -> None:
        """The Trainer's counters before each draw: the stage of :func:`~ebru.diffusion.consistency.ect_stage`."""
        self.items_seen = int(items_seen)

    @property
    def stage(self) -> int:
        """The current training stage (``t - r`` has shrunk by ``q`` this many times)."""
        return ect_stage(self.items_seen, self.ect.stage_images, self.ect.stages)

    def denoiser(self, net: nn.Module) -> nn.Module:
        """``net`` as a consistency function: the teacher's preconditioning inside the consistency
        parameterisation (taking ``guidance=w`` if the student does)."""
        f = ConsistencyDenoiser(Precond(net, self.precond["prediction"], self.precond.get("sigma_data")),
                                self.sigma_min, self.sigma_data)
        return self.guidance.wrap(f)

    def draw_levels(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``t`` (B,) from the log-normal, within ``[sigma_min, sigma_max]``, and ``r`` (B,) at the current stage."""
        z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        t = (self.ect.p_mean + self.ect.p_std * z).exp().clamp(self.sigma_min, self.sigma_max).to(torch.float32)
        r = ect_r(t.double(), self.stage, q=self.ect.q, k=self.ect.k, b=self.ect.b, sigma_min=self.sigma_min)
        return {"t": t, "r": r.to(torch.float32)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-sample consistency loss (B_part,): ECT's (unconditional teacher) or distillation's (guided one)."""
        x0, noise, cond = self.inputs(batch, part)
        t, r = batch["t"][part].to(self.device), batch["r"][part].to(self.device)
        if self.teacher is None:
            return ect_loss(model, x0, noise, t, r, huber_c=self.huber_c, cond=cond)
        return cd_loss(model, self.teacher, x0, noise, t, r, huber_c=self.huber_c, cond=cond)

    def grid_schedule(self) -> GridSchedule:
        """The student's grid as a step schedule (what its package's sampling uses)."""
        return GridSchedule(self.student_sigmas, name=f"consistency {self.schedule}")

    def student_sampling(self) -> dict[str, Any]:
        """The sampling defaults, with ``sigma_min = last_sigma``: any step count samples the grid's family."""
        return {**super().student_sampling(), "sigma_min": self.ect.last_sigma}

    def distilled_record(self, state: TrainState) -> dict[str, Any]:
        """Method, steps, sampler (consistency), grid, boundary, guidance, the loss and its settings, the teacher,
        and the stage of the last batch trained (``final_stage``)."""
        s = self.sampling_range
        last = max(state.items_seen - self.cfg.batch_size, 0)
        loss = "cd" if self.teacher is not None else "ect"
        return {
            "method": self.method, "steps": self.steps, "sampler": self.sampler,
            "sigmas": self.student_sigmas.tolist(), "schedule": self.schedule, "any_steps": True,
            "consistency": {"sigma_min": self.sigma_min, "sigma_data": self.sigma_data},
            "made_by": ("consistency distillation (Song et al. 2023) of the guided teacher" if loss == "cd"
                        else "consistency tuning (ECT, Geng et al. 2025)"),
            **self.guidance.record(),
            "teacher": teacher_record(self.teacher_model, self.teacher_config, self.teacher_steps, str(s["schedule"]),
                                      str(s["sampler"])),
            "loss": loss, "settings": {**asdict(self.ect), "huber_c": self.huber_c},
            "final_stage": ect_stage(last, self.ect.stage_images, self.ect.stages),
        }
