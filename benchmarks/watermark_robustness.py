"""The noise watermark under attack, its false positives and its cost in quality; C2PA and re-association.

One image or text-to-image package (``--model DIR``, e.g. the quickstart's ``ebru-out/model``, whose 3x32x32
images are the issue's size; or the ``fashion_mnist_cpu`` recipe trained here: ``--teacher-steps`` fixes its
training steps, else 20 minutes). A text-to-image model draws seed ``s`` with ``PROMPTS[s % 10]`` at its default
guidance. Everything ebru would write for a user is written here for
real, under a private configuration in ``--out`` (watermark key, C2PA CA, provenance store and audit log;
the user's own are untouched; the user's trusted keys and licence policy still govern loading the model):

1. ``--n`` watermarked outputs (seeds 0..N-1, the model's sampler and steps) and N unwatermarked ones (the
   same seeds, ``watermark=False``) through ``ebru.pipelines.outputs.write_images``: signed, recorded PNGs.
2. C2PA: ``verify_file`` on every written file against the private root (target: 100 % Trusted).
3. Attack grid: every cell of ``ebru.provenance.attacks.ATTACKS`` on the first ``--n-attack`` written images
   (the crop is detected at its cropped size: detection brings it back to the model's size), plus "sampler
   mismatch" cells: images drawn with another sampler (``--mismatch``) than the DDIM inversion that detects
   them. Detection is ``ebru.pipelines.watermark.detect_files`` (DDIM inversion from sigma 0.3,
   ``--detect-steps``), run twice per cell: over the store's ids (ebru's default; ``tpr_<cell>``, the fraction
   detected with the right id ``id_correct_<cell>``) and blind over all 2**32 ids (``tpr_blind_<cell>``, and the
   payload bit accuracy, mean and 5th percentile, which only a blind decode measures). Also the chip accuracy,
   the mean score and detection seconds per image.
4. False positives: detection on the first ``--clean`` Fashion-MNIST test images and on ``--clean``
   unwatermarked generations, over the store's ids (``fp_<set>``) and blind (``fp_blind_<set>``): detections
   (target 0), the smallest p-value, and the independence checks the p-value rests on: the blindly decoded
   payload bits' means (target 0.5) and largest pairwise |correlation| (target ~0), and the scores against the
   same decoder on i.i.d. N(0, 1) noise, the exact null (the share of clean images above its 99th / 99.9th
   percentile: about 0.01 / 0.001 when the chip signs are independent).
5. Losslessness: FID (ebru.eval; RGB images in grey at 28x28, the feature network's input) of the N watermarked
   and the N unwatermarked samples of the same seeds against the Fashion-MNIST test set, and the seed spread:
   |FID(seeds 0..N-1) - FID(seeds N..2N-1)|, both unwatermarked; also the standard deviation of FID over every
   disjoint set of N unwatermarked seeds drawn (``fid_seed_std``; at least 5 sets, ``--clean`` >= 5 N, make it
   and ``fid_watermarked_z`` meaningful).
6. Re-association (``ebru provenance find``'s logic): every watermarked output stripped of its metadata,
   resized x0.5 and saved as JPEG 75, decoded over the store's ids (``known_ids``) and looked up with
   ``find_by_id``: the fraction whose record is the original file's (target >= 99 %).

    python benchmarks/watermark_robustness.py --model DIR                  # N=1000, clean 10,000
    python benchmarks/watermark_robustness.py --model DIR --n 300 --clean 300   # a smoke run (FID needs > 256)

Writes ``benchmarks/results/watermark_robustness.json`` (``$EBRU_RESULTS_DIR`` to write elsewhere); summary keys
``bit_acc_clean``, ``tpr_<cell>``, ``bit_acc_<cell>``, ``bit_acc_p5_<cell>``, ``chip_acc_<cell>``,
``fp_fashion_mnist``, ``fp_unwatermarked``, ``fid_watermarked``, ``fid_unwatermarked``, ``fid_seed_spread``,
``fid_seed_std``, ``fid_watermarked_z``, ``c2pa_trusted_fraction``, ``reassociation_rate``,
``detect_seconds_per_image``. On a 2-core CPU the full run takes about 2 hours (the 10,000 unwatermarked
generations and the 33,000 detections are most of it); the smoke run about 17 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

NAME = "watermark_robustness"
FPR = 1e-6
MISMATCH = "heun:18,euler:10,dpmpp_2m_sde:32"  # sampler:steps drawn, then detected with DDIM inversion


def private_state(out: Path) -> dict[str, str]:
    """Point ebru's output keys, CA, store and audit log at ``out/state`` (fresh store and log each run)."""
    from ebru.provenance import ENV_C2PA_DIR, ENV_STORE, ENV_WATERMARK_KEY
    from ebru.trust import settings

    state = out / "state"
    shutil.rmtree(state / "provenance", ignore_errors=True)
    (state / "audit.jsonl").unlink(missing_ok=True)
    # loading the user's model still follows the user's trusted keys and licence policy (where the defaults count)
    keys, policy = settings.default_trusted_keys_dir(), settings.default_policy_path()
    for var, path, used in ((settings.ENV_TRUSTED_KEYS, keys, keys.is_dir() and any(keys.glob("*.pub"))),
                            (settings.ENV_POLICY, policy, policy.is_file())):
        if not os.environ.get(var) and used:
            os.environ[var] = str(path)
    os.environ.pop(ENV_WATERMARK_KEY, None)  # the default key of the private config (made on first use)
    env = {"XDG_CONFIG_HOME": str(state / "config"), ENV_C2PA_DIR: str(state / "c2pa"),
           ENV_STORE: str(state / "provenance"), settings.ENV_AUDIT_LOG: str(state / "audit.jsonl")}
    os.environ.update(env)
    return env


