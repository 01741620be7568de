"""The reflow task: a flow model's student trained on its teacher's (noise, sample) pairs, for N Euler steps.

Reflow (Liu, Gong & Liu 2022, "2-rectified flow"; the math is :mod:`ebru.diffusion.reflow`) trains a
student on straight lines between each noise ``z`` and the teacher's deterministic ODE sample ``x0`` from
it: ``x_t = (1 - t) x0 + t n``, target velocity ``n - x0``, with ``n = z - x0 / sigma_max`` the line through
ebru's start ``sigma_max z`` (:func:`~ebru.diffusion.reflow.line_noise`). The straighter paths let the
student sample in a few Euler steps. The teacher must be a flow model (``prediction = "flow"``); the student
is the same network, starting from the teacher package's (EMA) weights.

The data set is the pairs, not images: generated once with the teacher (dpmpp_2m, 10 steps by default) and
kept, verified and resumable in chunks (:mod:`ebru.tasks.reflow_pairs`). One global batch draws, from the
trainer's generator, pair indices and noise levels (the ``time`` setting: t uniform up to ebru's start, or
the flow training distribution, :func:`~ebru.diffusion.reflow.reflow_time`); nothing else is random. No
flips (a flipped pair is not the teacher's) and no label dropout (see guidance).

Class-conditional teachers: pair i has class ``i % num_classes`` and is drawn with classifier-free guidance
at the teacher's sampling scale ``w`` (or the ``guidance`` setting), so the coupling is the *guided* ODE's.
The student learns it conditioned on the label and samples the guided model with one network call per step
and no guidance on top (its config records ``guidance = w`` "distilled in", sampling guidance 1). A range of
scales as the student's input (the progressive task's LCM-style option) is not implemented for reflow.

Settings, the run config's ``[distill]`` table (unknown keys are refused; ``teacher``, ``guidance`` and the
trust options are read by the progressive task's :class:`~ebru.tasks.distill.DistillSettings`):

=================  =====================================================================================
``teacher``        the teacher package directory (required); loaded through ``ebru.load``
``student_steps``  the student's Euler step count N (default 1) on :func:`~ebru.diffusion.reflow.reflow_grid`
``pairs``          number of pairs (default 10,000, the CPU plan of ``wave2.md``)
``pairs_dir``      where the pairs are kept (default ``$EBRU_CACHE/reflow-pairs/<teacher>-<spec>``)
``pair_sampler``   a deterministic sampler (default ``dpmpp_2m``); ``pair_steps`` its steps (default 10);
                   ``pair_schedule`` its schedule (default the teacher's, else ``karras``)
``pair_batch``     pairs per teacher call (default 64); ``pair_chunk`` pairs per file (default 1024);
                   ``pair_seed`` the first pair's seed (default 0)
``time``           ``uniform`` (default) or ``lognormal`` (the run's ``p_mean``, ``p_std``)
``guidance``       a class-conditional teacher's guidance scale W for the pairs (default its sampling scale)
``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``, ``quiet``: ``ebru.load``'s options
=================  =====================================================================================

The student is an ordinary ``image-diffusion`` package, written like a progressive student (the teacher's
licence, card with ``base_model`` the teacher, signed lineage; :func:`~ebru.tasks.distill.student_card`,
:func:`~ebru.tasks.distill.lineage_of_student`); its ``config.json`` adds ``distilled`` (method
``reflow``, steps N, sampler ``euler``, schedule ``flow``, the grid, the teacher, the pairs) and samples
those N Euler steps by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import ebru
from ebru.checks import one_of, positive_int, unknown_key_message
from ebru.diffusion import SCHEDULES, ClassifierFreeGuidance, Precond, get_sigmas
from ebru.diffusion.defaults import SAMPLING
from ebru.diffusion.distill import GridSchedule
from ebru.diffusion.reflow import REFLOW_TIMES, deterministic_sampler, reflow_grid, reflow_loss, reflow_time
from ebru.nets import build_net
from ebru.trust import CONFIG, LoadedModel, load

from .base import TASKS, TrainState, code_revision
from .distill import (
    DISTILLED_SAMPLER,
    DistillSettings,
    GuidancePlan,
    check_teacher,
    plan_guidance,
    student_grid,
    teacher_record,
    write_student,
)
from .image import NULL_LABEL
from .reflow_pairs import PairSet, PairSpec, default_pairs_dir, ensure_pairs

METHOD = "reflow"
STUDENT_SCHEDULE = "flow"  # the student's grid is uniform in flow time (reflow_grid)
_SHARED = ("teacher", "guidance", "policy", "trusted_keys", "allow_unsigned", "acknowledge", "quiet")
_OWN = {"student_steps": 1, "pairs": 10_000, "pairs_dir": None, "pair_sampler": "dpmpp_2m", "pair_steps": 10,
        "pair_schedule": None, "pair_batch": 64, "pair_chunk": 1024, "pair_seed": 0, "time": "uniform"}


@dataclass(frozen=True)
class ReflowSettings:
    """The ``[distill]`` table of a reflow run, checked (see the module docstring)."""

    common: DistillSettings  # teacher, guidance and the trust options
    student_steps: int = 1
    pairs: int = 10_000
    pairs_dir: str | None = None
    pair_sampler: str = "dpmpp_2m"
    pair_steps: int = 10
    pair_schedule: str | None = None
    pair_batch: int = 64
    pair_chunk: int = 1024
    pair_seed: int = 0
    time: str = "uniform"

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ReflowSettings:
        """Raises ValueError (one line) for an unknown key, a missing teacher or a value of the wrong kind."""
        for key in table:
            if key not in _SHARED and key not in _OWN:
                raise ValueError(unknown_key_message(key, (*_SHARED, *_OWN), "distill"))
        common = DistillSettings.from_table({k: v for k, v in table.items() if k in _SHARED})
        if isinstance(common.guidance, tuple):
            raise ValueError(f"reflow draws its pairs at one guidance scale W; a range {list(common.guidance)} (the "
                             "scale as the student's input) is not implemented for reflow")
        own = {**_OWN, **{k: v for k, v in table.items() if k in _OWN}}
        for key in ("student_steps", "pairs", "pair_steps", "pair_batch", "pair_chunk"):
            own[key] = positive_int(f"distill.{key}", own[key])
        own["pair_seed"] = positive_int("distill.pair_seed", own["pair_seed"], minimum=0)
        deterministic_sampler(own["pair_sampler"])  # unknown or stochastic: refused now
        if own["pair_schedule"] is not None:
            one_of("distill.pair_schedule", own["pair_schedule"], sorted(SCHEDULES))
        one_of("reflow time distribution", own["time"], REFLOW_TIMES)
        if own["pairs_dir"] is not None and not isinstance(own["pairs_dir"], str):
            raise ValueError(f"distill.pairs_dir must be a path, got {own['pairs_dir']!r}")
        return cls(common, **own)


def check_flow_teacher(model: LoadedModel) -> dict[str, Any]:
    """The config of a verified package reflow can distil; raises ValueError (one line) for any other.

    Refused: what :func:`~ebru.tasks.distill.check_teacher` refuses; a text-to-image model (its pairs would
    each need a caption, which :mod:`ebru.tasks.reflow_pairs` does not keep); a model that is not a flow model
    (reflow straightens a flow's ODE paths; progressive or consistency distillation take any model); a
    student of another distillation method (made for its own grid; distil its teacher instead).
    """
    config = check_teacher(model)
    if config.get("text_encoder"):
        raise ValueError(f"{model.path}: a text-to-image model, and reflow of text-to-image teachers is not "
                         "implemented (each pair would need its caption); distil it with --method consistency or "
                         "--method progressive")
    prediction = config.get("precond", {}).get("prediction", "edm")
    if prediction != "flow":
        raise ValueError(f"{model.path / CONFIG}: a {prediction!r} model, and reflow straightens the paths of flow "
                         "models (prediction \"flow\"); distil it with --method progressive or --method consistency")
    distilled = config.get("distilled")
    if isinstance(distilled, dict) and distilled.get("method") != METHOD:
        raise ValueError(f"{model.path}: a {distilled.get('method')} student, made for its own "
                         f"{distilled.get('steps')}-step grid; reflow its teacher instead")
    return config


@TASKS.register("reflow")
class ReflowTask:
    """Reflow: a student of a flow teacher trained on the teacher's pairs, sampled in N Euler steps.

    Args:
        cfg: the run's ``TrainConfig``; reads the ``[distill]`` table (module docstring), ``p_mean``/``p_std``
            (``time = "lognormal"``), ``sign_key``; ``data``, ``hflip``, ``cond_dropout`` and ``license``
            are ignored (the data is the pairs, the licence the teacher's).
        device: where the teacher (while generating pairs), the pairs and the student live.
        data: a :class:`~ebru.tasks.reflow_pairs.PairSet` already made for these settings, or None to
            read or generate the pairs.
        is_main: print and generate (a process that is not main only reads the pairs).

    Raises ValueError (one line) for a teacher that is not an ebru flow image model (the message suggests
    ``--method progressive`` or ``consistency``), one the licence policy or signature check refuses
    (``ebru.trust``'s errors), bad settings, or ``data`` that is not the pairs of these settings.
    """

    name = "reflow"
    unit = "pairs"
    method = METHOD

    def __init__(self, cfg: Any, device: torch.device, data: Any = None, is_main: bool = True):
        self.cfg = cfg
        self.device = device
        self.settings = ReflowSettings.from_table(cfg.distill)
        common = self.settings.common
        self.teacher_model = load(common.teacher, **common.load_options())
        self.teacher_config = tc = check_flow_teacher(self.teacher_model)
        self.conditional = bool(tc.get("num_classes"))
        self.precond = {**tc.get("precond", {}), "prediction": "flow"}
        self.sampling_range = s = {**SAMPLING.to_dict(), **tc.get("sampling", {})}
        self.sigma_max = float(s["sigma_max"])
        self.guidance = self._plan_guidance()
        self.net_config = dict(tc["net"])
        self.student_sigmas = reflow_grid(self.settings.student_steps, self.sigma_max)
        self.spec = self.pair_spec()
        if data is not None and not (isinstance(data, PairSet) and data.spec == self.spec
                                     and len(data) == self.settings.pairs):
            raise ValueError("the reflow task trains on its teacher's pairs, not on a data set: pass data=None, or the "
                             f"PairSet of these settings ({self.settings.pairs} pairs of this teacher and sampler)")
        self.data: PairSet = data if data is not None else self.make_pairs(is_main)
        self.noise = self.data.noise.to(device)  # (P, C, H, W)
        self.samples = self.data.samples.to(device)  # (P, C, H, W)
        self.labels = self.data.labels.to(device) if self.data.labels is not None else None  # (P,)
        self.sigma_dist = reflow_time(self.settings.time, self.sigma_max, cfg.p_mean, cfg.p_std)

    # ---------------------------------------------------------------------------------------- the teacher
    def _plan_guidance(self) -> GuidancePlan:
        """One scale, fixed: the setting, else a first teacher's sampling scale (a reflowed teacher keeps its own)."""
        tc, setting = self.teacher_config, self.settings.common.guidance
        if self.conditional and setting is None and not isinstance(tc.get("distilled"), dict):
            setting = float(tc.get("sampling", {}).get("guidance", 1.0))
        return plan_guidance(setting, tc, self.conditional)

    def pair_schedule(self) -> str:
        """The pairs' schedule name: the setting, else the teacher's if registered, else ``karras``."""
        own = self.sampling_range.get("schedule")
        return self.settings.pair_schedule or (own if own in SCHEDULES else "karras")

    def pair_spec(self) -> PairSpec:
        """The :class:`~ebru.tasks.reflow_pairs.PairSpec` of these settings and this teacher."""
        st, s = self.settings, self.sampling_range
        sigmas = get_sigmas(self.pair_schedule(), st.pair_steps, s["sigma_min"], s["sigma_max"])
        return PairSpec(self.teacher_model.manifest_sha256, st.pair_sampler, st.pair_steps, self.pair_schedule(),
                        tuple(sigmas.tolist()), self.guidance.scale, tuple(self.teacher_config["image_shape"]),
                        st.pair_seed, self.teacher_config.get("num_classes") or None)

    def pairs_dir(self) -> Path:
        """Where the pairs are kept: the ``pairs_dir`` setting, else ``reflow_pairs.default_pairs_dir``."""
        return Path(self.settings.pairs_dir) if self.settings.pairs_dir else default_pairs_dir(self.spec)

    def teacher_denoiser(self) -> Any:
        """The teacher's Denoiser, frozen in eval mode, guided at the pairs' scale (for a first teacher)."""
        net = build_net(self.teacher_config["net"])
        try:
            net.load_state_dict(self.teacher_model.weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{self.teacher_model.path}: weights do not match config.json "
                             f"({str(e).splitlines()[0]})") from None
        d = Precond(net.to(self.device).eval().requires_grad_(False), "flow", self.precond.get("sigma_data"))
        if self.guidance.teacher_guided:
            return ClassifierFreeGuidance(d, self.guidance.scale,
                                          uncond={"class_labels": torch.full((1,), NULL_LABEL, device=self.device)})
        return d

    def make_pairs(self, generate: bool = True, progress: bool | None = None) -> PairSet:
        """The pairs of these settings: read from :meth:`pairs_dir`, the missing ones generated by the teacher.

        ``progress``: progress bars while generating (default: unless the settings say ``quiet``).
        """
        st = self.settings
        progress = not st.common.quiet if progress is None else progress
        return ensure_pairs(self.pairs_dir(), self.spec, st.pairs, self.teacher_denoiser() if generate else None,
                            batch=st.pair_batch, chunk=st.pair_chunk, device=self.device, generate=generate,
                            progress=generate and progress,
                            class_names=self.teacher_config.get("class_names"))

    # ---------------------------------------------------------------------------------------- training
    @property
    def steps(self) -> int:
        """The student's step count N."""
        return len(self.student_sigmas) - 1

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(the student network, at the teacher's weights; its Denoiser, ``Precond(net, "flow")``)."""
        net = build_net(self.net_config)
        try:
            net.load_state_dict(self.teacher_model.weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{self.teacher_model.path}: weights do not match config.json "
                             f"({str(e).splitlines()[0]})") from None
        net = net.to(self.device)
        return net, self.denoiser(net).to(self.device)

    def denoiser(self, net: nn.Module) -> Precond:
        """``net`` as a flow Denoiser (the teacher's preconditioning)."""
        return Precond(net, "flow", self.precond.get("sigma_data"))

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Pair indices (B,) and noise levels sigma (B,) float32 of the ``time`` distribution."""
        return {"idx": torch.randint(len(self.noise), (batch_size,), generator=generator),
                "sigma": self.sigma_dist(batch_size, generator=generator).to(torch.float32)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-sample reflow loss (B_part,) of the slice ``part``: velocity MSE on each pair's line."""
        idx = batch["idx"][part].to(self.device)
        cond = {"class_labels": self.labels[idx]} if self.labels is not None else {}
        return reflow_loss(model, self.noise[idx], self.samples[idx], batch["sigma"][part].to(self.device),
                           sigma_max=self.sigma_max, cond=cond)

    # ---------------------------------------------------------------------------------------- outputs
    def grid_schedule(self) -> GridSchedule:
        """The student's grid as a step schedule (what its package's sampling uses)."""
        return GridSchedule(self.student_sigmas, name=f"distilled {STUDENT_SCHEDULE}")

    def preview(self, state: TrainState, stem: Path, per_class: int = 8) -> Path:
        """A sample grid ``<stem>.png`` of the student: its N Euler steps on its grid, one forward per step."""
        d = self.denoiser(state.ema)
        path = Path(stem).with_suffix(".png")
        shape = tuple(self.data.image_shape)
        common = {"sampler": DISTILLED_SAMPLER, "steps": self.steps, "schedule": self.grid_schedule(),
                  "device": self.device}
        title = f"step {state.step}, {self.steps}-step reflow student"
        return student_grid(self, d, shape, common, title, path, per_class)

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the student package at ``path``: the teacher's licence and lineage, its steps and sampler."""
        return write_student(self, state, path)

    def pairs_record(self) -> dict[str, Any]:
        """What the student records of its pairs: count, sampler, steps, schedule, seeds, guidance, hash."""
        sp = self.spec
        return {"count": len(self.data), "sampler": sp.sampler, "steps": sp.steps, "schedule": sp.schedule,
                "seeds": [sp.first_seed, sp.first_seed + len(self.data) - 1], "guidance": sp.guidance,
                "sha256": self.data.content_hash, "time": self.settings.time}

    def model_config(self, state: TrainState) -> dict[str, Any]:
        """The teacher's ``config.json`` made the student's: sampling defaults, ``distilled``, ``training``."""
        tc, s, sp = self.teacher_config, self.sampling_range, self.spec
        config = {k: v for k, v in tc.items() if k not in ("training", "distilled", "sampling")}
        config["ebru_version"] = ebru.__version__
        config["net"] = self.net_config
        config["precond"] = self.precond
        config["sampling"] = {"sigma_min": s["sigma_min"], "sigma_max": s["sigma_max"], "sampler": DISTILLED_SAMPLER,
                              "steps": self.steps, "guidance": self.guidance.sampling(s.get("guidance", 1.0)),
                              "schedule": STUDENT_SCHEDULE}
        teacher = teacher_record(self.teacher_model, tc, sp.steps, sp.schedule)
        if not isinstance(tc.get("distilled"), dict):
            teacher["sampler"] = sp.sampler  # the sampler that drew the pairs
        config["distilled"] = {
            "method": METHOD, "steps": self.steps, "sampler": DISTILLED_SAMPLER,
            "sigmas": self.student_sigmas.tolist(), "schedule": STUDENT_SCHEDULE,
            # a reflowed model is an ordinary (straighter) flow ODE: any sampler and step count are valid
            "any_steps": True, "any_sampler": True,
            **self.guidance.record(),
            "teacher": teacher,
            "round_teacher": {"path": str(self.teacher_model.path), "steps": sp.steps,
                              "manifest_sha256": self.teacher_model.manifest_sha256},
            "pairs": self.pairs_record(),
        }
        t = tc.get("training", {}) if isinstance(tc.get("training"), dict) else {}
        config["training"] = {"steps": state.step, "images_seen": state.items_seen,
                              "minutes": round(state.elapsed / 60, 2), "final_loss": state.final_loss,
                              "dataset": t.get("dataset", self.data.source), "dataset_hash": t.get("dataset_hash"),
                              "pairs": self.data.source, "pairs_hash": self.data.content_hash,
                              "config": self.cfg.to_dict(), "code_revision": code_revision(), "weights": "ema"}
        return config

    def provenance(self, state: TrainState, revision: str | None) -> dict[str, Any]:
        """The signed training record: made by ``ebru distill`` from the teacher's pairs."""
        return {
            "created_by": "ebru distill",
            "dataset": self.data.source,
            "dataset_hash": self.data.content_hash,
            "config": self.cfg.to_dict(),
            "code_revision": revision,
            "final_metrics": {"final_loss": state.final_loss, "steps": state.step, "images_seen": state.items_seen,
                              "minutes": round(state.elapsed / 60, 2)},
            "teacher": {"path": str(self.teacher_model.path), "manifest_sha256": self.teacher_model.manifest_sha256,
                        "steps": self.spec.steps, "student_steps": self.steps, "method": METHOD},
        }

