"""``ebru watermark detect`` / ``embed``: read the noise watermark of generated images against their model; put
a post-hoc mark on other images and read it back.

Thin shell over :mod:`ebru.pipelines.watermark`. Files that cannot be read get one line each and the
others are still read; the exit status is 2 when any file could not be read.
"""

from __future__ import annotations

import argparse
import sys

from . import argtypes
from .options import add_json, add_trust_flags, load_model, need_subcommand, write_json


def _cmd_detect(args: argparse.Namespace) -> int:
    from ebru.pipelines.watermark import describe, detect_files, detect_posthoc_files

    if args.model_dir is None:  # no model: the post-hoc mark of `ebru watermark embed`
        rows = detect_posthoc_files(args.files, key=args.key, fpr=args.fpr)
        what, how = "post-hoc mark", "give --model MODEL_DIR to read the noise watermark of generated images"
    else:
        candidates: list[int] | None = None
        if not args.all_ids:
            from ebru.provenance import known_ids

            candidates = known_ids() or None
            if candidates is None:
                print("ebru: note: the local provenance store holds no ids yet; decoding over every id",
                      file=sys.stderr)
        rows = detect_files(args.files, load_model(args), key=args.key, steps=args.steps, fpr=args.fpr,
                            sigma_start=args.sigma_start, candidates=candidates, device=args.device)
        ids = f"{len(candidates)} ids of the local store" if candidates else "every id"
        what, how = "watermark", (f"inversion: DDIM, {args.steps} steps from sigma {args.sigma_start:g}, "
                                  f"unconditional; decoded over {ids}")
    for row in rows:
        print(describe(row))
    found = sum(1 for r in rows if r.get("detected"))
    print(f"{found} of {len(rows)} file(s) carry this key's {what} (false-positive target {args.fpr:g} per file; "
          f"{how})")
    if args.json:
        write_json(args.json, rows)
    return 2 if any("error" in r for r in rows) else 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from ebru.pipelines.watermark import embed_file

    r = embed_file(args.input, args.output, key=args.key, watermark_id=args.id)
    print(f"marked:  {r['file']}  (id {r['watermark_id']}, key {r['key_id']}, PSNR {r['psnr_db']:.1f} dB)")
    print(f"check:   ebru watermark detect {r['file']}   (recorded: ebru provenance find --id {r['watermark_id']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ebru watermark`` to the ``ebru`` parser (nothing heavy imported here)."""
    w = sub.add_parser("watermark", help="read the watermark of generated images; mark other images and read that mark")
    w.set_defaults(func=need_subcommand(w))
    ws = w.add_subparsers(dest="watermark_command", metavar="ACTION", parser_class=type(w))
    d = ws.add_parser("detect", help="per file: detected or not, p-value, bit accuracy, decoded id (inverts the "
                                     "image to its noise with MODEL_DIR's ODE)")
    d.add_argument("files", nargs="+", metavar="FILE")
    d.add_argument("--model", dest="model_dir", default=None, metavar="MODEL_DIR",
                   help="the model package the images are suspected to come from (the noise watermark); without "
                        "it, the post-hoc mark of 'ebru watermark embed' is read")
    d.add_argument("--key", default=None, metavar="FILE.wmkey",
                   help="the watermark key (default: $EBRU_WATERMARK_KEY or ~/.config/ebru/watermark/default.wmkey)")
    d.add_argument("--steps", type=argtypes.positive_int, default=20, metavar="K",
                   help="DDIM inversion steps (default 20)")
    d.add_argument("--fpr", type=argtypes.probability, default=1e-6, metavar="P",
                   help="false-positive target per file (default 1e-6)")
    d.add_argument("--all-ids", action="store_true",
                   help="decode over every possible id (blind), not only the ids of the local provenance store "
                        "(the default: a stronger test, for this installation's own outputs)")
    d.add_argument("--sigma-start", type=argtypes.positive_float, default=0.3, metavar="SIGMA",
                   help="noise level the inversion starts from (default 0.3: a file's rounding and compression "
                        "errors are treated as noise)")
    d.add_argument("--device", default="cpu", type=argtypes.device, help="cpu (default) or cuda")
    add_json(d, "the per-file results")
    add_trust_flags(d)
    d.set_defaults(func=_cmd_detect)
    e = ws.add_parser("embed", help="mark an image ebru did not generate (256x256 and up) with a keyed, robust "
                                    "post-hoc watermark")
    e.add_argument("input", metavar="IN")
    e.add_argument("output", metavar="OUT", type=argtypes.image_file, help="FILE.png or FILE.jpg")
    e.add_argument("--id", type=argtypes.nonnegative_int, default=None, metavar="N",
                   help="the watermark id (default: a fresh random 32-bit id)")
    e.add_argument("--key", default=None, metavar="FILE.wmkey", help="the watermark key (default: the default key)")
    e.set_defaults(func=_cmd_embed)
