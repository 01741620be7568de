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

Writes ``benchmarks/results/latent_vs_pixel.json`` (summary keys per size: ``psnr_ae``, ``rfid_ae``,
``fid_pixel``, ``fid_latent``, ``train_speedup`` (latent images/s over pixel images/s), ``sample_speedup``,
suffixed ``_32``) and ``latent_vs_pixel_32.png``. The 64x64 scenes comparison of the issue is not built yet.
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
from common import RESULTS, write_result

NAME = "latent_vs_pixel"


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


def train_lanes(out: Path, minutes: float, ae_minutes: float) -> tuple[dict, Path, Path, Path]:
    """Both lanes side by side; returns (lane records, pixel package, autoencoder package, latent package)."""
    out.mkdir(parents=True, exist_ok=True)
    pixel, latent = Lane(out, "pixel"), Lane(out, "latent")
    result: dict[str, Path] = {}

    def run_pixel() -> None:
        try:
            result["pixel"] = pixel.train("pixel", "fashion_mnist_cpu", [f"time_budget={minutes}"])
        except Exception as e:  # reported after both lanes end
            pixel.error = str(e)

    def run_latent() -> None:
        try:
            t0 = time.perf_counter()
            result["ae"] = latent.train("ae", "autoencoder_fashion_mnist", [f"time_budget={ae_minutes}"])
            # what is left of the lane's minutes; start-up and encoding of the next run come out of it too
            left = minutes - (time.perf_counter() - t0) / 60
            result["latent"] = latent.train("latent", "latent_fashion_mnist",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="each lane's training wall clock")
    ap.add_argument("--ae-minutes", type=float, default=8.0, help="the autoencoder's share of the latent lane")
    ap.add_argument("--n", type=int, default=2000, help="samples per model for FID / KID")
    ap.add_argument("--ae-n", type=int, default=10000, help="test images the autoencoder is scored on")
    ap.add_argument("--batch", type=int, default=100, help="images per timed sampling call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/ebru-latent-vs-pixel")
    ap.add_argument("--pixel", default=None)
    ap.add_argument("--latent", default=None)
    ap.add_argument("--autoencoder", default=None)
    args = ap.parse_args()

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
    s = pipes["pixel"].sampling()
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
    path = write_result(NAME, summary, settings={**vars(args), "sampler": sampler, "steps": steps},
                        training=train, lanes=lanes, sampling_images_per_s=speed, fid=fid,
                        autoencoder=ae_report, plot=str(plot),
                        scenes_64="not measured: the 64x64 scenes comparison is not built yet")
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
