"""``distill(teacher_dir, method=..., steps=N, out=DIR)``: a few-step student of a trained image model.

Each method is a *plan of rounds* (:class:`Round`), each round one ordinary training run of ebru's
:class:`~ebru.train.Trainer` on a distillation task:

- ``progressive`` (Salimans & Ho 2022; :mod:`ebru.diffusion.distill`, task
  :class:`ebru.tasks.distill.ProgressiveDistillTask`): the halving rounds ``2N -> N``, each round's
  teacher the previous round's student, until the student takes ``steps`` deterministic DDIM (= Euler) steps.
- ``consistency`` (ECT, Geng et al. 2025; consistency distillation for a guided teacher, Song et al. 2023;
  :mod:`ebru.diffusion.consistency`, task :class:`ebru.tasks.consistency.ConsistencyDistillTask`): one
  round; the student samples ``steps`` steps of the multistep consistency sampler by default, and any
  other count.
- ``reflow`` (flow models): pair generation, then one round (named, not wired in yet).

The run directory::

    DIR/distill.json              the plan: method, teacher (path, manifest SHA-256), step counts, rounds
    DIR/round-1-32to16/           progressive round 1, a Trainer run directory (checkpoints/, log.csv, samples/,
    DIR/round-2-16to8/ ...        model/); consistency's one round is DIR/round-1-consistency/
    DIR/model/                    the student: an ordinary model package (``ebru sample DIR/model``)

The teacher is loaded through ``ebru.load`` (manifest, signature, licence policy, strict weights), the
path ``ebru sample`` uses, with the caller's trust options; a refusal is one line. Each round's
student package names the original teacher as ``base_model`` and carries its signed lineage, so the
licence chain and its obligations carry over; its ``config.json`` holds ``distilled`` (method, steps,
sampler, grid, teacher) and samples those steps with that sampler by default.

``resume=True`` continues an interrupted distillation: finished rounds are kept, the round in
progress resumes from its newest checkpoint (bit for bit on the CPU, like ``ebru train --resume``),
and the rest run. ``time_budget`` (minutes) is split evenly between the rounds; one that cannot give
each round ``MIN_ROUND_STEPS`` training steps, timed on this machine, is refused before training.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ebru.checks import finite_number, one_of, positive_int
from ebru.diffusion import SCHEDULES
from ebru.diffusion.distill import DISTILL_METHODS, IMPLEMENTED_METHODS, distill_weightings, halving_rounds
from ebru.tasks.distill import check_data, check_teacher, default_teacher_steps, plan_guidance, teacher_grid
from ebru.trust import CARD, load, verify, write_trained_package

MIN_ROUND_STEPS = 100  # a time budget must give every round at least this many training steps
ROUND_STEPS = 2000  # training steps per round when neither steps_per_round nor a time budget is given
PLAN = "distill.json"

# What a distillation round changes in the teacher's training config (then the method's, then the caller's
# overrides apply).
ROUND_DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,  # a fine-tune of the teacher's weights, ~10x below ebru's from-scratch rates
    "warmup_steps": 100,
    "cond_dropout": 0.0,  # the student learns the (guided) conditional teacher; no null-label training needed
    "sample_every": 0,
    "checkpoint_every": 500,
    "log_every": 50,
}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {  # a method's own changes, by its task
    "consistency_distill": {"lr": 1e-4},  # ECT's (locuslab/ect run_ecm.sh: --lr 0.0001 at batch 128)
}


@dataclass(frozen=True)
class Round:
    """One Trainer run of a distillation plan.

    Attributes:
        dir: its run directory's name under ``out``.
        task: the ``TASKS`` name it trains.
        title: how progress lines name it (``4 -> 2 steps``).
        table: its ``[distill]`` entries besides the teacher and the trust options.
        chained: its teacher is the previous round's student (else the first teacher).
    """

    dir: str
    task: str
    title: str
    table: dict[str, Any] = field(default_factory=dict)
    chained: bool = False


@dataclass(frozen=True)
class Plan:
    """A method's rounds, and what ``distill.json`` records of them (what a resume must match)."""

    method: str
    rounds: list[Round]
    teacher_steps: int | None = None


