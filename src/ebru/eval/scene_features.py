"""A feature network for the Fashion scenes, trained by ebru on the scenes' own specifications: FID at 64x64.

ebru's Fashion-MNIST network (:mod:`ebru.eval.feature_net`) sees 1x28x28 items; the Fashion scenes
(:mod:`ebru.data.scenes`) are 3x64x64 canvases (preset ``full64``) with one to four tinted items laid out.
No Inception weights can be had offline, and Inception would not know this closed world anyway, so ebru
trains a small CNN classifier on the scenes themselves, to predict what each scene's
:class:`~ebru.data.scenes.Scene` holds (the targets are exact: every picture is rendered from its spec):

* ``arrangement``, one of :data:`ARRANGEMENTS` (11-way softmax): the layout with its one free
  attribute, i.e. a single item small or large, one item in the left / right / top / bottom half, a pair
  side by side or one above the other, or a count of 2, 3 or 4 items;
* ``classes``: which of the 10 Fashion-MNIST classes appear (10 sigmoids, multi-hot);
* ``colours``: which of the 7 colours of :data:`ebru.data.scenes.COLOURS` appear (7 sigmoids, multi-hot).

The FID features are the pooled penultimate layer, ``features(x)`` (B, ``feature_dim`` = 128): the conv body
ends at 8x8, is average-pooled to 2x2 (so the features keep the quadrant each thing is in: layout is half
of what a scene spec says) and projected to 128 ReLU units, which the three heads read linearly. Like
Inception's pool3 for ImageNet, these features are what it took to tell the scenes' specifications apart:
a generator that draws the wrong items, colours, sizes or places moves them.

Architecture (input (B, 3, S, S) in [-1, 1], S = 64 by default; ``w`` = ``width``, 32)::

    conv3x3 stride 2 -> w, BN, ReLU                     S/2   (items of 28-60 px become 14-30 px)
    conv3x3 -> w, BN, ReLU; maxpool 2                   S/4
    conv3x3 -> 2w, BN, ReLU; conv3x3 -> 2w, BN, ReLU; maxpool 2     S/8
    conv3x3 -> 4w, BN, ReLU; conv3x3 -> 4w, BN, ReLU    S/8
    average pool to 2x2, flatten (16w), linear -> feature_dim, ReLU      = features
    linear -> 11 + 10 + 7 logits                                         = forward

About 39 M multiply-adds per 64x64 image at width 32. In eval mode (batch norm on running statistics) an
image's features do not depend on its batch.

**Training** (:func:`train_scene_feature_net`; ``python -m ebru.eval.scene_features --out FILE``): seeded
initialisation and batch order (a ``torch.Generator``; no global random state is touched), AdamW with a
one-cycle learning rate, a fixed number of steps (not a time budget, so the weights depend only on the
settings, the data and the machine's arithmetic), loss = cross-entropy of the arrangement (label smoothing
0.05) + binary cross-entropy of the classes and of the colours, each summed over its labels (averaged over
labels instead, the class head learned half as fast: 20 % against 44 % of held-out scenes with exactly the
right set of classes after 500 steps). Data: the first ``n`` scenes of the preset (the training scenes of
``fashion-scenes:full64``: seed 0, items from Fashion-MNIST's train split); the accuracies written beside the
weights are measured on held-out scenes (seed 1, items from the test split). The default 900 steps of 64
images (57,600 images, about two passes over the 30,000 scenes) take about 3.5 minutes on one thread of the
2-core CPU, less on two (500 steps: 116 s on one thread; held-out arrangement 99.9 %, colour set 100 %, class
set 44 %, single class labels 93 %: the item classes are the hard part, as for ebru's prompt-agreement judge).

**Files** (:func:`save_scene_feature_net`): ``FILE.safetensors`` (the weights, through safetensors only) and
``FILE.json`` beside it: the SHA-256 of the weights file, the network's config, the training settings, the
data sets' content hashes and the held-out accuracies. :func:`load_scene_feature_net` reads the weights file
once, checks its SHA-256 against the JSON and loads the same bytes through ebru's strict safetensors
reader; the network's ``sha256`` attribute is that digest, so :func:`ebru.eval.network_fingerprint` (and every
FID, KID and reference set computed with it) names exactly these weights. :func:`scene_feature_net` is the
cached form: load the file when its recorded settings are the ones asked for, else train and write it.
The weights are not shipped in the package: they are a few minutes of CPU away and a benchmark trains them
once into its output folder.

The network follows the interface of ebru's FID code (:mod:`ebru.eval.features`): ``features(x)``,
``input_shape`` (3, S, S) for :func:`~ebru.eval.features.expected_input_shape` and
:func:`~ebru.eval.evaluate.check_image_shape`, ``feature_dim`` for the sample-count check, ``sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ebru.data.scenes import CLASS_NAMES, COLOURS, PRESETS, FashionScenes, Scene
from ebru.trust import load_bytes

ARRANGEMENTS = ("single-small", "single-large", "left", "right", "top", "bottom", "pair-left-right",
                "pair-top-bottom", "count-2", "count-3", "count-4")
COLOUR_NAMES = tuple(COLOURS)
HEADS = {"arrangement": len(ARRANGEMENTS), "classes": len(CLASS_NAMES), "colours": len(COLOUR_NAMES)}
NETWORK = "SceneFeatureNet"
DEFAULT_TRAINING = {"preset": "full64", "n": 30000, "seed": 0, "steps": 900, "batch": 64, "lr": 2e-3,
                    "weight_decay": 5e-4, "width": 32, "feature_dim": 128, "held_out_n": 2000, "held_out_seed": 1}


def arrangement(scene: Scene) -> str:
    """The scene's entry of :data:`ARRANGEMENTS` (a single item without a named scale counts as large)."""
    if scene.layout == "single":
        return f"single-{scene.scale or 'large'}"
    if scene.layout == "position":
        return str(scene.position)
    if scene.layout == "pair":
        return f"pair-{scene.relation}"
    return f"count-{len(scene.items)}"


