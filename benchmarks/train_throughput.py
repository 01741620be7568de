"""Training throughput: ebru's U-Net against diffusers' ``UNet2DModel`` at matching size and architecture.

Both networks get the same ADM layout (widths ``(c, 2c, 2c)``, two residual blocks per
level, scale-shift noise conditioning, self-attention at the lowest resolution and in
the middle block, conv resampling, the same dropout), so their parameter counts and
FLOPs agree; they also share the EDM preconditioning and loss and the batch.
One full training step = forward, EDM loss, backward, AdamW step. All variants are
timed alternately in one run (rounds of N steps, order flipped every round) and the
median images/s of each is reported with the ratio to diffusers.

"ebru" and "diffusers" are each library as shipped: ebru's U-Net switches itself to
channels_last on a CPU and ebru's Trainer uses AdamW's fused kernel; diffusers stays NCHW
unless converted, and its training examples use the default AdamW. Unless ``--quick``,
each network is also timed in the other memory format and with the other optimizer, to
separate the network from the format and the optimizer (``ratio_same_plain_adamw``,
``ratio_same_fused_adamw``).

    python benchmarks/train_throughput.py                      # CPU, 32x32 RGB, batch 32
    python benchmarks/train_throughput.py --setting gray28     # Fashion-MNIST shaped
    python benchmarks/train_throughput.py --device cuda --bf16 --compile
    python benchmarks/train_throughput.py --device cuda --bf16 --batch 128 --channels 128 \
        --channel-mult 1,2,2,2 --attention-res 16 --name train_throughput_gpu_cifar_bf16

The last line is the size of diffusers' DDPM CIFAR-10 U-Net (google/ddpm-cifar10-32: widths
128-256-256-256, attention at 16x16; 35.7M parameters): with scale-shift conditioning in both
networks it has 38.3M. The default widths (c, 2c, 2c) give only 27.7M at ``--channels 128``.

On CUDA, float32 matrix products run as TF32 like the convolutions (``--no-tf32`` keeps them
IEEE), for both libraries alike, and every timing is bracketed by ``torch.cuda.synchronize()``.
With ``--compile`` the FLOPs per step are counted on the eager module.

Needs ``pip install diffusers`` (imported only here). Writes ``results/<--name>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

from common import default_device, sync, write_result
from ebru.diffusion import LogNormalSigma, Precond
from ebru.nets import UNet, UNetConfig

SETTINGS = {"rgb32": (3, 32), "gray28": (1, 28)}
# Dense peak TFLOP/s per GPU (SXM data sheets): (bf16, tf32) tensor cores. fp32 convs run as TF32 on these
# cards by default (torch.backends.cudnn.allow_tf32), so TF32 is the fp32 reference. For model FLOPs utilisation.
PEAK_TFLOPS = {"H100": (989.0, 494.7), "H200": (989.0, 494.7), "A100": (312.0, 156.0), "L4": (121.0, 60.0)}


class DiffusersAdapter(nn.Module):
    """``F(x, c_noise)`` for a diffusers ``UNet2DModel`` (its timestep input takes the float c_noise)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.model(x, c_noise).sample