def _check_method(method: str) -> str:
    one_of("distillation method", method, DISTILL_METHODS)
    if method not in IMPLEMENTED_METHODS or method not in PLANNERS:  # a method runs once it has a plan of rounds
        raise ValueError(f"distillation method {method!r} is not implemented yet; implemented: "
                         f"{', '.join(m for m in IMPLEMENTED_METHODS if m in PLANNERS)}")
    return method


def round_dir_name(k: int, teacher_steps: int, student_steps: int) -> str:
    """``round-<k>-<2N>to<N>``: the Trainer run directory of progressive round ``k`` (1-based)."""
    return f"round-{k}-{teacher_steps}to{student_steps}"


def plan_progressive(config: dict[str, Any], steps: int, *, teacher_steps: int | None, schedule: str | None,
                     guidance: Any, weighting: str | None) -> Plan:
    """The halving rounds ``2N -> N`` from the teacher's steps down to ``steps``.

    Raises ValueError (one line) for a step count halving cannot reach (listing those it can), or a teacher
    grid that cannot be halved.
    """
    n_teacher = teacher_steps if teacher_steps is not None else default_teacher_steps(config)
    halving = halving_rounds(n_teacher, steps)
    teacher_grid(config, n_teacher, schedule)  # a grid the rounds can halve (odd counts, distilled teachers)
    rounds = []
    for k, (n_t, n_s) in enumerate(halving, start=1):
        table: dict[str, Any] = {"teacher_steps": n_t}
        if k == 1:
            if schedule is not None:
                table["schedule"] = schedule
            if guidance is not None:
                table["guidance"] = list(guidance) if isinstance(guidance, list | tuple) else guidance
        if weighting is not None:
            table["weighting"] = weighting
        rounds.append(Round(round_dir_name(k, n_t, n_s), "progressive_distill", f"{n_t} -> {n_s} steps", table,
                            chained=k > 1))
    return Plan("progressive", rounds, n_teacher)


def plan_consistency(config: dict[str, Any], steps: int, *, teacher_steps: int | None, schedule: str | None,
                     guidance: Any, weighting: str | None) -> Plan:
    """One round: consistency tuning (or distillation, for a guided teacher) of a ``steps``-step student.

    Raises ValueError (one line) for progressive distillation's settings (``teacher_steps``, ``weighting``).
    """
    if teacher_steps is not None:
        raise ValueError("teacher steps are for progressive distillation; consistency distillation trains one "
                         "student for every step count: drop --teacher-steps")
    if weighting is not None:
        raise ValueError(f"a weighting ({weighting!r}) is for progressive distillation; consistency distillation "
                         "weights its loss by 1 / (t - r) (ECT): drop it")
    table: dict[str, Any] = {"steps": steps}
    if schedule is not None:
        table["schedule"] = schedule
    if guidance is not None:
        table["guidance"] = list(guidance) if isinstance(guidance, list | tuple) else guidance
    return Plan("consistency", [Round("round-1-consistency", "consistency_distill", f"consistency, {steps}-step "
                                      "student", table)])


PLANNERS = {"progressive": plan_progressive, "consistency": plan_consistency}


def _teacher_training_config(config: dict[str, Any]) -> dict[str, Any]:
    """The teacher's own training config (recorded in its package), keys the Trainer knows only."""
    from ebru.train import TrainConfig

    recorded = config.get("training", {}).get("config")
    if not isinstance(recorded, dict):
        return {}
    known = set(TrainConfig.__dataclass_fields__)
    return {k: v for k, v in recorded.items() if k in known}


