"""The image commands: ``ebru demo``, ``samplers``, ``quickstart``, ``train``, ``sample``, ``eval``.

Thin shells over :mod:`ebru.pipelines`. Every argument is checked while the command line is parsed
(:mod:`ebru.cli.argtypes`) or, where the check needs the model (a class name, guidance for a model
without classes), right after it is loaded and before any sampling.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from . import argtypes
from .options import (
    add_device,
    add_guidance,
    add_json,
    add_seed,
    add_train_flags,
    add_trust_flags,
    describe_origin,
    load_model,
    note_guidance,
    write_json,
)

# The built-in recipes, read from the package's data folder (not from ebru.train: `ebru --help` stays fast).
DEFAULT_EVAL_METRICS = "fid,kid,precision,recall,agreement"
RECIPES = ", ".join(sorted(p.name.removesuffix(".toml") for p in files("ebru").joinpath("recipes").iterdir()
                           if p.name.endswith(".toml")))


# ------------------------------------------------------------------------------------------ commands
def _cmd_demo(args: argparse.Namespace) -> int:
    from ebru.pipelines.demo import run_demo  # torch and matplotlib: here, not at start-up

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
    print("\nschedules: " + ", ".join(sorted(SCHEDULES)) + ", or a tuned schedule file (--schedule FILE.json)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ebru.train import Trainer, load_config

    cfg = load_config(args.config, args.set)
    model_dir = Trainer(cfg, args.out, resume=args.resume).fit()
    if model_dir is not None:
        print(f"model:   {model_dir}\nlog:     {args.out}/log.csv\nsamples: {args.out}/samples/")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from ebru.pipelines.quickstart import run_quickstart

    print(f"ebru quickstart: training a text-to-image model (coloured Fashion-MNIST items, MiniLM text encoder) "
          f"into {args.out}/ ...", flush=True)
    r = run_quickstart(args.out, args.set)
    print(f"\ntrained {r['steps']} steps in {r['minutes']:.1f} min, final loss {r['final_loss']:.4f}")
    report = r["agreement"]
    if report is not None:
        print("prompt agreement (ebru's judges: item class by its Fashion-MNIST feature network, colour by hue):")
        for task in ("single_object", "colour"):
            t = report[task]
            print(f"  {task.replace('_', ' '):<14} {t['seen']:.0%} on training phrasings, {t['held_out']:.0%} on "
                  f"phrasings never seen in training ({t['n_seen']} + {t['n_held_out']} samples)")
    for key in ("model", "samples", "forward", "reverse", "log"):
        print(f"{key + ':':<9}{r[key]}")
    print(f'\nnext:    ebru sample {r["model"]} --prompt "a yellow sneaker" -n 8 --grid yellow.png')
    return 0


def grid_layout(labels: Sequence[int], per_row: int) -> tuple[list[int | None], list[int]]:
    """Lay a class-conditional grid out one class per row.

    ``labels[i]`` is image i's class. Classes take rows in the order they first appear, each
    class as many rows of ``per_row`` cells as its images need. Returns the image index of every
    cell, row by row (``None`` for an empty cell at the end of a class's last row), and the class
    of every row.
    """
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        groups.setdefault(c, []).append(i)
    cells: list[int | None] = []
    rows: list[int] = []
    for c, members in groups.items():
        for start in range(0, len(members), per_row):
            chunk: list[int | None] = list(members[start:start + per_row])
            cells += chunk + [None] * (per_row - len(chunk))
            rows.append(c)
    return cells, rows


def _tuned_schedule_settings(args: argparse.Namespace) -> None:
    """A tuned schedule file records the sampler and steps it was tuned for: use them unless given (and say so)."""
    info = getattr(args.schedule, "info", None) or {}
    from ebru.diffusion import SAMPLERS

    used = []
    if args.sampler is None and info.get("sampler") in SAMPLERS:
        args.sampler = info["sampler"]
        used.append(f"sampler {args.sampler}")
    steps = info.get("steps")
    if args.steps is None and isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
        args.steps = steps
        used.append(f"{steps} steps")
    if used:
        print(f"ebru: note: schedule {args.schedule.name!r} was tuned for {' and '.join(used)}; using them "
              "(--sampler and --steps choose others)", file=sys.stderr)


def _cmd_sample(args: argparse.Namespace) -> int:
    if not args.grid and not args.out_dir:
        raise ValueError("say where the images go: --grid FILE.png and/or --out-dir DIR")
    if args.nrow is not None and not args.grid:
        raise ValueError("--nrow sets the images per row of --grid; give --grid FILE.png or drop --nrow")
    if not isinstance(args.schedule, str | None):
        _tuned_schedule_settings(args)
    import torch

    from ebru.pipelines.image import ImagePipeline
    from ebru.pipelines.outputs import write_grid, write_images

    model = load_model(args)
    if args.no_watermark:
        from ebru.pipelines.outputs import note_no_watermark

        note_no_watermark()
    if model.config.get("text_encoder"):
        return _sample_text(args, model)
    if args.prompt is not None or args.negative_prompt is not None:
        kind = "class-conditional" if model.config.get("num_classes") else "unconditional"
        raise ValueError(f"--prompt needs a text-to-image model, and {args.model_dir} is {kind}: "
                         + ("use --class" if kind == "class-conditional" else "drop --prompt"))
    pipe = ImagePipeline.from_pretrained(model, device=args.device, watermark=not args.no_watermark)
    if args.tree_ring:
        pipe.enable_tree_ring()
    names = pipe.class_names or [str(i) for i in range(pipe.num_classes or 0)]
    labels = None
    if args.class_ is not None:
        wanted = [pipe.class_index(c.strip()) for c in args.class_.split(",")]
        labels = [wanted[i % len(wanted)] for i in range(args.n)]
    elif pipe.num_classes:
        labels = [i % pipe.num_classes for i in range(args.n)]
    if args.guidance is not None and not pipe.num_classes:
        raise ValueError("--guidance steers towards a class, and this model has no classes; drop --guidance")
    note_guidance(args.guidance)
    print(f"model:  {model.path} ({describe_origin(model)})")
    seeds = list(range(args.seed, args.seed + args.n))
    images = pipe(args.n, class_labels=labels, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  sampler=args.sampler, schedule=args.schedule, seeds=seeds, progress=True,
                  guidance_interval=args.guidance_interval)
    setting = pipe.sampling(args.sampler, args.steps, args.schedule)
    schedule_name = getattr(setting["schedule"], "name", setting["schedule"])
    title = f"seeds {seeds[0]}-{seeds[-1]}, {setting['sampler']}, {setting['steps']} steps, {schedule_name}"
    params = generation_parameters(pipe, setting, args.guidance if labels is not None else None)
    if args.grid:
        if labels is None:
            per_row = args.nrow or max(1, round(math.sqrt(args.n)))
            path = write_grid(images, args.grid, pipe, nrow=per_row, title=title, seeds=seeds, parameters=params)
        else:
            largest = max(labels.count(c) for c in set(labels))
            per_row = args.nrow or min(largest, max(1, round(math.sqrt(args.n))))
            cells, rows = grid_layout(labels, per_row)
            blank = torch.ones_like(images[0])  # white, like the grid's background
            tiles = torch.stack([blank if i is None else images[i] for i in cells])
            guidance = pipe.config.get("sampling", {}).get("guidance", 1.0) if args.guidance is None else args.guidance
            path = write_grid(tiles, args.grid, pipe, nrow=per_row, row_labels=[names[c] for c in rows],
                              title=f"{title}, guidance {guidance:g}", seeds=seeds, parameters=params)
        print(f"grid:   {path}")
    if args.out_dir:
        paths = write_images(images, args.out_dir, pipe, seeds=seeds, parameters=params,
                             labels=None if labels is None else [names[c] for c in labels])
        print(f"images: {len(paths)} PNGs in {args.out_dir} ({paths[0].name}, ...)")
    print_provenance(pipe)
    return 0


def generation_parameters(pipe: Any, setting: dict[str, Any], guidance: float | None) -> dict[str, Any]:
    """The settings a generation record and manifest hold (sampler, steps, schedule, sigma range, guidance)."""
    params = {"sampler": setting["sampler"], "steps": setting["steps"],
              "schedule": getattr(setting["schedule"], "name", setting["schedule"]),
              "sigma_min": setting["sigma_min"], "sigma_max": setting["sigma_max"]}
    if pipe.num_classes or pipe.config.get("text_encoder"):
        params["guidance"] = pipe.config.get("sampling", {}).get("guidance", 1.0) if guidance is None else guidance
    return params


def print_provenance(pipe: Any) -> None:
    """One line on what the written files carry."""
    mark = (f"Gaussian Shading watermark (key {pipe.watermark.key_id})" if pipe.watermark is not None
            else "no watermark (--no-watermark)")
    if getattr(pipe, "tree_ring", None) is not None:
        mark += f" and a Tree-Ring key (radius {pipe.tree_ring.radius})"
    print(f"carries: {mark}, a signed C2PA manifest, a record in the audit log (ebru provenance verify FILE)")


def _sample_text(args: argparse.Namespace, model: Any) -> int:
    """``ebru sample`` for a text-to-image model: ``-n`` images per ``--prompt``, one grid row per prompt."""
    from ebru.pipelines.outputs import write_grid, write_images
    from ebru.pipelines.text2image import TextToImagePipeline

    if args.class_ is not None:
        raise ValueError(f"{args.model_dir} is a text-to-image model: give --prompt \"...\", not --class")
    if args.prompt is None:
        raise ValueError(f"{args.model_dir} is a text-to-image model: give --prompt \"...\" (repeat it for several "
                         "prompts; --prompt \"\" draws unconditional samples)")
    pipe = TextToImagePipeline.from_pretrained(model, device=args.device, watermark=not args.no_watermark)
    if args.tree_ring:
        pipe.enable_tree_ring()
    note_guidance(args.guidance)
    print(f"model:  {model.path} ({describe_origin(model)}; text encoder {pipe.encoder.name})")
    negative = args.negative_prompt
    seeds = list(range(args.seed, args.seed + args.n * len(args.prompt)))
    images = pipe(args.prompt, negative_prompt=negative, n=args.n, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, sampler=args.sampler, schedule=args.schedule, seeds=seeds,
                  guidance_interval=args.guidance_interval, progress=True)
    setting = pipe.sampling(args.sampler, args.steps, args.schedule)
    guidance = pipe.config.get("sampling", {}).get("guidance", 1.0) if args.guidance is None else args.guidance
    schedule_name = getattr(setting["schedule"], "name", setting["schedule"])
    title = (f"seeds {seeds[0]}-{seeds[-1]}, {setting['sampler']}, {setting['steps']} steps, {schedule_name}, "
             f"guidance {guidance:g}" + (f", negative: {negative}" if negative else ""))
    labels = [p for p in args.prompt for _ in range(args.n)]
    negatives = None if negative is None else [negative] * len(labels)
    params = generation_parameters(pipe, setting, guidance)
    if args.grid:
        per_row = args.nrow or (args.n if len(args.prompt) > 1 else max(1, round(math.sqrt(args.n))))
        rows = [p or "(empty prompt)" for p in args.prompt] if per_row == args.n else None
        path = write_grid(images, args.grid, pipe, nrow=per_row, row_labels=rows, title=title, seeds=seeds,
                          parameters=params, prompts=labels, prompt_policy=args.prompt_policy)
        print(f"grid:   {path}")
    if args.out_dir:
        paths = write_images(images, args.out_dir, pipe, seeds=seeds, labels=labels, parameters=params,
                             prompts=labels, negative_prompts=negatives, prompt_policy=args.prompt_policy)
        print(f"images: {len(paths)} PNGs in {args.out_dir} ({paths[0].name}, ...)")
    print_provenance(pipe)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ebru.eval import format_report, parse_metrics
    from ebru.pipelines.evaluate import evaluate_model
    from ebru.pipelines.image import ImagePipeline

    model = load_model(args)
    if model.config.get("kind") == "autoencoder":
        return _eval_autoencoder(args, model)
    if model.config.get("text_encoder"):
        return _eval_text(args, model)
    metrics = parse_metrics(args.metrics or DEFAULT_EVAL_METRICS)
    if args.negative_prompt is not None:
        raise ValueError("--negative-prompt is for text-to-image models; drop it")
    pipe = ImagePipeline.from_pretrained(model, watermark=False)
    if args.guidance is not None and not pipe.num_classes:
        raise ValueError("--guidance steers towards a class, and this model has no classes; drop --guidance")
    note_guidance(args.guidance)
    pipe.name = args.model_dir
    report = evaluate_model(pipe, metrics=metrics, n=2000 if args.n is None else args.n, sampler=args.sampler,
                            steps=args.steps,
                            guidance=args.guidance, seed=args.seed, batch=args.batch, reference=args.reference,
                            nll_images=args.nll_images, progress=True)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"\njson: {args.json}")
    return 0


def _eval_autoencoder(args: argparse.Namespace, model: Any) -> int:
    """``ebru eval`` for an autoencoder package: PSNR, SSIM and rFID of reconstructions of held-out images."""
    from ebru.eval.reconstruction import format_reconstruction_report
    from ebru.pipelines.autoencoder import RECONSTRUCTION_METRICS, evaluate_autoencoder

    for flag, value in (("--sampler", args.sampler), ("--steps", args.steps), ("--guidance", args.guidance),
                        ("--negative-prompt", args.negative_prompt)):
        if value is not None:
            raise ValueError(f"{flag} is for diffusion models; an autoencoder is scored on reconstructions: drop it")
    if str(args.reference).endswith(".safetensors"):
        raise ValueError("an autoencoder is judged on held-out images; give --reference data (fashion-mnist:test)")
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else RECONSTRUCTION_METRICS
    report = evaluate_autoencoder(model, data=args.reference, n=2000 if args.n is None else args.n, metrics=metrics,
                                  batch=args.batch, progress=True)
    report["model"] = args.model_dir
    print(f"autoencoder {args.model_dir}: f = {report['factor']}, latents "
          f"{'x'.join(map(str, report['latent_shape']))}, scale factor {report['scale_factor']:.5f}")
    print(f"reconstructions of {report['images']} images of {report['data']} "
          f"({report['reconstruct_images_per_s']:.0f} images/s)\n")
    print(format_reconstruction_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"\njson: {args.json}")
    return 0


def _eval_text(args: argparse.Namespace, model: Any) -> int:
    """``ebru eval`` for a text-to-image model: prompt agreement on its Fashion scenes' evaluation prompts."""
    from ebru.eval.prompt_agreement import format_agreement
    from ebru.pipelines.evaluate import evaluate_text_to_image
    from ebru.pipelines.text2image import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(model, watermark=False)
    note_guidance(args.guidance)
    pipe.name = args.model_dir
    n = 100 if args.n is None else args.n
    report = evaluate_text_to_image(pipe, metrics=args.metrics or "prompt_agreement", n=n, sampler=args.sampler,
                                    steps=args.steps, guidance=args.guidance, negative_prompt=args.negative_prompt,
                                    seed=args.seed, batch=args.batch, progress=True)
    s = report["sampling"]
    print(f"samples: {report['prompts']} prompts of the {report['scenes']} Fashion scenes ({n} per task; seeds "
          f"{s['seeds'][0]}..{s['seeds'][1]}), sampler {s['sampler']} x {s['steps']} steps, guidance {s['guidance']:g}"
          + (f", negative prompt {s['negative_prompt']!r}" if s["negative_prompt"] else ""))
    print("judges: item class by ebru's Fashion-MNIST feature network, colour by hue, position by centroid, "
          "count by connected components\n")
    print(format_agreement(report["prompt_agreement"]))
    if args.json:
        write_json(args.json, report)
        print(f"\njson: {args.json}")
    return 0


# ------------------------------------------------------------------------------------------- parser
def _command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
             help: str, **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=kw.pop("description", help[:1].upper() + help[1:] + "."), **kw)
    p.set_defaults(func=func, flush_denormal=True)
    return p


