"""The class-conditional quickstart (recipe ``quickstart``), end to end, and the class agreement of its samples.

Runs it (``run_class_quickstart``) into a fresh directory (timed), then samples 300 images
(30 per class, seeds 0-299) at several guidance scales and reports the share that
ebru's Fashion-MNIST feature network assigns to the requested class.

    python benchmarks/quickstart_agreement.py [--out DIR] [--n 300] [--guidance 2,3]
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from common import write_result
from ebru.eval import class_agreement, load_feature_net
from ebru.pipelines.image import ImagePipeline
from ebru.pipelines.quickstart import run_class_quickstart


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/ebru-quickstart-bench")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--guidance", default="2,3")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.time()
    r = run_class_quickstart(args.out, progress=False)
    wall = time.time() - t0
    pipe, net = ImagePipeline.from_pretrained(r["model"], watermark=False), load_feature_net()
    labels = torch.arange(args.n) % 10
    summary = {"quickstart_wall_minutes": round(wall / 60, 2), "train_steps": r["steps"],
               "train_minutes": r["minutes"], "final_loss": r["final_loss"],
               "feature_net_test_accuracy": net.test_accuracy, "feature_net_sha256": net.sha256,
               "samples": args.n}
    print(f"quickstart: {wall / 60:.2f} min wall, {r['steps']} steps")
    for w in (float(v) for v in args.guidance.split(",")):
        x = pipe(args.n, class_labels=labels.tolist(), guidance_scale=w, seeds=range(args.n))
        a = class_agreement(net, x, labels)
        summary[f"agreement_guidance_{w:g}"] = a
        print(f"guidance {w:g}: class agreement {a:.3f} on {args.n} samples")
    print(f"wrote {write_result('quickstart_agreement', summary)}")


if __name__ == "__main__":
    main()
