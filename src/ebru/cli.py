"""The ``ebru`` command line: thin shells over ebru.pipelines.

User mistakes (bad arguments, missing files) print one line to stderr and exit
with code 2; an interrupt exits with 130. No stack traces for a user's mistake.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"ebru: error: {message} (see '{self.prog} --help')\n")


POLICY_HELP = "licence policy (default: $EBRU_LICENSE_POLICY, ~/.config/ebru/license_policy.toml, built-in)"


def _add_load_flags(p: argparse.ArgumentParser, policy_help: str = POLICY_HELP) -> None:
    """The options of ``ebru.load`` (verification and licence policy) for commands that load a model.

    Used by ``ebru sample``/``eval`` and the ``ebru text`` commands; read them back with :func:`_load_options`.
    """
    p.add_argument("--trusted-keys", default=None, metavar="DIR",
                   help="directory of trusted .pub keys (default: $EBRU_TRUSTED_KEYS or ~/.config/ebru/trusted_keys)")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="load a package with no signature by a trusted key (prints a warning)")
    p.add_argument("--policy", default=None, metavar="FILE.toml", help=policy_help)


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``ebru.load`` given by :func:`_add_load_flags`' flags."""
    return {"policy": args.policy, "trusted_keys": args.trusted_keys, "allow_unsigned": args.allow_unsigned}


