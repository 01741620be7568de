"""The autoencoder task: a KL autoencoder (:class:`ebru.nets.Autoencoder`) trained on images, and its package.

The images come from the recipe's ``data``: Fashion-MNIST (1x28x28), an image folder, or the Fashion scenes
(``"fashion-scenes:full64"``: 30,000 RGB 3x64x64 canvases, loaded through :func:`ebru.data.load_captioned`;
only the pictures are used, never the captions; see :func:`load_training_images`).

The loss of one image x (Rombach et al. 2022, appendix G; taming-transformers' ``LPIPSWithDiscriminator``)::

    L = mean |x - D(z)|  +  kl_weight * KL(q(z|x) || N(0, I)) / (C H W)  +  perceptual_weight * P(x, D(z))
        + preview_weight * mean |T(sg z) - sg D(z)|                                    (with a preview decoder)
        + disc_loss_weight * 0.5 * (mean relu(1 - Dis(x)) + mean relu(1 + Dis(R(D(z)))))  (from disc_start)

with ``z = mean + std * eps`` the reparameterised posterior sample (``eps`` drawn in ``draw`` from the
trainer's generator, so a run resumes bit for bit), ``sg`` stop-gradient (``detach``), ``Dis`` the patch
discriminator and ``R`` the gradient-reversal layer. The reconstruction terms are means over pixels, so
``kl_weight`` has LDM's meaning (their sums over pixels, divided by C H W): 1e-6 by default, as LDM's KL-f4/f8.

``P`` is a perceptual distance on ebru's own Fashion-MNIST feature network (no downloaded LPIPS): the
LPIPS recipe (Zhang et al. 2018: unit-normalise each position's channel vector, square the differences,
average over positions, add the layers) with equal layer weights, on the ReLU outputs of its three conv
stages before the global pool (28x28x32, 14x14x64, 7x7x128). Those layers hold edges, textures and part
shapes, what L1 alone blurs; the pooled 256-d features are left out on purpose, because they are what
rFID reads, so rFID stays a check the training did not optimise directly. The network takes 1x28x28
images: with ``pad`` the padding is cropped off before it looks. For data of any other shape (the 3x64x64
scenes) there is no perceptual network, and ``perceptual_weight > 0`` is refused in one line: such recipes
set it to 0 and train on L1 + KL (+ the optional discriminator).

**Preview decoder** (``model.preview_channels > 0``). ``T`` is the autoencoder's tiny TAESD-shaped decoder
(:class:`ebru.nets.autoencoder.PreviewDecoder`; madebyollin/taesd), trained in the same optimiser step by
distilling the real decoder, as TAESD is: L1 between its image of the latent and the real decoder's image
of the same latent, both inputs detached. The term leaves the autoencoder's gradients bit for bit as they
were (a test checks it) and teaches the preview to show what the final decode will show, not the data.

**Why the two helper terms are weighted down** (``preview_weight = 0.1``, ``disc_loss_weight = 0.01``).
The Trainer clips the norm of *all* trained parameters' gradients together (``grad_clip``, default 1), and
with this recipe the clip acts at nearly every step; gradients of the preview decoder or the discriminator
would then shrink the autoencoder's step (measured on the Fashion recipe: the preview at weight 1 took 5 %
of it on average, the discriminator at weight 1 up to 80 %). A term that only its own parameters see can be
scaled down for free, because AdamW's update is invariant to a constant scale of a parameter's gradient:
the preview decoder learned the same at weight 0.1 as at 1 (23.3 dB against the decoder after 250 steps,
both, without the clip), and the autoencoder keeps 99.9 % of its clipped step. With ``grad_clip`` unset the
autoencoder's trajectory does not depend on either term at all.

**Patch discriminator** (``disc_weight > 0``), LDM's adversarial term switched on late: a PatchGAN
(:class:`ebru.nets.autoencoder.PatchDiscriminator`) trained with the hinge loss from optimiser step
``disc_start`` on. ebru's Trainer has one optimiser, so the min-max game is played with a gradient-reversal
layer (Ganin & Lempitsky 2015) on the discriminator's input from the decoder: ``R`` is the identity forward
and multiplies the gradient by ``-2 * w / disc_loss_weight`` backward. One backward pass then gives the
discriminator the gradient that lowers its hinge loss and the decoder the reversed one, ``w * grad(-mean
relu(1 + Dis(D(z))))``: on the patches the discriminator does not reject with margin (``Dis > -1``) exactly
LDM's generator gradient ``w * grad(-mean Dis(D(z)))``. ``w`` is ``disc_weight`` times LDM's adaptive weight
(``disc_adaptive``, on by default: the ratio of the reconstruction's and the adversarial term's gradient
norms at the decoder's last layer, Esser et al. 2021 eq. 7), or ``disc_weight`` alone. What the choice gives up:

* it is the *minimax* game, not LDM's non-saturating generator loss: a patch the discriminator rejects
  with margin sends the decoder no gradient, so a discriminator that wins outright stalls the adversarial
  signal. Keep it small (``disc_channels``) and start it late, once L1 and the perceptual term have done
  most of their work (250-step smokes on Fashion, switched on at step 100: ``disc_weight = 0.5`` cost the
  reconstructions 5 dB of PSNR, 0.1 about 0.4 dB; what a late start gains is not measured yet);
* the players update simultaneously (gradient descent-ascent), not alternately, and share the optimiser:
  learning rate and schedule, AdamW's betas and weight decay, the clip, and the EMA (the discriminator's EMA
  weights are checkpointed and never used). LDM gives the discriminator its own Adam;
* under torchrun (DDP) every trained parameter must get a gradient at every step, so a discriminator that
  waits for ``disc_start`` is refused there: set ``disc_start = 0`` or train on one device. On one device
  it gets no loss at all before ``disc_start`` (no gradient: AdamW leaves it alone and starts its moments
  fresh when it switches on), and the run until then is the run without a discriminator, bit for bit;
* the adaptive weight costs two extra partial backward passes (to the decoder's last layer) and one
  extra discriminator pass per step once the discriminator plays; at switch-on, with an untrained
  discriminator, it is large (the adversarial gradient is tiny), as in LDM.

The network the Trainer trains, checkpoints and averages is :class:`AutoencoderTraining`: the autoencoder
(with its preview decoder) and the discriminator when there is one, so a resumed run continues bit for bit,
the game included. Packages carry the autoencoder only.

``[autoencoder]`` table keys: ``pad`` (background pixels added on each side: Fashion-MNIST 28 -> 32 with 2),
``kl_weight``, ``perceptual_weight``, ``scale_images`` (how many training images the latent scale factor is
computed on at export), ``preview_weight`` (> 0; see above), ``disc_weight`` (the decoder's adversarial weight,
0 = no discriminator; LDM's KL autoencoders use 0.5 with the adaptive weight), ``disc_start`` (the optimiser
step it switches on at), ``disc_channels`` (its width), ``disc_adaptive`` (LDM's adaptive weight, true),
``disc_loss_weight`` (> 0; see above).

The exported package (``kind = "autoencoder"``) holds ``config.json`` (the network config, whose
``scale_factor`` is 1 / std of the latents of ``scale_images`` training images, computed from data at
export like Stable Diffusion's 0.18215; the image and latent shapes; the training record),
``model.safetensors`` (EMA weights of the autoencoder and its preview decoder; never the discriminator's),
``MODEL_CARD.md`` and ``manifest.json``, written by :func:`ebru.trust.write_trained_package`; ``ebru.load``
verifies it and ``ebru eval AE_DIR`` scores it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ebru
from ebru.checks import finite_number, positive_int
from ebru.data import ImageDataset, load_captioned, load_dataset
from ebru.data.grid import save_grid
from ebru.data.scenes import is_scene_spec
from ebru.nets import Autoencoder, AutoencoderConfig
from ebru.nets.autoencoder import PatchDiscriminator, reverse_gradient
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
    preview_weight: float = 0.1
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_channels: int = 32
    disc_adaptive: bool = True
    disc_loss_weight: float = 0.01

    KIND: ClassVar[str] = "autoencoder"

    def __post_init__(self) -> None:
        positive_int("autoencoder.pad", self.pad, minimum=0)
        positive_int("autoencoder.scale_images", self.scale_images, minimum=2)
        finite_number("autoencoder.kl_weight", self.kl_weight, minimum=0.0)
        finite_number("autoencoder.perceptual_weight", self.perceptual_weight, minimum=0.0)
        finite_number("autoencoder.preview_weight", self.preview_weight, positive=True)
        finite_number("autoencoder.disc_weight", self.disc_weight, minimum=0.0)
        positive_int("autoencoder.disc_start", self.disc_start, minimum=0)
        positive_int("autoencoder.disc_channels", self.disc_channels)
        finite_number("autoencoder.disc_loss_weight", self.disc_loss_weight, positive=True)
        if not isinstance(self.disc_adaptive, bool):
            raise ValueError(f"autoencoder.disc_adaptive must be true or false, got {self.disc_adaptive!r}")


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


class AutoencoderTraining(nn.Module):
    """What the autoencoder task trains: ``autoencoder`` (with its preview decoder) and, optionally, ``discriminator``.

    ``forward(x, noise, adversarial=False, reconstruction_loss=None)`` takes images x (B, C, H, W) and posterior
    noise (B, *latent_shape) and returns a dict: ``recon`` D(z) (B, C, H, W) and ``posterior``; with a preview
    decoder ``preview`` T(sg z) (B, C, H, W); with ``adversarial`` (a discriminator is needed) ``logits_real``
    Dis(x) and ``logits_fake`` Dis(R(D(z))), each (B, 1, h, w), where R reverses the gradient times
    ``2 * adv_weight / disc_loss_weight`` (the loss takes ``disc_loss_weight`` times the hinge loss, so the
    decoder's adversarial gradient is ``adv_weight * grad(-mean relu(1 + Dis(D(z))))`` whatever that weight),
    and ``adv_weight`` (0-dim): ``disc_weight``, times LDM's adaptive weight
    (:meth:`adaptive_weight`) when ``reconstruction_loss`` (recon -> scalar) is given. Everything runs inside
    ``forward`` so that DDP sees every parameter used.
    """

    def __init__(self, autoencoder: Autoencoder, discriminator: nn.Module | None = None, disc_weight: float = 0.0,
                 disc_loss_weight: float = 1.0):
        super().__init__()
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.disc_weight = float(disc_weight)
        self.disc_loss_weight = float(disc_loss_weight)

    def forward(self, x: Tensor, noise: Tensor, adversarial: bool = False,
                reconstruction_loss: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
        ae = self.autoencoder
        posterior = ae.encode(x)
        z = posterior.sample(noise=noise)
        recon = ae.decode(z)
        out: dict[str, Any] = {"recon": recon, "posterior": posterior}
        if ae.preview is not None:
            out["preview"] = ae.preview(z.detach())
        if adversarial:
            if self.discriminator is None:
                raise ValueError("adversarial=True needs a discriminator (autoencoder.disc_weight > 0)")
            weight = recon.new_tensor(self.disc_weight)
            if reconstruction_loss is not None:
                weight = weight * self.adaptive_weight(reconstruction_loss(recon), recon)
            fake = reverse_gradient(recon, 2.0 * weight / self.disc_loss_weight)
            out["logits_real"], out["logits_fake"] = self.discriminator(torch.cat([x, fake])).chunk(2)
            out["adv_weight"] = weight
        return out

    def adaptive_weight(self, reconstruction: Tensor, recon: Tensor) -> Tensor:
        """LDM's adaptive weight (Esser et al. 2021, eq. 7; taming-transformers' ``calculate_adaptive_weight``).

        ``|grad_W reconstruction| / (|grad_W g| + 1e-4)`` at the decoder's last layer W, clamped to [0, 1e4] and
        detached, where ``g = mean relu(1 + Dis(recon))`` is what the decoder's adversarial gradient comes from
        through the reversal (LDM's ``-mean Dis(recon)`` on the patches not rejected with margin). Scales the
        adversarial gradient to the reconstruction's size at the layer both reach last.
        """
        last = self.autoencoder.decoder.conv_out.weight
        g_rec = torch.autograd.grad(reconstruction, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(F.relu(1.0 + self.discriminator(recon)).mean(), last, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss per image (B,): ``0.5 * (mean relu(1 - real) + mean relu(1 + fake))``
    over each image's patch logits (taming-transformers' ``hinge_d_loss``, per image)."""
    dims = tuple(range(1, logits_real.ndim))
    return 0.5 * (F.relu(1.0 - logits_real).mean(dims) + F.relu(1.0 + logits_fake).mean(dims))


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


def load_training_images(spec: str, image_size: int | None = None) -> ImageDataset:
    """The images an autoencoder trains on, by data spec: a Fashion scenes spec (``"fashion-scenes:full64"``:
    (N, 3, 64, 64) RGB canvases) through :func:`ebru.data.load_captioned`, whose captions are not used; any
    other spec (Fashion-MNIST, an image folder) through :func:`ebru.data.load_dataset`. A folder's
    skipped-file warnings are silenced here (the task prints its one-line report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if is_scene_spec(spec):
            return load_captioned(spec, image_size=image_size)
        return load_dataset(spec, image_size=image_size)


@TASKS.register("autoencoder")
class AutoencoderTask:
    """A KL autoencoder on an image data set: L1 + perceptual + KL, plus the preview decoder's distillation and
    the late discriminator when configured (see the module docstring).

    Args:
        cfg: the run's ``TrainConfig``; reads ``data`` (any image data spec, or a Fashion scenes spec: see
            :func:`load_training_images`), ``image_size``, ``model`` (an
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
            data = load_training_images(cfg.data, cfg.image_size)
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
        ae_dict = AutoencoderConfig.from_dict(net).to_dict()  # every value checked now, before training
        self.ae_config = AutoencoderConfig.from_dict(ae_dict)
        o = self.opts
        self.disc_config = {"kind": "patch", "in_channels": c, "channels": o.disc_channels} if o.disc_weight else None
        # a checkpoint must match the networks trained: the autoencoder's config as before, both with a discriminator
        self.net_config = ae_dict if self.disc_config is None else {"autoencoder": ae_dict,
                                                                     "discriminator": self.disc_config}
        if self.disc_config is not None:
            if size < 8:
                raise ValueError(f"the patch discriminator needs images of at least 8x8, got {size}x{size}")
            dist = torch.distributed
            if o.disc_start > 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError(f"autoencoder.disc_start = {o.disc_start}: under torchrun every trained parameter "
                                 "needs a gradient at every step; set autoencoder.disc_start = 0 or train on one "
                                 "device")
        self.step = 0  # the optimiser step the next draw is for (set_progress)
        self.perceptual = None
        if self.opts.perceptual_weight > 0:
            if (c, h, w) != (1, 28, 28):  # no perceptual network for other shapes (e.g. the 3x64x64 scenes) yet
                raise ValueError(f"the perceptual loss uses ebru's Fashion-MNIST feature network (1x28x28 images); "
                                 f"the data is {c}x{h}x{w}: set autoencoder.perceptual_weight = 0")
            self.perceptual = FeaturePerceptual().to(device)

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(an :class:`AutoencoderTraining`, the same module: the loss calls it directly).

        The autoencoder is built first, so its initial weights are those of a run without a discriminator.
        """
        ae = Autoencoder(self.ae_config)
        disc = None
        if self.disc_config is not None:
            disc = PatchDiscriminator(self.disc_config["in_channels"], self.disc_config["channels"])
        net = AutoencoderTraining(ae, disc, self.opts.disc_weight, self.opts.disc_loss_weight).to(self.device)
        return net, net

    def set_progress(self, step: int, items_seen: int) -> None:
        """The Trainer's counters before each draw: the discriminator plays from step ``disc_start`` on."""
        self.step = int(step)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Indices (B,), posterior noise eps (B, *latent_shape), with hflip flip (B,) bool, and with a
        discriminator ``adversarial`` (B,) bool: whether this step is at or past ``disc_start`` (drawn from nothing
        random, so the generator's stream is that of a run without one)."""
        g = generator
        batch = {"idx": torch.randint(len(self.images), (batch_size,), generator=g),
                 "eps": torch.randn((batch_size, *self.ae_config.latent_shape), generator=g)}
        if self.cfg.hflip:
            batch["flip"] = torch.rand(batch_size, generator=g) < 0.5
        if self.disc_config is not None:
            batch["adversarial"] = torch.full((batch_size,), self.step >= self.opts.disc_start)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-image loss (B_part,): L1 + kl_weight * KL / (C H W) + perceptual_weight * P, plus
        ``preview_weight`` times the preview decoder's L1 to the (detached) reconstruction and, from
        ``disc_start``, ``disc_loss_weight`` times the hinge loss through the gradient-reversal layer (see the
        module docstring)."""
        o = self.opts
        x = self.images[batch["idx"][part].to(self.device)]
        if "flip" in batch:
            x = torch.where(batch["flip"][part].to(self.device)[:, None, None, None], x.flip(-1), x)
        adversarial = "adversarial" in batch and bool(batch["adversarial"][part].any())
        adaptive = (lambda r: self.reconstruction_loss(r, x).mean()) if adversarial and o.disc_adaptive else None
        out = model(x, batch["eps"][part].to(self.device), adversarial, adaptive)
        recon, posterior = out["recon"], out["posterior"]
        loss = (recon - x).abs().mean((1, 2, 3)) + o.kl_weight * posterior.kl() / x[0].numel()
        if self.perceptual is not None:
            loss = loss + o.perceptual_weight * self.perceptual_distance(recon, x)
        if "preview" in out:  # distillation: T(sg z) -> sg D(z); the autoencoder's gradients are untouched
            loss = loss + o.preview_weight * (out["preview"] - recon.detach()).abs().mean((1, 2, 3))
        if adversarial:
            loss = loss + o.disc_loss_weight * hinge_d_loss(out["logits_real"].float(), out["logits_fake"].float())
        return loss

    def perceptual_distance(self, recon: Tensor, x: Tensor) -> Tensor:
        """P(x, recon) per image (B,) on the unpadded crop (see :class:`FeaturePerceptual`)."""
        p = self.opts.pad
        crop = (slice(None), slice(None), slice(p, x.shape[2] - p), slice(p, x.shape[3] - p))
        return self.perceptual(recon[crop].float(), x[crop].float())

    def reconstruction_loss(self, recon: Tensor, x: Tensor) -> Tensor:
        """LDM's ``nll_loss`` per image (B,): L1 + perceptual_weight * P, what the adaptive weight balances against."""
        rec = (recon - x).abs().mean((1, 2, 3))
        if self.perceptual is not None:
            rec = rec + self.opts.perceptual_weight * self.perceptual_distance(recon, x)
        return rec

    # ------------------------------------------------------------------------------------------- outputs
    def preview(self, state: TrainState, stem: Path, num: int = 8) -> Path:
        """``<stem>.png``: ``num`` training images (top row) over their reconstructions by the EMA weights, and
        with a preview decoder a third row: its images of the same latents."""
        ae = state.ema.autoencoder
        idx = torch.linspace(0, len(self.images) - 1, min(num, len(self.images))).long()
        x = self.images[idx.to(self.device)]
        rows, labels = [x], ["data", "recon"]
        with torch.no_grad():
            z = ae.encode(x).mode()
            rows.append(ae.decode(z).clamp(-1, 1))
            if ae.preview is not None:
                rows.append(ae.decode_preview(z))
                labels.append("preview")
        return save_grid(torch.cat(rows).cpu(), Path(stem).with_suffix(".png"), nrow=len(x),
                         row_labels=labels, title=f"step {state.step}")

    def scale_images(self) -> Tensor:
        """The training images the scale factor is computed on: ``scale_images`` evenly spaced ones (padded)."""
        n = min(self.opts.scale_images, len(self.images))
        return self.images[torch.linspace(0, len(self.images) - 1, n).round().long().to(self.device)]

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the autoencoder package at ``path`` (see the module docstring); signed when ``sign_key`` is set.

        The weights are the EMA autoencoder's (with its preview decoder); the discriminator stays in the checkpoints.
        """
        path = Path(path)
        ae = state.ema.autoencoder
        scale, _ = latent_scale(ae, self.scale_images())
        config = self.model_config(state, scale)
        weights = {k: v.detach().contiguous().cpu() for k, v in ae.state_dict().items()}
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
        (f"A tiny preview decoder (TAESD-shaped, width {net['preview_channels']}) rides along: "
         "`decode_preview(z)` approximates the decoder at a fraction of its cost, for live previews."
         if net.get("preview_channels") else "No preview decoder."),
        "",
        f"Dataset content SHA-256: `{t['dataset_hash']}`. Code revision: `{t['code_revision']}`.",
        "",
        "Score it with `ebru eval <this directory>` (PSNR, SSIM, rFID on held-out images).",
        "",
    ]
    return front + "\n".join(lines)
