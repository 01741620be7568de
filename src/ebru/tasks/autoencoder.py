"""The autoencoder task: a KL autoencoder (:class:`ebru.nets.Autoencoder`) trained on images, and its package.

The loss of one image x (Rombach et al. 2022, appendix G, without the adversarial term)::

    L = mean |x - D(z)|  +  perceptual_weight * P(x, D(z))  +  kl_weight * KL(q(z|x) || N(0, I)) / (C H W)

with ``z = mean + std * eps`` the reparameterised posterior sample (``eps`` drawn in ``draw`` from the
trainer's generator, so a run resumes bit for bit). Both per-image terms are means over pixels, so
``kl_weight`` has LDM's meaning (their sums over pixels, divided by C H W): 1e-6 by default, as LDM's KL-f4/f8.

``P`` is a perceptual distance on ebru's own Fashion-MNIST feature network (no downloaded LPIPS): the
LPIPS recipe (Zhang et al. 2018: unit-normalise each position's channel vector, square the differences,
average over positions, add the layers) with equal layer weights, on the ReLU outputs of its three conv
stages before the global pool (28x28x32, 14x14x64, 7x7x128). Those layers hold edges, textures and part
shapes, what L1 alone blurs; the pooled 256-d features are left out on purpose, because they are what
rFID reads, so rFID stays a check the training did not optimise directly. The network takes 1x28x28
images: with ``pad`` the padding is cropped off before it looks. The optional patch discriminator
switched on late (LDM's ``disc_start``) needs a second optimiser in the Trainer and is a later landing.

``[autoencoder]`` table keys: ``pad`` (background pixels added on each side: Fashion-MNIST 28 -> 32 with 2),
``kl_weight``, ``perceptual_weight``, ``scale_images`` (how many training images the latent scale factor is
computed on at export).

The exported package (``kind = "autoencoder"``) holds ``config.json`` (the network config, whose
``scale_factor`` is 1 / std of the latents of ``scale_images`` training images, computed from data at
export like Stable Diffusion's 0.18215; the image and latent shapes; the training record),
``model.safetensors`` (EMA weights), ``MODEL_CARD.md`` and ``manifest.json``, written by
:func:`ebru.trust.write_trained_package`; ``ebru.load`` verifies it and ``ebru eval AE_DIR`` scores it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ebru
from ebru.checks import finite_number, positive_int
from ebru.data import ImageDataset, load_dataset
from ebru.data.grid import save_grid
from ebru.nets import Autoencoder, AutoencoderConfig
from ebru.nets.config import DictConfig
from ebru.trust import card_front_matter, load_bytes, write_trained_package

from .base import TASKS, TrainState, code_revision

# ebru's shipped Fashion-MNIST feature network (ebru.eval.feature_net), found by path: ebru.eval sits above
# ebru.tasks in the layer order, so it cannot be imported here. Its SHA-256 is checked before it is read.
FEATURE_WEIGHTS = Path(ebru.__file__).resolve().parent / "eval" / "weights" / "fmnist_features.safetensors"
FEATURE_INFO = FEATURE_WEIGHTS.with_suffix(".json")
PERCEPTUAL_STAGES = ((0, 1), (3, 4), (6,))  # body indices of the conv blocks ending at relu1_2, relu2_2, relu3


@dataclass(frozen=True)
class AutoencoderTaskConfig(DictConfig):
    """The ``[autoencoder]`` table of a recipe (see the module docstring)."""

    pad: int = 0
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.1
    scale_images: int = 2048

    KIND: ClassVar[str] = "autoencoder"

    def __post_init__(self) -> None:
        positive_int("autoencoder.pad", self.pad, minimum=0)
        positive_int("autoencoder.scale_images", self.scale_images, minimum=2)
        finite_number("autoencoder.kl_weight", self.kl_weight, minimum=0.0)
        finite_number("autoencoder.perceptual_weight", self.perceptual_weight, minimum=0.0)


class FeaturePerceptual(nn.Module):
    """LPIPS-style distance (B,) on the conv stages of ebru's Fashion-MNIST feature network; frozen.

    Input: two (B, 1, 28, 28) batches in [-1, 1]. Output: the sum over the three stages of the mean over
    positions of ``|| f(x)/|f(x)| - f(y)/|f(y)| ||^2`` (Zhang et al. 2018, eq. 1 with unit layer weights).
    Raises FileNotFoundError / ValueError when the weights are missing or their SHA-256 does not match.
    """

    def __init__(self) -> None:
        super().__init__()
        if not FEATURE_WEIGHTS.is_file() or not FEATURE_INFO.is_file():
            raise FileNotFoundError(f"the perceptual loss needs ebru's feature network weights in "
                                    f"{FEATURE_WEIGHTS.parent}; set autoencoder.perceptual_weight = 0 to train without")
        data = FEATURE_WEIGHTS.read_bytes()
        want = json.loads(FEATURE_INFO.read_text(encoding="utf-8"))["sha256"]
        if hashlib.sha256(data).hexdigest() != want:
            raise ValueError(f"{FEATURE_WEIGHTS}: SHA-256 does not match {FEATURE_INFO.name} (edited or damaged)")
        state = load_bytes(data, FEATURE_WEIGHTS)[0]
        self.stages = nn.ModuleList()
        for stage in PERCEPTUAL_STAGES:
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if stage[0] else []
            for i in stage:
                w = state[f"body.{i}.0.weight"]
                conv, bn = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False), nn.BatchNorm2d(w.shape[0])
                conv.load_state_dict({"weight": w})
                bn.load_state_dict({k: state[f"body.{i}.1.{k}"] for k in bn.state_dict()})
                layers += [conv, bn, nn.ReLU()]
            self.stages.append(nn.Sequential(*layers))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeaturePerceptual:
        return super().train(False)  # always eval: the batch-norm statistics are the feature network's

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1:] != (1, 28, 28) or y.shape != x.shape:
            raise ValueError(f"the perceptual loss takes two 1x28x28 batches, got {tuple(x.shape)}, {tuple(y.shape)}")
        total = x.new_zeros(x.shape[0])
        for stage in self.stages:
            x = stage(x)
            with torch.no_grad():  # the originals' features: no gradient needed, none kept
                y = stage(y)
            d = F.normalize(x, dim=1, eps=1e-10) - F.normalize(y, dim=1, eps=1e-10)
            total = total + d.square().sum(1).mean((1, 2))
        return total


def latent_scale(ae: Autoencoder, images: Tensor, batch: int = 256) -> tuple[float, Tensor]:
    """(1 / std of the latents, the latents) of ``images`` (N, C, H, W) in [-1, 1] under ``ae``.

    The latents are the posterior modes (deterministic); the std is over every element (Stable Diffusion's
    ``1 / z.flatten().std()``, Rombach et al. 2022 sec. 4.3.2). Raises ValueError for fewer than 2 images
    or latents that are constant or not finite.
    """
    if len(images) < 2:
        raise ValueError(f"the latent scale factor needs at least 2 images, got {len(images)}")
    device = next(ae.parameters()).device
    with torch.no_grad():
        z = torch.cat([ae.encode(images[i:i + batch].to(device)).mode().float().cpu()
                       for i in range(0, len(images), batch)])
    std = z.std().item()
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the latents' std is {std}: cannot compute the latent scale factor")
    return 1.0 / std, z


@TASKS.register("autoencoder")
class AutoencoderTask:
    """A KL autoencoder on an image data set: L1 + perceptual + KL (see the module docstring).

    Args:
        cfg: the run's ``TrainConfig``; reads ``data``, ``image_size``, ``model`` (an
            :class:`~ebru.nets.AutoencoderConfig` without ``image_size``/``in_channels``, taken from the data),
            ``hflip``, the ``[autoencoder]`` table, ``license`` and ``sign_key``.
        device: where the images live and the network trains.
        data: an ``ImageDataset`` to use instead of ``cfg.data``.
        is_main: print the skipped-files report (main process only).
    """

    name = "autoencoder"
    unit = "images"

    def __init__(self, cfg: Any, device: torch.device, data: ImageDataset | None = None, is_main: bool = True):
        self.cfg = cfg
        self.device = device
        self.opts = AutoencoderTaskConfig.from_dict(cfg.autoencoder)
        if data is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                data = load_dataset(cfg.data, image_size=cfg.image_size)
            if getattr(data, "skipped", None) and is_main:
                print(f"data: {data.report}", flush=True)
        self.data = data
        c, h, w = data.image_shape
        if h != w:
            raise ValueError(f"images must be square, got {h}x{w}")
        p = self.opts.pad
        images = data.tensors()[0]
        self.images = F.pad(images, (p, p, p, p), value=-1.0).to(device)  # (N, C, H+2p, W+2p), background -1
        size = h + 2 * p
        net = {"kind": "autoencoder", **cfg.model}
        for key, value in (("image_size", size), ("in_channels", c)):
            if key in cfg.model and cfg.model[key] != value:
                raise ValueError(f"model.{key} = {cfg.model[key]} but the (padded) data has {value}")
            net[key] = value
        if net.get("scale_factor") is not None:
            raise ValueError("model.scale_factor is computed from data at export; do not set it")
        self.net_config = AutoencoderConfig.from_dict(net).to_dict()  # every value checked now, before training
        self.ae_config = AutoencoderConfig.from_dict(self.net_config)
        self.perceptual = None
        if self.opts.perceptual_weight > 0:
            if (c, h) != (1, 28):
                raise ValueError(f"the perceptual loss uses ebru's Fashion-MNIST feature network (1x28x28 images); "
                                 f"the data is {c}x{h}x{w}: set autoencoder.perceptual_weight = 0")
            self.perceptual = FeaturePerceptual().to(device)

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(the autoencoder, the same module: the loss calls it directly)."""
        net = Autoencoder(self.ae_config).to(self.device)
        return net, net

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Indices (B,), posterior noise eps (B, *latent_shape) and, with hflip, flip (B,) bool."""
        g = generator
        batch = {"idx": torch.randint(len(self.images), (batch_size,), generator=g),
                 "eps": torch.randn((batch_size, *self.ae_config.latent_shape), generator=g)}
        if self.cfg.hflip:
            batch["flip"] = torch.rand(batch_size, generator=g) < 0.5
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-image loss (B_part,): L1 + perceptual_weight * P + kl_weight * KL / (C H W)."""
        o = self.opts
        x = self.images[batch["idx"][part].to(self.device)]
        if "flip" in batch:
            x = torch.where(batch["flip"][part].to(self.device)[:, None, None, None], x.flip(-1), x)
        recon, posterior = model(x, batch["eps"][part].to(self.device))
        loss = (recon - x).abs().mean((1, 2, 3)) + o.kl_weight * posterior.kl() / x[0].numel()
        if self.perceptual is not None:
            p = o.pad
            crop = (slice(None), slice(None), slice(p, x.shape[2] - p), slice(p, x.shape[3] - p))
            loss = loss + o.perceptual_weight * self.perceptual(recon[crop].float(), x[crop].float())
        return loss

    # ------------------------------------------------------------------------------------------- outputs
    def preview(self, state: TrainState, stem: Path, num: int = 8) -> Path:
        """``<stem>.png``: ``num`` training images (top row) over their reconstructions by the EMA weights."""
        idx = torch.linspace(0, len(self.images) - 1, min(num, len(self.images))).long()
        x = self.images[idx.to(self.device)]
        with torch.no_grad():
            recon = state.ema.decode(state.ema.encode(x).mode()).clamp(-1, 1)
        return save_grid(torch.cat([x, recon]).cpu(), Path(stem).with_suffix(".png"), nrow=len(x),
                         row_labels=["data", "recon"], title=f"step {state.step}")

    def scale_images(self) -> Tensor:
        """The training images the scale factor is computed on: ``scale_images`` evenly spaced ones (padded)."""
        n = min(self.opts.scale_images, len(self.images))
        return self.images[torch.linspace(0, len(self.images) - 1, n).round().long().to(self.device)]

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the autoencoder package at ``path`` (see the module docstring); signed when ``sign_key`` is set."""
        path = Path(path)
        scale, _ = latent_scale(state.ema, self.scale_images())
        config = self.model_config(state, scale)
        weights = {k: v.detach().contiguous().cpu() for k, v in state.ema.state_dict().items()}
        provenance = {"created_by": "ebru train", "dataset": self.data.source, "dataset_hash": self.data.content_hash,
                      "config": self.cfg.to_dict(), "code_revision": config["training"]["code_revision"],
                      "final_metrics": {"final_loss": state.final_loss, "steps": state.step,
                                        "images_seen": state.items_seen, "minutes": round(state.elapsed / 60, 2)}}
        write_trained_package(path, config, weights, model_card(config, self.cfg.license), provenance,
                              sign_key=self.cfg.sign_key, metadata={"format": "pt", "ebru_kind": "autoencoder"})
        return path

    def model_config(self, state: TrainState, scale: float) -> dict[str, Any]:
        """The package's ``config.json``; ``net.scale_factor`` = ``scale`` (1 / std of training latents)."""
        ae = replace(self.ae_config, scale_factor=scale)
        cfg, data = self.cfg, self.data
        return {
            "ebru_version": ebru.__version__,
            "kind": "autoencoder",
            "net": ae.to_dict(),
            "image_shape": [ae.in_channels, ae.image_size, ae.image_size],
            "data_image_shape": list(data.image_shape),
            "pad": self.opts.pad,
            "factor": ae.factor,
            "latent_shape": list(ae.latent_shape),
            "scale_factor": scale,
            "scale_factor_images": len(self.scale_images()),
            "losses": self.opts.to_dict(),
            "training": {"steps": state.step, "images_seen": state.items_seen,
                         "minutes": round(state.elapsed / 60, 2), "final_loss": state.final_loss,
                         "dataset": data.source, "dataset_hash": data.content_hash, "config": cfg.to_dict(),
                         "code_revision": code_revision(), "weights": "ema"},
        }