def round_config(teacher_config: dict[str, Any], distill_table: dict[str, Any], *, data: str | None,
                 steps: int, time_budget: float | None, sign_key: str | None, device: str,
                 overrides: list[str], task: str = "progressive_distill") -> Any:
    """The ``TrainConfig`` of one round of ``task``: the teacher's training config, :data:`ROUND_DEFAULTS`, the
    task's :data:`TASK_DEFAULTS`, this round.

    ``overrides`` (``key=value`` strings, as ``--set``; ``distill.KEY=VALUE`` sets a distillation setting)
    apply last. Raises ValueError for a bad key or value (naming the nearest valid key).
    """
    from ebru.train import TrainConfig
    from ebru.train.config import apply_overrides

    d = _teacher_training_config(teacher_config)
    d.update(ROUND_DEFAULTS)
    d.update(TASK_DEFAULTS.get(task, {}))
    s = teacher_config.get("sampling", {})
    d.update({"task": task, "model": dict(teacher_config["net"]), "distill": dict(distill_table),
              "steps": steps, "time_budget": time_budget, "sign_key": sign_key, "device": device,
              "class_conditional": bool(teacher_config.get("num_classes"))})
    for key in ("prediction", "sigma_data"):  # the record; the task reads the teacher's preconditioning itself
        if key in teacher_config.get("precond", {}):
            d[key] = teacher_config["precond"][key]
    for key in ("sigma_min", "sigma_max"):
        if key in s:
            d[key] = s[key]
    if data is not None:
        d["data"] = data
    for key in ("text", "encoder", "sample_prompts"):  # other tasks' settings
        d.pop(key, None)
    d = apply_overrides(d, overrides)
    if d.get("task") != task:
        raise ValueError(f"task is set by the method ({task}), got {d.get('task')!r}; drop the override")
    return TrainConfig.from_dict(d)


def _plan(teacher: Any, plan: Plan, steps: int) -> dict[str, Any]:
    return {"method": plan.method, "teacher": {"path": os.path.abspath(teacher.path),
                                               "manifest_sha256": teacher.manifest_sha256},
            "teacher_steps": plan.teacher_steps, "steps": steps, "rounds": [r.dir for r in plan.rounds]}


def _check_out(out: Path, plan: dict[str, Any], resume: bool) -> None:
    """Refuse to start over a distillation without ``resume``, or to resume another one."""
    plan_file = out / PLAN
    started = plan_file.is_file() or any(out.glob("round-*"))
    if not resume:
        if started:
            raise ValueError(f"{out} already holds a distillation: pass --resume to continue it, or choose a new "
                             "--out")
        return
    if not plan_file.is_file():
        raise ValueError(f"--resume: no distillation to resume in {out} (no {PLAN}); drop --resume to start one")
    try:
        old = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{plan_file}: not a distillation plan ({e})") from None
    for key in ("method", "teacher", "teacher_steps", "steps"):
        if old.get(key) != plan.get(key):
            raise ValueError(f"--resume: {out} holds a distillation with another {key.replace('_', ' ')} "
                             f"({old.get(key)!r}, now {plan.get(key)!r}); use the same settings or a new --out")


def _step_seconds(trainer: Any) -> float:
    """Seconds of one training step of ``trainer`` (forward and backward of one batch), the random states kept."""
    rng, data = torch.get_rng_state(), trainer.gen.get_state()
    try:
        trainer._micro_loss(trainer._global_batch(), slice(0, trainer.micro)).backward()  # warm-up
        start = time.perf_counter()
        trainer._micro_loss(trainer._global_batch(), slice(0, trainer.micro)).backward()
        return (time.perf_counter() - start) * trainer.accum
    finally:
        trainer.opt.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        trainer.gen.set_state(data)


def check_time_budget(minutes: float, rounds: int, step_seconds: float) -> None:
    """Refuse (ValueError, one line) a budget that gives a round fewer than :data:`MIN_ROUND_STEPS` steps."""
    per_round = minutes * 60 / rounds
    need = MIN_ROUND_STEPS * step_seconds
    if per_round < need:
        at_least = math.ceil(need * rounds / 60 * 100) / 100
        raise ValueError(f"a time budget of {minutes:g} min is too small for one round: {rounds} round(s) get "
                         f"{per_round:.3g} s each, and a round needs at least {MIN_ROUND_STEPS} training steps "
                         f"({need:.3g} s at {step_seconds:.3g} s per step here); give at least {at_least:g} min")