SAMPLE_USAGE = ("ebru sample MODEL_DIR (--grid FILE.png | --out-dir DIR | both) [-n N] [--sampler S] [--steps K] "
                "[--schedule NAME|FILE.json] [--prompt TEXT [--negative-prompt TEXT] | --class C] [--guidance W] "
                "[--guidance-interval LO,HI] [--seed S] [--nrow K] [--device DEVICE] [trust options]")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the image commands to the ``ebru`` parser."""
    d = _command(sub, "demo", _cmd_demo, "sampler demo on an exact oracle; writes a plot")
    d.add_argument("--out", default="ebru-out", type=argtypes.output_dir, metavar="DIR",
                   help="output directory (default: ebru-out)")
    d.add_argument("--points", type=argtypes.positive_int, default=1000, help="samples per panel (default: 1000)")
    add_seed(d, None)

    _command(sub, "samplers", _cmd_samplers, "list samplers and step schedules")

    q = _command(sub, "quickstart", _cmd_quickstart,
                 "train a text-to-image model on this CPU (< 10 min) and draw prompts; run again to resume")
    add_train_flags(q, out_default="ebru-out", resume=False, example="--set time_budget=2")

    t = _command(sub, "train", _cmd_train, "train a model from a config file or built-in recipe")
    t.add_argument("config", help=f"a TOML config file, or a recipe: {RECIPES}")
    add_train_flags(t)

    m = _command(sub, "sample", _cmd_sample, "generate images from a model directory", usage=SAMPLE_USAGE,
                 description="Generate images from a model directory. Say where they go: --grid FILE.png, "
                             "--out-dir DIR, or both (at least one is required).")
    m.add_argument("model_dir", metavar="MODEL_DIR")
    out = m.add_argument_group("output (at least one of --grid and --out-dir is required)")
    out.add_argument("--grid", default=None, type=argtypes.image_file, metavar="FILE.png",
                     help="write one PNG grid; a class-conditional model's rows are its classes, labelled")
    out.add_argument("--out-dir", default=None, type=argtypes.output_dir, metavar="DIR",
                     help="write one PNG per image, named by class and seed: sample-Sneaker-seed0007.png")
    out.add_argument("--nrow", type=argtypes.positive_int, default=None, metavar="K",
                     help="images per grid row (default: about sqrt(N))")
    m.add_argument("-n", type=argtypes.positive_int, default=16, metavar="N",
                   help="number of images (default 16); with --prompt, images per prompt")
    m.add_argument("--sampler", type=argtypes.sampler, default=None, metavar="S",
                   help="sampler (default: the model's; see 'ebru samplers')")
    m.add_argument("--steps", type=argtypes.positive_int, default=None, metavar="K",
                   help="sampling steps (default: the model's)")
    m.add_argument("--schedule", type=argtypes.schedule, default=None, metavar="NAME|FILE.json",
                   help="step schedule: a name (default: the model's, else karras) or a tuned schedule saved by "
                        "WarpedSchedule.save (its sampler and steps are used unless given)")
    m.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name, or a comma-separated list to cycle through (default: all classes "
                        "in turn)")
    m.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="text-to-image models: what to draw; repeat for several prompts (-n images each, one grid "
                        "row per prompt); \"\" draws unconditional samples")
    m.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="text-to-image models: what to steer away from (replaces the empty prompt in guidance)")
    add_guidance(m)
    m.add_argument("--guidance-interval", type=argtypes.sigma_interval, default=None, metavar="LO,HI",
                   help="guide only where the noise level sigma is in (LO, HI] (Kynkaanniemi et al. 2024); "
                        "elsewhere the plain conditional model")
    add_seed(m, "image")
    prov = m.add_argument_group("provenance (every file is signed and recorded; see 'ebru provenance')")
    prov.add_argument("--no-watermark", action="store_true",
                      help="draw from unmarked noise (an explicit exception: the files' manifests and audit "
                           "records say so)")
    prov.add_argument("--tree-ring", action="store_true",
                      help="also write Tree-Ring's zero-bit key into the noise's low frequencies (Wen et al. "
                           "2023; off by default: it makes the noise slightly non-Gaussian); 'ebru watermark "
                           "detect' reads it")
    prov.add_argument("--prompt-policy", choices=("hash", "full", "omit"), default="hash",
                      help="what the manifest and record keep of each prompt: its SHA-256 (default), the text, or "
                           "nothing")
    add_device(m)
    add_trust_flags(m)

    e = _command(sub, "eval", _cmd_eval,
                 "score a model: FID, KID, precision/recall, class agreement, NLL; prompt agreement for text models; "
                 "PSNR, SSIM, rFID for an autoencoder")
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("--metrics", default=None,
                   help="comma-separated: fid,kid,precision,recall,agreement,nll,nll_bound (default: all but the "
                        "nlls); a text-to-image model: prompt_agreement (its default)")
    e.add_argument("-n", type=argtypes.positive_int, default=None, metavar="N",
                   help="samples to generate (default 2000); a text-to-image model: prompts per task (default 100)")
    e.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="text-to-image models: a negative prompt for every sample")
    e.add_argument("--sampler", type=argtypes.sampler, default=None, help="sampler (default: the model's)")
    e.add_argument("--steps", type=argtypes.positive_int, default=None, metavar="K",
                   help="sampling steps (default: the model's)")
    add_guidance(e)
    add_seed(e, "sample")
    e.add_argument("--batch", type=argtypes.positive_int, default=250, help="images per sampling batch (default 250)")
    e.add_argument("--reference", default="fashion-mnist:test",
                   help="reference data (a dataset spec or a saved .safetensors reference file)")
    e.add_argument("--nll-images", type=argtypes.positive_int, default=64,
                   help="test images for nll and nll_bound (default 64)")
    add_json(e)
    add_trust_flags(e)
