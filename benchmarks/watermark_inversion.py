"""How well DDIM inversion recovers a sample's initial noise, clean and attacked: the ceiling of the noise watermark.

Gaussian Shading is read from the noise that inversion recovers, so its robustness can be no better than the
inversion's. This measures, on one model (default: the quickstart's text-to-image model, 3x32x32), for
``--n`` samples drawn with the model's default sampler and guidance from plain seeded noise:

- per attack of ``ebru.provenance.attacks.ATTACKS`` (the files as 8-bit PNG, attacked, brought back to the
  model's size) and per inversion start ``sigma_start`` (the noise level the inversion starts from; ebru's
  detector uses ``DETECT_SIGMA_START``): the detector's soft score of the true noise's signs,
  ``<z_hat, sign(z)> / |z_hat|`` (about N(0, 1) without a watermark; what ``GaussianShading.decode`` scores),
  mean and 5th percentile, and the sign agreement ("chip accuracy");
- an oracle row per attack: the inversion told the true prompt and guidance (which detection never knows):
  if even that fails under an attack, no better unconditional inversion will rescue the watermark there.

    python benchmarks/watermark_inversion.py --model ebru-out/model            # 64 samples, about 5 minutes

Writes ``benchmarks/results/watermark_inversion.json`` (``$EBRU_RESULTS_DIR`` to write elsewhere); summary keys
``score_<attack>_s<sigma>`` (mean score) and ``oracle_score_<attack>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

NAME = "watermark_inversion"
PROMPTS = ["a red sneaker", "a blue dress", "a green bag", "a white ankle boot", "a yellow pullover", "a purple coat",
           "a cyan trouser", "a red sandal"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a text-to-image or image package")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="DDIM inversion steps")
    ap.add_argument("--sigma-starts", default="0.002,0.1,0.3,1.0")
    args = ap.parse_args()

    from ebru.data.grid import to_uint8
    from ebru.diffusion import ClassifierFreeGuidance, invert
    from ebru.diffusion.tensors import randn_like, seed_generators
    from ebru.pipelines import TextToImagePipeline
    from ebru.pipelines.image import ImagePipeline, load_image_model
    from ebru.pipelines.watermark import DETECT_SIGMA_START, null_condition
    from ebru.provenance import fit_to_shape
    from ebru.provenance.attacks import ATTACKS

    model = load_image_model(args.model)
    text = bool(model.config.get("text_encoder"))
    pipe = (TextToImagePipeline if text else ImagePipeline).from_pretrained(model, watermark=False)
    seeds = list(range(args.n))
    z = randn_like(torch.empty(args.n, *pipe.image_shape), seed_generators(seeds))
    prompts = [PROMPTS[s % len(PROMPTS)] for s in seeds]
    setting = pipe.sampling(None, None)
    guidance = pipe.config.get("sampling", {}).get("guidance", 1.0)
    with torch.inference_mode():
        x = pipe(prompts, n=1, seeds=seeds) if text else pipe(args.n, seeds=seeds)
    files = list(to_uint8(x.clamp(-1, 1)).numpy())  # what a PNG holds
    signs = z.flatten(1).double().sign()
    uncond = null_condition(pipe, args.n)
    if text:
        from ebru.tasks.text2image import text_condition

        true_cond = text_condition(pipe.encoder.encode(prompts))
    else:
        true_cond = {}

    def scores(z_hat: torch.Tensor) -> dict:
        v = z_hat.flatten(1).double()
        s = (v * signs).sum(1) / v.norm(dim=1)
        return {"score": float(s.mean()), "score_p5": float(s.quantile(0.05)),
                "chip_acc": float(((v > 0) == (signs > 0)).double().mean())}

    sigma_starts = [float(s) for s in args.sigma_starts.split(",")]
    rows, summary = {}, {"n": args.n, "detect_sigma_start": DETECT_SIGMA_START, "guidance": guidance}
    print(f"{'attack':<16}" + "".join(f"{'from ' + format(s, 'g'):>16}" for s in sigma_starts) + f"{'oracle':>16}")
    for name, attack in ATTACKS.items():
        arrays = [attack(a if a.shape[2] > 1 else a[:, :, 0], seed=i) for i, a in enumerate(files)]
        xs = torch.cat([fit_to_shape(torch.from_numpy(np.array(a)).reshape(a.shape[0], a.shape[1], -1)
                                     .permute(2, 0, 1).float().div(127.5).sub(1)[None], pipe.image_shape)
                        for a in arrays])
        row = {}
        with torch.inference_mode():
            for s0 in sigma_starts:
                row[f"s{s0:g}"] = scores(invert(pipe.denoiser, xs, sampler="ddim", steps=args.steps, sigma_min=s0,
                                                sigma_max=setting["sigma_max"], **uncond))
            den = ClassifierFreeGuidance(pipe.denoiser, guidance, uncond) if guidance != 1 else pipe.denoiser
            row["oracle"] = scores(invert(den, xs, sampler="ddim", steps=args.steps, sigma_min=DETECT_SIGMA_START,
                                          sigma_max=setting["sigma_max"], **true_cond))
        rows[name] = row
        for k, r in row.items():
            summary[f"score_{name}_{k}" if k != "oracle" else f"oracle_score_{name}"] = r["score"]
        print(f"{name:<16}" + "".join(f"{r['score']:>9.1f} ({r['score_p5']:4.1f})" for r in row.values()), flush=True)
    print("score: mean (5th percentile) of <z_hat, sign(z)> / |z_hat|; the oracle inverts with the true prompt and "
          f"guidance from sigma {DETECT_SIGMA_START}")
    path = write_result(NAME, summary, rows=rows, model=str(args.model), sampler=str(setting["sampler"]),
                        steps=setting["steps"], sigma_starts=sigma_starts)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