def scene_targets(scenes: Sequence[Scene]) -> dict[str, Tensor]:
    """What the network learns to predict of each scene: ``arrangement`` (N,) long, index into
    :data:`ARRANGEMENTS`; ``classes`` (N, 10) and ``colours`` (N, 7) float multi-hot (1 where an item has it)."""
    n = len(scenes)
    arr = torch.tensor([ARRANGEMENTS.index(arrangement(s)) for s in scenes], dtype=torch.long)
    classes, colours = torch.zeros(n, HEADS["classes"]), torch.zeros(n, HEADS["colours"])
    for i, s in enumerate(scenes):
        for it in s.items:
            classes[i, it.label] = 1.0
            colours[i, COLOUR_NAMES.index(it.colour)] = 1.0
    return {"arrangement": arr, "classes": classes, "colours": colours}


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SceneFeatureNet(nn.Module):
    """Input (B, 3, size, size) in [-1, 1]; ``features`` (B, feature_dim); ``forward`` (B, 28) logits.

    The logits are ``[arrangement (11) | classes (10) | colours (7)]`` (:meth:`split`). ``size`` must be
    divisible by 8. See the module docstring for the layers.
    """

    def __init__(self, size: int = 64, width: int = 32, feature_dim: int = 128):
        super().__init__()
        for name, v in (("size", size), ("width", width), ("feature_dim", feature_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if size % 8:
            raise ValueError(f"the scene feature network takes sizes divisible by 8, got {size}")
        self.config = {"size": size, "width": width, "feature_dim": feature_dim}
        self.input_shape = (3, size, size)
        self.feature_dim = feature_dim
        w = width
        self.body = nn.Sequential(_block(3, w, stride=2), _block(w, w), nn.MaxPool2d(2),
                                  _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
                                  _block(2 * w, 4 * w), _block(4 * w, 4 * w),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.proj = nn.Linear(16 * w, feature_dim)
        self.head = nn.Linear(feature_dim, sum(HEADS.values()))
        self._file_sha256: str | None = None

    @property
    def sha256(self) -> str:
        """The SHA-256 naming these weights (what :func:`~ebru.eval.network_fingerprint` reads): the weights file's
        when loaded from one (:func:`load_scene_feature_net`), else :func:`weights_digest` of the current state."""
        return self._file_sha256 if self._file_sha256 is not None else weights_digest(self)

    @sha256.setter
    def sha256(self, value: str) -> None:
        self._file_sha256 = value

    def features(self, x: Tensor) -> Tensor:
        """The FID features (B, feature_dim), ReLU'd; ValueError for another input shape than ``input_shape``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the scene feature network takes {'x'.join(map(str, self.input_shape))} images, "
                             f"got {tuple(x.shape[1:])}")
        return F.relu(self.proj(self.body(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @staticmethod
    def split(logits: Tensor) -> dict[str, Tensor]:
        """The logits (B, 28) as ``{"arrangement": (B, 11), "classes": (B, 10), "colours": (B, 7)}``."""
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=1), strict=True))


def weights_digest(net: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in name order), 0-dim buffers included
    (batch norm's ``num_batches_tracked``): how an in-memory network that was never written is named."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def scene_loss(logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
    """Scalar training loss: CE(arrangement, label smoothing 0.05) + BCE(classes) + BCE(colours), the BCEs summed
    over their 10 / 7 labels; all averaged over the batch."""
    p = SceneFeatureNet.split(logits)
    bce = F.binary_cross_entropy_with_logits
    return (F.cross_entropy(p["arrangement"], targets["arrangement"], label_smoothing=0.05)
            + bce(p["classes"], targets["classes"], reduction="none").sum(1).mean()
            + bce(p["colours"], targets["colours"], reduction="none").sum(1).mean())


@torch.no_grad()
def scene_accuracy(net: SceneFeatureNet, images: Tensor, targets: dict[str, Tensor],
                   batch: int = 500) -> dict[str, float]:
    """Held-out accuracies (shares in [0, 1]): ``arrangement`` (argmax right), ``classes`` and ``colours``
    (every one of the 10 / 7 sigmoids on the right side of 0.5 for the image: the exact set of classes or
    colours), and ``classes_per_label`` / ``colours_per_label`` (share of single sigmoids right).
    ``images`` (N, 3, S, S) uint8 or in [-1, 1]."""
    was = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        logits = torch.cat([net(_float(images[i:i + batch]).to(device)).cpu() for i in range(0, len(images), batch)])
    finally:
        net.train(was)
    p = SceneFeatureNet.split(logits)
    out = {"arrangement": float((p["arrangement"].argmax(1) == targets["arrangement"]).float().mean())}
    for key in ("classes", "colours"):
        right = (p[key] > 0) == (targets[key] > 0.5)
        out[key] = float(right.all(1).float().mean())
        out[f"{key}_per_label"] = float(right.float().mean())
    return out


def _float(x: Tensor) -> Tensor:
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


def train_scene_feature_net(images: Tensor, scenes: Sequence[Scene], *, steps: int = 900, batch: int = 64,
                            lr: float = 2e-3, weight_decay: float = 5e-4, seed: int = 0, width: int = 32,
                            feature_dim: int = 128, progress: bool = False) -> SceneFeatureNet:
    """A :class:`SceneFeatureNet` trained on ``images`` (N, 3, S, S) (uint8, or float in [-1, 1]) and their
    ``scenes`` (N specs), for ``steps`` AdamW steps of ``batch`` images (batches are consecutive slices of
    seeded permutations, a fresh one each pass), one-cycle learning rate peaking at ``lr``; returned in eval mode.

    Deterministic: the initial weights and the batch order come from ``seed`` alone (the global random state
    is saved and restored around the initialisation), so the same arguments on the same machine and thread
    count give the same weights. Raises ValueError for mismatched lengths or fewer images than ``batch``.
    """
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    if len(images) < batch:
        raise ValueError(f"need at least batch={batch} images to train, got {len(images)}")
    targets = scene_targets(scenes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SceneFeatureNet(images.shape[-1], width, feature_dim)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    per_pass = len(images) // batch
    net.train()
    perm = torch.randperm(len(images), generator=g)
    for step in tqdm(range(steps), desc="scene feature net", disable=not progress, leave=False):
        k = step % per_pass
        if k == 0 and step:
            perm = torch.randperm(len(images), generator=g)
        idx = perm[k * batch:(k + 1) * batch]
        loss = scene_loss(net(_float(images[idx])), {key: t[idx] for key, t in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def info_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``FILE.json`` beside ``FILE.safetensors``."""
    return Path(path).with_suffix(".json")


def save_scene_feature_net(net: SceneFeatureNet, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (safetensors) and its JSON sidecar (``sha256`` of the file, ``network`` config, ``info``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"format": "pt", "network": NETWORK})
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {"sha256": digest, "network": {"name": NETWORK, **net.config}, **(info or {})}
    info_path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def load_scene_feature_net(path: str | Path, device: str | torch.device = "cpu") -> SceneFeatureNet:
    """The network at ``path``, verified against the SHA-256 in its JSON sidecar before it loads (the bytes
    hashed are the bytes loaded, through ebru's strict safetensors reader); in eval mode, with ``sha256`` and
    ``info`` (the sidecar) attributes. Raises FileNotFoundError (missing file or sidecar) or ValueError
    (digest mismatch, another network) in one line."""
    path = Path(path)
    side = info_path(path)
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(f"scene feature network not found: {path} and {side.name} beside it are needed "
                                f"(train it with `python -m ebru.eval.scene_features --out {path}`)")
    info = json.loads(side.read_text(encoding="utf-8"))
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.get("sha256"):
        raise ValueError(f"{path} has SHA-256 {digest[:16]}..., {side.name} records "
                         f"{str(info.get('sha256'))[:16]}... (edited or damaged weights)")
    cfg = info.get("network", {})
    if cfg.get("name") != NETWORK:
        raise ValueError(f"{side}: not a {NETWORK} (network {cfg.get('name')!r})")
    net = SceneFeatureNet(cfg["size"], cfg["width"], cfg["feature_dim"])
    net.load_state_dict(load_bytes(data, path)[0])
    net.sha256 = digest
    net.info = info
    return net.to(device).eval()


def scene_feature_net(path: str | Path, *, progress: bool = False, quiet: bool = False,
                      **settings: Any) -> SceneFeatureNet:
    """The scene feature network cached at ``path``: loaded when its sidecar's ``training`` settings equal
    :data:`DEFAULT_TRAINING` updated by ``settings`` (``preset``, ``n``, ``seed``, ``steps``, ``batch``, ``lr``,
    ``weight_decay``, ``width``, ``feature_dim``, ``held_out_n``, ``held_out_seed``), else trained on those
    scenes, its held-out accuracies measured, written (:func:`save_scene_feature_net`) and loaded back
    (so its ``sha256`` is the file's). Raises ValueError for an unknown setting or preset."""
    unknown = sorted(set(settings) - set(DEFAULT_TRAINING))
    if unknown:
        raise ValueError(f"unknown scene feature network setting {unknown[0]!r}; valid: {', '.join(DEFAULT_TRAINING)}")
    s = {**DEFAULT_TRAINING, **settings}
    if s["preset"] not in PRESETS:
        raise ValueError(f"unknown Fashion scenes preset {s['preset']!r}; valid: {', '.join(PRESETS)}")
    path = Path(path)
    if path.is_file() and info_path(path).is_file():
        try:
            net = load_scene_feature_net(path)
        except (ValueError, KeyError, json.JSONDecodeError):
            net = None  # a damaged cache is retrained, never trusted
        if net is not None and net.info.get("training") == s:
            return net
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    train = FashionScenes(s["preset"], n=s["n"], seed=s["seed"], split="train")
    held = FashionScenes(s["preset"], n=s["held_out_n"], seed=s["held_out_seed"], split="test")
    say(f"training the scene feature network: {s['steps']} steps of {s['batch']} on {len(train)} {s['preset']} "
        f"scenes -> {path}")
    t0 = time.perf_counter()
    net = train_scene_feature_net(train.images_uint8, train.scenes, steps=s["steps"], batch=s["batch"], lr=s["lr"],
                                  weight_decay=s["weight_decay"], seed=s["seed"], width=s["width"],
                                  feature_dim=s["feature_dim"], progress=progress)
    seconds = time.perf_counter() - t0
    acc = scene_accuracy(net, held.images_uint8, scene_targets(held.scenes))
    say("held-out accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()) + f" ({seconds:.0f} s)")
    info = {"training": s, "held_out_accuracy": acc, "train_dataset_hash": train.content_hash,
            "held_out_dataset_hash": held.content_hash, "train_dataset": train.source,
            "held_out_dataset": held.source, "seconds": round(seconds, 1), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "images_seen": s["steps"] * s["batch"],
            "epochs": round(s["steps"] * s["batch"] / len(train), 3),
            "command": "python -m ebru.eval.scene_features"}
    save_scene_feature_net(net, path, info)
    return load_scene_feature_net(path)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train ebru's Fashion scenes feature network (FID at 64x64).")
    ap.add_argument("--out", required=True, help="weights file (.safetensors); FILE.json is written beside it")
    for key, value in DEFAULT_TRAINING.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    net = scene_feature_net(out, progress=True, **args)
    acc = net.info["held_out_accuracy"]
    print(f"wrote {out} (sha256 {net.sha256[:16]}...); held-out arrangement {acc['arrangement']:.1%}, "
          f"classes {acc['classes']:.1%}, colours {acc['colours']:.1%}")


__all__ = ["ARRANGEMENTS", "DEFAULT_TRAINING", "HEADS", "SceneFeatureNet", "arrangement", "load_scene_feature_net",
           "save_scene_feature_net", "scene_accuracy", "scene_feature_net", "scene_loss", "scene_targets",
           "train_scene_feature_net", "weights_digest"]

if __name__ == "__main__":
    main()
