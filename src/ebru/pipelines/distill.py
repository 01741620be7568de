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
- ``reflow`` (Liu, Gong & Liu 2022; flow models only; :mod:`ebru.diffusion.reflow`, task
  :class:`ebru.tasks.reflow.ReflowTask`): the teacher's (noise, ODE sample) pairs are generated (``pairs``,
  10,000 by default; resumable chunk by chunk, kept in ``DIR/pairs``), then one round of flow training on the
  straight line of each pair; the student samples ``steps`` Euler steps on a uniform grid in flow time.

The run directory::

    DIR/distill.json              the plan: method, teacher (path, manifest SHA-256), step counts, rounds (reflow:
                                  the number of pairs, and the seconds spent generating them)
    DIR/round-1-32to16/           progressive round 1, a Trainer run directory (checkpoints/, log.csv, samples/,
    DIR/round-2-16to8/ ...        model/); consistency's one round is DIR/round-1-consistency/, reflow's
                                  DIR/round-1-reflow/
    DIR/pairs/                    reflow: the pairs (an index and verified chunks, :mod:`ebru.tasks.reflow_pairs`)
    DIR/model/                    the student: an ordinary model package (``ebru sample DIR/model``)

The teacher is loaded through ``ebru.load`` (manifest, signature, licence policy, strict weights), the
path ``ebru sample`` uses, with the caller's trust options; a refusal is one line. Each round's
student package names the original teacher as ``base_model`` and carries its signed lineage, so the
licence chain and its obligations carry over; its ``config.json`` holds ``distilled`` (method, steps,
sampler, grid, teacher) and samples those steps with that sampler by default.

``resume=True`` continues an interrupted distillation: finished rounds are kept, the round in
progress resumes from its newest checkpoint (bit for bit on the CPU, like ``ebru train --resume``),
and the rest run; reflow's pair generation resumes at the first missing chunk (each pair depends on its
seed alone, so the pairs, and the student, are those of an uninterrupted run).

``time_budget`` (minutes) is the distillation's wall time. Progressive and consistency split it evenly between
their rounds; one that cannot give each round ``MIN_ROUND_STEPS`` training steps, timed on this machine, is
refused before training. Reflow's budget covers its pairs *and* its training: the pairs still missing are
priced at the teacher's speed measured here (one call at the pair batch, times the sampler's calls per pair),
a budget that cannot fit them plus ``MIN_ROUND_STEPS`` training steps is refused before anything is generated,
the generation is timed (and recorded in ``distill.json``, so a resumed run counts what earlier runs spent),
and training gets what is left (at least ``MIN_ROUND_STEPS`` steps' worth, with a one-line warning, should the
pairs take longer than measured).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ebru.checks import finite_number, one_of, positive_int
from ebru.diffusion import SCHEDULES, sampler_nfe
from ebru.diffusion.distill import DISTILL_METHODS, IMPLEMENTED_METHODS, distill_weightings, halving_rounds
from ebru.tasks.distill import (
    check_data,
    check_teacher,
    default_teacher_steps,
    is_conditional,
    plan_guidance,
    teacher_grid,
)
from ebru.tasks.reflow import ReflowSettings, ReflowTask, check_flow_teacher
from ebru.tasks.reflow_pairs import PairSet, PairSpec, listed_pairs
from ebru.trust import CARD, load, verify, write_trained_package

MIN_ROUND_STEPS = 100  # a time budget must give every round at least this many training steps
TIMING_REPEATS = 3  # timed calls behind each speed estimate (the fastest counts)
ROUND_STEPS = 2000  # training steps per round when neither steps_per_round nor a time budget is given
PLAN = "distill.json"
PAIRS_DIR = "pairs"  # reflow's pairs, under the run directory
DEFAULT_PAIRS = ReflowSettings.pairs  # reflow's pairs when neither pairs= nor distill.pairs is given (10,000)

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


