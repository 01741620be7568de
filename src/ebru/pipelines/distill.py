"""``distill(teacher_dir, method="progressive", steps=N, out=DIR)``: a few-step student of a trained image model.

Progressive distillation (Salimans & Ho 2022; :mod:`ebru.diffusion.distill`, task
:class:`ebru.tasks.distill.ProgressiveDistillTask`) halves the teacher's deterministic DDIM (= Euler)
step count once per round, ``2N -> N``, each round one ordinary training run of ebru's
:class:`~ebru.train.Trainer` whose teacher is the previous round's student. The run directory::

    DIR/distill.json              the plan: method, teacher (path, manifest SHA-256), step counts, rounds
    DIR/round-1-32to16/           round 1, a Trainer run directory (checkpoints/, log.csv, samples/, model/)
    DIR/round-2-16to8/ ...
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
from pathlib import Path
from typing import Any

import torch

from ebru.checks import finite_number, one_of, positive_int
from ebru.diffusion.distill import DISTILL_METHODS, IMPLEMENTED_METHODS, distill_weightings, halving_rounds
from ebru.tasks.distill import check_data, check_teacher, default_teacher_steps, plan_guidance, teacher_grid
from ebru.trust import CARD, load, verify, write_trained_package

MIN_ROUND_STEPS = 100  # a time budget must give every round at least this many training steps
ROUND_STEPS = 2000  # training steps per round when neither steps_per_round nor a time budget is given
PLAN = "distill.json"

# What a distillation round changes in the teacher's training config (then the caller's overrides apply).
ROUND_DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,  # a fine-tune of the teacher's weights, ~10x below ebru's from-scratch rates
    "warmup_steps": 100,
    "cond_dropout": 0.0,  # the student learns the (guided) conditional teacher; no null-label training needed
    "sample_every": 0,
    "checkpoint_every": 500,
    "log_every": 50,
}


def _check_method(method: str) -> str:
    one_of("distillation method", method, DISTILL_METHODS)
    if method not in IMPLEMENTED_METHODS:
        raise ValueError(f"distillation method {method!r} is not implemented yet; implemented: "
                         f"{', '.join(IMPLEMENTED_METHODS)}")
    return method


def round_dir_name(k: int, teacher_steps: int, student_steps: int) -> str:
    """``round-<k>-<2N>to<N>``: the Trainer run directory of round ``k`` (1-based)."""
    return f"round-{k}-{teacher_steps}to{student_steps}"


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
                 overrides: list[str]) -> Any:
    """The ``TrainConfig`` of one round: the teacher's training config, :data:`ROUND_DEFAULTS`, this round.

    ``overrides`` (``key=value`` strings, as ``--set``) apply last. Raises ValueError for a bad key
    or value (naming the nearest valid key).
    """
    from ebru.train import TrainConfig
    from ebru.train.config import apply_overrides

    d = _teacher_training_config(teacher_config)
    d.update(ROUND_DEFAULTS)
    s = teacher_config.get("sampling", {})
    d.update({"task": "progressive_distill", "model": dict(teacher_config["net"]), "distill": dict(distill_table),
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
    if d.get("task") != "progressive_distill":
        raise ValueError(f"task is set by the method (progressive_distill), got {d.get('task')!r}; drop the override")
    return TrainConfig.from_dict(d)


def _plan(teacher: Any, method: str, teacher_steps: int, steps: int, rounds: list[tuple[int, int]]) -> dict[str, Any]:
    return {"method": method, "teacher": {"path": os.path.abspath(teacher.path),
                                          "manifest_sha256": teacher.manifest_sha256},
            "teacher_steps": teacher_steps, "steps": steps, "rounds": [list(r) for r in rounds]}


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
        method: ``"progressive"`` (``"consistency"`` and ``"reflow"`` are named but not implemented yet).
        steps: the student's step count N: the teacher's step count halved one or more times.
        out: the run directory (see the module docstring).
        time_budget: minutes for all rounds together (split evenly), or None for ``steps_per_round``.
        resume: continue the distillation in ``out``.
        teacher_steps: the teacher's Euler step count that round 1 halves (default: the largest power
            of two <= the teacher's sampling steps; a distilled teacher's own steps).
        schedule: the teacher's step schedule (default: the teacher's, else ``karras``).
        guidance: a class-conditional teacher's classifier-free guidance: a range ``(lo, hi)`` of scales
            the student takes as an input (default ``(1, max(2, 2 w))``, w the teacher's sampling scale), or
            one scale distilled into the student's weights.
        data: the teacher's training data: an ``ImageDataset``, a data set name or folder, or None for
            the one the teacher's package records.
        steps_per_round: training steps per round (default: :data:`ROUND_STEPS`, or unlimited under
            a time budget).
        weighting: ``truncated_snr`` (default, the paper's) or a ``WEIGHTINGS`` name.
        overrides: ``key=value`` training settings (``lr=1e-4``, ``batch_size=64``), as ``ebru train --set``.
        sign_key: a private key file: sign every package written.
        policy, trusted_keys, allow_unsigned, acknowledge: ``ebru.load``'s trust options for the teacher.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars and per-round lines.

    Returns the student package's directory, ``out/model``.

    Raises:
        ValueError (one line each, before any training): an unknown or unimplemented method; a teacher
            that is not an ebru image-diffusion package, or that the licence policy or signature check
            refuses (``ebru.trust``'s errors); a step count halving cannot reach from the teacher's (the
            message lists those it can); a time budget too small for one round; ``out`` holding another
            distillation (or, with ``resume``, none).
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
    config = check_teacher(teacher)
    n_teacher = teacher_steps if teacher_steps is not None else default_teacher_steps(config)
    rounds = halving_rounds(n_teacher, steps)
    teacher_grid(config, n_teacher, schedule)  # a grid the rounds can halve (odd counts, distilled teachers)
    plan_guidance(tuple(guidance) if isinstance(guidance, list | tuple) else guidance, config,
                  bool(config.get("num_classes")))  # a guidance setting the teacher can take
    if weighting is not None:
        one_of("distillation weighting", weighting, distill_weightings())
    if data is None and not _teacher_training_config(config).get("data"):
        raise ValueError(f"{teacher.path}: its config does not record the data it was trained on; give the data "
                         "(a data set name or folder)")
    out = Path(out)
    plan = _plan(teacher, method, n_teacher, steps, rounds)
    _check_out(out, plan, resume)
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
    previous = Path(os.path.abspath(teacher_dir))  # absolute: a resumed run may start elsewhere
    for k, (n_t, n_s) in enumerate(rounds, start=1):
        run_dir = out / round_dir_name(k, n_t, n_s)
        table: dict[str, Any] = {"teacher": os.path.abspath(previous), **trust, "quiet": True, "teacher_steps": n_t}
        if k == 1:
            if schedule is not None:
                table["schedule"] = schedule
            if guidance is not None:
                table["guidance"] = list(guidance) if isinstance(guidance, list | tuple) else guidance
        else:  # the previous round's student, written by this run: its manifest is checked, its origin is this run
            table["allow_unsigned"] = True
        if weighting is not None:
            table["weighting"] = weighting
        previous = run_dir / "model"
        if previous.is_dir():
            if progress:
                print(f"round {k}/{len(rounds)}: {n_t} -> {n_s} steps already done ({previous})", flush=True)
            continue
        cfg = round_config(config, table, data=spec, steps=round_steps, time_budget=per_round, sign_key=sign_key,
                           device=device, overrides=list(overrides or []))
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
            (out / PLAN).write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
        if progress:
            print(f"round {k}/{len(rounds)}: {n_t} -> {n_s} steps (teacher {cfg.distill['teacher']})", flush=True)
        trainer.fit()
    return _publish(previous, final, trust, sign_key)


def _publish(student: Path, final: Path, trust: dict[str, Any], sign_key: str | None) -> Path:
    """Write the last round's student again as ``final`` (verified first; signed with ``sign_key``)."""
    m = load(student, **{**trust, "allow_unsigned": True}, quiet=True)
    write_trained_package(final, m.config, m.weights, m.read(CARD).decode("utf-8"), dict(m.manifest.provenance),
                          sign_key=sign_key, lineage=[dict(e) for e in m.lineage], metadata=dict(m.metadata))
    return final
