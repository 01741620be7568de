"""Feature extraction for sample-quality metrics, with any feature network a user brings.

A feature network is any ``nn.Module``: if it has a ``features(x)`` method that is
used (ebru's :class:`~ebru.eval.feature_net.FashionFeatureNet` has one), otherwise
its ``forward(x)``; the output is flattened to (N, D). Its **fingerprint** (the
SHA-256 of its weights) travels with every figure computed from it, so statistics
computed with one network are never compared with samples seen by another.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def network_fingerprint(net: nn.Module) -> str:
    """SHA-256 identifying a feature network's weights.

    ebru's shipped network carries the SHA-256 of its weight file (``net.sha256``),
    checked when it was loaded; any other module is hashed over its state dict
    (names, dtypes, shapes and bytes, in name order).
    """
    recorded = getattr(net, "sha256", None)
    if isinstance(recorded, str):
        return recorded
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def expected_input_shape(net: nn.Module) -> tuple[int, ...] | None:
    """The (C, H, W) a network declares it takes (attribute ``input_shape``), if any."""
    shape = getattr(net, "input_shape", None)
    return tuple(shape) if shape is not None else None


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, *, batch: int = 500, progress: bool = False,
                     desc: str = "features") -> Tensor:
    """(N, D) float32 features of ``images`` (N, C, H, W) in [-1, 1]; uint8 images are converted first."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    want = expected_input_shape(net)
    if want is not None and tuple(images.shape[1:]) != want:
        raise ValueError(f"the feature network takes {'x'.join(map(str, want))} images, "
                         f"got {'x'.join(map(str, images.shape[1:]))}")
    fn = getattr(net, "features", None) or net
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    was_training = net.training
    net.eval()
    out = []
    try:
        for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
            x = images[i:i + batch]
            x = x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()
            try:
                f = fn(x.to(device))
            except RuntimeError as e:  # a shape the network cannot take: one line, not a trace
                raise ValueError(f"the feature network cannot take {tuple(x.shape[1:])} images "
                                 f"({str(e).splitlines()[0]})") from None
            out.append(f.flatten(1).float().cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
