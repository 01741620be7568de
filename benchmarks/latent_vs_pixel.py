"""Latent diffusion against pixel diffusion on the same data, the same training wall clock and the same seeds.

At 32x32 (Fashion-MNIST padded from 28): the pixel lane trains ``fashion_mnist_cpu`` for ``--minutes``; the
latent lane trains the autoencoder (``autoencoder_fashion_mnist``, its own budget, ``--ae-minutes``) and then
``latent_fashion_mnist`` on it for what is left of the same minutes after the autoencoder's training, its
latents' encoding and start-up (so the autoencoder's time counts in the latent budget). The two lanes run side
by side, one process and one thread each (as ``flow_vs_edm.py`` does): the same machine load for both.

Then, alone: the autoencoder's PSNR / SSIM / rFID on the 10,000 test images (``ebru eval AE_DIR``); training
images/s and peak resident memory of each lane's training process; sampling images/s of each model at the same
sampler and steps, timed alternately (``--rounds`` rounds of ``--batch`` images); FID / KID of ``--n`` samples
(seeds 0..n-1) against the test set with ebru's feature network; and one grid of samples of each, side by side.

    python benchmarks/latent_vs_pixel.py [--minutes 20] [--ae-minutes 8] [--n 2000] [--out DIR]
        [--pixel DIR --latent DIR --autoencoder DIR]   # score trained packages instead of training

At 64x64 (the Fashion scenes, ``fashion-scenes:full64``: 30,000 RGB scenes, captioned; text-to-image): the same
lanes with ``text2image_fashion_scenes64`` (pixel) against ``autoencoder_fashion_scenes`` then
``latent_text2image_fashion_scenes`` on it. Before the lanes start, the scenes' 87,000 distinct captions are
encoded once by the text encoder both recipes share (``ebru.tasks.text2image``'s on-disk cache; 6.5 minutes on
2 cores the first time, counted in neither lane), so neither lane pays for it. Then, alone: ebru's scene feature
network (:mod:`ebru.eval.scene_features`, a small CNN trained on the scenes' specifications; trained once into
``--out`` and cached there) gives the FID features at 64x64. Held-out scenes are those of seed 1 drawn from
Fashion-MNIST's test items (``FashionScenes("full64", seed=1, split="test")``): the autoencoder's PSNR / SSIM /
rFID on the first ``--ae-n``; FID / KID of ``--n`` samples (seeds 0..n-1) drawn from the first n held-out
scenes' captions against the first ``max(n, ae-n)`` held-out pictures (beside it the floor: n real training
scenes against the same reference); prompt agreement (``evaluate_text_to_image``, ``--prompts`` prompts per
task); training and sampling images/s (same sampler, steps and guidance for both, prompts from the held-out
captions, timed alternately); and one grid: held-out scenes over both models' samples of their captions.

    python benchmarks/latent_vs_pixel.py [--size 32|64|both] [--minutes 20] [--ae-minutes 8] [--n 2000]
        [--prompts 50] [--steps N] [--feature-steps 900] [--out DIR]
        [--size 32|64 --pixel DIR --latent DIR --autoencoder DIR]   # score trained packages of one size
        [--size 64 --train-only]                                      # train the 64x64 lanes, score nothing

    # the smoke flag set (64 only, minutes; EBRU_RESULTS_DIR keeps it out of benchmarks/results/), one line:
    EBRU_RESULTS_DIR=/tmp/lvp-smoke python benchmarks/latent_vs_pixel.py --size 64 --minutes 1 --ae-minutes 0.4
        --n 300 --ae-n 300 --prompts 4 --batch 8 --rounds 1 --steps 4 --feature-steps 30 --out /tmp/lvp-smoke

Writes ``benchmarks/results/latent_vs_pixel.json`` (summary keys per size: ``psnr_ae``, ``rfid_ae``,
``fid_pixel``, ``fid_latent``, ``train_speedup`` (latent images/s over pixel images/s), ``sample_speedup``,
suffixed ``_32`` or ``_64``; at 64 also ``prompt_agreement_pixel_64`` / ``_latent_64``: GenEval's overall
score, the mean of the seen- and held-out-phrasing scores) and ``latent_vs_pixel_32.png`` /
``latent_vs_pixel_64.png``. One size's run merges into the file: the other size's figures, targets and sections
stay (the 64 path's sections live under ``scenes_64``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine

NAME = "latent_vs_pixel"
RECIPES_32 = {"pixel": "fashion_mnist_cpu", "ae": "autoencoder_fashion_mnist", "latent": "latent_fashion_mnist"}
RECIPES_64 = {"pixel": "text2image_fashion_scenes64", "ae": "autoencoder_fashion_scenes",
              "latent": "latent_text2image_fashion_scenes"}
SCENES_64 = "full64"  # the Fashion scenes preset of the 64x64 recipes
HELD_OUT_SEED = 1  # held-out scenes: seed 1, items from Fashion-MNIST's test split (training scenes: seed 0, train)


class Lane:
    """One training lane: ebru train commands run one after another in a single-threaded process each, with the
    peak resident memory (VmHWM) of each process polled from /proc."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name
        self.peak_mib: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.error: str | None = None

    def train(self, key: str, recipe: str, sets: list[str]) -> Path:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "ebru", "train", recipe, "--out", str(self.out / key)]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        with (self.out / f"{key}.log").open("w", encoding="utf-8") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            peak = 0.0
            while p.poll() is None:
                try:
                    for line in Path(f"/proc/{p.pid}/status").read_text(encoding="utf-8").splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) / 1024)
                except OSError:
                    pass
                time.sleep(0.5)
        self.seconds[key] = time.perf_counter() - t0
        self.peak_mib[key] = round(peak, 1)
        if p.returncode != 0:
            raise RuntimeError(f"{recipe} failed: see {self.out / (key + '.log')}")
        return self.out / key / "model"