def progress(i: int, n: int, what: str) -> None:
    print(f"  {what}: {i}/{n}", end="\n" if i >= n else "\r", flush=True)


# a text-to-image model draws seed s with PROMPTS[s % len(PROMPTS)] (the quickstart's world, with its default guidance)
PROMPTS = ["a red sneaker", "a blue dress", "a green bag", "a white ankle boot", "a yellow pullover", "a purple coat",
           "a cyan trouser", "a red sandal", "a white shirt", "a green t-shirt"]


def generate(pipe, seeds: list[int], batch: int, what: str, **kw) -> torch.Tensor:
    """Samples of ``seeds`` (B, C, H, W) in [-1, 1], drawn ``batch`` at a time."""
    from ebru.pipelines import TextToImagePipeline

    chunks = []
    for i in range(0, len(seeds), batch):
        part = seeds[i:i + batch]
        with torch.inference_mode():
            if isinstance(pipe, TextToImagePipeline):
                x = pipe([PROMPTS[s % len(PROMPTS)] for s in part], n=1, seeds=part, **kw)
            else:
                x = pipe(len(part), seeds=part, **kw)
            chunks.append(x.clamp(-1, 1))
        progress(min(i + batch, len(seeds)), len(seeds), what)
    return torch.cat(chunks)


def uint8_arrays(images: torch.Tensor) -> list[np.ndarray]:
    from ebru.data.grid import to_uint8

    return list(to_uint8(images).numpy())


def write_pngs(arrays: list[np.ndarray], folder: Path) -> list[Path]:
    """Plain PNGs (no manifest) of uint8 (H, W) / (H, W, C) arrays: the files detection reads."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(paths[-1])
    return paths


class Detector:
    """``detect_files`` against one loaded model, with the benchmark's settings; rows and seconds per call."""

    def __init__(self, model, steps: int, channels: int):
        self.model, self.steps, self.channels = model, steps, channels

    def __call__(self, paths: list[Path], candidates: list[int] | str | None = "store") -> tuple[list[dict], float]:
        """Rows of ``detect_files``: over the store's ids (ebru's default) or ``candidates=None`` (blind)."""
        from ebru.pipelines.watermark import detect_files

        t = time.perf_counter()
        rows = detect_files(paths, self.model, steps=self.steps, fpr=FPR, candidates=candidates)
        seconds = time.perf_counter() - t
        bad = [r for r in rows if "error" in r]
        if bad:
            sys.exit(f"detection could not read {len(bad)} files, e.g. {bad[0]['file']}: {bad[0]['error']}")
        return rows, seconds


def decoded(rows: list[dict]) -> list:
    from ebru.provenance import Decoded

    names = [f.name for f in fields(Decoded)]
    return [Decoded(**{k: r[k] for k in names}) for r in rows]