def plan_reflow(config: dict[str, Any], steps: int, *, teacher_steps: int | None, schedule: str | None,
                guidance: Any, weighting: str | None) -> Plan:
    """One round of task ``reflow``: a ``steps``-step Euler student trained on the teacher's pairs (made first).

    Raises ValueError (one line) for another method's settings (``teacher_steps``, ``schedule``, ``weighting``);
    the pairs' sampler, steps and schedule are ``distill.pair_sampler``, ``pair_steps``, ``pair_schedule``.
    """
    if teacher_steps is not None:
        raise ValueError("teacher steps are for progressive distillation; reflow's teacher draws its pairs in "
                         "distill.pair_steps steps (--set distill.pair_steps=K): drop --teacher-steps")
    if schedule is not None:
        raise ValueError(f"a schedule ({schedule!r}) is for progressive or consistency distillation; a reflow "
                         "student samples a uniform grid in flow time, and its pairs' schedule is "
                         "distill.pair_schedule: drop it")
    if weighting is not None:
        raise ValueError(f"a weighting ({weighting!r}) is for progressive distillation; reflow trains the velocity "
                         "MSE on each pair's line: drop it")
    table: dict[str, Any] = {"student_steps": steps}
    if guidance is not None:
        table["guidance"] = list(guidance) if isinstance(guidance, list | tuple) else guidance
    return Plan("reflow", [Round("round-1-reflow", "reflow", f"reflow, {steps}-step Euler student", table)])


PLANNERS = {"progressive": plan_progressive, "consistency": plan_consistency, "reflow": plan_reflow}


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
    for key in ("method", "teacher", "teacher_steps", "steps", "pairs"):
        if old.get(key) != plan.get(key):
            raise ValueError(f"--resume: {out} holds a distillation with another {key.replace('_', ' ')} "
                             f"({old.get(key)!r}, now {plan.get(key)!r}); use the same settings or a new --out")


def _step_seconds(trainer: Any) -> float:
    """Seconds of one training step of ``trainer`` (forward and backward of one batch), the random states kept."""
    rng, data = torch.get_rng_state(), trainer.gen.get_state()
    try:
        trainer._micro_loss(trainer._global_batch(), slice(0, trainer.micro)).backward()  # warm-up

        def step() -> None:
            trainer._micro_loss(trainer._global_batch(), slice(0, trainer.micro)).backward()

        return fastest_seconds(step) * trainer.accum
    finally:
        trainer.opt.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        trainer.gen.set_state(data)


