"""Quality at a fixed training budget: ebru's best CPU recipe against diffusers' training-tutorial recipe.

Both models have the same parameter count (1.62M: ebru's U-Net at 32 channels, 2 blocks per level,
and diffusers' ``UNet2DModel`` with block_out_channels (32, 64, 64), layers_per_block 2 - the same
ADM topology) and train on Fashion-MNIST's 60,000 training images (random flips) for the same
minutes of wall clock on this machine. Then each draws ``--n-samples`` images and both are scored by
FID (and KID, precision/recall) against the 10,000 test images with ebru's feature network.

- **ebru**: ``ebru train fashion_mnist_cpu`` - EDM preconditioning and loss, log-normal noise,
  AdamW 2e-3 with warmup, batch 32, EMA; sampled with DPM-Solver++(2M), Karras steps.
- **diffusers tutorial** ("Train a diffusion model", unconditional): ``UNet2DModel`` +
  ``DDPMScheduler(1000)``, eps-prediction MSE, AdamW 1e-4, cosine schedule with 500 warmup steps,
  batch 16, gradient clipping at 1; sampled with ``DDIMScheduler`` at 50 steps (eta 0).

Fair timing: by default the two trainings run **at the same time**, one process and one thread
each, so anything else the machine does slows both alike. ``--sequential`` trains them one after
the other with all threads instead. The tutorial's cosine schedule needs a step count: it is set
from the peer's own measured rate over its first 50 steps times the budget.

**On a GPU** (``--device cuda``, the default when one is there) both recipes train, sample and are
scored the same way, with their data on the GPU:

- The pair stays the 1.62M-parameter pair above (``--peer-channels`` builds the peer at another
  width if ``--ebru-set model.channels=...`` changes ebru's; the counts must agree within 10%, which
  is checked before anything trains).
- ebru keeps the ``fashion_mnist_cpu`` network and takes the optimisation of its GPU recipe
  ``fashion_mnist_gpu``: batch 256, lr 1e-3, 500 warm-up steps, EMA half-life 500k images (with the
  usual 5% ramp-up); no periodic checkpoints (the peer writes none either). fp32 with TF32
  convolutions, not bf16: at 1.6M parameters a step is bound by kernel launches, and autocast only
  adds casts. Replace these with ``--ebru-set key=value ...``.
- The peer keeps the tutorial's batch 16, lr 1e-4 and 500 warm-up steps, in fp32 (TF32 convolutions)
  unless ``--peer-precision fp16`` (the tutorial's ``mixed_precision="fp16"``, which on a model this
  small costs cast kernels and buys nothing). Its cosine schedule follows the clock (the share of
  the budget spent after warm-up) instead of a step count estimated from 50 steps: on a GPU that
  other runs share, the rate changes during the run.
- The two trainings still run at the same time, as two processes on the one GPU: each sees the
  same GPU and anything else on it, and the budget is spent in 5 minutes instead of 10.
  ``--sequential`` trains them one after the other instead.

    python benchmarks/quality_at_budget.py --budget-minutes 20
    python benchmarks/quality_at_budget.py --skip-peer --samples-dir ebru-samples   # ebru half alone
    python benchmarks/quality_at_budget.py --device cuda --budget-minutes 5 --name quality_at_budget_gpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, default_device, machine, write_result

NAME = "quality_at_budget"
# ebru's settings on a GPU: the optimisation of its fashion_mnist_gpu recipe on the 1.62M network (see above).
GPU_EBRU_SET = ["batch_size=256", "lr=1e-3", "warmup_steps=500", "ema_halflife_images=500000", "checkpoint_every=0"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- peer: diffusers tutorial
def build_peer(channels: int = 32):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(channels, 2 * channels, 2 * channels),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_peer(out: Path, minutes: float, seed: int = 0, device: str = "cpu", channels: int = 32,
               precision: str = "fp32") -> dict:
    """The tutorial's loop. On a CPU exactly as before; on CUDA the data lives on the GPU (the random draws are the
    same, from the same CPU generator) and the cosine schedule follows the clock (see the module docstring)."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from safetensors.torch import save_file

    from ebru.data import FashionMNIST, random_hflip

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    x_all, _ = FashionMNIST("train").tensors()
    x_all = x_all.to(dev)
    model = build_peer(channels).to(dev).train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fp16 = precision == "fp16" and cuda
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    g = torch.Generator().manual_seed(seed)
    budget, batch, step, lr_sched, warm_end = minutes * 60, 16, 0, None, None
    start = time.perf_counter()
    losses = []
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
        if step == 50 and lr_sched is None and not cuda:  # the cosine schedule's length, from the measured rate
            total = int(step / elapsed * budget)
            lr_sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=500, num_training_steps=total)
            for _ in range(step):
                lr_sched.step()
        if cuda:  # the same warm-up, then a cosine over the share of the budget left after it
            if step < 500:
                lr = 1e-4 * (step + 1) / 500
            else:
                warm_end = elapsed if warm_end is None else warm_end
                progress = min(1.0, (elapsed - warm_end) / max(budget - warm_end, 1e-9))
                lr = 1e-4 * 0.5 * (1.0 + math.cos(math.pi * progress))
            for group in opt.param_groups:
                group["lr"] = lr
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        clean = random_hflip(x_all[idx.to(dev)], g)
        noise = torch.randn(clean.shape, generator=g).to(dev)
        t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
            pred = model(sched.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if lr_sched is not None:
            lr_sched.step()
        elif not cuda:  # the tutorial's linear warmup, before the schedule exists
            for group in opt.param_groups:
                group["lr"] = 1e-4 * min(1.0, (step + 1) / 500)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        step += 1
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))
    info = {"steps": step, "images_seen": step * batch, "minutes": (time.perf_counter() - start) / 60,
            "params": n_params(model), "final_loss": sum(losses[-100:]) / max(len(losses[-100:]), 1),
            "batch": batch, "device": str(dev), "precision": "fp16 autocast" if fp16 else "fp32",
            "lr_schedule": "cosine over the clock" if cuda else "cosine over the step count measured at step 50"}
    (out / "train.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


@torch.no_grad()
def sample_peer(model_dir: Path, n: int, steps: int = 50, batch: int = 250, device: str = "cpu",
                channels: int = 32) -> torch.Tensor:
    from diffusers import DDIMScheduler, DDPMScheduler
    from safetensors.torch import load_file

    dev = torch.device(device)
    model = build_peer(channels)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.to(dev).eval()
    ddim = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    ddim.set_timesteps(steps)
    out = []
    from tqdm.auto import tqdm

    for i in tqdm(range(0, n, batch), desc="diffusers DDIM-50 sampling"):
        k = min(batch, n - i)
        x = torch.cat([torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s))
                       for s in range(i, i + k)]).to(dev)
        for t in ddim.timesteps:
            x = ddim.step(model(x, t).sample, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- ebru
def ebru_overrides(minutes: float, device: str, extra: list[str]) -> list[str]:
    return [f"time_budget={minutes}", "tensorboard=false", "sample_every=0", *extra,
            f"device={torch.device(device).type}"]


def train_ebru(out: Path, minutes: float, recipe: str = "fashion_mnist_cpu", device: str = "cpu",
               extra: list[str] | None = None) -> dict:
    from ebru.train import Trainer, load_config

    cfg = load_config(recipe, ebru_overrides(minutes, device, extra or []))
    trainer = Trainer(cfg, out, progress=False)
    trainer.fit()
    t = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))["training"]
    info = {"steps": t["steps"], "images_seen": t["images_seen"], "minutes": t["minutes"],
            "params": n_params(trainer.net), "final_loss": t["final_loss"], "batch": cfg.batch_size,
            "device": str(trainer.device), "recipe": recipe, "overrides": extra or []}
    (out / "train.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def ebru_params(recipe: str, extra: list[str]) -> int:
    """Parameters of the network the recipe (with the overrides) trains on 28x28 grayscale, without training it."""
    from ebru.nets import build_net
    from ebru.train import load_config

    cfg = load_config(recipe, ebru_overrides(1.0, "cpu", extra))
    net = build_net({"kind": "unet", **cfg.model, "image_size": 28, "in_channels": 1, "out_channels": 1,
                     "num_classes": 10 if cfg.class_conditional else None})
    return n_params(net)


def sample_ebru(model_dir: Path, n: int, sampler: str, steps: int, batch: int = 250,
                device: str = "cpu") -> torch.Tensor:
    from tqdm.auto import tqdm

    from ebru.pipelines.image import ImagePipeline

    pipe = ImagePipeline.from_pretrained(model_dir, device=device, watermark=False)
    out = []
    for i in tqdm(range(0, n, batch), desc=f"ebru {sampler}-{steps} sampling"):
        k = min(batch, n - i)
        x = pipe(k, sampler=sampler, num_inference_steps=steps, seeds=list(range(i, i + k)))
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- driver
def _train_role(role: str, out: Path, args: argparse.Namespace) -> None:
    torch.set_num_threads(int(os.environ.get("EBRU_BENCH_THREADS", "1")))
    if role == "ebru":
        info = train_ebru(out / "ebru", args.budget_minutes, args.ebru_recipe, args.device, args.ebru_set)
    else:
        info = train_peer(out / "peer", args.budget_minutes, device=args.device, channels=args.peer_channels,
                          precision=args.peer_precision)
    print(json.dumps(info))


def _launch(role: str, out: Path, args: argparse.Namespace, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "EBRU_BENCH_THREADS": str(threads)}
    log = open(out / f"train-{role}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, __file__, "--role", role, "--out-dir", str(out), "--budget-minutes",
           str(args.budget_minutes), "--device", args.device, "--ebru-recipe", args.ebru_recipe,
           "--peer-channels", str(args.peer_channels), "--peer-precision", args.peer_precision,
           "--ebru-set", *args.ebru_set]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs: dict[str, subprocess.Popen], out: Path) -> None:
    for role, p in procs.items():
        if p.wait() != 0:
            tail = (out / f"train-{role}.log").read_text(encoding="utf-8")[-2000:]
            sys.exit(f"{role} training failed:\n{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="training minutes for each recipe")
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--skip-peer", action="store_true", help="run the ebru half only (the peer's last figures "
                    "are kept from the previous result file when it used the same budget and N)")
    ap.add_argument("--skip-train", action="store_true", help="reuse the models already in --out-dir")
    ap.add_argument("--samples-dir", default=None, help="write ebru's samples there as PNGs")
    ap.add_argument("--sequential", action="store_true", help="train one after the other with all threads")
    ap.add_argument("--ebru-sampler", default="dpmpp_2m")
    ap.add_argument("--ebru-steps", type=int, default=32)
    ap.add_argument("--out-dir", default="ebru-out/quality_at_budget")
    ap.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--ebru-recipe", default="fashion_mnist_cpu", help="ebru's recipe (default fashion_mnist_cpu)")
    ap.add_argument("--ebru-set", nargs="*", default=None, metavar="KEY=VALUE",
                    help="overrides of ebru's recipe (default: none on a CPU; on CUDA " + " ".join(GPU_EBRU_SET) + ")")
    ap.add_argument("--peer-channels", type=int, default=32, help="the peer's first width (default 32: 1.62M)")
    ap.add_argument("--peer-precision", choices=["fp32", "fp16"], default="fp32",
                    help="CUDA: fp16 autocast for the peer, as the tutorial's mixed_precision='fp16' (default fp32)")
    ap.add_argument("--name", default=NAME, help=f"result file name (default {NAME})")
    ap.add_argument("--gpu-done-file", default=None,
                    help="touch this file when training and sampling are over (another job may wait for a quiet GPU)")
    ap.add_argument("--role", choices=["ebru", "peer"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ebru_set is None:
        args.ebru_set = list(GPU_EBRU_SET) if torch.device(args.device).type == "cuda" else []
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.role:
        _train_role(args.role, out, args)
        return
    roles = ["ebru"] if args.skip_peer else ["ebru", "peer"]
    if not args.skip_peer:  # the same size, or the comparison means nothing: check before anything trains
        from diffusers import UNet2DModel  # noqa: F401 - fail now, not after the training, if diffusers is missing

        pe, pp = ebru_params(args.ebru_recipe, args.ebru_set), n_params(build_peer(args.peer_channels))
        print(f"parameters: ebru {pe:,}, diffusers {pp:,} ({100 * abs(pe / pp - 1):.1f}% apart)")
        if abs(pe / pp - 1) > 0.10:
            sys.exit(f"ebru has {pe:,} parameters and the peer {pp:,}: more than 10% apart; set --peer-channels")
    t0 = time.time()
    try:  # the GPU work: training, then sampling
        if not args.skip_train:
            if args.sequential:
                for r in roles:
                    _wait({r: _launch(r, out, args, torch.get_num_threads())}, out)
            else:
                _wait({r: _launch(r, out, args, 1) for r in roles}, out)
        train_info = {r: json.loads((out / r / "train.json").read_text(encoding="utf-8")) for r in roles}
        print(f"trained in {(time.time() - t0) / 60:.1f} min: " + ", ".join(
            f"{r} {i['steps']} steps ({i['images_seen']} images, {i['params'] / 1e6:.2f}M params)"
            for r, i in train_info.items()), flush=True)
        samples = {"ebru": sample_ebru(out / "ebru" / "model", args.n_samples, args.ebru_sampler, args.ebru_steps,
                                       device=args.device)}
        if not args.skip_peer:
            samples["peer"] = sample_peer(out / "peer", args.n_samples, device=args.device,
                                          channels=args.peer_channels)
    finally:
        if args.gpu_done_file:
            Path(args.gpu_done_file).touch()

    from ebru.data.grid import save_grid
    from ebru.eval import evaluate_images
    from ebru.pipelines.image import save_images

    if args.samples_dir:
        save_images(samples["ebru"], args.samples_dir)
    scores = {r: evaluate_images(x, metrics="fid,kid,precision,recall", progress=True)
              for r, x in samples.items()}
    for r, x in samples.items():
        save_grid(x[:64], RESULTS / f"{args.name}_{r}.png", nrow=8,
                  title=f"{'ebru' if r == 'ebru' else 'diffusers tutorial'}: {args.budget_minutes:g} min of training"
                  + (f" on {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""))

    peer_prev = None
    if args.skip_peer:
        prev = RESULTS / f"{args.name}.json"
        if prev.is_file():
            old = json.loads(prev.read_text(encoding="utf-8"))
            if old.get("budget_minutes") == args.budget_minutes and old.get("n_samples") == args.n_samples:
                peer_prev = old
    m = {r: s["metrics"] for r, s in scores.items()}
    fid_peer = m["peer"]["fid"] if "peer" in m else (peer_prev or {}).get("summary", {}).get("fid_diffusers")
    summary = {"fid_ebru": m["ebru"]["fid"], "fid_diffusers": fid_peer,
               "ratio": (m["ebru"]["fid"] / fid_peer) if fid_peer else None,
               "kid_ebru": m["ebru"]["kid"], "kid_diffusers": m.get("peer", {}).get("kid"),
               "precision_ebru": m["ebru"]["precision"], "recall_ebru": m["ebru"]["recall"],
               "precision_diffusers": m.get("peer", {}).get("precision"),
               "recall_diffusers": m.get("peer", {}).get("recall"),
               "fid_real_floor": m["ebru"].get("fid_real_floor")}
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        timing = "sequential, alone on the GPU" if args.sequential else "simultaneous, two processes on one GPU"
    else:
        timing = "sequential, all threads" if args.sequential else "simultaneous, one thread each"
    extra = {"budget_minutes": args.budget_minutes, "n_samples": args.n_samples, "timing": timing,
             "device": torch.cuda.get_device_name() if cuda else "cpu",
             "ebru_recipe": args.ebru_recipe, "ebru_overrides": args.ebru_set,
             "peer": {"channels": args.peer_channels, "precision": args.peer_precision if cuda else "fp32"},
             "training": train_info, "scores": scores,
             "sampling": {"ebru": f"{args.ebru_sampler}, {args.ebru_steps} steps, karras",
                          "diffusers": "DDIMScheduler, 50 steps, eta 0"},
             "feature_net_sha256": scores["ebru"]["feature_net"]["sha256"]}
    if args.skip_peer and peer_prev:
        extra["peer_from_previous_run"] = {k: peer_prev.get(k) for k in ("training", "machine")}
        if peer_prev.get("training", {}).get("peer"):
            extra["training"]["peer"] = peer_prev["training"]["peer"]
    path = write_result(args.name, summary, **extra)
    print(f"\n{'':<22}{'ebru':>12}{'diffusers':>12}")
    for key in ("fid", "kid", "precision", "recall"):
        a, b = summary[f"{key}_ebru"], summary.get(f"{key}_diffusers")
        print(f"{key:<22}{a:>12.4f}" + (f"{b:>12.4f}" if b is not None else f"{'-':>12}"))
    print(f"{'FID floor (real, N)':<22}{summary['fid_real_floor']:>12.4f}")
    if summary["ratio"] is not None:
        print(f"\nratio fid_ebru / fid_diffusers = {summary['ratio']:.3f} (target <= 0.5)")
    print(f"machine: {machine()['cpu']}\n{path}")


if __name__ == "__main__":
    main()