def cell_stats(rows: list[dict], true_ids: list[int], seconds: float) -> dict:
    from ebru.provenance import payload_accuracy

    acc = np.asarray(payload_accuracy(decoded(rows), true_ids))
    chips = np.asarray([r["chip_accuracy"] for r in rows])
    scores = np.asarray([r["score"] for r in rows])
    hit = np.asarray([r["detected"] for r in rows])
    right = hit & np.asarray([r["watermark_id"] == t for r, t in zip(rows, true_ids, strict=True)])
    return {"n": len(rows), "bit_acc": float(acc.mean()), "bit_acc_p5": float(np.percentile(acc, 5)),
            "chip_acc": float(chips.mean()), "chip_acc_p5": float(np.percentile(chips, 5)),
            "score_mean": float(scores.mean()), "score_p5": float(np.percentile(scores, 5)),
            "hypotheses": rows[0]["hypotheses"],
            "tpr": float(hit.mean()), "id_correct": float(right.mean()),
            "median_log10_p": float(np.median([r["log10_p_value"] for r in rows])),
            "detect_seconds_per_image": seconds / len(rows)}


def both_ways(detect: Detector, paths: list[Path], true_ids: list[int]) -> dict:
    """One cell decoded over the store's ids (ebru's default; ``tpr``, ``id_correct``) and blind over all 2**32
    ids (``blind``: its TPR, and the payload bit accuracy, which only a blind decode measures)."""
    rows, seconds = detect(paths)
    blind_rows, blind_seconds = detect(paths, candidates=None)
    return {**cell_stats(rows, true_ids, seconds), "blind": cell_stats(blind_rows, true_ids, blind_seconds)}


def iid_null(scheme, n: int, chunk: int = 2000) -> list[dict]:
    """The decoder on i.i.d. N(0, 1) "noise estimates": the exact null the p-value assumes."""
    g = torch.Generator().manual_seed(0)
    return [d.to_dict() for i in range(0, n, chunk)
            for d in scheme.decode(torch.randn(min(chunk, n - i), *scheme.shape, generator=g), fpr=FPR)]


def null_stats(rows: list[dict], ref_matches: np.ndarray) -> dict:
    """False positives and the independence checks on images without this watermark.

    ``ref_matches``: the blind decoder's scores on :func:`iid_null`. Where the chip signs of clean images are
    independent fair coins (what the p-value assumes), the scores are distributed alike and about 1 % (0.1 %)
    of the images exceed the reference's 99th (99.9th) percentile; more means a heavier tail than the p-value's.
    """
    n, bits_n = len(rows), rows[0]["id_bits"]
    log_p = np.asarray([r["log10_p_value"] for r in rows])
    matches = np.asarray([r["score"] for r in rows])
    ids = np.asarray([r["watermark_id"] for r in rows], dtype=np.int64)
    bits = ((ids[:, None] >> np.arange(bits_n)) & 1).astype(np.float64)  # (n, id_bits) decoded payload bits
    means = bits.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(bits.T)
    off = np.abs(corr[~np.eye(bits_n, dtype=bool)])
    pairs = bits_n * (bits_n - 1) // 2
    return {"n": n, "detected": int(sum(r["detected"] for r in rows)), "min_log10_p": float(log_p.min()),
            "matches_mean": float(matches.mean()), "matches_sd": float(matches.std(ddof=1)),
            "matches_max": float(matches.max()), "chips": rows[0]["chips"],
            "rate_above_iid_p99": float((matches > np.percentile(ref_matches, 99)).mean()),
            "rate_above_iid_p999": float((matches > np.percentile(ref_matches, 99.9)).mean()),
            "bit_means": [float(m) for m in means], "bit_mean_max_dev": float(np.abs(means - 0.5).max()),
            "bit_corr_max_abs": float(np.nanmax(off)) if np.isfinite(off).any() else float("nan"),
            # what independent fair bits give (the typical largest of k half-normal deviations: sqrt(2 ln 2k) sd)
            "chance_bit_mean_dev": float(0.5 * np.sqrt(2 * np.log(2 * bits_n) / n)),
            "chance_bit_corr_max": float(np.sqrt(2 * np.log(2 * pairs) / n))}