def fastest_seconds(fn: Any, repeats: int = TIMING_REPEATS) -> float:
    """The fastest of ``repeats`` timed calls of ``fn()``: the machine's speed, not a moment when another
    process had the CPU (one timed call, taken while a test suite ran beside it, once priced a step 17x
    too slow and refused a budget that was ample)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


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
            guidance: float | tuple[float, float] | None = None, pairs: int | None = None,
            data: Any = None, steps_per_round: int | None = None, weighting: str | None = None,
            overrides: list[str] | None = None, sign_key: str | None = None, policy: str | None = None,
            trusted_keys: str | None = None, allow_unsigned: bool = False,
            acknowledge: list[str] | tuple[str, ...] = (), device: str = "auto", progress: bool = True) -> Path:
    """Distil the image model package ``teacher_dir`` into a ``steps``-step student at ``out/model``.

    Args:
        teacher_dir: a trained ebru image-diffusion package (unconditional, class-conditional or text-to-image);
            for ``reflow``, a flow model (``prediction = "flow"``) that is not text-to-image.
        method: ``"progressive"``, ``"consistency"`` or ``"reflow"``.
        steps: the student's step count N. Progressive: the teacher's step count halved one or more times;
            consistency: any N >= 1, the student's default (it samples any count; ECT's 2 steps are
            ``sigma = 80`` then ``0.821``); reflow: any N >= 1 Euler steps on a uniform grid in flow time.
        out: the run directory (see the module docstring).
        time_budget: minutes of distillation wall time: progressive and consistency split it evenly between
            their rounds; reflow spends it on its pairs, then training (module docstring). None: train
            ``steps_per_round`` steps.
        resume: continue the distillation in ``out``.
        teacher_steps: progressive only: the teacher's Euler step count that round 1 halves (default: the
            largest power of two <= the teacher's sampling steps; a distilled teacher's own steps).
        schedule: progressive: the teacher's step schedule (default: the teacher's, else ``karras``);
            consistency: the schedule of the student's grid from ``sigma_max`` to 0.821 (default ``karras``).
        guidance: a class-conditional or text-to-image teacher's classifier-free guidance: a range ``(lo, hi)``
            of scales the student takes as an input (default ``(1, max(2, 2 w))``, w the teacher's sampling
            scale), or one scale distilled into the student's weights. Reflow: one scale (default the
            teacher's), at which the pairs are drawn and which the student learns.
        pairs: reflow only: the number of (noise, ODE sample) pairs the teacher draws (default
            :data:`DEFAULT_PAIRS`), kept in ``out/pairs``.
        data: progressive and consistency: the teacher's training data: an ``ImageDataset``, a data set name or
            folder, or None for the one the teacher's package records (reflow trains on its pairs).
        steps_per_round: training steps per round (default: :data:`ROUND_STEPS`, or unlimited under
            a time budget).
        weighting: progressive only: ``truncated_snr`` (default, the paper's) or a ``WEIGHTINGS`` name.
        overrides: ``key=value`` training settings (``lr=1e-4``, ``batch_size=64``), as ``ebru train --set``;
            ``distill.KEY=VALUE`` sets a method's setting (consistency: ``q``, ``stage_images``, ``huber_c``
            ..., :mod:`ebru.tasks.consistency`; reflow: ``pair_sampler``, ``pair_steps``, ``pair_batch``,
            ``time`` ..., :mod:`ebru.tasks.reflow`).
        sign_key: a private key file: sign every package written.
        policy, trusted_keys, allow_unsigned, acknowledge: ``ebru.load``'s trust options for the teacher.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars and per-round lines.

    Returns the student package's directory, ``out/model``.

    Raises:
        ValueError (one line each, before any training or pair generation): an unknown method; a teacher
            that is not an ebru image-diffusion package, that the method cannot distil (a consistency
            student; for consistency, any distilled student; for reflow, a model that is not a flow model,
            the message naming the other methods), or that the licence policy or signature check refuses
            (``ebru.trust``'s errors); a step count halving cannot reach from the teacher's (the message lists
            those it can); another method's setting (``teacher_steps``, ``weighting`` for consistency or
            reflow; ``schedule``, ``data`` for reflow; ``pairs`` for any other method) or a method setting out
            of range; a time budget too small for one round (reflow: for its pairs plus one round); ``out``
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
    config = check_flow_teacher(teacher) if method == "reflow" else check_teacher(teacher, method)
    if pairs is not None:
        if method != "reflow":
            raise ValueError(f"pairs are for reflow; {method} distillation trains on the teacher's data: drop "
                             "--pairs")
        pairs = positive_int("pairs", pairs)
    if teacher_steps is not None:
        teacher_steps = positive_int("teacher steps", teacher_steps)
    if schedule is not None:
        one_of("schedule", schedule, sorted(SCHEDULES))
    plan = PLANNERS[method](config, steps, teacher_steps=teacher_steps, schedule=schedule, guidance=guidance,
                            weighting=weighting)
    rounds = plan.rounds
    plan_guidance(tuple(guidance) if isinstance(guidance, list | tuple) else guidance, config,
                  is_conditional(config))  # a guidance setting the teacher can take
    if weighting is not None:
        one_of("distillation weighting", weighting, distill_weightings())
    if method == "reflow":
        if data is not None:
            raise ValueError("reflow trains on its teacher's pairs, not on images: drop --data")
    elif data is None and not _teacher_training_config(config).get("data"):
        raise ValueError(f"{teacher.path}: its config does not record the data it was trained on; give the data "
                         "(a data set name or folder)")
    out = Path(out)
    record = _plan(teacher, plan, steps)
    reflow_cfg = None
    if method == "reflow":  # its settings are checked (and the pairs counted) before anything is written
        reflow_cfg = _reflow_config(config, plan.rounds[0], first=os.path.abspath(teacher_dir), out=out,
                                    pairs=pairs, trust=trust, steps=steps_per_round or (
                                        10**9 if time_budget is not None else ROUND_STEPS),
                                    sign_key=sign_key, device=device, overrides=list(overrides or []))
        record["pairs"] = reflow_cfg.distill["pairs"]
    _check_out(out, record, resume)
    final = out / "model"
    if resume and final.is_dir():
        if progress:
            print(f"{final}: the {steps}-step student is already made", flush=True)
        return final
    if reflow_cfg is not None:
        return _run_reflow(reflow_cfg, plan.rounds[0], out, record, resume=resume, time_budget=time_budget,
                           trust=trust, sign_key=sign_key, progress=progress)

    from ebru.data import ImageDataset, load_captioned, load_dataset
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
            # a text-to-image teacher's captioned images, read as the text2image task reads them
            read = load_captioned if config.get("text_encoder") else load_dataset
            dataset = read(cfg.data, image_size=cfg.image_size)
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


