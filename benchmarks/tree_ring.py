"""Tree-Ring, the optional zero-bit second mark, beside Gaussian Shading: detection, false positives, cost.

One image or text-to-image package (``--model DIR``, e.g. the quickstart's ``/tmp/qsG/model``; 3x32x32). Under a
private configuration in ``--out`` (as ``watermark_robustness.py``: its own watermark key, CA, store and audit
log), the same ``--n`` seeds are drawn twice, with Gaussian Shading alone (ebru's default) and with
Gaussian Shading plus Tree-Ring (``ImagePipeline.enable_tree_ring``, the default radius), and every image is
read by ``ebru.pipelines.watermark.detect_files`` (DDIM inversion from sigma 0.3, ``--detect-steps``), which
reports both marks from one inversion.

- Tree-Ring's true-positive rate at false-positive targets 1e-6 (ebru's) and 1e-2 (the level the Tree-Ring
  paper reports), clean and under the attack grid's JPEG 50, JPEG 75, resize x0.5, noise, brightness, blur and
  crop cells (``ebru.provenance.attacks``); AUROC of Tree-Ring's p-value, marked against unmarked images.
- Its false positives where there is no Tree-Ring: the Gaussian-Shading-only images, clean and after JPEG 50,
  and ``--n`` Fashion-MNIST test images (grey, for a 1-channel model) or Fashion scenes of test items (for a
  text-to-image model): the share flagged at 1e-6 and at 1e-2 (nominal 0.01: the Gaussian null's calibration).
- What it costs Gaussian Shading: its detection rate with and without Tree-Ring, clean and after JPEG 50.
- What it costs the samples (text-to-image models): prompt agreement (``evaluate_text_to_image``, ``--n-eval``
  prompts per task) with and without Tree-Ring, the same seeds.

    python benchmarks/tree_ring.py --model /tmp/qsG/model [--n 200] [--out /tmp/ebru-tree-ring]

Writes ``benchmarks/results/tree_ring.json`` (``$EBRU_RESULTS_DIR`` to write elsewhere). About 12 minutes on a
2-core CPU at the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result
from watermark_robustness import Detector, generate, private_state, uint8_arrays, write_pngs

NAME = "tree_ring"
CELLS = ["jpeg50", "jpeg75", "resize0.5", "noise0.05", "brightness1.5", "blur", "crop0.5"]


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(score of a marked image > score of an unmarked one), ties half (the Mann-Whitney statistic)."""
    from ebru.provenance import auroc as exact

    return float(exact(np.asarray(neg), np.asarray(pos)))


def score(row: dict) -> float:
    """-log10 of Tree-Ring's p-value, capped (a p-value of exactly 0 would be infinite)."""
    return min(-row["tree_ring"]["log10_p_value"], 1e9)


