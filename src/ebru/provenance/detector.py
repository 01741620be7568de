"""A detector of generated and inpainted images: p(generated) and a map of where, as a supporting signal only.

The watermark (:mod:`~ebru.provenance.watermark`) and the C2PA manifest (:mod:`~ebru.provenance.c2pa`) are
the evidence of an image's origin. This detector is a third, weaker signal for images that carry neither
(stripped, re-encoded, or edited elsewhere): a classifier trained on real images against ebru's own
un-watermarked outputs and against real images with a region inpainted by ebru. Detectors of this kind are
known to be uncalibrated outside their training distribution and to miss generators, edits and
post-processing they never saw (Wang et al. CVPR 2020 reach 100 % on their training GAN and 50-68 % accuracy on
others; Ojha et al. CVPR 2023 show the real class becoming a "sink" for unseen generators; ``shared/reference/
trust.md`` section 6). So every result carries :data:`SUPPORTING_SIGNAL`, and nothing in ebru decides on it.

- :class:`DetectorNet`: a small fully convolutional U-shaped network. Input (B, C, H, W) in [-1, 1], any
  H and W; output ``(image_logit (B,), map_logits (B, 1, H, W))``: the logit that the image is generated or
  edited, and per pixel the logit that this pixel was generated (inpainted region = 1, kept pixels = 0).
- :func:`calibrate_threshold`: the threshold on held-out real images' scores at a false-positive target
  (split-conformal: expected false-positive rate on new real images <= the target).
- :func:`auroc`: the exact area under the ROC curve (Mann-Whitney U, ties counted one half).
- :class:`Detector`: a detector package loaded through ``ebru.load`` (manifest, signature, licence policy,
  strict safetensors read: never a bare ``torch.load``), its calibrated threshold, and :meth:`Detector.predict`.
- :func:`write_detector`: the package (``config.json`` of kind :data:`KIND`, weights, card, manifest).

Training is :func:`ebru.pipelines.detector.train_detector` (``ebru detector train``); reading files is
:func:`ebru.pipelines.detector.detect_files` (``ebru detect``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebru.checks import finite_number, positive_int, unknown_key_message

if TYPE_CHECKING:
    from ebru.trust import LoadedModel

__all__ = [
    "DETECTOR_FPR", "KIND", "SUPPORTING_SIGNAL", "Detector", "DetectorConfig", "DetectorNet", "DetectorPrediction",
    "auroc", "calibrate_threshold", "write_detector",
]

SUPPORTING_SIGNAL = ("p(generated) is a supporting signal only and never decides alone: the watermark "
                     "('ebru watermark detect') and the C2PA manifest ('ebru provenance verify') are the evidence "
                     "of origin; a detector misses generators, edits and processing it was not trained on.")
"""The fixed sentence every detector result carries and every detector command prints."""

KIND = "generated-image-detector"
"""``config.json``'s ``kind`` for a detector package."""

DETECTOR_FPR = 0.01
"""The default false-positive target on real images at which the threshold is calibrated (1 %)."""

MAX_BATCH = 64


# ------------------------------------------------------------------------------------------- the network
@dataclass(frozen=True)
class DetectorConfig:
    """The network's shape: ``in_channels`` (1 or 3), ``channels`` (>= 2) at full resolution, doubled at each of
    ``levels`` resolutions (``levels=3``: full, 1/2 and 1/4 size). Raises ValueError (one line) out of range."""

    in_channels: int = 3
    channels: int = 16
    levels: int = 3

    def __post_init__(self) -> None:
        if positive_int("detector in_channels", self.in_channels) not in (1, 3):
            raise ValueError(f"detector in_channels must be 1 (grey) or 3 (RGB), got {self.in_channels}")
        positive_int("detector channels", self.channels, minimum=2)
        if positive_int("detector levels", self.levels) > 6:
            raise ValueError(f"detector levels must be at most 6, got {self.levels}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "detector net") -> DetectorConfig:
        """A config from ``config.json``'s ``net`` object; unknown keys are refused with the nearest valid one."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: must be a JSON object, got {type(d).__name__}")
        valid = {f for f in cls.__dataclass_fields__}
        for k in d:
            if k not in valid:
                raise ValueError(unknown_key_message(k, valid, where))
        return cls(**d)


def _groups(c: int) -> int:
    """GroupNorm groups for c >= 2 channels: up to 8, at least 2 channels each (so a 1x1 image still normalises)."""
    return math.gcd(8, c // 2)


class _Block(nn.Module):
    """conv3x3 - GroupNorm - SiLU - conv3x3 - GroupNorm, plus a (1x1-projected) skip, then SiLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(h)) + self.skip(x))


