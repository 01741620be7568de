"""``ebru distill``: a few-step student of a trained image model (a thin shell over :mod:`ebru.pipelines.distill`).

    ebru distill TEACHER_DIR --steps N --out DIR [--method progressive|consistency|reflow] [--time-budget MIN]
                 [--pairs N] [--resume]

Every argument is checked while the command line is parsed; the teacher (its package, its signature and licence,
the step counts it allows, a flow model for reflow) and the method's settings right after, before any training
or pair generation.
"""

from __future__ import annotations

import argparse

from . import argtypes
from .options import add_trust_flags, load_options

METHODS = ("progressive", "consistency", "reflow")  # = ebru.diffusion.distill.DISTILL_METHODS (no torch at start-up)


def _minutes(text: str) -> float:
    value = argtypes.finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 minutes, got {text!r}")
    return value


def _guidance(text: str) -> float | tuple[float, float]:
    """``W`` (one scale, distilled in) or ``LO,HI`` (a range of scales the student takes as an input)."""
    if "," not in text:
        return argtypes.finite_float(text)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected W or LO,HI, got {text!r}")
    lo, hi = (argtypes.finite_float(p) for p in parts)
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI, got {text!r}")
    return lo, hi


def _cmd_distill(args: argparse.Namespace) -> int:
    from ebru.pipelines.distill import distill

    trust = load_options(args)
    model = distill(args.teacher_dir, method=args.method, steps=args.steps, out=args.out,
                    time_budget=args.time_budget, resume=args.resume, teacher_steps=args.teacher_steps,
                    guidance=args.guidance, pairs=args.pairs, data=args.data, steps_per_round=args.steps_per_round,
                    overrides=args.set, sign_key=args.sign_key, progress=True, **trust)
    pairs = f"pairs:   {args.out}/pairs/ (kept: --resume or a rerun reads them)\n" if args.method == "reflow" else ""
    print(f"student: {model}\nrounds:  {args.out}/round-*/ (log.csv, samples/)\n{pairs}"
          f"next:    ebru sample {model} -n 16 --grid student.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ebru distill`` to the ``ebru`` parser."""
    p = sub.add_parser(
        "distill", help="distil an image model into a few-step student (progressive, consistency or reflow)",
        usage="ebru distill TEACHER_DIR --steps N --out DIR [--method progressive|consistency|reflow] "
              "[--time-budget MIN] [--pairs N] [--resume] [options]",
        description="Distil a trained image model into a student that samples in N steps. Progressive "
                    "distillation (Salimans & Ho 2022) halves the teacher's Euler steps once per round "
                    "(32 -> 16 -> ... -> N). Consistency (ECT, Geng et al. 2025; consistency distillation for a "
                    "class-conditional teacher) tunes the teacher in one round into a consistency model that "
                    "samples any number of steps with the 'consistency' sampler, N by default (2 steps: sigma "
                    "80, then 0.821). Reflow (Liu et al. 2022; flow models) draws the teacher's (noise, sample) "
                    "pairs from its ODE, kept in DIR/pairs, then trains a student on the straight line of each "
                    "pair, to sample N Euler steps. The student is a model package whose card names the teacher as "
                    "its base model and whose sampling defaults are those N steps.")
    p.add_argument("teacher_dir", metavar="TEACHER_DIR", help="a trained ebru image-diffusion package")
    p.add_argument("--method", default="progressive", type=argtypes.one_of("method", METHODS), metavar="M",
                   help="progressive (default), consistency, or reflow (flow models)")
    p.add_argument("--steps", required=True, type=argtypes.positive_int, metavar="N",
                   help="the student's step count: progressive: the teacher's halved one or more times (e.g. 4); "
                        "consistency: any N >= 1 (its default; it samples any count); reflow: any N >= 1 Euler "
                        "steps")
    p.add_argument("--out", required=True, type=argtypes.output_dir, metavar="DIR",
                   help="run directory: one Trainer run per round, the student in DIR/model")
    p.add_argument("--time-budget", type=_minutes, default=None, metavar="MIN",
                   help="minutes of distillation wall time: split evenly between the rounds; reflow: its pairs "
                        "and then training (default: --steps-per-round steps each)")
    p.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    p.add_argument("--teacher-steps", type=argtypes.positive_int, default=None, metavar="K",
                   help="progressive: the teacher's Euler steps that round 1 halves (default: the largest power of "
                        "two <= the teacher's sampling steps)")
    p.add_argument("--guidance", type=_guidance, default=None, metavar="LO,HI|W",
                   help="class-conditional and text-to-image teachers: the range of guidance scales the student "
                        "takes as an input "
                        "(default 1,2w for the teacher's scale w), or one scale W distilled into its weights; "
                        "reflow: one scale W (default w)")
    p.add_argument("--pairs", type=argtypes.positive_int, default=None, metavar="N",
                   help="reflow: the (noise, sample) pairs the teacher draws, kept in DIR/pairs and resumed chunk "
                        "by chunk (default 10000)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="progressive, consistency: the teacher's training data (a data set name or folder; "
                        "default: the one its package records); reflow trains on its pairs")
    p.add_argument("--steps-per-round", type=argtypes.positive_int, default=None, metavar="K",
                   help="training steps per round (default 2000, or as many as the time budget allows)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting of every round, e.g. --set lr=1e-4 --set batch_size=64 "
                        "--set device=cuda; --set distill.KEY=VALUE a method's (consistency: q, stage_images, "
                        "stages, huber_c, last_sigma, p_mean, p_std; reflow: pair_sampler, pair_steps, "
                        "pair_schedule, pair_batch, pair_chunk, pair_seed, time)")
    p.add_argument("--sign-key", default=None, metavar="K", help="sign the student (and every round's) package")
    add_trust_flags(p, title="trust of the teacher (see docs/security.md)")
    p.set_defaults(func=_cmd_distill, flush_denormal=True)
