"""DPM-Solver++(3M) on a trained model: ebru's Taylor weight (2 phi_3) against the reference code's (phi_3).

On the Gaussian oracle ebru's weight makes the solver third order (tests/test_convergence.py).
On a learned Fashion-MNIST model both weights lose quality at 10 Karras steps (a multistep
instability that DPM-Solver's own code avoids with lower-order final steps); this script measures
FID at 5, 10 and 20 steps for both, 500 samples each, same seeds.

    python benchmarks/dpmpp_3m_weight.py --model ebru-out/quality_at_budget/ebru/model
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result


def reference_weight_3m():
    """ebru's dpmpp_3m with the reference code's weight phi_3 on the second difference."""
    import ebru.diffusion.samplers as S

    src = textwrap.dedent(inspect.getsource(S.dpmpp_3m)).replace("- 2 * phi_3 * d2", "- phi_3 * d2")
    src = "\n".join(line for line in src.splitlines() if not line.startswith("@"))
    ns = dict(vars(S))
    exec(src, ns)
    return ns["dpmpp_3m"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ebru-out/quality_at_budget/ebru/model")
    ap.add_argument("--n-samples", type=int, default=500)
    args = ap.parse_args()
    from ebru.diffusion import sample
    from ebru.eval import evaluate_images, load_feature_net, reference_set
    from ebru.pipelines.image import ImagePipeline

    pipe = ImagePipeline.from_pretrained(args.model, watermark=False)
    net = load_feature_net()
    ref = reference_set(net)
    variants = {"ebru_2phi3": "dpmpp_3m", "reference_phi3": reference_weight_3m(), "dpmpp_2m": "dpmpp_2m"}
    fids: dict[str, dict[int, float]] = {k: {} for k in variants}
    for steps in (5, 10, 20):
        for name, fn in variants.items():
            x = sample(pipe.denoiser, (args.n_samples, *pipe.image_shape), sampler=fn, steps=steps,
                       schedule="karras", sigma_min=0.002, sigma_max=80.0, seeds=list(range(args.n_samples)))
            fids[name][steps] = evaluate_images(x.clamp(-1, 1), metrics="fid", feature_net=net, reference=ref,
                                                floor=False)["metrics"]["fid"]
            print(f"{steps:>3} steps  {name:<16} FID {fids[name][steps]:.2f}", flush=True)
    write_result("dpmpp_3m_weight", {f"fid_{k}_{s}": v for k, d in fids.items() for s, v in d.items()},
                 model=args.model, n_samples=args.n_samples, schedule="karras")


if __name__ == "__main__":
    main()
