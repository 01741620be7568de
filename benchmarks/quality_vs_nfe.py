"""Sample quality against the number of network evaluations (NFE), for every ebru sampler.

One trained Fashion-MNIST model; for each sampler and each NFE budget the same seeds draw
``--n-samples`` images, scored with FID and KID against the 10,000 test images through ebru's
feature network. Heun spends 2 evaluations per step but 1 on the last, so its step count is the
largest whose NFE fits the budget, and the NFE it really used is recorded. Because every point uses
the same noise (seeds 0..N-1), differences between samplers are paired; FID's small-N bias is the
same for all of them and is stated beside them as the FID of N real training images.

    python benchmarks/quality_vs_nfe.py --model ebru-out/quality_at_budget/ebru/model
    python benchmarks/quality_vs_nfe.py --plot-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

NAME = "quality_vs_nfe"


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, pts in sorted(result["curves"].items()):
        nfe = [p["nfe"] for p in pts]
        style = "--" if pts and pts[0].get("stochastic") else "-"
        axes[0].plot(nfe, [p["fid"] for p in pts], style, marker="o", ms=3, label=name)
        axes[1].plot(nfe, [max(p["kid"], 1e-5) for p in pts], style, marker="o", ms=3, label=name)
    floor = result["summary"].get("fid_real_floor")
    if floor:
        axes[0].axhline(floor, color="gray", lw=1, ls=":", label=f"real images, same N ({floor:.2f})")
    for ax, what in zip(axes, ("FID", "KID"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    n = result["summary"]["n_samples"]
    fig.suptitle(f"ebru samplers on a Fashion-MNIST model: {what} vs NFE ({n} samples per point, same seeds; "
                 "dashed = stochastic)".replace(what, "FID and KID"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    from ebru.diffusion import SAMPLERS, sampler_nfe, steps_for_nfe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ebru-out/quality_at_budget/ebru/model")
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--nfe", default="1,2,3,5,10,20,50,100")
    ap.add_argument("--samplers", default=",".join(sorted(SAMPLERS)))
    ap.add_argument("--guidance", type=float, default=None, help="for class-conditional models")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--merge", action="store_true", help="add these points to the existing result file "
                    "(same model and N), replacing points of the same sampler and NFE")
    args = ap.parse_args()
    out_json = RESULTS / f"{NAME}.json"
    if args.plot_only:
        print(plot(json.loads(out_json.read_text(encoding="utf-8")), RESULTS / f"{NAME}.png"))
        return

    from ebru.eval import evaluate_images, load_feature_net, reference_set
    from ebru.eval.evaluate import real_floor
    from ebru.pipelines.image import ImagePipeline

    pipe = ImagePipeline.from_pretrained(args.model, watermark=False)
    net = load_feature_net()
    ref = reference_set(net, progress=True)
    floor = real_floor(ref, net, args.n_samples)
    budgets = [int(b) for b in args.nfe.split(",")]
    labels = None
    if pipe.num_classes:
        labels = [i % pipe.num_classes for i in range(args.n_samples)]
    curves: dict[str, list[dict]] = {}
    if args.merge and out_json.is_file():
        old = json.loads(out_json.read_text(encoding="utf-8"))
        if old.get("model") != str(args.model) or old["summary"].get("n_samples") != args.n_samples:
            sys.exit(f"--merge: {out_json} holds another model or sample count")
        curves = old["curves"]
    t0 = time.time()
    for name in args.samplers.split(","):
        fn = SAMPLERS[name]
        pts, seen = [], set()
        for budget in budgets:
            steps = steps_for_nfe(name, budget)
            nfe = sampler_nfe(name, steps)
            if nfe in seen:  # heun cannot spend an even budget: its previous point stands
                continue
            seen.add(nfe)
            t = time.time()
            chunks = []
            for i in range(0, args.n_samples, args.batch):
                k = min(args.batch, args.n_samples - i)
                chunks.append(pipe(k, class_labels=None if labels is None else labels[i:i + k],
                                   num_inference_steps=steps, sampler=name, guidance_scale=args.guidance,
                                   seeds=list(range(i, i + k))).clamp(-1, 1))
            x = torch.cat(chunks)
            m = evaluate_images(x, metrics="fid,kid", feature_net=net, reference=ref, floor=False)["metrics"]
            pts.append({"nfe": nfe, "steps": steps, "fid": m["fid"], "kid": m["kid"], "kid_std": m["kid_std"],
                        "stochastic": bool(getattr(fn, "stochastic", False)), "seconds": time.time() - t})
            print(f"{name:<14} NFE {nfe:>3} ({steps:>3} steps)  FID {m['fid']:8.3f}  KID {m['kid']:.5f}  "
                  f"[{time.time() - t:.0f}s, {(time.time() - t0) / 60:.1f} min total]", flush=True)
        merged = {p["nfe"]: p for p in curves.get(name, [])}
        merged.update({p["nfe"]: p for p in pts})
        curves[name] = [merged[k] for k in sorted(merged)]
        best = {n: min(p["fid"] for p in ps) for n, ps in curves.items()}
        at10 = {n: min((p for p in ps if p["nfe"] <= 10), key=lambda p: p["fid"], default=None)
                for n, ps in curves.items()}
        summary = {"n_samples": args.n_samples, "fid_real_floor": floor[0] if floor else None,
                   "best_fid": min(best.values()), "best_sampler": min(best, key=best.get),
                   "best_fid_at_nfe_le_10": min((p["fid"] for p in at10.values() if p), default=None),
                   "best_sampler_at_nfe_le_10": min((n for n in at10 if at10[n]), key=lambda n: at10[n]["fid"])}
        result = {"summary": summary, "curves": curves}
        budgets_all = sorted({p["nfe"] for ps in curves.values() for p in ps})
        write_result(NAME, summary, curves=curves, model=str(args.model), nfe_points=budgets_all,
                     model_training=pipe.config.get("training", {}).get("steps"),
                     feature_net_sha256=ref.net_sha256, reference={"dataset": ref.dataset, "n": ref.n},
                     seeds=[0, args.n_samples - 1], guidance=args.guidance)
    print(plot(result, RESULTS / f"{NAME}.png"))


if __name__ == "__main__":
    main()