def distill(teacher_dir: str | os.PathLike, method: str = "progressive", steps: int = 4,
            out: str | os.PathLike = "ebru-distill", time_budget: float | None = None, *, resume: bool = False,
            teacher_steps: int | None = None, schedule: str | None = None,
            guidance: float | tuple[float, float] | None = None,
            data: Any = None, steps_per_round: int | None = None, weighting: str | None = None,
            overrides: list[str] | None = None, sign_key: str | None = None, policy: str | None = None,
            trusted_keys: str | None = None, allow_unsigned: bool = False,
            acknowledge: list[str] | tuple[str, ...] = (), device: str = "auto", progress: bool = True) -> Path:
    """Distil the image model package ``teacher_dir`` into a ``steps``-step student at ``out/model``.

    Args:
        teacher_dir: a trained ebru image-diffusion package (unconditional or class-conditional).
        method: ``"progressive"`` or ``"consistency"`` (``"reflow"`` is named but not wired in yet).
        steps: the student's step count N. Progressive: the teacher's step count halved one or more times;
            consistency: any N >= 1, the student's default (it samples any count; ECT's 2 steps are
            ``sigma = 80`` then ``0.821``).
        out: the run directory (see the module docstring).
        time_budget: minutes for all rounds together (split evenly), or None for ``steps_per_round``.
        resume: continue the distillation in ``out``.
        teacher_steps: progressive only: the teacher's Euler step count that round 1 halves (default: the
            largest power of two <= the teacher's sampling steps; a distilled teacher's own steps).
        schedule: progressive: the teacher's step schedule (default: the teacher's, else ``karras``);
            consistency: the schedule of the student's grid from ``sigma_max`` to 0.821 (default ``karras``).
        guidance: a class-conditional teacher's classifier-free guidance: a range ``(lo, hi)`` of scales
            the student takes as an input (default ``(1, max(2, 2 w))``, w the teacher's sampling scale), or
            one scale distilled into the student's weights.
        data: the teacher's training data: an ``ImageDataset``, a data set name or folder, or None for
            the one the teacher's package records.
        steps_per_round: training steps per round (default: :data:`ROUND_STEPS`, or unlimited under
            a time budget).
        weighting: progressive only: ``truncated_snr`` (default, the paper's) or a ``WEIGHTINGS`` name.
        overrides: ``key=value`` training settings (``lr=1e-4``, ``batch_size=64``), as ``ebru train --set``;
            ``distill.KEY=VALUE`` sets a method's setting (consistency: ``q``, ``stage_images``, ``huber_c``
            ..., :mod:`ebru.tasks.consistency`).
        sign_key: a private key file: sign every package written.
        policy, trusted_keys, allow_unsigned, acknowledge: ``ebru.load``'s trust options for the teacher.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars and per-round lines.

    Returns the student package's directory, ``out/model``.

    Raises:
        ValueError (one line each, before any training): an unknown or unimplemented method; a teacher
            that is not an ebru image-diffusion package, that the method cannot distil (a consistency
            student; for consistency, any distilled student), or that the licence policy or signature check
            refuses (``ebru.trust``'s errors); a step count halving cannot reach from the teacher's (the
            message lists those it can); another method's setting (``teacher_steps``, ``weighting`` for
            consistency) or a method setting out of range; a time budget too small for one round; ``out``
            holding another distillation (or, with ``resume``, none).
        FileNotFoundError: ``teacher_dir`` does not exist.
    """
    method = _check_method(method)
    steps = positive_int("steps", steps)
    if time_budget is not None:
        time_budget = finite_number("time budget", time_budget, positive=True)
    if steps_per_round is not None:
        steps_per_round = positive_int("steps per round", steps_per_round)
    trust = {"policy": None if policy is None else str(policy),
             "trusted_keys": None if trusted_keys is None else str(trusted_keys),
             "allow_unsigned": bool(allow_unsigned), "acknowledge": list(acknowledge)}
    teacher = verify(teacher_dir, **trust)  # every check ebru.load makes; warnings printed once, here
    config = check_teacher(teacher, method)
    if teacher_steps is not None:
        teacher_steps = positive_int("teacher steps", teacher_steps)
    if schedule is not None:
        one_of("schedule", schedule, sorted(SCHEDULES))
    plan = PLANNERS[method](config, steps, teacher_steps=teacher_steps, schedule=schedule, guidance=guidance,
                            weighting=weighting)
    rounds = plan.rounds
    plan_guidance(tuple(guidance) if isinstance(guidance, list | tuple) else guidance, config,
                  bool(config.get("num_classes")))  # a guidance setting the teacher can take
    if weighting is not None:
        one_of("distillation weighting", weighting, distill_weightings())
    if data is None and not _teacher_training_config(config).get("data"):
        raise ValueError(f"{teacher.path}: its config does not record the data it was trained on; give the data "
                         "(a data set name or folder)")
    out = Path(out)
    record = _plan(teacher, plan, steps)
    _check_out(out, record, resume)
    final = out / "model"
    if resume and final.is_dir():
        if progress:
            print(f"{final}: the {steps}-step student is already made", flush=True)
        return final

    from ebru.data import ImageDataset, load_dataset
    from ebru.train import Trainer

    dataset = data if isinstance(data, ImageDataset) else None
    spec = None if data is None or dataset is not None else str(data)
    per_round = None if time_budget is None else time_budget / len(rounds)
    round_steps = steps_per_round or (10**9 if time_budget is not None else ROUND_STEPS)
    budget_checked = time_budget is None
    first = Path(os.path.abspath(teacher_dir))  # absolute: a resumed run may start elsewhere
    previous = first
    for k, rnd in enumerate(rounds, start=1):
        run_dir = out / rnd.dir
        table: dict[str, Any] = {"teacher": os.path.abspath(previous if rnd.chained else first), **trust,
                                 "quiet": True, **rnd.table}
        if rnd.chained:  # the previous round's student, written by this run: its manifest is checked, its origin
            table["allow_unsigned"] = True  # is this run
        previous = run_dir / "model"
        if previous.is_dir():
            if progress:
                print(f"round {k}/{len(rounds)}: {rnd.title} already done ({previous})", flush=True)
            continue
        cfg = round_config(config, table, data=spec, steps=round_steps, time_budget=per_round, sign_key=sign_key,
                           device=device, overrides=list(overrides or []), task=rnd.task)
        if dataset is None:  # loaded once, for every round
            dataset = load_dataset(cfg.data, image_size=cfg.image_size)
        check_data(config, dataset)
        checkpoints = run_dir / "checkpoints"
        again = resume and checkpoints.is_dir() and any(checkpoints.iterdir())
        trainer = Trainer(cfg, run_dir, resume=again, dataset=dataset, progress=progress)
        if not budget_checked:
            check_time_budget(time_budget, len(rounds), _step_seconds(trainer))
            budget_checked = True
        if not (out / PLAN).is_file():  # written once everything is checked, so a refusal leaves nothing behind
            out.mkdir(parents=True, exist_ok=True)
            (out / PLAN).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if progress:
            print(f"round {k}/{len(rounds)}: {rnd.title} (teacher {cfg.distill['teacher']})", flush=True)
        trainer.fit()
    return _publish(previous, final, trust, sign_key)


def _publish(student: Path, final: Path, trust: dict[str, Any], sign_key: str | None) -> Path:
    """Write the last round's student again as ``final`` (verified first; signed with ``sign_key``)."""
    m = load(student, **{**trust, "allow_unsigned": True}, quiet=True)
    write_trained_package(final, m.config, m.weights, m.read(CARD).decode("utf-8"), dict(m.manifest.provenance),
                          sign_key=sign_key, lineage=[dict(e) for e in m.lineage], metadata=dict(m.metadata))
    return final
