"""Train ebru's Fashion-MNIST feature network reproducibly: ``python -m ebru.eval.train_feature_net``.

Seeded, CPU, a few minutes on 2 cores. Writes ``ebru/eval/weights/fmnist_features.safetensors``
and ``fmnist_features.json`` (SHA-256 of the weights, test accuracy, training settings,
dataset hashes).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ebru.data import FashionMNIST
from ebru.data.hashing import sha256_file

from .feature_net import WEIGHTS, WEIGHTS_INFO, FashionFeatureNet


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random 2-pixel shifts (pad by reflection, crop)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[:, :, dy:dy + 28, dx:dx + 28]


@torch.no_grad()
def accuracy(net: FashionFeatureNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, test = FashionMNIST("train"), FashionMNIST("test")
    x, y = train.tensors()
    xt, yt = test.tensors()
    net = FashionFeatureNet()
    steps = args.epochs * (len(x) // args.batch)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            loss = F.cross_entropy(net(augment(x[idx], g)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, test accuracy {accuracy(net, xt, yt):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    acc = accuracy(net, xt, yt)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS),
              metadata={"format": "pt", "network": "FashionFeatureNet"})
    info = {"sha256": sha256_file(WEIGHTS), "test_accuracy": acc, "train_images": len(x), "test_images": len(xt),
            "train_dataset_hash": train.content_hash, "test_dataset_hash": test.content_hash,
            "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "torch": torch.__version__, "seconds": round(time.time() - t0, 1),
            "command": "python -m ebru.eval.train_feature_net"}
    WEIGHTS_INFO.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"test accuracy {acc:.4f}; wrote {WEIGHTS} (sha256 {info['sha256'][:16]}...)")


if __name__ == "__main__":
    main()
