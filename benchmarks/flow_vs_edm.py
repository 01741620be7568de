"""Rectified flow against EDM at the same network, data, budget and seeds: FID against NFE, and path straightness.

Trains the ``fashion_mnist_cpu`` (EDM) and ``fashion_mnist_flow`` (rectified flow: velocity prediction,
the flow weighting, logit-normal time) recipes, which differ only in the formulation, side by side, one
process and one thread each (as ``quality_at_budget.py`` does), for ``--steps`` training steps each
(default 1,458: what the EDM recipe's 20-minute budget gave there; a step count, not minutes, so that the
comparison does not depend on the machine's load), unless ``--edm`` / ``--flow`` name trained packages.
Then, for each sampler of ``--samplers`` and each NFE of ``--nfe``, N samples (seeds 0..N-1, the same
for both models) scored with FID and KID against the 10,000 test images (ebru's feature network), and
the straightness of each model's ODE paths (``ebru.diffusion.straightness``, Euler at 32 steps on the
flow schedule: the mean squared distance between the velocity and the path's chord, in flow time).

    python benchmarks/flow_vs_edm.py [--steps 1458] [--edm DIR --flow DIR] [--n 2000]
        [--samplers euler,heun,dpmpp_2m,unipc] [--nfe 5,10,20,35] [--settings euler:10,dpmpp_2m:20]

Writes ``benchmarks/results/flow_vs_edm.json`` (summary: ``fid_edm_<sampler>_<nfe>``,
``fid_flow_<sampler>_<nfe>``, the best FID of each at >= 20 NFE and their ratio, the Euler-10 figures).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

NAME = "flow_vs_edm"
RECIPES = {"edm": "fashion_mnist_cpu", "flow": "fashion_mnist_flow"}


def train_both(out: Path, steps: int) -> dict[str, Path]:
    """Both recipes at once, one single-threaded process each; returns their model packages."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for kind, recipe in RECIPES.items():
        log = (out / f"{kind}.log").open("w", encoding="utf-8")
        cmd = [sys.executable, "-m", "ebru", "train", recipe, "--out", str(out / kind), "--set", f"steps={steps}",
               "--set", "time_budget=100000"]
        procs[kind] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    t = time.time()
    for kind, (p, log) in procs.items():
        if p.wait() != 0:
            sys.exit(f"training {kind} failed: see {out / (kind + '.log')}")
        log.close()
    print(f"both trained ({steps} steps each) in {(time.time() - t) / 60:.1f} min", flush=True)
    return {kind: out / kind / "model" for kind in RECIPES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1458)
    ap.add_argument("--edm", default=None)
    ap.add_argument("--flow", default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--samplers", default="euler,heun,dpmpp_2m,unipc")
    ap.add_argument("--nfe", default="5,10,20,35")
    ap.add_argument("--settings", default=None, help="instead of --samplers x --nfe: SAMPLER:NFE,... "
                    "(e.g. euler:10,dpmpp_2m:20, the issue's two targets)")
    ap.add_argument("--straightness-samples", type=int, default=500)
    ap.add_argument("--out", default="/tmp/ebru-flow-vs-edm")
    args = ap.parse_args()

    from ebru.diffusion import SCHEDULES, sampler_nfe, steps_for_nfe, straightness
    from ebru.eval import evaluate_images, load_feature_net, reference_set
    from ebru.pipelines.image import ImagePipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = args.edm and args.flow
    models = {"edm": Path(args.edm), "flow": Path(args.flow)} if given else train_both(out, args.steps)
    net = load_feature_net()
    ref = reference_set(net, progress=True)
    if args.settings:
        plan = [(name, int(nfe)) for name, nfe in (item.split(":") for item in args.settings.split(","))]
    else:
        plan = [(name, int(b)) for name in args.samplers.split(",") for b in args.nfe.split(",")]
    curves: dict[str, dict[str, list[dict]]] = {kind: {} for kind in models}
    summary: dict[str, float | int | str | None] = {"n_samples": args.n}
    straight: dict[str, float] = {}
    for kind, model in models.items():
        pipe = ImagePipeline.from_pretrained(model, watermark=False)
        seen = set()
        for name, budget in plan:
            steps = steps_for_nfe(name, budget)
            nfe = sampler_nfe(name, steps)
            if (name, nfe) in seen:
                continue
            seen.add((name, nfe))
            chunks = []
            for i in range(0, args.n, args.batch):
                k = min(args.batch, args.n - i)
                with torch.inference_mode():
                    chunks.append(pipe(k, sampler=name, num_inference_steps=steps,
                                       seeds=list(range(i, i + k))).clamp(-1, 1))
            m = evaluate_images(torch.cat(chunks), metrics="fid,kid", feature_net=net, reference=ref,
                                floor=False)["metrics"]
            curves[kind].setdefault(name, []).append({"nfe": nfe, "steps": steps, "fid": m["fid"], "kid": m["kid"]})
            summary[f"fid_{kind}_{name}_{nfe}"] = m["fid"]
            print(f"{kind:<5} {name:<10} NFE {nfe:>3}  FID {m['fid']:8.3f}  KID {m['kid']:.4f}", flush=True)
        d = pipe.denoiser
        g = torch.Generator().manual_seed(0)
        x = 80.0 * torch.randn((args.straightness_samples, *pipe.image_shape), generator=g)
        sigmas = SCHEDULES["flow"](32, 0.002, 80.0)
        with torch.inference_mode():
            straight[kind] = float(straightness(d, x, sigmas).mean())
        summary[f"straightness_{kind}"] = straight[kind]
    for kind in models:
        at20 = [p for ps in curves[kind].values() for p in ps if p["nfe"] >= 20]
        if at20:
            best = min(at20, key=lambda p: p["fid"])
            summary[f"best_fid_{kind}_nfe_ge_20"] = best["fid"]
    if "best_fid_edm_nfe_ge_20" in summary and "best_fid_flow_nfe_ge_20" in summary:
        summary["flow_over_edm_nfe_ge_20"] = summary["best_fid_flow_nfe_ge_20"] / summary["best_fid_edm_nfe_ge_20"]
    write_result(NAME, summary, curves=curves, models={k: str(v) for k, v in models.items()},
                 train_steps=args.steps, seeds=[0, args.n - 1], feature_net_sha256=ref.net_sha256)
    print(summary)


if __name__ == "__main__":
    main()