def _load_model(args: argparse.Namespace):
    """Verify and read ``args.model_dir`` through ``ebru.load``, the one loading path."""
    from ebru.trust import load

    return load(args.model_dir, **_load_options(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from ebru.pipelines.demo import run_demo

    print("ebru demo: sampling an exact 2-D Gaussian-mixture oracle ...", flush=True)
    result = run_demo(args.out, n_points=args.points, seed=args.seed)
    errs = result["errors_by_nfe"]
    print(f"\n{'sampler':<16}" + "".join(f"{'NFE ' + str(n):>11}" for n in (6, 10, 16)))
    for name, e in errs.items():
        near = {n: min(e, key=lambda k, n=n: abs(k - n)) for n in (6, 10, 16)}
        print(f"{name:<16}" + "".join(f"{e[near[n]]:>11.2e}" for n in (6, 10, 16)))
    print("\n(RMS distance to the exact ODE solution from the same noise; heun's NFE is odd, nearest shown)")
    print(f"\nplot:    {result['plot']}\nfigures: {args.out}/demo.json   ({result['seconds']:.1f}s)")
    return 0


def _cmd_samplers(args: argparse.Namespace) -> int:
    from ebru.diffusion import SAMPLERS, SCHEDULES

    print(f"{'sampler':<16}{'NFE for n steps':<18}{'order':<7}stochastic")
    for name, fn in sorted(SAMPLERS.items()):
        nfe = "2n - 1" if fn.nfe(10) == 19 else "n"
        print(f"{name:<16}{nfe:<18}{fn.order or '-'!s:<7}{'yes' if fn.stochastic else 'no'}")
    print("\nschedules: " + ", ".join(sorted(SCHEDULES)))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ebru.train import Trainer, load_config

    cfg = load_config(args.config, args.set)
    model_dir = Trainer(cfg, args.out, resume=args.resume).fit()
    if model_dir is not None:
        print(f"model:   {model_dir}\nlog:     {args.out}/log.csv\nsamples: {args.out}/samples/")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from ebru.pipelines.image import ImagePipeline, save_images
    from ebru.data.grid import save_grid

    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    if not args.grid and not args.out_dir:
        raise ValueError("say where the images go: --grid FILE.png and/or --out-dir DIR")
    pipe = ImagePipeline.from_pretrained(_load_model(args), device=args.device)
    labels = None
    if args.class_ is not None:
        labels = [pipe.class_index(c) for c in args.class_.split(",")]
        labels = [labels[i % len(labels)] for i in range(args.n)]
    images = pipe(args.n, class_labels=labels, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  sampler=args.sampler, schedule=args.schedule, seeds=args.seed, progress=True)
    if args.grid:
        nrow = args.nrow or max(1, round(args.n ** 0.5))
        print(f"grid:   {save_grid(images, args.grid, nrow=nrow)}")
    if args.out_dir:
        paths = save_images(images, args.out_dir)
        print(f"images: {len(paths)} PNGs in {args.out_dir}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from ebru.pipelines.quickstart import run_quickstart

    print(f"ebru quickstart: training a class-conditional Fashion-MNIST model into {args.out}/ ...", flush=True)
    r = run_quickstart(args.out, args.set)
    print(f"\ntrained {r['steps']} steps in {r['minutes']:.1f} min, final loss {r['final_loss']:.4f}")
    if r["agreement"] is not None:
        print(f"class agreement: {r['agreement']:.0%} of the grid's {len(r['labels'])} samples are classified as "
              "the class they were asked for (ebru's Fashion-MNIST feature network)")
    for key in ("model", "samples", "forward", "reverse", "log"):
        print(f"{key + ':':<9}{r[key]}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ebru.eval import format_report, parse_metrics
    from ebru.pipelines.evaluate import evaluate_model
    from ebru.pipelines.image import ImagePipeline

    metrics = parse_metrics(args.metrics)
    pipe = ImagePipeline.from_pretrained(_load_model(args))
    pipe.name = args.model_dir
    report = evaluate_model(pipe, metrics=metrics, n=args.n, sampler=args.sampler, steps=args.steps,
                            guidance=args.guidance, seed=args.seed, batch=args.batch, reference=args.reference,
                            nll_images=args.nll_images, progress=True)
    print(format_report(report))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\njson: {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ebru import __version__

    p = _Parser(prog="ebru", description="ebru: diffusion models end to end, offline, on PyTorch.")
    p.add_argument("--version", action="version", version=f"ebru {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    d = sub.add_parser("demo", help="sampler demo on an exact oracle; writes a plot")
    d.add_argument("--out", default="ebru-out", help="output directory (default: ebru-out)")
    d.add_argument("--points", type=int, default=1000, help="samples per panel (default: 1000)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    s = sub.add_parser("samplers", help="list samplers and step schedules")
    s.set_defaults(func=_cmd_samplers)

    q = sub.add_parser("quickstart", help="train a class-conditional Fashion-MNIST model on this CPU (< 10 min)")
    q.add_argument("--out", default="ebru-quickstart", help="output directory (default: ebru-quickstart)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe setting")
    q.set_defaults(func=_cmd_quickstart)

    t = sub.add_parser("train", help="train an image model from a config file or built-in recipe")
    t.add_argument("config", help="a TOML config file, or a recipe: quickstart, fashion_mnist_gpu, "
                                   "folder64_gpu, dit_fashion_mnist")
    t.add_argument("--out", required=True, help="run directory (checkpoints, logs, samples, model/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lr=2e-4 --set model.channels=64")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("sample", help="generate images from a model directory")
    m.add_argument("model_dir")
    m.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    m.add_argument("--sampler", default=None, help="sampler (default: the model's; see 'ebru samplers')")
    m.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    m.add_argument("--schedule", default=None, help="step schedule (default: karras)")
    m.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name, or a comma-separated list to cycle through")
    m.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    m.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    m.add_argument("--grid", default=None, metavar="FILE.png", help="write a grid PNG")
    m.add_argument("--nrow", type=int, default=None, help="images per grid row")
    m.add_argument("--out-dir", default=None, metavar="DIR", help="write one PNG per image")
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_load_flags(m)
    m.set_defaults(func=_cmd_sample)

    e = sub.add_parser("eval", help="score a model: FID, KID, precision/recall, class agreement, NLL")
    e.add_argument("model_dir")
    e.add_argument("--metrics", default="fid,kid,precision,recall,agreement",
                   help="comma-separated: fid,kid,precision,recall,agreement,nll,nll_bound (default: all but the nlls)")
    e.add_argument("-n", type=int, default=2000, help="samples to generate (default 2000)")
    e.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    e.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    e.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    e.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    e.add_argument("--batch", type=int, default=250, help="images per sampling batch")
    e.add_argument("--reference", default="fashion-mnist:test",
                   help="reference data (a dataset spec or a saved .safetensors reference file)")
    e.add_argument("--nll-images", type=int, default=64, help="test images for nll and nll_bound (default 64)")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    _add_load_flags(e)
    e.set_defaults(func=_cmd_eval)

    from ebru import cli_text, cli_trust

    cli_trust.register(sub)
    cli_text.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch

    torch.set_flush_denormal(True)  # before any worker thread starts, so they all inherit it (see Trainer)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ebru: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"ebru: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