# ---------------------------------------------------------------------------------------- reflow
def _reflow_config(teacher_config: dict[str, Any], rnd: Round, *, first: str, out: Path, pairs: int | None,
                   trust: dict[str, Any], steps: int, sign_key: str | None, device: str, overrides: list[str]) -> Any:
    """The reflow round's ``TrainConfig`` (pairs in ``out/pairs``); its ``[distill]`` table checked in one line.

    ``cfg.distill["pairs"]`` is the number of pairs in force (``pairs``, else a ``distill.pairs`` override, else
    :data:`DEFAULT_PAIRS`); the time budget is set once the pairs are made.
    """
    table: dict[str, Any] = {"teacher": first, **trust, "quiet": True, **rnd.table,
                             "pairs": pairs if pairs is not None else DEFAULT_PAIRS,
                             "pairs_dir": os.path.abspath(out / PAIRS_DIR)}
    overrides = list(overrides)
    if pairs is not None:  # the argument wins over a distill.pairs override
        overrides.append(f"distill.pairs={pairs}")
    cfg = round_config(teacher_config, table, data=None, steps=steps, time_budget=None, sign_key=sign_key,
                       device=device, overrides=overrides, task=rnd.task)
    cfg.distill["pairs"] = ReflowSettings.from_table(cfg.distill).pairs  # every setting checked, in one line
    return cfg


class _ReflowPlanning(ReflowTask):
    """The reflow task before its pairs: settings, teacher, pair spec and folder, its data a placeholder.

    :meth:`placeholder` (zeros of the pairs' shapes, an expanded view: no memory on the CPU) stands in for the
    pairs, so a training step can be timed before any pair exists; :meth:`pairs` reads or generates the real ones.
    """

    def make_pairs(self, generate: bool = True, progress: bool | None = None) -> PairSet:
        return self.placeholder(self.spec, self.settings.pairs)

    @staticmethod
    def placeholder(spec: PairSpec, n: int) -> PairSet:
        zero = torch.zeros((1, *spec.shape)).expand(n, *spec.shape)
        return PairSet(spec, zero, zero, spec.labels(0, n), spec.seeds(0, n))

    def pairs(self, generate: bool, progress: bool) -> PairSet:
        """The real pairs: read, the missing ones generated (``generate``) with progress bars (``progress``)."""
        return ReflowTask.make_pairs(self, generate, progress)


def _seconds_per_pair(task: _ReflowPlanning, missing: int) -> float:
    """Teacher seconds per pair here: one (guided) teacher call at the pair batch, times the sampler's calls."""
    spec, device = task.spec, task.device
    b = min(task.settings.pair_batch, missing)
    d = task.teacher_denoiser()
    x = spec.sigmas[0] * torch.randn((b, *spec.shape), generator=torch.Generator().manual_seed(0))
    x, sigma = x.to(device), torch.full((b,), spec.sigmas[0], device=device)
    labels = spec.labels(0, b)
    cond = {"class_labels": labels.to(device)} if labels is not None else {}
    def one_call() -> None:
        d(x, sigma, **cond)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        one_call()  # warm-up
        call = fastest_seconds(one_call)
    return call * sampler_nfe(spec.sampler, spec.steps) / b


def check_reflow_budget(minutes: float, spent: float, missing: int, pair_seconds: float, step_seconds: float) -> None:
    """Refuse (ValueError, one line) a budget that cannot fit reflow's pairs and :data:`MIN_ROUND_STEPS` steps.

    ``spent``: seconds earlier runs spent on the pairs; ``missing`` pairs at ``pair_seconds`` each are still to
    make; a training step takes ``step_seconds``.
    """
    pairs_s = spent + missing * pair_seconds
    train_s = MIN_ROUND_STEPS * step_seconds
    if minutes * 60 < pairs_s + train_s:
        at_least = math.ceil((pairs_s + train_s) / 60 * 100) / 100
        before = f" (and {spent:.3g} s already spent on them)" if spent else ""
        raise ValueError(f"a time budget of {minutes:g} min is too small for reflow: the {missing} pairs still to "
                         f"make take about {missing * pair_seconds:.3g} s ({pair_seconds:.3g} s per pair here)"
                         f"{before}, and its round needs at least {MIN_ROUND_STEPS} training steps ({train_s:.3g} s "
                         f"at {step_seconds:.3g} s per step); give at least {at_least:g} min, or fewer pairs")