def train_lanes(out: Path, minutes: float, ae_minutes: float,
                recipes: dict[str, str] = RECIPES_32) -> tuple[dict, Path, Path, Path]:
    """Both lanes side by side; returns (lane records, pixel package, autoencoder package, latent package).

    ``recipes``: the ``pixel``, ``ae`` and ``latent`` recipes (the 32x32 ones by default)."""
    out.mkdir(parents=True, exist_ok=True)
    pixel, latent = Lane(out, "pixel"), Lane(out, "latent")
    result: dict[str, Path] = {}

    def run_pixel() -> None:
        try:
            result["pixel"] = pixel.train("pixel", recipes["pixel"], [f"time_budget={minutes}"])
        except Exception as e:  # reported after both lanes end
            pixel.error = str(e)

    def run_latent() -> None:
        try:
            t0 = time.perf_counter()
            result["ae"] = latent.train("ae", recipes["ae"], [f"time_budget={ae_minutes}"])
            # what is left of the lane's minutes; start-up and encoding of the next run come out of it too
            left = minutes - (time.perf_counter() - t0) / 60
            result["latent"] = latent.train("latent", recipes["latent"],
                                            [f"autoencoder={result['ae']}", f"time_budget={max(left, 0.5):.3f}"])
            latent.seconds["latent_overhead"] = latent.seconds["latent"] - training_minutes(result["latent"]) * 60
        except Exception as e:
            latent.error = str(e)

    threads = [threading.Thread(target=run_pixel), threading.Thread(target=run_latent)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for lane in (pixel, latent):
        if lane.error:
            sys.exit(f"{lane.name} lane: {lane.error}")
    print(f"both lanes trained in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    lanes = {"pixel": {"wall_seconds": pixel.seconds, "peak_rss_mib": pixel.peak_mib},
             "latent": {"wall_seconds": latent.seconds, "peak_rss_mib": latent.peak_mib}}
    return lanes, result["pixel"], result["ae"], result["latent"]


def training_minutes(model: Path) -> float:
    return json.loads((Path(model) / "config.json").read_text())["training"]["minutes"]


def training_record(model: Path) -> dict:
    t = json.loads((Path(model) / "config.json").read_text())["training"]
    return {"steps": t["steps"], "images_seen": t["images_seen"], "minutes": t["minutes"],
            "images_per_s": t["images_seen"] / max(t["minutes"] * 60, 1e-9)}


def sampling_speed(pipes: dict, batch: int, rounds: int, steps: int, sampler: str) -> dict[str, float]:
    """Images/s of each pipeline at the same sampler and steps, timed alternately (round-robin, median)."""
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for pipe in pipes.values():  # warm-up
        pipe(2, num_inference_steps=2, sampler=sampler, seeds=0)
    for r in range(rounds):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe(batch, num_inference_steps=steps, sampler=sampler, seeds=r * batch)
            times[name].append(time.perf_counter() - t0)
    return {k: batch / sorted(v)[len(v) // 2] for k, v in times.items()}


def run_32(args: argparse.Namespace) -> tuple[dict, dict]:
    """The 32x32 comparison (Fashion-MNIST); returns (summary figures, the result file's sections)."""
    from ebru.data.grid import save_grid
    from ebru.pipelines import ImagePipeline
    from ebru.pipelines.autoencoder import evaluate_autoencoder
    from ebru.pipelines.evaluate import evaluate_model

    out = Path(args.out)
    if args.pixel and args.latent and args.autoencoder:
        lanes, pixel, ae, latent = {}, Path(args.pixel), Path(args.autoencoder), Path(args.latent)
    else:
        lanes, pixel, ae, latent = train_lanes(out, args.minutes, args.ae_minutes)

    print("scoring the autoencoder", flush=True)
    ae_report = evaluate_autoencoder(ae, n=args.ae_n, quiet=True)
    pipes = {"pixel": ImagePipeline.from_pretrained(pixel, watermark=False),
             "latent": ImagePipeline.from_pretrained(latent, watermark=False)}
    s = pipes["pixel"].sampling(None, args.steps)
    sampler, steps = s["sampler"], s["steps"]
    print(f"timing sampling ({sampler}, {steps} steps)", flush=True)
    speed = sampling_speed(pipes, args.batch, args.rounds, steps, sampler)
    fid = {}
    for name, pipe in pipes.items():
        print(f"FID of {name} ({args.n} samples)", flush=True)
        fid[name] = evaluate_model(pipe, metrics=("fid", "kid"), n=args.n, sampler=sampler, steps=steps)["metrics"]
    grid = torch.cat([pipes[k](16, num_inference_steps=steps, sampler=sampler, seeds=0) for k in ("pixel", "latent")])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot = save_grid(grid, RESULTS / f"{NAME}_32.png", nrow=16, row_labels=["pixel", "latent"],
                     title="seeds 0-15, same sampler and steps")

    train = {"pixel": training_record(pixel), "latent": training_record(latent), "autoencoder": training_record(ae)}
    summary = {
        "psnr_ae_32": ae_report["psnr"], "ssim_ae_32": ae_report["ssim"],
        "rfid_ae_32": ae_report["rfid"],
        "fid_pixel_32": fid["pixel"]["fid"], "fid_latent_32": fid["latent"]["fid"],
        "kid_pixel_32": fid["pixel"]["kid"], "kid_latent_32": fid["latent"]["kid"],
        "train_speedup_32": train["latent"]["images_per_s"] / train["pixel"]["images_per_s"],
        "sample_speedup_32": speed["latent"] / speed["pixel"],
        "ae_minutes_32": train["autoencoder"]["minutes"],
        "targets": {"psnr_ae_32 >= 27": ae_report["psnr"] >= 27,
                    "rfid_ae_32 <= 1.0": ae_report["rfid"] <= 1.0,
                    "autoencoder <= 8 minutes": train["autoencoder"]["minutes"] <= 8.0 + 1e-9},
    }
    sections = {"settings": {**vars(args), "sampler": sampler, "steps": steps}, "training": train, "lanes": lanes,
                "sampling_images_per_s": speed, "fid": fid, "autoencoder": ae_report, "plot": str(plot)}
    return summary, sections


# ------------------------------------------------------------------------------------------- 64x64 scenes
def warm_caption_cache(recipe: str) -> float:
    """Encode the captions of ``recipe``'s data into the text encoder's on-disk cache, as its training run will ask
    (the same encoder, caption set and state dtype as ``TextToImageTask``), so neither lane pays for it; seconds."""
    from ebru.data import load_captioned
    from ebru.encoders import encode_captions
    from ebru.tasks.text2image import encoding_cache_dir, training_encoder
    from ebru.train import load_config

    t0 = time.perf_counter()
    cfg = load_config(recipe)
    data = load_captioned(cfg.data, image_size=cfg.image_size)
    captions, _, _ = data.caption_table()
    print(f"encoding (or finding cached) the {len(captions)} distinct captions of {cfg.data}", flush=True)
    encode_captions(training_encoder(cfg.encoder), ["", *captions], cache_dir=encoding_cache_dir(), progress=True,
                    states_dtype="float16")
    return time.perf_counter() - t0


def text_sampling_speed(pipes: dict, prompts: list[str], rounds: int, steps: int, sampler: str,
                        guidance: float) -> dict[str, float]:
    """Images/s of each text-to-image pipeline on ``prompts`` (one image each) at the same sampler, steps and
    guidance, timed alternately (round-robin, median of ``rounds``)."""
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for pipe in pipes.values():  # warm-up
        pipe(prompts[:2], num_inference_steps=2, guidance_scale=guidance, sampler=sampler, seeds=0)
    for r in range(rounds):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, sampler=sampler, seeds=r * len(prompts))
            times[name].append(time.perf_counter() - t0)
    return {k: len(prompts) / sorted(v)[len(v) // 2] for k, v in times.items()}


def sample_prompts(pipe, prompts: list[str], steps: int, sampler: str, guidance: float, batch: int = 250,
                   desc: str = "sampling") -> torch.Tensor:
    """One image per prompt (N, 3, 64, 64) in [-1, 1], prompt i with seed i, in chunks of ``batch``."""
    from tqdm.auto import tqdm

    chunks = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, leave=False):
        part = prompts[i:i + batch]
        chunks.append(pipe(part, num_inference_steps=steps, guidance_scale=guidance, sampler=sampler,
                           seeds=list(range(i, i + len(part)))))
    return torch.cat(chunks)


def agreement_score(report: dict) -> float:
    """GenEval's overall score of an ``evaluate_text_to_image`` report: the mean of its seen- and held-out-phrasing
    overall scores (each the mean of the task accuracies)."""
    overall = report["prompt_agreement"]["overall"]
    parts = [overall[k] for k in ("seen", "held_out") if overall.get(k) is not None]
    return sum(parts) / len(parts) if parts else float("nan")


def run_64(args: argparse.Namespace) -> tuple[dict, dict]:
    """The 64x64 comparison (Fashion scenes, text-to-image); returns (summary figures, the ``scenes_64`` section)."""
    from ebru.data import FashionScenes
    from ebru.data.grid import save_grid
    from ebru.eval import ReferenceSet, evaluate_images, extract_features, network_fingerprint
    from ebru.eval.frechet import FeatureStats, frechet_distance
    from ebru.eval.scene_features import scene_feature_net
    from ebru.pipelines import TextToImagePipeline
    from ebru.pipelines.autoencoder import evaluate_autoencoder
    from ebru.pipelines.evaluate import evaluate_text_to_image

    out = Path(args.out)
    warm = None
    if args.pixel and args.latent and args.autoencoder:
        lanes, pixel, ae, latent = {}, Path(args.pixel), Path(args.autoencoder), Path(args.latent)
    else:
        warm = warm_caption_cache(RECIPES_64["pixel"])
        lanes, pixel, ae, latent = train_lanes(out / "scenes64", args.minutes, args.ae_minutes, RECIPES_64)
        if args.train_only:
            print(f"trained; score with --size 64 --pixel {pixel} --latent {latent} --autoencoder {ae}")
            return {}, {}

    net = scene_feature_net(out / "scene_features.safetensors", steps=args.feature_steps, progress=True)
    n_ref = max(args.n, args.ae_n)
    held = FashionScenes(SCENES_64, n=n_ref, seed=HELD_OUT_SEED, split="test")
    print(f"scoring the autoencoder on {args.ae_n} held-out scenes", flush=True)
    ae_report = evaluate_autoencoder(ae, data=held, n=args.ae_n, feature_net=net, quiet=True)
    pipes = {"pixel": TextToImagePipeline.from_pretrained(pixel, watermark=False),
             "latent": TextToImagePipeline.from_pretrained(latent, watermark=False)}
    s = pipes["pixel"].sampling(None, args.steps)
    sampler, steps, guidance = s["sampler"], s["steps"], s.get("guidance", 1.0)
    prompts = [caps[0] for caps in held.captions]  # one training-phrased caption of each held-out scene
    print(f"timing sampling ({sampler}, {steps} steps, guidance {guidance:g})", flush=True)
    speed = text_sampling_speed(pipes, prompts[:args.batch], args.rounds, steps, sampler, guidance)

    ref = ReferenceSet(extract_features(net, held.images_uint8, progress=True, desc="features of held-out scenes"),
                       f"fashion-scenes:{SCENES_64} held out (seed {HELD_OUT_SEED}, test items, {n_ref} scenes)",
                       held.content_hash, network_fingerprint(net))
    train_scenes = FashionScenes(SCENES_64, split="train")  # the recipes' data (seed 0, the preset's 30,000)
    pick = torch.randperm(len(train_scenes), generator=torch.Generator().manual_seed(0))[:args.n]
    floor = frechet_distance(FeatureStats.from_features(extract_features(net, train_scenes.images_uint8[pick])),
                             ref.stats())
    fid, agreement, grid_rows = {}, {}, {}
    for name, pipe in pipes.items():
        print(f"FID of {name} ({args.n} samples of held-out captions)", flush=True)
        images = sample_prompts(pipe, prompts[:args.n], steps, sampler, guidance, desc=f"sampling {name}")
        fid[name] = evaluate_images(images, metrics=("fid", "kid"), feature_net=net, reference=ref)["metrics"]
        grid_rows[name] = images[:8]
        print(f"prompt agreement of {name} ({args.prompts} prompts per task)", flush=True)
        agreement[name] = evaluate_text_to_image(pipe, n=args.prompts, sampler=sampler, steps=steps,
                                                 guidance=guidance)
    real = held.images_uint8[:8].float() / 127.5 - 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot = save_grid(torch.cat([real, grid_rows["pixel"], grid_rows["latent"]]), RESULTS / f"{NAME}_64.png", nrow=8,
                     row_labels=["held-out scenes", "pixel", "latent"],
                     title=f"the held-out scenes' captions, seeds 0-7, {sampler} x {steps}, guidance {guidance:g}")

    train = {"pixel": training_record(pixel), "latent": training_record(latent), "autoencoder": training_record(ae)}
    pa = {k: agreement_score(v) for k, v in agreement.items()}
    summary = {
        "psnr_ae_64": ae_report["psnr"], "ssim_ae_64": ae_report["ssim"], "rfid_ae_64": ae_report["rfid"],
        "fid_pixel_64": fid["pixel"]["fid"], "fid_latent_64": fid["latent"]["fid"],
        "kid_pixel_64": fid["pixel"]["kid"], "kid_latent_64": fid["latent"]["kid"], "fid_real_floor_64": floor,
        "train_speedup_64": train["latent"]["images_per_s"] / train["pixel"]["images_per_s"],
        "sample_speedup_64": speed["latent"] / speed["pixel"],
        "prompt_agreement_pixel_64": pa["pixel"], "prompt_agreement_latent_64": pa["latent"],
        "ae_minutes_64": train["autoencoder"]["minutes"],
        "targets": {"train_speedup_64 >= 3": train["latent"]["images_per_s"] >= 3 * train["pixel"]["images_per_s"],
                    "sample_speedup_64 >= 2": speed["latent"] >= 2 * speed["pixel"],
                    "fid_latent_64 < fid_pixel_64": fid["latent"]["fid"] < fid["pixel"]["fid"]},
    }
    section = {"settings": {**vars(args), "sampler": sampler, "steps": steps, "guidance": guidance,
                            "recipes": RECIPES_64, "held_out": ref.dataset, "caption_cache_seconds": warm},
               "machine": machine(), "training": train, "lanes": lanes, "sampling_images_per_s": speed, "fid": fid,
               "fid_real_floor": f"{args.n} random training scenes (seed 0) against the same reference",
               "prompt_agreement": agreement, "autoencoder": ae_report,
               "feature_net": {"path": str(out / "scene_features.safetensors"), "sha256": net.sha256,
                               "held_out_accuracy": net.info.get("held_out_accuracy"),
                               "training": net.info.get("training"), "seconds": net.info.get("seconds")},
               "plot": str(plot)}
    return summary, section


def merge_result(summary: dict, sections: dict) -> Path:
    """Write ``latent_vs_pixel.json`` with ``summary`` and ``sections`` merged into what is there: the other size's
    figures, targets and sections are kept (a 64-only run does not erase the 32 results, nor the reverse)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{NAME}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    old = record.get("summary", {})
    targets = {**old.get("targets", {}), **summary.get("targets", {})}
    record["summary"] = {**old, **summary, "targets": targets}
    record["machine"] = machine()
    record.update(sections)
    if "scenes_64" not in record:
        record["scenes_64"] = "not measured yet: run with --size 64"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("32", "64", "both"), default="both", help="which comparison(s) to run")
    ap.add_argument("--minutes", type=float, default=20.0, help="each lane's training wall clock")
    ap.add_argument("--ae-minutes", type=float, default=8.0, help="the autoencoder's share of the latent lane")
    ap.add_argument("--n", type=int, default=2000, help="samples per model for FID / KID")
    ap.add_argument("--ae-n", type=int, default=10000, help="held-out images the autoencoder is scored on")
    ap.add_argument("--batch", type=int, default=100, help="images per timed sampling call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pixel model's own)")
    ap.add_argument("--prompts", type=int, default=50, help="64: prompt-agreement prompts per task and model")
    ap.add_argument("--feature-steps", type=int, default=900, help="64: training steps of the scene feature network")
    ap.add_argument("--train-only", action="store_true", help="64: train the lanes, print the packages, score nothing")
    ap.add_argument("--out", default="/tmp/ebru-latent-vs-pixel")
    ap.add_argument("--pixel", default=None)
    ap.add_argument("--latent", default=None)
    ap.add_argument("--autoencoder", default=None)
    args = ap.parse_args()
    if args.size == "both" and (args.pixel or args.latent or args.autoencoder):
        ap.error("--pixel/--latent/--autoencoder are packages of one size: give --size 32 or --size 64")
    if args.train_only and args.size != "64":
        ap.error("--train-only is for --size 64")

    summary, sections = {}, {}
    for size, run in (("32", run_32), ("64", run_64)):
        if args.size in (size, "both"):
            s, sec = run(args)
            if not s:  # --train-only
                return
            targets = {**summary.get("targets", {}), **s.pop("targets")}
            summary.update(s, targets=targets)
            sections.update(sec if size == "32" else {"scenes_64": sec})
    path = merge_result(summary, sections)
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
