"""``ebru detect FILE...`` and ``ebru detector train``: the generated-image detector, a supporting signal only.

Thin shell over :mod:`ebru.pipelines.detector`. ``ebru detect`` prints one line per file (p(generated), flagged
or not at the calibrated threshold, the map's summary), a count, and always the supporting-signal sentence;
files that cannot be read get one line each and the others are still read (exit status 2 when any could not).
"""

from __future__ import annotations

import argparse

from . import argtypes
from .options import add_device, add_json, add_trust_flags, load_options, need_subcommand, write_json


def _note() -> str:
    from ebru.provenance.detector import SUPPORTING_SIGNAL

    return f"note: {SUPPORTING_SIGNAL}"


def _cmd_detect(args: argparse.Namespace) -> int:
    from ebru.pipelines.detector import describe, detect_files

    rows = detect_files(args.files, args.detector, map_dir=args.map_dir, device=args.device, **load_options(args))
    for row in rows:
        print(describe(row))
    read = [r for r in rows if "error" not in r]
    flagged = sum(1 for r in read if r["flagged"])
    if read:
        print(f"{flagged} of {len(read)} image(s) flagged as generated or edited "
              f"(threshold {read[0]['threshold']:.3f}, "
              f"calibrated at {100 * read[0]['fpr']:g} % false positives on held-out real images)")
    print(_note())
    if args.json:
        write_json(args.json, rows)
    return 2 if len(read) < len(rows) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ebru.pipelines.detector import train_detector

    given = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}  # else the pipeline's
    r = train_detector(args.models, args.out, device=args.device, sign_key=args.sign_key,
                       log=lambda line: print(f"ebru: {line}", flush=True), **given, **load_options(args))
    t = r["training"]
    print(f"detector: {r['path']} ({t['steps']} steps in {t['minutes']:g} min, final loss {t['final_loss']:.4f})")
    print(f"threshold: p(generated) > {r['threshold']:.4f}, calibrated at {100 * r['fpr']:g} % false positives "
          f"(measured {100 * r['calibration_fpr']:.2f} % on the calibration images)")
    print(f"use it:    ebru detect FILE... --detector {r['path']}")
    print(_note())
    return 0


# The flags of `ebru detector train` that override train_detector's defaults (None: not given, the default holds).
# The help texts name those defaults; tests/cli/test_detect.py checks that they are train_detector's own.
TRAIN_OPTIONS = ("minutes", "settings", "real", "n_real", "n_generated", "n_inpainted", "n_calibration", "fpr", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ebru detect`` and ``ebru detector train`` to the ``ebru`` parser (nothing heavy imported here)."""
    d = sub.add_parser("detect", help="p(generated) and a map of edited regions per image, from a trained detector "
                                      "(a supporting signal only)")
    d.add_argument("files", nargs="+", metavar="FILE")
    d.add_argument("--detector", required=True, metavar="DIR", help="the detector package ('ebru detector train')")
    d.add_argument("--map-dir", default=None, type=argtypes.output_dir, metavar="DIR",
                   help="write each image beside its map as DIR/<name>-map.png")
    add_json(d, "the per-file results")
    add_device(d)
    add_trust_flags(d)
    d.set_defaults(func=_cmd_detect)

    g = sub.add_parser("detector", help="train the generated-image detector on a model's un-watermarked outputs")
    g.set_defaults(func=need_subcommand(g))
    gs = g.add_subparsers(dest="detector_command", metavar="ACTION", parser_class=type(g))
    t = gs.add_parser("train", help="train on real pictures against a model's outputs and inpainted real pictures; "
                                    "calibrate the threshold on held-out real pictures")
    t.add_argument("--model", dest="models", action="append", required=True, metavar="DIR",
                   help="a generator package (repeat the flag for several)")
    t.add_argument("--out", required=True, type=argtypes.output_dir, metavar="DIR",
                   help="the detector package to write (replaced if it exists)")
    t.add_argument("--minutes", type=argtypes.nonnegative_float, default=None, metavar="M",
                   help="training time, > 0, after the pictures are drawn (default 10)")
    t.add_argument("--settings", default=None, metavar="S:N,...",
                   help="generator settings SAMPLER:STEPS[:GUIDANCE] "
                        "(default dpmpp_2m:20,euler:10:2,dpmpp_2m_sde:25:4.5)")
    t.add_argument("--real", default=None, metavar="DATA",
                   help="real pictures: a Fashion scenes spec or fashion-mnist (default fashion-scenes:quickstart)")
    t.add_argument("--n-real", type=argtypes.positive_int, default=None, metavar="N",
                   help="real pictures (default 3000)")
    t.add_argument("--n-generated", type=argtypes.positive_int, default=None, metavar="N",
                   help="generated pictures, shared over the models and settings (default 2000)")
    t.add_argument("--n-inpainted", type=argtypes.positive_int, default=None, metavar="N",
                   help="real pictures with a region inpainted (default 1000)")
    t.add_argument("--n-calibration", type=argtypes.positive_int, default=None, metavar="N",
                   help="held-out real pictures the threshold is calibrated on (default 2000)")
    t.add_argument("--fpr", type=argtypes.probability, default=None, metavar="P",
                   help="false-positive target on real pictures (default 0.01)")
    t.add_argument("--seed", type=argtypes.nonnegative_int, default=None, metavar="S", help="seed (default 0)")
    t.add_argument("--sign-key", default=None, metavar="KEY", help="sign the package with this private key")
    add_device(t)
    add_trust_flags(t)
    t.set_defaults(func=_cmd_train)