def reassociate(paths: list[Path], detect: Detector, folder: Path) -> dict:
    """Strip, resize x0.5 (not back) and save as JPEG 75; decode over the store's ids; look the id up."""
    from ebru.provenance import known_ids
    from ebru.provenance.attacks import resize
    from ebru.provenance.images import image_array
    from ebru.provenance.record import find_by_id

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    copies = []
    for p in paths:
        a = resize(image_array(p, detect.channels), 0.5, back=False)  # pixels only: the metadata is gone
        copies.append(folder / (p.stem + ".jpg"))
        Image.fromarray(a).save(copies[-1], format="JPEG", quality=75)
    ids = known_ids()
    rows, seconds = detect(copies, candidates=ids)
    found = 0
    for p, r in zip(paths, rows, strict=True):
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        found += bool(r["detected"]) and any(rec.sha256 == sha for rec in find_by_id(r["watermark_id"]))
    return {"n": len(paths), "found": found, "rate": found / len(paths), "candidates": len(ids),
            "detected": int(sum(r["detected"] for r in rows)), "size": list(Image.open(copies[0]).size),
            "detect_seconds_per_image": seconds / len(paths)}


def print_table(cells: dict, nulls: dict, summary: dict) -> None:
    print(f"\n{'cell':<22}{'n':>6}{'score':>7}{'p5':>6}{'chip acc':>9}{'TPR store':>10}{'id right':>9}"
          f"{'TPR blind':>10}{'bit acc':>8}{'p5':>7}{'s/img':>7}")
    for name, c in cells.items():
        b = c["blind"]
        print(f"{name:<22}{c['n']:>6}{c['score_mean']:>7.1f}{c['score_p5']:>6.1f}{c['chip_acc']:>9.4f}{c['tpr']:>10.3f}"
              f"{c['id_correct']:>9.3f}{b['tpr']:>10.3f}{b['bit_acc']:>8.4f}{b['bit_acc_p5']:>7.3f}"
              f"{c['detect_seconds_per_image']:>7.3f}")
    print(f"  TPR at FPR 1e-6: 'store' decodes over the {summary['store_ids']} ids of the store (ebru's default), "
          "'blind' over all 2**32; bit acc: the blind decode's payload bits right; score: see Decoded")
    print(f"\n{'clean set':<22}{'n':>6}{'detected':>9}{'min log10 p':>12}{'score':>15}{'>iid p99':>9}"
          f"{'>p99.9':>8}{'|bit mean-.5|':>16}{'max |corr|':>15}")
    for name, s in nulls.items():
        print(f"{name:<22}{s['n']:>6}{s['detected']:>9}{s['min_log10_p']:>12.2f}"
              f"{s['matches_mean']:>8.1f} ±{s['matches_sd']:5.1f}{s['rate_above_iid_p99']:>9.4f}"
              f"{s['rate_above_iid_p999']:>8.4f}{s['bit_mean_max_dev']:>9.4f} ({s['chance_bit_mean_dev']:.3f})"
              f"{s['bit_corr_max_abs']:>8.3f} ({s['chance_bit_corr_max']:.3f})")
    print("  detected / score: blind decode (mean ± sd); >iid p99: share above the 99th percentile of the "
          "same decoder on i.i.d. noise (independent chips: 0.01); in brackets: what independent fair bits give")
    print(f"\nFID watermarked {summary['fid_watermarked']:.3f}, unwatermarked {summary['fid_unwatermarked']:.3f}, "
          f"difference {summary['fid_difference']:.3f}; seed spread {summary['fid_seed_spread']:.3f} "
          f"(std over {summary['fid_seed_sets']} seed sets {summary['fid_seed_std']:.3f}, watermarked at "
          f"z = {summary['fid_watermarked_z']:+.2f})")
    print(f"C2PA Trusted: {summary['c2pa_trusted_fraction']:.2%}   re-association (strip, x0.5, JPEG 75): "
          f"{summary['reassociation_rate']:.2%}   detection {summary['detect_seconds_per_image']:.3f} s/image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an image package (default: train the fashion_mnist_cpu recipe)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="train the default model this many steps")
    ap.add_argument("--n", type=int, default=1000, help="watermarked outputs (and unwatermarked, for FID)")
    ap.add_argument("--n-attack", type=int, default=None, help="images per attack cell (default --n)")
    ap.add_argument("--clean", type=int, default=10000, help="Fashion-MNIST test images and unwatermarked "
                    "generations for the false positives")
    ap.add_argument("--steps", type=int, default=None, help="generation steps (default: the model's)")
    ap.add_argument("--detect-steps", type=int, default=20, help="DDIM inversion steps of the detector")
    ap.add_argument("--mismatch", default=MISMATCH, help="SAMPLER:STEPS,... drawn for the sampler-mismatch cells")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", default="/tmp/ebru-watermark-robustness")
    args = ap.parse_args()

    from ebru.checks import one_of, positive_int
    from ebru.diffusion import SAMPLERS

    n = positive_int("--n", args.n)
    n_attack = min(n, positive_int("--n-attack", args.n_attack if args.n_attack is not None else n))
    clean = positive_int("--clean", args.clean)
    try:
        mismatch = [(one_of("--mismatch sampler", s, SAMPLERS), positive_int("--mismatch steps", int(k)))
                    for s, _, k in (m.partition(":") for m in args.mismatch.split(",") if m)]
    except ValueError as e:
        sys.exit(f"--mismatch takes SAMPLER:STEPS,...: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = private_state(out)
    t_start = time.time()

    from ebru.data import load_dataset
    from ebru.eval import evaluate_images, load_feature_net, reference_set
    from ebru.pipelines import TextToImagePipeline
    from ebru.pipelines.image import ImagePipeline, load_image_model
    from ebru.pipelines.outputs import write_images
    from ebru.provenance import verify_file

    if args.model:
        model_dir = Path(args.model)
    else:
        from few_step import train_teacher

        model_dir = train_teacher(out / "teacher", args.teacher_steps, None)
    model = load_image_model(model_dir)
    kind = TextToImagePipeline if model.config.get("text_encoder") else ImagePipeline
    wm = kind.from_pretrained(model, watermark=True)
    plain = kind.from_pretrained(model, watermark=False)
    setting = wm.sampling(None, args.steps)
    sampler, steps = setting["sampler"], setting["steps"]
    params = {"sampler": sampler, "steps": steps, "schedule": str(setting["schedule"])}
    seeds = list(range(n))
    true_ids = wm.watermark_ids(seeds)
    detect = Detector(model, args.detect_steps, wm.image_shape[0])

    # 1. the outputs, written as a user gets them
    x_wm = generate(wm, seeds, args.batch, "watermarked", num_inference_steps=steps)
    x_plain = generate(plain, list(range(max(clean, 2 * n))), args.batch, "unwatermarked", num_inference_steps=steps)
    t = time.perf_counter()
    wm_files = write_images(x_wm, out / "outputs" / "watermarked", wm, seeds=seeds, parameters=params)
    plain_files = write_images(x_plain[:n], out / "outputs" / "plain", plain, seeds=seeds, parameters=params)
    write_seconds = (time.perf_counter() - t) / (2 * n)

    # 2. C2PA
    verdicts = [verify_file(p) for p in wm_files + plain_files]
    trusted = sum(v.trusted for v in verdicts)
    states = {s: sum(v.state == s for v in verdicts) for s in {v.state for v in verdicts}}
    print(f"C2PA: {trusted}/{len(verdicts)} Trusted {states}", flush=True)

    # 3. the attack grid and the sampler-mismatch cells
    from ebru.provenance.attacks import ATTACKS
    from ebru.provenance.images import image_array

    written = [image_array(p, detect.channels) for p in wm_files[:n_attack]]
    cells: dict[str, dict] = {}
    for name, attack in ATTACKS.items():
        paths = write_pngs([attack(a, seed=i) for i, a in enumerate(written)], out / "attacked" / name)
        cells[name] = both_ways(detect, paths, true_ids[:n_attack])
        print(f"  {name:<20} bit acc {cells[name]['bit_acc']:.4f}  TPR {cells[name]['tpr']:.3f}", flush=True)
    for s, k in mismatch:
        name = f"sampler_{s}{k}"
        x = generate(wm, seeds[:n_attack], args.batch, f"watermarked, {s} {k} steps", sampler=s,
                     num_inference_steps=k)
        paths = write_pngs(uint8_arrays(x), out / "attacked" / name)
        cells[name] = {**both_ways(detect, paths, true_ids[:n_attack]), "sampler": s, "steps": k}
        print(f"  {name:<20} bit acc {cells[name]['bit_acc']:.4f}  TPR {cells[name]['tpr']:.3f}", flush=True)

    # 4. false positives and independence on images without the watermark
    test = load_dataset("fashion-mnist:test").tensors()[0][:clean]
    ref_rows = iid_null(wm.watermark, max(clean, 20000))
    ref_matches = np.asarray([r["score"] for r in ref_rows])
    nulls = {"iid_noise": null_stats(ref_rows, ref_matches)}
    for name, images in (("fashion_mnist", test), ("unwatermarked", x_plain[:clean])):
        paths = write_pngs(uint8_arrays(images), out / "clean" / name)
        rows, _ = detect(paths, candidates=None)  # blind: the decoded bits' fairness and the scores' tail
        nulls[name] = null_stats(rows, ref_matches)
        store_rows, _ = detect(paths)  # ebru's default decoder, over the store's ids: its false positives
        nulls[name].update(detected_store=int(sum(r["detected"] for r in store_rows)),
                           min_log10_p_store=float(min(r["log10_p_value"] for r in store_rows)))
        print(f"  clean {name}: {nulls[name]['detected']} detected of {len(rows)}", flush=True)

    # 5. losslessness: FID with and without the watermark, and the seed-to-seed spread
    net = load_feature_net()
    ref = reference_set(net, progress=True)

    def fid(images: torch.Tensor) -> float:
        if tuple(images.shape[1:]) != (1, 28, 28):  # e.g. the quickstart's 3x32x32: compared in grey at 28x28
            images = torch.nn.functional.interpolate(images.mean(1, keepdim=True), size=(28, 28), mode="bilinear",
                                                     antialias=True, align_corners=False)
        return float(evaluate_images(images, metrics="fid", feature_net=net, reference=ref, floor=False)
                     ["metrics"]["fid"])

    fid_wm, fid_sets = fid(x_wm), [fid(x_plain[i:i + n]) for i in range(0, len(x_plain) - n + 1, n)]

    # 6. re-association from stripped, re-compressed copies
    reassoc = reassociate(wm_files, detect, out / "reassociation")

    summary = {"n": n, "n_attack": n_attack, "clean": clean, "sampler": sampler, "steps": steps,
               "detect_steps": args.detect_steps, "bit_acc_clean": cells["none"]["blind"]["bit_acc"],
               "store_ids": cells["none"]["hypotheses"]}
    for name, c in cells.items():
        b = c["blind"]
        summary.update({f"tpr_{name}": c["tpr"], f"tpr_blind_{name}": b["tpr"], f"id_correct_{name}": c["id_correct"],
                        f"bit_acc_{name}": b["bit_acc"], f"bit_acc_p5_{name}": b["bit_acc_p5"],
                        f"chip_acc_{name}": c["chip_acc"], f"score_{name}": c["score_mean"]})
    for name, s in ((k, v) for k, v in nulls.items() if k != "iid_noise"):
        summary.update({f"fp_{name}": s["detected_store"], f"fp_blind_{name}": s["detected"],
                        f"fp_{name}_min_log10_p": min(s["min_log10_p"], s["min_log10_p_store"]),
                        f"fp_{name}_above_iid_p999": s["rate_above_iid_p999"],
                        f"bit_mean_max_dev_{name}": s["bit_mean_max_dev"],
                        f"bit_corr_max_abs_{name}": s["bit_corr_max_abs"]})
    summary.update({"fid_watermarked": fid_wm, "fid_unwatermarked": fid_sets[0],
                    "fid_difference": abs(fid_wm - fid_sets[0]),
                    "fid_seed_spread": abs(fid_sets[0] - fid_sets[1]), "fid_seed_sets": len(fid_sets),
                    "fid_seed_std": float(np.std(fid_sets, ddof=1)),
                    # the watermarked FID against the unwatermarked seed sets' spread (|z| <= 2: within it)
                    "fid_watermarked_z": float((fid_wm - np.mean(fid_sets)) / np.std(fid_sets, ddof=1)),
                    "c2pa_trusted_fraction": trusted / len(verdicts), "reassociation_rate": reassoc["rate"],
                    "detect_seconds_per_image": cells["none"]["detect_seconds_per_image"],
                    "write_seconds_per_image": write_seconds, "minutes": (time.time() - t_start) / 60})
    print_table(cells, nulls, summary)
    path = write_result(NAME, summary, cells=cells, clean_sets=nulls, fid_seed_sets=fid_sets, reassociation=reassoc,
                        c2pa_states=states, c2pa_reasons=sorted({r for v in verdicts if not v.trusted
                                                                 for r in v.reasons}),
                        model=str(model_dir), model_digest=wm.model_digest, key_id=wm.watermark.key_id, fpr=FPR,
                        private_state=env, attacks=list(ATTACKS), mismatch=args.mismatch, seeds=[0, n - 1],
                        feature_net_sha256=ref.net_sha256, reference={"dataset": ref.dataset, "n": ref.n})
    print(f"results: {path}   ({summary['minutes']:.1f} min)")


if __name__ == "__main__":
    main()