def ring_stats(rows: list[dict]) -> dict:
    ring = [r["tree_ring"] for r in rows]
    log10_p = [r["log10_p_value"] for r in ring]
    return {"tpr_1e-6": float(np.mean([r["detected"] for r in ring])),
            "tpr_1e-2": float(np.mean([p <= -2 for p in log10_p])),
            "median_log10_p": float(np.median(log10_p)), "gs_detected": float(np.mean([r["detected"] for r in rows]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an image or text-to-image package")
    ap.add_argument("--n", type=int, default=200, help="images per cell")
    ap.add_argument("--n-eval", type=int, default=100, help="prompts per task for the prompt agreement cost")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--detect-steps", type=int, default=20)
    ap.add_argument("--out", default="/tmp/ebru-tree-ring")
    args = ap.parse_args()
    out = Path(args.out)
    private_state(out)

    from ebru.pipelines import ImagePipeline, TextToImagePipeline
    from ebru.pipelines.image import load_image_model
    from ebru.provenance import apply_attack

    t_start = time.perf_counter()
    loaded = load_image_model(args.model)
    text = bool(loaded.config.get("text_encoder"))
    pipe = (TextToImagePipeline if text else ImagePipeline).from_pretrained(loaded, watermark=True)
    seeds = list(range(args.n))
    plain = generate(pipe, seeds, args.batch, "Gaussian Shading only")
    pipe.enable_tree_ring()
    ring = pipe.tree_ring
    print(f"{ring!r}: {ring.dof} degrees of freedom", flush=True)
    marked = generate(pipe, seeds, args.batch, "with Tree-Ring")
    detect = Detector(loaded, args.detect_steps, loaded.config["image_shape"][0])

    arrays = {"ring": uint8_arrays(marked), "plain": uint8_arrays(plain)}
    cells: dict[str, dict] = {}

    def run(name: str, images: list[np.ndarray]) -> list[dict]:
        rows, seconds = detect(write_pngs(images, out / "cells" / name))
        cells[name] = {**ring_stats(rows), "seconds_per_image": seconds / len(images)}
        c = cells[name]
        print(f"{name:<22} Tree-Ring TPR@1e-6 {c['tpr_1e-6']:.3f}  TPR@1e-2 {c['tpr_1e-2']:.3f}  median log10 p "
              f"{c['median_log10_p']:8.1f}   Gaussian Shading detected {c['gs_detected']:.3f}", flush=True)
        return rows

    p_values: dict[str, list[float]] = {}
    for source in ("ring", "plain"):
        rows = run(f"{source}_clean", arrays[source])
        p_values[f"{source}_clean"] = [score(r) for r in rows]
    for cell in CELLS:
        attacked = [apply_attack(cell, a, seed=i) for i, a in enumerate(arrays["ring"])]
        p_values[f"ring_{cell}"] = [score(r) for r in run(f"ring_{cell}", attacked)]
    attacked = [apply_attack("jpeg50", a, seed=i) for i, a in enumerate(arrays["plain"])]
    p_values["plain_jpeg50"] = [score(r) for r in run("plain_jpeg50", attacked)]

    # real images: never marked (Fashion scenes of test items for a text-to-image model, else Fashion-MNIST test)
    from ebru.pipelines.detector import real_images

    real = real_images("fashion-scenes:quickstart" if text else "fashion-mnist", args.n, split="test", seed=7)
    real_rows = run("real", [a for a in real.images.permute(0, 2, 3, 1).numpy()])
    p_values["real"] = [score(r) for r in real_rows]

    aurocs = {cell: auroc(p_values[f"ring_{cell}"], p_values["plain_jpeg50" if cell == "jpeg50" else "plain_clean"])
              for cell in ["clean", *CELLS]}
    quality = None
    if text:
        from ebru.pipelines.evaluate import evaluate_text_to_image

        quality = {}
        for label, tree in (("tree_ring", ring), ("gaussian_shading_only", None)):
            pipe.tree_ring = tree
            with torch.inference_mode():
                rep = evaluate_text_to_image(pipe, n=args.n_eval, batch=args.batch)
            overall = rep["prompt_agreement"]["overall"]
            quality[label] = (overall["seen"] + overall["held_out"]) / 2
            print(f"prompt agreement, {label}: {quality[label]:.3f}", flush=True)

    summary = {
        "tree_ring_tpr_1e-6_clean": cells["ring_clean"]["tpr_1e-6"],
        **{f"tree_ring_tpr_1e-6_{c}": cells[f"ring_{c}"]["tpr_1e-6"] for c in CELLS},
        **{f"tree_ring_tpr_1e-2_{c}": cells[f"ring_{c}"]["tpr_1e-2"] for c in ["clean", *CELLS]},
        **{f"tree_ring_auroc_{c}": v for c, v in aurocs.items()},
        "tree_ring_fp_1e-6": {k: cells[k]["tpr_1e-6"] for k in ("plain_clean", "plain_jpeg50", "real")},
        "tree_ring_fp_1e-2": {k: cells[k]["tpr_1e-2"] for k in ("plain_clean", "plain_jpeg50", "real")},
        "gaussian_shading_detected": {"alone_clean": cells["plain_clean"]["gs_detected"],
                                      "with_tree_ring_clean": cells["ring_clean"]["gs_detected"],
                                      "alone_jpeg50": cells["plain_jpeg50"]["gs_detected"],
                                      "with_tree_ring_jpeg50": cells["ring_jpeg50"]["gs_detected"]},
        "prompt_agreement": quality,
    }
    print({k: v for k, v in summary.items()}, flush=True)
    write_result(NAME, summary, model=str(args.model), ring={"radius": ring.radius, "channel": ring.channel,
                                                             "dof": ring.dof, "shape": list(ring.shape)},
                 cells=cells, settings={"n": args.n, "n_eval": args.n_eval, "detect_steps": args.detect_steps},
                 minutes=(time.perf_counter() - t_start) / 60)


if __name__ == "__main__":
    main()
