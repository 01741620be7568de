"""Prompt following of a text-to-image model, measured: agreement per task, the guidance knob, negative prompts.

Trains a recipe (``text2image_quickstart`` by default, or ``text2image_fashion_scenes`` for the full
compositional set) unless ``--model`` names a trained package, then, on the recipe's Fashion scenes:

1. Prompt agreement at the model's guidance scale (GenEval-shaped, closed world): per task the share of
   samples ebru's judges accept (item class by the Fashion-MNIST feature network on the item's crop,
   colour by hue, position by centroid, counts by connected components, binding by the colour of the item
   judged class c), on training phrasings and on held-out ones (templates and synonyms no training
   caption contains), ``--n`` prompts per task, seeds 0..
2. The guidance knob: the same prompts at each scale of ``--guidance`` (default 1 to 9): overall agreement,
   mean colour saturation and, on the items' crops (brightness, 28x28), the FID against Fashion-MNIST's
   test images with ebru's feature network ("item FID": how good the drawn items are, whatever their colour).
3. Negative prompts: for each colour, prompts naming only the item ("a sneaker", the class cycling) with and
   without the negative prompt "<colour>"; the share of samples that still show that colour.

    python benchmarks/text_to_image.py [--recipe text2image_quickstart] [--model DIR] [--n 100]
        [--guidance 1,2,3,5,7,9] [--minutes M] [--out DIR]

Writes ``benchmarks/results/text_to_image[_<recipe>].json`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from common import write_result
from ebru.data.scenes import COLOURS, eval_prompts
from ebru.eval import fid, load_feature_net, reference_set
from ebru.eval.features import extract_features
from ebru.eval.frechet import FeatureStats
from ebru.eval.prompt_agreement import judge, negated_share
from ebru.pipelines.evaluate import scene_preset
from ebru.pipelines.text2image import TextToImagePipeline
from ebru.train import Trainer, load_config

NOUNS = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot")


def item_crops(images: torch.Tensor) -> torch.Tensor:
    """Each image's brightness (max over RGB) resized to 28x28, in [-1, 1]: the grey item without its tint."""
    v = images.clamp(-1, 1).amax(dim=1, keepdim=True)
    return torch.nn.functional.interpolate(v, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)


def item_fid(images: torch.Tensor, net, ref) -> float:
    feats = extract_features(net, item_crops(images))
    return fid(FeatureStats.from_features(feats), ref.stats())


def draw(pipe, prompts, guidance, batch=200, negative=None):
    out = []
    for i in range(0, len(prompts), batch):
        part = prompts[i:i + batch]
        out.append(pipe(part, negative_prompt=negative, guidance_scale=guidance, seeds=range(i, i + len(part))))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="text2image_quickstart")
    ap.add_argument("--model", default=None, help="a trained text-to-image package (skips training)")
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: the recipe's)")
    ap.add_argument("--n", type=int, default=100, help="prompts per task (half seen, half held-out phrasings)")
    ap.add_argument("--guidance", default="1,2,3,5,7,9")
    ap.add_argument("--out", default="/tmp/ebru-t2i-bench")
    args = ap.parse_args()

    summary: dict = {"recipe": args.recipe}
    if args.model is None:
        shutil.rmtree(args.out, ignore_errors=True)
        overrides = [] if args.minutes is None else [f"time_budget={args.minutes}"]
        t0 = time.time()
        model = Trainer(load_config(args.recipe, overrides), Path(args.out), progress=False).fit()
        summary["train_wall_minutes"] = round((time.time() - t0) / 60, 2)
    else:
        model = Path(args.model)
    pipe = TextToImagePipeline.from_pretrained(model, quiet=True, watermark=False)
    t = pipe.config["training"]
    summary.update({"train_steps": t["steps"], "train_minutes": t["minutes"], "images_seen": t["images_seen"]})
    preset = scene_preset(pipe)
    prompts = eval_prompts(preset, args.n, seed=0)
    texts = [p.prompt for p in prompts]
    default_w = pipe.config["sampling"]["guidance"]
    net = load_feature_net()
    ref = reference_set(net, "fashion-mnist:test")

    # 1 + 2: agreement per task at each guidance scale (the model's own scale included)
    scales = sorted({float(w) for w in args.guidance.split(",")} | {float(default_w)})
    sweep = []
    for w in scales:
        t0 = time.time()
        images = draw(pipe, texts, w)
        seconds = time.time() - t0
        report = judge(images, prompts, feature_net=net)
        report.pop("per_sample")
        row = {"guidance": w, "overall_seen": report["overall"]["seen"],
               "overall_held_out": report["overall"]["held_out"], "mean_saturation": report["mean_saturation"],
               "item_fid": item_fid(images, net, ref), "images_per_second": len(images) / seconds,
               "tasks": {k: v for k, v in report.items() if k not in ("overall", "mean_saturation")}}
        sweep.append(row)
        print(f"guidance {w:g}: agreement {row['overall_seen']:.3f} seen / {row['overall_held_out']:.3f} held-out, "
              f"saturation {row['mean_saturation']:.3f}, item FID {row['item_fid']:.2f}, "
              f"{row['images_per_second']:.1f} images/s", flush=True)
        if w == float(default_w):
            for task, r in row["tasks"].items():
                summary[f"{task}_seen"] = r["seen"]
                summary[f"{task}_held_out"] = r["held_out"]
                print(f"  {task:<16} seen {r['seen']:.3f} ({r['n_seen']}), held-out {r['held_out']:.3f} "
                      f"({r['n_held_out']})")
    summary["guidance"] = default_w

    # 3: negative prompts, per colour: item-only prompts with and without "<colour>" as the negative prompt
    per = max(10, args.n // 4)
    plain = [f"a {NOUNS[i % len(NOUNS)]}" for i in range(per)]
    negation = {}
    for colour in COLOURS:
        base = negated_share(draw(pipe, plain, default_w), ("colour", colour))
        neg = negated_share(draw(pipe, plain, default_w, negative=colour), ("colour", colour))
        negation[colour] = {"without_negative": base, "with_negative": neg}
        print(f"negative prompt '{colour}': {base:.2f} -> {neg:.2f} of samples show it", flush=True)
    summary["negative_share_without"] = sum(v["without_negative"] for v in negation.values()) / len(negation)
    summary["negative_share_with"] = sum(v["with_negative"] for v in negation.values()) / len(negation)

    name = "text_to_image" if args.recipe == "text2image_quickstart" else f"text_to_image_{args.recipe}"
    path = write_result(name, summary, sweep=sweep, negation=negation, prompts_per_task=args.n, preset=preset,
                        model=str(model))
    plot(sweep, path.with_suffix(".png"), default_w)
    print(f"wrote {path}")


def plot(sweep: list[dict], path: Path, default_w: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["guidance"] for r in sweep]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(w, [r["overall_seen"] for r in sweep], "o-", label="seen phrasings")
    axes[0].plot(w, [r["overall_held_out"] for r in sweep], "s--", label="held-out phrasings")
    axes[0].set_ylabel("prompt agreement (mean over tasks)")
    axes[0].legend()
    axes[1].plot(w, [r["item_fid"] for r in sweep], "o-")
    axes[1].set_ylabel("item FID (ebru features, lower is better)")
    axes[2].plot(w, [r["mean_saturation"] for r in sweep], "o-")
    axes[2].set_ylabel("mean colour saturation")
    for ax in axes:
        ax.set_xlabel("guidance scale")
        ax.axvline(default_w, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    fig.suptitle("ebru text to image: the guidance knob (dotted: the model's default)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
