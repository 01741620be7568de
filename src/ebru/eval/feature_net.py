"""ebru's own Fashion-MNIST feature network: a small CNN classifier whose penultimate layer is the
feature space for FID/KID/precision-recall and whose logits judge class agreement.

No Inception weights can be had offline, so ebru trains this network itself
(``python -m ebru.eval.train_feature_net``) and ships the weights in
``ebru/eval/weights/`` with their SHA-256 and test accuracy (``fmnist_features.json``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebru.trust import load_bytes

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS = WEIGHTS_DIR / "fmnist_features.safetensors"
WEIGHTS_INFO = WEIGHTS_DIR / "fmnist_features.json"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionFeatureNet(nn.Module):
    """Input (B, 1, 28, 28) in [-1, 1]; ``features`` (B, 256); ``forward`` gives 10 logits."""

    feature_dim = 256
    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_block(1, 32), _block(32, 32), nn.MaxPool2d(2),
                                  _block(32, 64), _block(64, 64), nn.MaxPool2d(2),
                                  _block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(128, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the Fashion-MNIST feature network takes 1x28x28 images, got {tuple(x.shape[1:])}")
        return F.relu(self.proj(self.body(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_feature_net(device: str | torch.device = "cpu") -> FashionFeatureNet:
    """The shipped network, verified against its recorded SHA-256 before loading.

    The weights file is read once: the bytes that are hashed are the bytes that are loaded (through
    ebru's strict safetensors reader), so a file swapped after the check is never used.
    """
    if not WEIGHTS.is_file() or not WEIGHTS_INFO.is_file():
        raise FileNotFoundError(f"feature network weights missing in {WEIGHTS_DIR}: "
                                "train them with `python -m ebru.eval.train_feature_net`")
    info = json.loads(WEIGHTS_INFO.read_text(encoding="utf-8"))
    data = WEIGHTS.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(f"{WEIGHTS} has SHA-256 {digest[:16]}..., expected {info['sha256'][:16]}... "
                         "(edited or damaged weights)")
    net = FashionFeatureNet()
    net.load_state_dict(load_bytes(data, WEIGHTS)[0])
    net.sha256 = digest
    net.test_accuracy = info.get("test_accuracy")
    return net.to(device).eval()


@torch.no_grad()
def class_agreement(net: FashionFeatureNet, images: Tensor, labels: Tensor, batch: int = 500) -> float:
    """Share of ``images`` the network assigns to the requested ``labels``."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    hits = 0
    for i in range(0, len(images), batch):
        pred = net(images[i:i + batch].float()).argmax(1).cpu()
        hits += int((pred == labels[i:i + batch].cpu()).sum())
    return hits / max(len(images), 1)