def _pair_seconds_spent(out: Path) -> float:
    try:
        return float(json.loads((out / PLAN).read_text(encoding="utf-8")).get("pair_seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _record(out: Path, record: dict[str, Any]) -> None:
    from ebru.data.atomic import atomic_open

    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / PLAN, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1) + "\n")


def _run_reflow(cfg: Any, rnd: Round, out: Path, record: dict[str, Any], *, resume: bool,
                time_budget: float | None, trust: dict[str, Any], sign_key: str | None, progress: bool) -> Path:
    """Reflow's plan: the pairs (timed, resumable), then its one training round; returns ``out/model``."""
    from ebru.train import Trainer
    from ebru.train.distributed import barrier, init_distributed

    run_dir = out / rnd.dir
    student = run_dir / "model"
    if student.is_dir():
        if progress:
            print(f"round 1/1: {rnd.title} already done ({student})", flush=True)
        return _publish(student, out / "model", trust, sign_key)
    info = init_distributed(cfg.device)
    task = _ReflowPlanning(cfg, info.device, is_main=info.is_main)  # the teacher and settings; no pairs yet
    n = task.settings.pairs
    checkpoints = run_dir / "checkpoints"
    again = resume and checkpoints.is_dir() and any(checkpoints.iterdir())
    spent = _pair_seconds_spent(out) if resume else 0.0
    step_seconds = 0.0
    if time_budget is not None:
        missing = n - listed_pairs(task.pairs_dir(), task.spec, n)
        each = _seconds_per_pair(task, missing) if missing else 0.0
        probe = Trainer(cfg, run_dir / "budget-probe", dataset=task.data, progress=False)  # never written
        step_seconds = _step_seconds(probe)
        del probe
        check_reflow_budget(time_budget, spent, missing, each, step_seconds)
    if info.is_main and not (out / PLAN).is_file():  # written once everything is checked
        _record(out, record)
    if progress:
        print(f"reflow pairs: {n} of teacher {cfg.distill['teacher']} in {task.pairs_dir()}", flush=True)
    start = time.perf_counter()
    try:
        if info.is_main:
            pairs = task.pairs(generate=True, progress=progress)
        barrier(info)
        if not info.is_main:
            pairs = task.pairs(generate=False, progress=False)
    finally:  # an interrupted generation's time counts too
        if info.is_main:
            spent += time.perf_counter() - start
            _record(out, {**json.loads((out / PLAN).read_text(encoding="utf-8")), "pair_seconds": spent})
    if time_budget is not None:
        left, floor = time_budget * 60 - spent, MIN_ROUND_STEPS * step_seconds
        if left < floor:
            warnings.warn(f"the reflow pairs took {spent:.3g} s, longer than measured: training gets {floor:.3g} s "
                          f"({MIN_ROUND_STEPS} steps), {floor - left:.3g} s over the time budget", UserWarning,
                          stacklevel=3)
            left = floor
        cfg.time_budget = left / 60
    trainer = Trainer(cfg, run_dir, resume=again, dataset=pairs, progress=progress)
    if progress:
        budget = f", {cfg.time_budget:.3g} min" if cfg.time_budget else ""
        print(f"round 1/1: {rnd.title} on {len(pairs)} pairs (teacher {cfg.distill['teacher']}{budget})", flush=True)
    trainer.fit()
    return _publish(student, out / "model", trust, sign_key)


def _publish(student: Path, final: Path, trust: dict[str, Any], sign_key: str | None) -> Path:
    """Write the last round's student again as ``final`` (verified first; signed with ``sign_key``)."""
    m = load(student, **{**trust, "allow_unsigned": True}, quiet=True)
    write_trained_package(final, m.config, m.weights, m.read(CARD).decode("utf-8"), dict(m.manifest.provenance),
                          sign_key=sign_key, lineage=[dict(e) for e in m.lineage], metadata=dict(m.metadata))
    return final
