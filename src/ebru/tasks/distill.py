"""The distillation tasks: a student that samples in few steps what its frozen teacher samples in many.

:class:`DistillTask` is what every distillation task shares: the teacher (verified, checked, frozen and,
for a class-conditional teacher, guided), the student (the teacher's network at its weights), the draws
and conditions every method needs, previews, and the student package. A method subclasses it
(``progressive_distill`` here, ``consistency_distill`` in :mod:`ebru.tasks.consistency`).

``progressive_distill`` (:class:`ProgressiveDistillTask`) is one round of progressive distillation
(Salimans & Ho 2022; the math is :mod:`ebru.diffusion.distill`): the teacher takes 2N deterministic
DDIM steps, the student learns to take N. The student starts as the teacher: the same network, built
from the teacher package's (EMA) weights. ``ebru.pipelines.distill`` runs the rounds 2N -> N -> N/2 ...
one Trainer run each, every round's teacher being the previous round's student package.

One global batch draws, from the trainer's generator: image indices, the student step of each image
(uniform over the student's N steps, Alg. 2), Gaussian noise, dropped labels (``cond_dropout``) and,
with ``hflip``, flips. The loss regresses the student's x0 prediction onto the target of the
teacher's two steps, weighted by ``max(SNR, 1)`` ("truncated SNR", the paper's) unless the
``weighting`` setting names another.

Guided teachers (class-conditional): the student learns the teacher *with* classifier-free guidance, so
it samples the guided model with one network call per step instead of two. By default the scale is an
input of the student, as in LCM (Luo et al. 2023): each sample draws ``w`` uniformly from a range (default
``[1, max(2, 2 w_teacher)]``), the teacher target is guided at that ``w``, and the student reads ``w``
through its network's pooled-vector input (:class:`~ebru.diffusion.distill.GuidanceInput`: Fourier features,
LayerNorm, an MLP whose last layer starts at zero, added to the noise embedding), so it starts as exactly
the teacher. A single scale instead (``guidance = W``) is distilled into the weights.

Text-to-image teachers (a package with ``text_encoder``) are guided teachers too: the data are the teacher's
captioned images (its recorded data set, read as :class:`~ebru.tasks.text2image.TextToImageTask` reads them),
every caption and the empty prompt are encoded once by the teacher's own frozen encoder (its recorded spec,
SHA-256 checked), each sample draws one of its image's captions, and ``cond_dropout`` drops a caption to the
empty prompt, whose encoding is also the null condition of the teacher's guidance (as in the teacher's
training). The pooled input of a text network already carries the sentence vector, so the student reads the
scale through a second one of the same kind (the network config's ``guidance_dim``; ``GuidanceInput`` with
``key = "guidance_features"``), again zero at its last layer. The student package keeps the teacher's
``text_encoder`` record (the encoder pinned as the teacher's) and its prompts.

Settings, the run config's ``[distill]`` table (unknown keys are refused; ``teacher_steps`` and
``weighting`` are progressive distillation's, the other keys every method's):

=================  =====================================================================================
``teacher``        the teacher package directory (required); loaded through ``ebru.load``
``teacher_steps``  the teacher's step count 2N (default: a distilled teacher's own steps, else the
                   largest power of two <= the teacher's sampling steps)
``schedule``       the first teacher's step schedule (default: the teacher's, else ``karras``)
``weighting``      ``truncated_snr`` (default) or a ``WEIGHTINGS`` name
``guidance``       a class-conditional or text-to-image teacher's guidance: a range ``[LO, HI]`` the
                   student takes as an input (default ``[1, max(2, 2 w)]``, w the teacher's scale) or one
                   scale ``W``
``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``, ``quiet``: ``ebru.load``'s options
=================  =====================================================================================

The exported student is an ordinary ``image-diffusion`` package (``ebru sample`` and ``ImagePipeline``,
or ``TextToImagePipeline`` for a text-to-image student, load it) whose card names the teacher as
``base_model`` and whose manifest carries the teacher's signed lineage, so the licence chain and its
obligations carry over; its ``config.json`` adds ``distilled`` (method, steps, sampler, grid, teacher)
and sets the sampling defaults to those steps and that sampler.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import ebru
from ebru.checks import finite_number, one_of, positive_int, unknown_key_message
from ebru.data.grid import save_grid
from ebru.diffusion import SCHEDULES, ClassifierFreeGuidance, Precond, get_sigmas, sample
from ebru.diffusion.defaults import SAMPLING
from ebru.diffusion.distill import (
    GUIDANCE_FEATURES,
    GUIDANCE_KEYS,
    TRUNCATED_SNR,
    GridSchedule,
    GuidanceInput,
    PerSampleGuidance,
    distill_weightings,
    progressive_loss,
    student_sigmas,
)
from ebru.nets import build_net
from ebru.trust import CONFIG, LoadedModel, load, write_trained_package

from .base import TASKS, TrainState, code_revision
from .image import NULL_LABEL, ImageTask
from .text2image import TextToImageTask, text_condition

DISTILLED_SAMPLER = "euler"  # the deterministic DDIM step of the math, = ebru's euler (and ddim at eta 0)
COMMON_KEYS = ("teacher", "schedule", "guidance", "policy", "trusted_keys", "allow_unsigned", "acknowledge", "quiet")
_KEYS = ("teacher", "teacher_steps", "schedule", "weighting", "guidance",
         "policy", "trusted_keys", "allow_unsigned", "acknowledge", "quiet")  # progressive distillation's


@dataclass(frozen=True)
class DistillSettings:
    """The ``[distill]`` table of a run, checked (see the module docstring)."""

    teacher: str
    teacher_steps: int | None = None
    schedule: str | None = None
    weighting: str = TRUNCATED_SNR
    guidance: float | tuple[float, float] | None = None
    policy: str | None = None
    trusted_keys: str | None = None
    allow_unsigned: bool = False
    acknowledge: tuple[str, ...] = ()
    quiet: bool = False

    @classmethod
    def from_table(cls, table: dict[str, Any], keys: tuple[str, ...] = _KEYS) -> DistillSettings:
        """The settings of ``table``, whose keys must be among ``keys`` (default: progressive distillation's).

        Raises ValueError (one line) for an unknown key, a missing teacher or a value of the wrong kind.
        A method with keys of its own passes them in ``keys`` and reads them itself.
        """
        for key in table:
            if key not in keys:
                raise ValueError(unknown_key_message(key, keys, "distill"))
        teacher = table.get("teacher")
        if not isinstance(teacher, str) or not teacher:
            raise ValueError("distill.teacher must name the teacher's model package directory")
        steps = table.get("teacher_steps")
        if steps is not None:
            steps = positive_int("distill.teacher_steps", steps)
        schedule = table.get("schedule")
        if schedule is not None:
            schedule = one_of("distill.schedule", schedule, sorted(SCHEDULES))
        weighting = one_of("distillation weighting", table.get("weighting", TRUNCATED_SNR), distill_weightings())
        guidance = table.get("guidance")
        if isinstance(guidance, list | tuple):
            if len(guidance) != 2:
                raise ValueError(f"distill.guidance must be a scale W or a range [LO, HI], got {guidance!r}")
            guidance = tuple(finite_number("distill.guidance", v) for v in guidance)
            if not guidance[0] < guidance[1]:
                raise ValueError(f"distill.guidance range must have LO < HI, got {list(guidance)}")
        elif guidance is not None:
            guidance = finite_number("distill.guidance", guidance)
        for key in ("policy", "trusted_keys"):
            if table.get(key) is not None and not isinstance(table[key], str):
                raise ValueError(f"distill.{key} must be a path, got {table[key]!r}")
        for key in ("allow_unsigned", "quiet"):
            if not isinstance(table.get(key, False), bool):
                raise ValueError(f"distill.{key} must be true or false, got {table[key]!r}")
        ack = table.get("acknowledge", [])
        if not isinstance(ack, list | tuple) or not all(isinstance(a, str) for a in ack):
            raise ValueError(f"distill.acknowledge must be a list of licence names, got {ack!r}")
        return cls(teacher, steps, schedule, weighting, guidance, table.get("policy"), table.get("trusted_keys"),
                   table.get("allow_unsigned", False), tuple(ack), table.get("quiet", False))

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of ``ebru.load`` these settings give."""
        return {"policy": self.policy, "trusted_keys": self.trusted_keys, "allow_unsigned": self.allow_unsigned,
                "acknowledge": list(self.acknowledge), "quiet": self.quiet}


# ---------------------------------------------------------------------------------------- the teacher
def check_teacher(model: LoadedModel, method: str = "progressive") -> dict[str, Any]:
    """The config of a verified package that ``method`` can distil; raises ValueError (one line) for any other.

    Refused: a package that is not an ebru image-diffusion model (a text model, weights from
    elsewhere), a consistency student (a consistency function, not a denoiser: no method can use it as a
    teacher) and, for consistency distillation, any distilled student (consistency tuning starts from a
    diffusion model). Text-to-image models are distilled (module docstring); reflow refuses them itself.
    """
    config = model.config
    where = model.path / CONFIG
    if config.get("kind") != "image-diffusion" or not isinstance(config.get("net"), dict) \
            or not isinstance(config.get("image_shape"), list):
        kind = config.get("kind")
        what = f"a {kind!r} model" if isinstance(kind, str) else "not an ebru model config"
        raise ValueError(f"{where}: {what}; ebru distill makes few-step students of ebru image-diffusion models "
                         "(packages written by 'ebru train' on images)")
    distilled = config.get("distilled")
    if isinstance(distilled, dict):
        made = distilled.get("method")
        if made == "consistency":
            raise ValueError(f"{model.path}: a consistency student (a consistency function, not a denoiser) cannot "
                             "be a teacher; distil its teacher instead")
        if method == "consistency":
            raise ValueError(f"{model.path}: a {made} student; consistency distillation starts from a diffusion "
                             "model: distil its teacher instead")
    return config


def check_data(config: dict[str, Any], data: Any) -> None:
    """Raise ValueError (one line) unless ``data`` (an ``ImageDataset``) fits the teacher of ``config``.

    The images must have the teacher's shape, a class-conditional teacher's classes must be the data's, and a
    text-to-image teacher's data must be captioned (a ``CaptionedImages``).
    """
    if config.get("text_encoder") and not hasattr(data, "caption_table"):
        raise ValueError(f"the teacher is a text-to-image model and the data ({getattr(data, 'source', data)}) has "
                         "no captions: distil on the teacher's training data")
    shape = list(data.image_shape)
    if shape != list(config["image_shape"]):
        raise ValueError(f"the data's images are {'x'.join(map(str, shape))} and the teacher makes "
                         f"{'x'.join(map(str, config['image_shape']))}: distil on the teacher's training data")
    k = config.get("num_classes")
    if k and data.num_classes != k:
        raise ValueError(f"the teacher is conditional on {k} classes and the data has {data.num_classes or 'no'} "
                         "classes: distil on the teacher's training data")


@dataclass(frozen=True)
class GuidancePlan:
    """How a round treats classifier-free guidance (Ho & Salimans 2022).

    ``mode``: None (an unconditional teacher); ``"fixed"``: the student learns the teacher guided at
    ``scale`` and samples it unguided, one call per step; ``"input"``: the student takes the scale
    as an input, trained on scales drawn uniformly from ``range`` (LCM's w-conditioning), ``default``
    when sampling without one. ``teacher_guided``: the round's teacher is called with guidance (only a
    first teacher; a distilled teacher has it in its weights). ``input``: the network input that reads the
    scale (``encoder_pooled``, or ``guidance_features`` for a text-to-image student, whose pooled input is
    the sentence vector; :data:`~ebru.diffusion.distill.GUIDANCE_KEYS`).
    """

    mode: str | None = None
    scale: float | None = None
    range: tuple[float, float] | None = None
    default: float = 1.0
    teacher_guided: bool = False
    input: str = GUIDANCE_KEYS[0]

    def record(self) -> dict[str, Any]:
        """The student config's ``distilled`` entries: ``guidance`` (a fixed scale) and ``guidance_input``
        (``input`` only when it is not the default ``encoder_pooled``)."""
        out: dict[str, Any] = {"guidance": self.scale}
        if self.mode == "input":
            out["guidance_input"] = {"features": GUIDANCE_FEATURES, "range": list(self.range),
                                     "default": self.default}
            if self.input != GUIDANCE_KEYS[0]:
                out["guidance_input"]["input"] = self.input
        return out

    def wrap(self, denoiser: Any) -> Any:
        """``denoiser`` as the student's Denoiser: a :class:`GuidanceInput` (taking ``guidance=w``) when the
        scale is an input, else unchanged."""
        if self.mode != "input":
            return denoiser
        return GuidanceInput(denoiser, self.default, key=self.input)

    def sampling(self, teacher_default: float) -> float:
        """The student's default sampling guidance: 1 (none on top) for a fixed scale, else the default input."""
        return {"fixed": 1.0, "input": self.default}.get(self.mode, teacher_default)


def plan_guidance(setting: float | tuple[float, float] | None, config: dict[str, Any],
                  conditional: bool) -> GuidancePlan:
    """The :class:`GuidancePlan` for a teacher of ``config`` and the ``guidance`` setting (a scale, a range or None).

    ``conditional``: the teacher has classes or reads text (:func:`is_conditional`). A first conditional
    teacher: a range (default ``[1, max(2, 2 w)]`` around its own sampling scale ``w``) makes the scale the
    student's input (through ``encoder_pooled``, or ``guidance_features`` for a text-to-image teacher); a
    number distils that one scale. A distilled teacher passes its guidance on (a different setting is
    refused). Raises ValueError (one line) for a setting an unconditional teacher cannot take.
    """
    if not conditional:
        if setting is not None:
            raise ValueError("guidance is for class-conditional teachers, and this one has no classes; drop it")
        return GuidancePlan()
    key = GUIDANCE_KEYS[1] if config.get("text_encoder") else GUIDANCE_KEYS[0]
    distilled = config.get("distilled")
    if isinstance(distilled, dict):
        gi = distilled.get("guidance_input")
        held: Any = tuple(gi["range"]) if gi else distilled.get("guidance")
        if setting is not None and setting != held:
            raise ValueError(f"the teacher was distilled with guidance {held}, and its students keep it; drop the "
                             f"guidance setting ({setting})")
        if gi:
            return GuidancePlan("input", None, held, float(gi["default"]), input=gi.get("input", GUIDANCE_KEYS[0]))
        return GuidancePlan("fixed", held)
    w = finite_number("the teacher's sampling guidance", config.get("sampling", {}).get("guidance", 1.0))
    if setting is None:
        setting = (1.0, max(2.0, 2 * w))
    if isinstance(setting, tuple):
        lo, hi = setting
        return GuidancePlan("input", None, (lo, hi), min(max(w, lo), hi), teacher_guided=True, input=key)
    return GuidancePlan("fixed", setting, teacher_guided=setting != 1.0)


def is_conditional(config: dict[str, Any]) -> bool:
    """Whether a teacher of ``config`` is conditional (classes, or text): one that classifier-free guidance steers."""
    return bool(config.get("num_classes")) or bool(config.get("text_encoder"))


def teacher_name(model: LoadedModel) -> str:
    """The name the student's card gives its teacher as ``base_model``: ``<parent>/<dir>`` of the package."""
    path = Path(model.path).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def largest_power_of_two(n: int) -> int:
    """The largest power of two <= ``n`` (n >= 1)."""
    return 2 ** math.floor(math.log2(n))


def default_teacher_steps(config: dict[str, Any]) -> int:
    """A distilled teacher's own step count, else the largest power of two <= its sampling steps (>= 2)."""
    distilled = config.get("distilled")
    if isinstance(distilled, dict) and isinstance(distilled.get("steps"), int):
        return distilled["steps"]
    steps = config.get("sampling", {}).get("steps", SAMPLING.steps)
    return max(2, largest_power_of_two(steps if isinstance(steps, int) and steps >= 1 else SAMPLING.steps))


def teacher_grid(config: dict[str, Any], steps: int | None = None, schedule: str | None = None) -> Tensor:
    """The teacher's ``steps``-step grid (float64, last level 0) that a progressive round halves.

    A distilled teacher's grid is the one it records (``steps`` must then be its step count); any
    other teacher's is ebru's ``schedule`` (default: the teacher's own if it is a registered name,
    else ``karras``) between the teacher's ``sigma_min`` and ``sigma_max``. Raises ValueError for an
    odd step count (it cannot be halved) or a step count a distilled teacher was not made for.
    """
    n = steps if steps is not None else default_teacher_steps(config)
    distilled = config.get("distilled")
    if isinstance(distilled, dict) and distilled.get("sigmas"):
        if distilled.get("steps") != n:
            raise ValueError(f"the teacher was distilled for {distilled.get('steps')} steps; a progressive round "
                             f"halves those, so its teacher steps cannot be {n}")
        grid = torch.tensor(distilled["sigmas"], dtype=torch.float64)
    else:
        s = {**SAMPLING.to_dict(), **config.get("sampling", {})}
        name = schedule or (s["schedule"] if s.get("schedule") in SCHEDULES else "karras")
        grid = get_sigmas(name, n, s["sigma_min"], s["sigma_max"])
    if n % 2:
        raise ValueError(f"the teacher's {n} steps cannot be halved (an odd count); choose an even teacher step "
                         "count, e.g. a power of two")
    return grid


def teacher_record(model: LoadedModel, config: dict[str, Any], steps: int, schedule: str,
                   sampler: str = DISTILLED_SAMPLER) -> dict[str, Any]:
    """What a student records of its *first* teacher (the ``steps``-step ``sampler`` it stands in for): a
    distilled teacher passes its own record on."""
    distilled = config.get("distilled")
    if isinstance(distilled, dict) and isinstance(distilled.get("teacher"), dict):
        return dict(distilled["teacher"])
    return {"name": teacher_name(model), "manifest_sha256": model.manifest_sha256, "steps": steps,
            "sampler": sampler, "schedule": schedule,
            "license": model.card.license}


def lineage_of_student(model: LoadedModel, config: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(base_model names, lineage)`` for a student of ``model``.

    A first teacher becomes the student's ``base_model`` (its lineage entry first); a distilled teacher
    passes on its own ``base_model`` and lineage, so every round's student names the original teacher.
    """
    if isinstance(config.get("distilled"), dict):
        return list(model.card.base_model), [dict(e) for e in model.lineage]
    name = teacher_name(model)
    return [name], model.lineage_entry(name)


def student_card(config: dict[str, Any], teacher: LoadedModel, base_model: list[str]) -> str:
    """``MODEL_CARD.md`` of a student: the teacher's licence, ``base_model`` the teacher, and a summary."""
    c, d, t = teacher.card, config["distilled"], config["training"]
    front = ["---", f"license: {json.dumps(c.license or 'unknown')}"]
    if c.license_name:
        front.append(f"license_name: {json.dumps(c.license_name)}")
    if c.license_link:
        front.append(f"license_link: {json.dumps(c.license_link)}")
    text = bool(config.get("text_encoder"))
    prompt = ' --prompt "..."' if text else ""
    tag = ("text-to-image" if text else
           f"{'class-conditional' if config.get('num_classes') else 'unconditional'}-image-generation")
    front += ["library_name: ebru", "base_model:", *(f"  - {json.dumps(b)}" for b in base_model),
              "datasets:", f"  - {json.dumps(t['dataset'])}", f"pipeline_tag: {tag}",
              "intended_use: research and education; generating images like the teacher's", "---", ""]
    gi = d.get("guidance_input")
    guided = (f" with the classifier-free guidance scale as an input (trained on {gi['range'][0]:g} to "
              f"{gi['range'][1]:g}, default {gi['default']:g}; one network call per step)" if gi else
              f" with classifier-free guidance {d['guidance']:g} distilled in" if d.get("guidance") is not None else "")
    made_by = d.get("made_by", f"{d['method']} distillation")
    body = [
        "# ebru distilled image diffusion model",
        "",
        f"A {d['steps']}-step student of `{d['teacher']['name']}` (its {d['teacher']['steps']}-step "
        f"{d['teacher']['sampler']} sampler){guided}, made by {made_by} with ebru "
        f"{config['ebru_version']} ({t['steps']} steps, {t['images_seen']} images, {t['minutes']} minutes in "
        f"this round). Its licence and obligations are the teacher's.",
        "",
        *([f"Conditioned on text through {config['text_encoder']['name']} (weights "
           f"`{config['text_encoder']['digest']}`), the teacher's encoder.", ""] if text else []),
        f"Sample it with `ebru sample <this directory>{prompt} -n 16 --grid "
        f"samples.png`: {d['steps']} {d['sampler']} "
        f"step{'s' if d['steps'] != 1 else ''} on the grid it was made for "
        f"({', '.join(f'{s:.4g}' for s in d['sigmas'])}).",
        "",
    ]
    return "\n".join(front) + "\n".join(body)


# ---------------------------------------------------------------------------------------- the tasks

def student_grid(task: Any, d: Any, shape: tuple[int, ...], common: dict[str, Any], title: str, path: Path,
                 per_class: int = 8) -> Path:
    """A student's preview grid at ``path``: ``per_class`` samples per class (a row each, named), per preview
    prompt of a text-to-image student, or 64 unconditional ones; ``common`` holds the
    :func:`~ebru.diffusion.sample` settings (sampler, steps, schedule). Shared by every distillation task
    (``task``: ``conditional``, ``net_config``, ``data``, ``device``, and ``text`` (None, or the teacher's
    captions and encoder, a :class:`~ebru.tasks.text2image.TextToImageTask`) if it has one)."""
    text = getattr(task, "text", None)
    if text is not None:
        prompts = task.preview_prompts()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a long preview prompt is truncated as in training
            enc = text.encoder.encode(prompts).to(task.device)
        rows = torch.arange(len(prompts), device=task.device).repeat_interleave(per_class)
        x = sample(d, (len(rows), *shape), seeds=range(len(rows)), **common, **text_condition(enc[rows]))
        return save_grid(x, path, nrow=per_class, row_labels=prompts, title=title)
    if task.conditional:
        k = task.net_config["num_classes"]
        labels = torch.arange(k, device=task.device).repeat_interleave(per_class)
        x = sample(d, (len(labels), *shape), seeds=range(len(labels)), class_labels=labels, **common)
        names = task.data.class_names or [str(i) for i in range(k)]
        return save_grid(x, path, nrow=per_class, row_labels=names, title=title)
    x = sample(d, (64, *shape), seeds=range(64), **common)
    return save_grid(x, path, nrow=8, title=title)


def write_student(task: Any, state: TrainState, path: Path) -> Path:
    """Write a distillation task's student package at ``path``: its ``model_config``, the EMA weights, a card
    and lineage naming the teacher (whose licence it keeps), its signed ``provenance``."""
    path = Path(path)
    config = task.model_config(state)
    base_model, lineage = lineage_of_student(task.teacher_model, task.teacher_config)
    weights = {k: v.detach().contiguous().cpu() for k, v in state.ema.state_dict().items()}
    write_trained_package(path, config, weights, student_card(config, task.teacher_model, base_model),
                          task.provenance(state, config["training"]["code_revision"]),
                          sign_key=task.cfg.sign_key, lineage=lineage,
                          metadata={"format": "pt", "ebru_kind": "image-diffusion"})
    return path


class DistillTask(ImageTask):
    """What every distillation task shares: teacher, student, draws, previews and the student package.

    Args:
        cfg: the run's ``TrainConfig``; reads the ``[distill]`` table (module docstring; a method adds keys
            of its own) and what :class:`ImageTask` reads for the data (``data``, ``image_size``, ``hflip``,
            ``cond_dropout``), ``license`` is ignored (the student carries the teacher's), ``sign_key`` signs
            the student.
        device: where the images, the teacher and the student live.
        data: an ``ImageDataset`` to use instead of ``cfg.data`` (the teacher's training data, normally; a
            ``CaptionedImages`` for a text-to-image teacher, whose captions :attr:`text` encodes once).
        is_main: print the data report (main process only).

    A method subclasses it and sets ``name`` (its ``TASKS`` entry), ``method``, ``sampler`` (what its student
    samples with), ``keys`` (its ``[distill]`` keys); it implements :meth:`setup` (its own settings, before the
    teacher is frozen), :meth:`draw_levels` (its noise levels), :meth:`loss`, :attr:`steps`,
    :meth:`grid_schedule` and :meth:`distilled_record`, and may override :meth:`denoiser` and
    :meth:`wants_teacher`.

    Raises ValueError (one line) for a teacher that is not an ebru image-diffusion package (or that the method
    cannot distil), one the licence policy or signature check refuses (``ebru.trust``'s errors), or data that
    does not fit the teacher (for a text-to-image teacher: data without captions); ``ebru.encoders.EncoderError``
    for a text-to-image teacher whose recorded encoder is missing or has other weights than its digest.
    """

    unit = "images"
    method = ""
    sampler = DISTILLED_SAMPLER
    keys: tuple[str, ...] = _KEYS

    def __init__(self, cfg: Any, device: torch.device, data: Any = None, is_main: bool = True):
        self.settings = DistillSettings.from_table(cfg.distill, self.keys)
        self.teacher_model = load(self.settings.teacher, **self.settings.load_options())
        self.teacher_config = check_teacher(self.teacher_model, self.method)
        tc = self.teacher_config
        if data is not None:  # before ImageTask reads the data against the network config
            check_data(tc, data)
        self.text: TextToImageTask | None = None
        if tc.get("text_encoder"):
            self._text_init(cfg, device, data, is_main)
        else:
            super().__init__(cfg, device, data, is_main)
        check_data(tc, self.data)
        self.conditional = is_conditional(tc)
        self.precond = {"prediction": "edm", **tc.get("precond", {})}
        self.sampling_range = {**SAMPLING.to_dict(), **tc.get("sampling", {})}
        self.setup()
        self.guidance = plan_guidance(self.settings.guidance, tc, self.conditional)
        self.net_config = dict(tc["net"])  # the student is the teacher's network ...
        if self.guidance.mode == "input" and not isinstance(tc.get("distilled"), dict):
            width = "guidance_dim" if self.guidance.input == "guidance_features" else "pooled_dim"
            if tc["net"].get(width):
                what = "a guidance input" if width == "guidance_dim" else "a pooled input"
                raise ValueError(f"{self.teacher_model.path}: the teacher's network already has {what}, so the "
                                 "guidance scale cannot become the student's input; distil a fixed scale W")
            self.net_config[width] = GUIDANCE_FEATURES  # ... plus a zero-initialised input for w
        self.teacher = self._frozen_teacher() if self.wants_teacher() else None

    def _text_init(self, cfg: Any, device: torch.device, data: Any, is_main: bool) -> None:
        """A text-to-image teacher's data: its captioned images and every caption encoded once by the teacher's own
        encoder (its recorded spec, SHA-256 checked), read as the ``text2image`` task reads them (:attr:`text`)."""
        tc = self.teacher_config
        self.cfg, self.device = cfg, device
        own = dataclasses.replace(cfg, encoder=dict(tc["text_encoder"]), model=dict(tc["net"]))
        self.text = TextToImageTask(own, device, data, is_main)
        self.data, self.images, self.labels = self.text.data, self.text.images, torch.zeros(0, dtype=torch.long)
        self.sigma_dist, self.weighting_options = self.text.sigma_dist, self.text.weighting_options

    # ---------------------------------------------------------------------------------------- a method's parts
    def setup(self) -> None:
        """Read the method's own settings (called before the guidance plan and the teacher)."""

    def wants_teacher(self) -> bool:
        """Whether the loss calls the frozen teacher (default: yes)."""
        return True

    @property
    def steps(self) -> int:
        """The student's step count N."""
        raise NotImplementedError

    def grid_schedule(self) -> GridSchedule:
        """The student's grid as a step schedule (what its package's sampling uses)."""
        raise NotImplementedError

    def draw_levels(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The method's noise levels of one global batch, drawn after the image indices."""
        raise NotImplementedError

    def distilled_record(self, state: TrainState) -> dict[str, Any]:
        """The method's entries of the student config's ``distilled`` (method, steps, sampler, grid, teacher ...)
        after the training ``state``."""
        raise NotImplementedError

    def student_sampling(self) -> dict[str, Any]:
        """The student config's ``sampling`` defaults: its steps, sampler and schedule in the teacher's range."""
        s = self.sampling_range
        return {"sigma_min": s["sigma_min"], "sigma_max": s["sigma_max"], "sampler": self.sampler,
                "steps": self.steps, "guidance": self.guidance.sampling(s.get("guidance", 1.0)),
                "schedule": self.schedule}

    # ---------------------------------------------------------------------------------------- teacher, student
    def _frozen_teacher(self) -> Any:
        """The teacher's Denoiser, frozen in eval mode, guided as :class:`GuidancePlan` says."""
        net = build_net(self.teacher_config["net"])
        try:
            net.load_state_dict(self.teacher_model.weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{self.teacher_model.path}: weights do not match config.json "
                             f"({str(e).splitlines()[0]})") from None
        d = Precond(net.to(self.device).eval().requires_grad_(False), self.precond["prediction"],
                    self.precond.get("sigma_data"))
        g = self.guidance
        null = self.null_condition()
        if g.teacher_guided and g.mode == "input":
            return PerSampleGuidance(d, null)  # takes guidance=w, one scale per sample
        if g.teacher_guided:
            return ClassifierFreeGuidance(d, g.scale, uncond=null)
        return g.wrap(d)  # a student teacher that takes the scale as an input, or an unguided teacher

    def null_condition(self) -> dict[str, Tensor]:
        """The condition classifier-free guidance subtracts: the null class ``-1``, or the empty prompt's
        encoding (row 0 of the caption encodings: what caption dropout trained) for a text-to-image teacher."""
        if self.text is not None:
            return text_condition(self.text.encodings[0:1])
        return {"class_labels": torch.full((1,), NULL_LABEL, device=self.device)}

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(the student network, at the teacher's weights; the module the loss calls, :meth:`denoiser` of it).

        A student that takes the guidance scale as an input starts with that input's last layer at zero,
        so it starts as exactly the (unguided) teacher network.
        """
        net = build_net(self.net_config)
        missing, unexpected = net.load_state_dict(self.teacher_model.weights, strict=False)
        grown = self.net_config != self.teacher_config["net"]  # the input added for w
        new = "guidance_embed." if self.guidance.input == "guidance_features" else "pooled_embed."
        missing = [k for k in missing if not (grown and k.startswith(new))]
        if missing or unexpected:
            raise ValueError(f"{self.teacher_model.path}: weights do not match config.json "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        net = net.to(self.device)
        return net, self.denoiser(net).to(self.device)

    def denoiser(self, net: nn.Module) -> nn.Module:
        """``net`` as a Denoiser under the teacher's preconditioning (taking ``guidance=w`` if the student does)."""
        return self.guidance.wrap(Precond(net, self.precond["prediction"], self.precond.get("sigma_data")))

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Indices (B,), the method's levels (:meth:`draw_levels`), noise (B, C, H, W), drop (B,) bool; with
        hflip, flip (B,); for a student that takes the guidance scale as an input, guidance (B,); for a
        text-to-image teacher, caption (B,): the row of the caption encodings of one of each image's captions
        (uniformly), 0 (the empty prompt) where dropped."""
        B, g = batch_size, generator
        batch = {"idx": torch.randint(len(self.images), (B,), generator=g), **self.draw_levels(B, g)}
        batch["noise"] = torch.randn((B, *self.images.shape[1:]), generator=g)
        batch["drop"] = torch.rand(B, generator=g) < self.cfg.cond_dropout
        if self.cfg.hflip:
            batch["flip"] = torch.rand(B, generator=g) < 0.5
        if self.guidance.mode == "input":  # the scale of each sample, uniform over the range (LCM)
            lo, hi = self.guidance.range
            batch["guidance"] = lo + (hi - lo) * torch.rand(B, generator=g)
        if self.text is not None:  # as the text2image task draws its captions
            pick = (torch.rand(B, generator=g) * self.text.caption_counts[batch["idx"]]).long()
            caption = self.text.caption_table[batch["idx"], pick]
            batch["caption"] = torch.where(batch["drop"], torch.zeros_like(caption), caption)
        return batch

    def condition(self, batch: dict[str, Tensor], part: slice, idx: Tensor) -> dict[str, Tensor]:
        """The condition of the slice ``part``: class labels (ImageTask's), or the drawn captions' token states,
        mask and pooled vectors for a text-to-image teacher."""
        if self.text is not None:
            return self.text.condition(batch, part, idx)
        return super().condition(batch, part, idx)

    def inputs(self, batch: dict[str, Tensor], part: slice) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(x0, noise, cond)`` of the slice ``part``: images (flipped as drawn), noise, and the condition both
        networks read (class labels or captions, dropped as drawn; the guidance scale when the student takes it)."""
        idx = batch["idx"][part].to(self.device)
        x0 = self.images[idx]
        if "flip" in batch:
            x0 = torch.where(batch["flip"][part].to(self.device)[:, None, None, None], x0.flip(-1), x0)
        cond = self.condition(batch, part, idx)
        if "guidance" in batch:  # both the (guided) teacher and the student read the scale
            cond["guidance"] = batch["guidance"][part].to(self.device)
        return x0, batch["noise"][part].to(self.device), cond

    # ---------------------------------------------------------------------------------------- outputs
    def preview(self, state: TrainState, stem: Path, per_class: int = 8) -> Path:
        """A sample grid ``<stem>.png`` of the student: its N steps of its sampler on its grid, one forward per
        step (its default guidance scale, for a student that takes the scale as an input)."""
        d = self.denoiser(state.ema)
        path = Path(stem).with_suffix(".png")
        shape = self.images.shape[1:]
        common = {"sampler": self.sampler, "steps": self.steps, "schedule": self.grid_schedule(),
                  "device": self.device}
        title = f"step {state.step}, {self.steps}-step student"
        if self.guidance.mode == "input":
            title += f", guidance {self.guidance.default:g}"
        return student_grid(self, d, shape, common, title, path, per_class)

    def preview_prompts(self, k: int = 8) -> list[str]:
        """A text-to-image student's preview prompts: the teacher's ``sample_prompts``, else its data's."""
        return list(self.teacher_config.get("sample_prompts") or [])[:k] or self.text.preview_prompts(k)

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the student package at ``path``: the teacher's licence and lineage, its steps and sampler."""
        return write_student(self, state, path)

    def model_config(self, state: TrainState) -> dict[str, Any]:
        """The teacher's ``config.json`` made the student's: sampling defaults, ``distilled``, ``training``."""
        tc = self.teacher_config
        config = {k: v for k, v in tc.items() if k not in ("training", "distilled", "sampling")}
        config["ebru_version"] = ebru.__version__
        config["net"] = self.net_config
        config["precond"] = self.precond
        config["sampling"] = self.student_sampling()
        config["distilled"] = {
            **self.distilled_record(state),
            "round_teacher": {"path": str(self.teacher_model.path), "steps": self.teacher_steps,
                              "manifest_sha256": self.teacher_model.manifest_sha256},
        }
        cfg, data = self.cfg, self.data
        config["training"] = {"steps": state.step, "images_seen": state.items_seen,
                              "minutes": round(state.elapsed / 60, 2), "final_loss": state.final_loss,
                              "dataset": data.source, "dataset_hash": data.content_hash, "config": cfg.to_dict(),
                              "code_revision": code_revision(), "weights": "ema"}
        return config

    @property
    def teacher_steps(self) -> int:
        """The step count of the teacher sampler the student stands in for."""
        return int(self.sampling_range.get("steps", SAMPLING.steps))

    def provenance(self, state: TrainState, revision: str | None) -> dict[str, Any]:
        """ImageTask's provenance, made by ``ebru distill``, with the teacher it was distilled from."""
        out = {**super().provenance(state, revision), "created_by": "ebru distill",
               "teacher": {"path": str(self.teacher_model.path), "manifest_sha256": self.teacher_model.manifest_sha256,
                           "steps": self.teacher_steps, "student_steps": self.steps}}
        if self.text is not None:  # the teacher's encoder, a verified component (as ebru train records it)
            spec = self.teacher_config["text_encoder"]
            out["components"] = {"text_encoder": {"name": spec["name"], "digest": spec["digest"]}}
        return out


@TASKS.register("progressive_distill")
class ProgressiveDistillTask(DistillTask):
    """One round of progressive distillation: a student takes N steps where its teacher takes 2N.

    Arguments as :class:`DistillTask`. Raises ValueError (one line) as it does, and for a teacher step count
    that cannot be halved.
    """

    name = "progressive_distill"
    method = "progressive"
    sampler = DISTILLED_SAMPLER
    keys = _KEYS

    def setup(self) -> None:
        """The teacher's 2N-step grid, the student's N-step grid and the schedule they come from."""
        self.teacher_sigmas = teacher_grid(self.teacher_config, self.settings.teacher_steps, self.settings.schedule)
        self.student_sigmas = student_sigmas(self.teacher_sigmas)
        self.schedule = self.settings.schedule or self.sampling_range.get("schedule", "karras")
        if self.schedule not in SCHEDULES:
            self.schedule = "karras"

    @property
    def steps(self) -> int:
        """The student's step count N."""
        return len(self.student_sigmas) - 1

    @property
    def teacher_steps(self) -> int:
        """The teacher's step count 2N."""
        return len(self.teacher_sigmas) - 1

    def draw_levels(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The student step (B,) of each image, uniform in [0, N) (Alg. 2)."""
        return {"step": torch.randint(self.steps, (batch_size,), generator=generator)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-sample progressive-distillation loss (B_part,) of the slice ``part`` (see the module docstring)."""
        x0, noise, cond = self.inputs(batch, part)
        return progressive_loss(model, self.teacher, x0, noise, self.teacher_sigmas, batch["step"][part],
                                weighting=self.settings.weighting,
                                sigma_data=self.precond.get("sigma_data") or 0.5, cond=cond)

    def grid_schedule(self) -> GridSchedule:
        """The student's grid as a step schedule (what its package's sampling uses)."""
        return GridSchedule(self.student_sigmas, name=f"distilled {self.schedule}")

    def distilled_record(self, state: TrainState) -> dict[str, Any]:
        """Method, steps, sampler (euler), the halved grid, guidance, the first teacher, the weighting."""
        return {
            "method": self.method, "steps": self.steps, "sampler": self.sampler,
            "sigmas": self.student_sigmas.tolist(), "schedule": self.schedule,
            **self.guidance.record(),
            "teacher": teacher_record(self.teacher_model, self.teacher_config, self.teacher_steps, self.schedule),
            "weighting": self.settings.weighting,
        }