class DetectorNet(nn.Module):
    """A small fully convolutional U-shaped classifier with a per-pixel head and an image head.

    Encoder: a 3x3 stem, then at each level a residual block and (but at the last) a stride-2 3x3 conv that
    doubles the width. Decoder: nearest upsampling to the skip's size, concatenation, a residual block. Map
    head: a 1x1 conv on the full-resolution features (one logit per pixel). Image head: a linear layer on the
    deepest features' global mean and max and the map logits' mean and max (so a small inpainted region, high
    in the map, can raise the image score).

    ``forward(x)``: ``x`` (B, in_channels, H, W) float in [-1, 1], any H, W >= 1; returns
    ``(image_logit (B,), map_logits (B, 1, H, W))``. Raises ValueError for another shape.
    """

    def __init__(self, in_channels: int = 3, channels: int = 16, levels: int = 3):
        super().__init__()
        self.config = DetectorConfig(in_channels, channels, levels)
        widths = [channels * 2 ** i for i in range(levels)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc = nn.ModuleList([_Block(w, w) for w in widths])
        self.down = nn.ModuleList([nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)
                                   for i in range(levels - 1)])
        self.dec = nn.ModuleList([_Block(widths[i + 1] + widths[i], widths[i]) for i in range(levels - 1)])
        self.map_head = nn.Conv2d(widths[0], 1, 1)
        self.image_head = nn.Linear(2 * widths[-1] + 2, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"the detector takes images (B, {c}, H, W), got shape {tuple(x.shape)}")
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        deep = h
        for i in reversed(range(len(self.dec))):
            skip = skips[i]
            h = self.dec[i](torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        map_logits = self.map_head(h)
        pooled = torch.cat([deep.mean(dim=(2, 3)), deep.amax(dim=(2, 3)),
                            map_logits.mean(dim=(2, 3)), map_logits.amax(dim=(2, 3))], dim=1)
        return self.image_head(pooled).squeeze(1), map_logits


# ------------------------------------------------------------------------------------------- statistics
def _scores(name: str, values: Any) -> np.ndarray:
    a = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: no scores given")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: scores must be finite (they hold NaN or an infinity)")
    return a


def calibrate_threshold(real_scores: Sequence[float] | np.ndarray | Tensor, fpr: float = DETECTOR_FPR) -> float:
    """The threshold ``t`` on scores of held-out REAL images such that "flagged" (``score > t``) has an expected
    false-positive rate <= ``fpr`` on new real images from the same distribution.

    Split-conformal calibration (Vovk et al. 2005; Angelopoulos & Bates 2021, section 1): with ``n`` scores
    and ``k = floor(fpr * (n + 1)) - 1``, ``t`` is the ``(k + 1)``-th largest score. A new real score
    exchangeable with the calibration ones exceeds it with probability at most ``(k + 1) / (n + 1) <= fpr``; on
    the calibration scores themselves at most ``k`` lie strictly above ``t`` (fewer when ``t`` is tied).
    Example: the scores 0, 1, ..., 198 (n = 199) at fpr 0.01 give k = 1 and t = 197.

    ``real_scores``: any 1-D array of finite numbers (logits or probabilities; flag on the same scale).
    Raises ValueError (one line) for no scores, a non-finite one, ``fpr`` outside (0, 1), or fewer than
    ``ceil(1 / fpr) - 1`` scores (too few to reach the target: 99 at 1 %).
    """
    scores = _scores("calibrate_threshold", real_scores)
    fpr = finite_number("fpr", fpr, positive=True)
    if fpr >= 1:
        raise ValueError(f"fpr must be < 1, got {fpr:g}")
    n = scores.size
    k = math.floor(fpr * (n + 1) + 1e-9) - 1  # + 1e-9: 0.01 * 200 is 2.0000000000000004 or 1.9999999999999998
    if k < 0:
        raise ValueError(f"calibrating at a false-positive rate of {fpr:g} needs at least {math.ceil(1 / fpr) - 1} "
                         f"held-out real images, got {n}")
    return float(np.sort(scores)[::-1][k])