def model_card(config: dict[str, Any], license_id: str) -> str:
    """``MODEL_CARD.md`` of an autoencoder package: YAML front matter (licence, dataset) and a summary."""
    t, net = config["training"], config["net"]
    front = card_front_matter(license_id, t["dataset"], pipeline_tag="image-feature-extraction",
                              intended_use="research and education; the latent space of a latent diffusion model")
    shape, lat = "x".join(map(str, config["image_shape"])), "x".join(map(str, config["latent_shape"]))
    lines = [
        "",
        "# ebru KL autoencoder",
        "",
        f"A KL-regularised convolutional autoencoder (LDM family, f = {config['factor']}) trained by ebru "
        f"{config['ebru_version']} on {t['dataset']} for {t['steps']} steps ({t['images_seen']} images, "
        f"{t['minutes']} minutes). Final training loss "
        f"{'n/a' if t['final_loss'] is None else format(t['final_loss'], '.4f')}. The weights are the EMA.",
        "",
        f"Images {shape} (data {'x'.join(map(str, config['data_image_shape']))} padded by {config['pad']}) <-> "
        f"latents {lat}; latent scale factor {config['scale_factor']:.5f} (1 / std of the latents of "
        f"{config['scale_factor_images']} training images). Width {net['channels']}, channel_mult "
        f"{net['channel_mult']}, attention {'on' if net['attention'] else 'off'}.",
        "",
        f"Dataset content SHA-256: `{t['dataset_hash']}`. Code revision: `{t['code_revision']}`.",
        "",
        "Score it with `ebru eval <this directory>` (PSNR, SSIM, rFID on held-out images).",
        "",
    ]
    return front + "\n".join(lines)