def build_diffusers(channels: int, image_size: int, in_ch: int, dropout: float, mult: tuple[int, ...] = (1, 2, 2),
                    attn: tuple[int, ...] | None = None) -> nn.Module:
    from diffusers import UNet2DModel

    attn = attn or (image_size // 4,)
    res = [image_size // 2**i for i in range(len(mult))]  # the feature-map size of each level
    attn_widths = {channels * m for m, r in zip(mult, res) if r in attn}
    if len(attn_widths) > 1:
        raise SystemExit("diffusers takes one attention_head_dim: put attention on levels of one width")
    width = attn_widths.pop() if attn_widths else channels * mult[-1]
    model = UNet2DModel(
        sample_size=image_size, in_channels=in_ch, out_channels=in_ch,
        block_out_channels=tuple(channels * m for m in mult), layers_per_block=2,
        down_block_types=tuple("AttnDownBlock2D" if r in attn else "DownBlock2D" for r in res),
        up_block_types=tuple("AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(res)),
        attention_head_dim=width // 4, resnet_time_scale_shift="scale_shift", dropout=dropout,
    )
    return DiffusersAdapter(model)


def build_ebru(channels: int, image_size: int, in_ch: int, dropout: float, mult: tuple[int, ...] = (1, 2, 2),
               attn: tuple[int, ...] | None = None) -> nn.Module:
    cfg = UNetConfig(image_size=image_size, in_channels=in_ch, out_channels=in_ch, channels=channels,
                     channel_mult=tuple(mult), num_res_blocks=2,
                     attention_resolutions=tuple(attn or (image_size // 4,)), num_heads=4, dropout=dropout)
    return UNet(cfg)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Trainer:
    """One model, its optimizer and a fixed batch; ``step()`` is a full training step."""

    def __init__(self, net: nn.Module, args: argparse.Namespace, x0: Tensor, channels_last: bool, fused: bool):
        """``channels_last``: convert the weights and the batch to channels_last (what a user would do);
        ``fused``: AdamW's fused kernel (what ebru's Trainer uses) instead of its default per-tensor path."""
        dev = torch.device(args.device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(dev).to(memory_format=fmt).train()
        self.eager = Precond(self.net)
        self.model = Precond(torch.compile(self.net)) if args.compile else self.eager
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, fused=fused)
        self.x0 = x0.to(dev).contiguous(memory_format=fmt)
        self.noise = torch.randn_like(self.x0)
        self.sigma = LogNormalSigma()(x0.shape[0], torch.Generator().manual_seed(0)).float().to(dev)
        self.weight = ((self.sigma**2 + 0.25) / (self.sigma * 0.5) ** 2).view(-1, 1, 1, 1)
        self.bf16 = args.bf16
        self.dev = dev

    def step(self, eager: bool = False) -> None:
        model = self.eager if eager else self.model
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = self.x0 + self.sigma.view(-1, 1, 1, 1) * self.noise
            loss = (self.weight * (model(x, self.sigma) - self.x0) ** 2).mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, n: int) -> float:
        """Images per second over ``n`` steps."""
        sync(self.dev)
        t = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(self.dev)
        return n * self.x0.shape[0] / (time.perf_counter() - t)

    def step_flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:  # on the eager module: a compiled graph hides its operations from the counter
            self.step(eager=True)
        return counter.get_total_flops()


def sgemm_flops(n: int = 2048, reps: int = 8) -> float:
    """Measured float32 matmul FLOP/s on this CPU: the practical peak a conv-heavy step can approach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def peak_flops(dev: torch.device, bf16: bool) -> float | None:
    """Dense peak FLOP/s of the GPU (from its data sheet), or the measured sgemm rate on a CPU."""
    if dev.type == "cpu":
        return sgemm_flops()
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, (p_bf16, p_tf32) in PEAK_TFLOPS.items():
        if key in name:
            return 1e12 * (p_bf16 if bf16 else p_tf32)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="rgb32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=64, help="base width of both U-Nets")
    ap.add_argument("--channel-mult", default="1,2,2", help="width multiplier of each level (default 1,2,2)")
    ap.add_argument("--attention-res", default=None,
                    help="feature-map sizes with self-attention, comma-separated (default: image size / 4)")
    ap.add_argument("--no-tf32", action="store_true", help="CUDA: keep float32 matrix products IEEE (no TF32)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="training steps per round and model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="time only ebru and diffusers as shipped, not the other memory format of each")
    ap.add_argument("--name", default="train_throughput")
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    in_ch, size = SETTINGS[args.setting]
    mult = tuple(int(m) for m in args.channel_mult.split(","))
    attn = tuple(int(r) for r in args.attention_res.split(",")) if args.attention_res else None
    arch = (mult, attn)
    x0 = torch.rand(args.batch, in_ch, size, size) * 2 - 1
    ebru_net = build_ebru(args.channels, size, in_ch, args.dropout, *arch)
    diff_net = build_diffusers(args.channels, size, in_ch, args.dropout, *arch)
    params = {"ebru": n_params(ebru_net), "diffusers": n_params(diff_net)}
    mismatch = abs(params["ebru"] / params["diffusers"] - 1)
    print(f"params: ebru {params['ebru']:,}  diffusers {params['diffusers']:,}  (differ by {100 * mismatch:.2f}%)")
    if mismatch > 0.10:
        raise SystemExit("parameter counts differ by more than 10%; adjust --channels")

    # "ebru" and "diffusers" are each library as shipped: ebru's U-Net runs channels_last on a CPU by itself
    # (UNet.channels_last = None), diffusers runs NCHW unless the user converts it. The other format of each is
    # timed too, so the ratio can be read as "implementation" and "memory format" parts.
    ebru_cl = dev.type == "cpu"
    alt = "ebru_nchw" if ebru_cl else "ebru_channels_last"
    # The optimizer is each library's too: ebru's Trainer runs AdamW's fused kernel, diffusers' training
    # examples and tutorial the default AdamW. Unless --quick, each network also runs with the other
    # optimizer, so the ratio splits into "network" and "optimizer" parts.
    variants: dict[str, tuple[nn.Module, bool, bool]] = {"ebru": (ebru_net, False, True),
                                                         "diffusers": (diff_net, False, False)}
    if not args.quick:
        def copy(build, net: nn.Module) -> nn.Module:
            twin = build(args.channels, size, in_ch, args.dropout, *arch)
            twin.load_state_dict(net.state_dict())
            return twin

        alt_net = copy(build_ebru, ebru_net)
        alt_net.channels_last = not ebru_cl
        variants.update({alt: (alt_net, not ebru_cl, True),
                         "diffusers_channels_last": (copy(build_diffusers, diff_net), True, False),
                         "ebru_plain_adamw": (copy(build_ebru, ebru_net), False, False),
                         "diffusers_fused_adamw": (copy(build_diffusers, diff_net), False, True)})
    trainers = {k: Trainer(net, args, x0, cl, fused) for k, (net, cl, fused) in variants.items()}
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.setting} batch {args.batch} on {args.device} ({where}), "
          f"bf16={args.bf16} compile={args.compile}, {args.rounds} rounds x {args.steps} steps, alternating",
          flush=True)

    for name, t in trainers.items():
        t0 = time.perf_counter()
        t.run(args.warmup)  # with --compile: the compilation happens here
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    rates: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.rounds):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in order:
            rates[name].append(trainers[name].run(args.steps))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {rates[k][-1]:.1f}" for k in rates), flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["ebru"] / med["diffusers"]
    summary = {"ratio_vs_diffusers": round(ratio, 3), "ebru_images_per_s": round(med["ebru"], 2),
               "diffusers_images_per_s": round(med["diffusers"], 2), "ebru_params": params["ebru"],
               "diffusers_params": params["diffusers"]}
    for k in trainers:
        if k not in ("ebru", "diffusers"):
            summary[f"{k}_images_per_s"] = round(med[k], 2)
    if "diffusers_channels_last" in med:
        summary["ratio_vs_diffusers_best_format"] = round(med["ebru"] / max(med["diffusers"],
                                                                            med["diffusers_channels_last"]), 3)
        summary["ratio_same_plain_adamw"] = round(med["ebru_plain_adamw"] / med["diffusers"], 3)
        summary["ratio_same_fused_adamw"] = round(med["ebru"] / med["diffusers_fused_adamw"], 3)

    flops = {k: trainers[k].step_flops() for k in ("ebru", "diffusers")}
    peak = peak_flops(dev, args.bf16)
    peak_name = "of sgemm" if dev.type == "cpu" else "MFU"
    if peak:
        source = "measured sgemm" if dev.type == "cpu" else "data sheet"
        print(f"peak for utilisation: {peak / 1e12:.3f} TFLOP/s ({source})")
        summary["peak_tflops"] = round(peak / 1e12, 4)
    print(f"\n{'variant':<24} {'params':>10} {'img/s':>7} {'vs diffusers':>12} {'GFLOP/step':>10} {'TFLOP/s':>8} "
          f"{peak_name:>8}")
    for k in trainers:
        lib = "ebru" if k.startswith("ebru") else "diffusers"
        achieved = flops[lib] * med[k] / args.batch
        mfu = f"{100 * achieved / peak:7.1f}%" if peak else "     n/a"
        print(f"{k:<24} {params[lib]:>10,} {med[k]:>7.1f} {med[k] / med['diffusers']:>11.2f}x "
              f"{flops[lib] / 1e9:>10.1f} {achieved / 1e12:>8.3f} {mfu:>8}")
        summary[f"{k}_tflops"] = round(achieved / 1e12, 4)
        if peak:
            summary[f"{k}_{'sgemm_fraction' if dev.type == 'cpu' else 'mfu'}"] = round(achieved / peak, 4)
    print(f"\nebru / diffusers images/s (each as shipped): {ratio:.2f}x")
    settings = {**vars(args), "image": [in_ch, size, size], "channel_mult": list(mult),
                "attention_res": list(attn or (size // 4,))}
    if dev.type == "cuda":
        settings["tf32"] = not args.no_tf32
    path = write_result(args.name, summary, rates=rates, flops_per_step=flops, settings=settings)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