def auroc(negatives: Sequence[float] | np.ndarray | Tensor, positives: Sequence[float] | np.ndarray | Tensor) -> float:
    """The area under the ROC curve of scores where ``positives`` should score higher than ``negatives``.

    Exact: the Mann-Whitney U statistic over ``len(negatives) * len(positives)`` pairs, a tie counting one half
    (``P(pos > neg) + P(pos == neg) / 2``), from mid-ranks; the same number as ``sklearn.metrics.roc_auc_score``.
    Raises ValueError (one line) for an empty or non-finite side.
    """
    neg, pos = _scores("auroc negatives", negatives), _scores("auroc positives", positives)
    values = np.concatenate([neg, pos])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0  # 1-based mid-rank of each distinct value
    ranks = mid_ranks[inverse]
    u = ranks[neg.size:].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


# ------------------------------------------------------------------------------------------- the package
@dataclass
class DetectorPrediction:
    """What :meth:`Detector.predict` returns for a batch of B images of size H x W.

    Attributes:
        p_generated: (B,) probability that the image is generated or edited (sigmoid of the image logit).
        map: (B, H, W) per-pixel probability that the pixel was generated.
        flagged: (B,) bool, ``p_generated > threshold``.
        threshold: the calibrated threshold on ``p_generated``.
        note: :data:`SUPPORTING_SIGNAL`, always.
    """

    p_generated: Tensor
    map: Tensor
    flagged: Tensor
    threshold: float
    note: str = field(default=SUPPORTING_SIGNAL)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class Detector:
    """A verified detector package: the network, its calibrated threshold and what it was trained on.

    Attributes:
        net: the :class:`DetectorNet` (eval mode).
        config: the package's ``config.json``.
        model: the :class:`~ebru.trust.LoadedModel` (digest, licence) when loaded with :meth:`from_pretrained`.
        threshold_logit: flag an image when its image logit exceeds this (``threshold`` on p_generated).
    """

    def __init__(self, net: DetectorNet, config: dict[str, Any], model: LoadedModel | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.model = model
        self.threshold_logit = finite_number("threshold_logit", config.get("threshold_logit"))
        self.channels = net.config.in_channels

    @property
    def threshold(self) -> float:
        """The threshold on p_generated: sigmoid of :attr:`threshold_logit`."""
        return _sigmoid(self.threshold_logit)

    @property
    def fpr(self) -> float:
        """The false-positive target on real images the threshold was calibrated at."""
        return float(self.config.get("fpr", DETECTOR_FPR))

    @property
    def digest(self) -> str:
        """The package's manifest SHA-256 ("" for a detector built in memory)."""
        return self.model.manifest_sha256 if self.model is not None else ""

    @classmethod
    def from_pretrained(cls, detector_dir: str | os.PathLike | LoadedModel, device: str | torch.device = "cpu",
                        **load_options: Any) -> Detector:
        """Verify and load a detector package through ``ebru.load`` (manifest, signature, licence, strict read).

        ``detector_dir`` may be a package ``ebru.load`` already verified. ``load_options`` go to ``ebru.load``
        (``policy``, ``trusted_keys``, ``allow_unsigned``, ``acknowledge``, ``quiet``). Raises
        :class:`~ebru.trust.TrustError` (a ValueError, one line) for a package that fails its checks (a changed
        weight file fails its SHA-256), and ValueError for a package that is not a detector or whose weights
        do not match its config.
        """
        from ebru.trust import LoadedModel, load

        model = detector_dir if isinstance(detector_dir, LoadedModel) else load(detector_dir, **load_options)
        config = model.config
        where = model.path / "config.json"
        if config.get("kind") != KIND:
            raise ValueError(f"{where}: not an ebru generated-image detector (kind {config.get('kind')!r}); make one "
                             "with 'ebru detector train'")
        net = DetectorNet(**DetectorConfig.from_dict(config.get("net"), f"{where}: net").to_dict())
        try:
            net.load_state_dict(model.weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{model.path}: weights do not match config.json ({str(e).splitlines()[0]})") from None
        return cls(net, config, model, device)

    def _as_input(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != self.channels:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (B, {self.channels}, H, W), got {shape}")
        if images.dtype == torch.uint8:
            return images.to(self.device).float().div(127.5).sub(1).contiguous()  # one layout: one result
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0..255) or float in [-1, 1], got {images.dtype}")
        return images.to(self.device, torch.float32).contiguous()

    def logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(image_logits (B,), map_logits (B, H, W))`` on the CPU, in batches of at most 64.

        ``images``: (B, C, H, W), uint8 (0..255, as read from a file) or float in [-1, 1].
        """
        img, maps = [], []
        with torch.inference_mode():
            for start in range(0, len(images), MAX_BATCH):
                a, m = self.net(self._as_input(images[start:start + MAX_BATCH]))
                img.append(a.float().cpu())
                maps.append(m[:, 0].float().cpu())
        if not img:
            raise ValueError("no images given")
        return torch.cat(img), torch.cat(maps)

    def predict(self, images: Tensor) -> DetectorPrediction:
        """p(generated), the per-pixel map and the flag for each image (see :class:`DetectorPrediction`).

        ``images``: (B, C, H, W), uint8 or float in [-1, 1]; any H, W (the network is fully convolutional,
        though it knows only what it was trained on, :attr:`config` ``trained_on``).
        """
        image_logits, map_logits = self.logits(images)
        return DetectorPrediction(torch.sigmoid(image_logits), torch.sigmoid(map_logits),
                                  image_logits > self.threshold_logit, self.threshold)


def _card(config: dict[str, Any], licence: dict[str, str | None], base_model: Sequence[str], dataset: str) -> str:
    trained = config.get("trained_on", {})
    settings = ", ".join(f"{s['sampler']}:{s['steps']}" for s in trained.get("settings", []))
    front = ["---", *(f"{k}: {json.dumps(v)}" for k, v in licence.items() if v), "library_name: ebru"]
    front += ["base_model:", *(f"  - {json.dumps(b)}" for b in base_model)] if base_model else ["base_model: null"]
    front += ["datasets:", f"  - {json.dumps(dataset)}", "pipeline_tag: image-classification",
              "intended_use: a supporting signal of generated or inpainted images; never decides alone", "---", ""]
    body = [
        "# ebru generated-image detector",
        "",
        f"A fully convolutional classifier ({config['net']}) that gives p(generated) for an image and a map of where "
        f"it thinks the image was generated or edited. Trained on real images against the un-watermarked outputs "
        f"of {len(trained.get('models', []))} model(s) ({settings}) and real images with regions inpainted by them; "
        f"threshold {_sigmoid(config['threshold_logit']):.4g} calibrated at {config['fpr']:g} false positives on "
        f"{config.get('calibration', {}).get('images', '?')} held-out real images.",
        "",
        SUPPORTING_SIGNAL,
        "",
        "Use it with `ebru detect FILE... --detector <this directory>`.",
        "",
    ]
    return "\n".join(front) + "\n".join(body)


def write_detector(path: str | os.PathLike, net: DetectorNet, threshold_logit: float, *, image_shape: Sequence[int],
                   fpr: float = DETECTOR_FPR, trained_on: dict[str, Any] | None = None,
                   calibration: dict[str, Any] | None = None, dataset: str = "", license_id: str = "mit",
                   license_name: str | None = None, license_link: str | None = None,
                   lineage: list[dict[str, Any]] | None = None, base_model: Sequence[str] = (),
                   provenance: dict[str, Any] | None = None, sign_key: Any = None) -> Path:
    """Write a detector package at ``path`` (atomically, replacing one that is there); returns ``path``.

    ``config.json``: ``kind`` :data:`KIND`, ``net`` (:class:`DetectorConfig`), ``image_shape`` (C, H, W) it was
    trained at, ``threshold_logit`` and ``threshold`` (on p_generated), ``fpr``, ``calibration``, ``trained_on``
    (the generators' digests, samplers and steps) and ``supporting_signal``. ``license_id`` (``license_name``,
    ``license_link``): the card's licence (``train_detector`` gives the first generator's). ``base_model`` and
    ``lineage``: the generator packages the detector learnt from (:meth:`~ebru.trust.LoadedModel.lineage_entry`),
    so their licences bind it. Written by :func:`ebru.trust.write_trained_package`: a ``sign_key`` that cannot be
    used leaves the package written, unsigned, and raises a one-line ValueError.
    """
    import ebru
    from ebru.trust import write_trained_package

    threshold_logit = finite_number("threshold_logit", threshold_logit)
    config = {
        "ebru_version": ebru.__version__,
        "kind": KIND,
        "net": net.config.to_dict(),
        "image_shape": [int(s) for s in image_shape],
        "threshold_logit": threshold_logit,
        "threshold": _sigmoid(threshold_logit),
        "fpr": finite_number("fpr", fpr, positive=True),
        "calibration": calibration or {},
        "trained_on": trained_on or {},
        "supporting_signal": SUPPORTING_SIGNAL,
    }
    licence = {"license": license_id, "license_name": license_name, "license_link": license_link}
    card = _card(config, licence, base_model, dataset or "unknown")
    prov = {"created_by": "ebru detector train", **(provenance or {})}
    return write_trained_package(path, config, net.state_dict(), card, prov, sign_key=sign_key, lineage=lineage)
