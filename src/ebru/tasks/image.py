"""The image task: EDM-style denoiser training on an image data set, and its model package.

One global batch draws, from the trainer's generator: image indices, noise levels from
EDM's log-normal (``p_mean``, ``p_std``; Karras et al. 2022, sec. 5; for a rectified-flow model,
``prediction = weighting = "flow"``, it is SD3's logit-normal time), Gaussian noise, the
labels dropped to the null class ``-1`` for classifier-free guidance (``cond_dropout``,
Ho & Salimans 2022) and, with ``hflip``, horizontal flips. The loss is
:func:`ebru.diffusion.denoising_loss` under the configured preconditioning and weighting.

The exported package (``export``) holds ``config.json`` (network, preconditioning, image
shape, class names, sampling defaults, training record), ``model.safetensors`` (the EMA
weights), ``MODEL_CARD.md`` and ``manifest.json`` with provenance, written by the one package
writer :func:`ebru.trust.write_trained_package` (signed when ``sign_key`` is set). It is what
``ebru sample`` and ``ImagePipeline.from_pretrained`` load, through ``ebru.load``.

Latent diffusion (Rombach et al. 2022): with ``autoencoder = "AE_DIR"`` (an autoencoder package,
:mod:`ebru.tasks.autoencoder`) the images are encoded once, before training, to scaled latents
(:class:`~ebru.tasks.latent.LatentSpace`; with ``hflip`` the flipped images too, since flipping
latents is not encoding a flipped image), the network is sized for the latents, previews are
decoded, and the package bundles the autoencoder as a verified component (its weights, their
SHA-256 in ``config.json``'s ``latent`` record, and its licence in the lineage; see
:mod:`ebru.tasks.latent`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import ebru
from ebru.data import ImageDataset, load_dataset
from ebru.data.grid import save_grid
from ebru.diffusion import WEIGHTINGS, LogNormalSigma, Precond, denoising_loss, sample
from ebru.diffusion.defaults import SAMPLING
from ebru.nets import build_net
from ebru.trust import card_front_matter, write_trained_package

from .base import TASKS, TrainState, code_revision
from .latent import AUTOENCODER_WEIGHTS, LatentSpace

NULL_LABEL = -1  # the class label a network reads as "no class" (the unconditional branch of CFG)


def image_net_config(cfg: Any, data: ImageDataset) -> dict[str, Any]:
    """The network config for ``data``: ``cfg.model`` plus the image size, channels and classes of the data.

    Raises ValueError for non-square images, or a ``model`` key that contradicts the data.
    """
    c, h, w = data.image_shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    net = {"kind": "unet", **cfg.model}
    if net["kind"] == "autoencoder":  # an nn.Module of ebru.nets, but not a denoiser
        raise ValueError("model.kind = 'autoencoder' is trained by task = \"autoencoder\"; a denoiser's model.kind "
                         "is unet or dit")
    for key, value in (("image_size", h), ("in_channels", c), ("out_channels", c)):
        if key in cfg.model and cfg.model[key] != value:
            raise ValueError(f"model.{key} = {cfg.model[key]} but the data has {key.replace('_', ' ')} {value}")
        net[key] = value
    net["num_classes"] = data.num_classes if (cfg.class_conditional and data.num_classes) else None
    return net


@TASKS.register("image")
class ImageTask:
    """EDM-style denoiser training on an image data set (the task of every image recipe).

    Args:
        cfg: the run's ``TrainConfig``; reads ``data``, ``image_size``, ``model``, ``class_conditional``,
            ``hflip``, ``prediction``, ``sigma_data``, ``p_mean``/``p_std``, ``weighting``, ``cond_dropout``,
            the ``sample_*`` preview settings, ``license`` and ``sign_key``.
        device: where the images live and the network trains.
        data: an ``ImageDataset`` to use instead of ``cfg.data``.
        is_main: print the skipped-files report (main process only).
    """

    name = "image"
    unit = "images"
    latent: LatentSpace | None = None  # latent diffusion: set by enter_latent_space (subclasses may not call it)
    latent_package: Any = None

    def __init__(self, cfg: Any, device: torch.device, data: ImageDataset | None = None, is_main: bool = True):
        self.cfg = cfg
        self.device = device
        if data is None:
            with warnings.catch_warnings():  # the skipped-file report is printed once below, as one line
                warnings.simplefilter("ignore", UserWarning)
                data = load_dataset(cfg.data, image_size=cfg.image_size)
            if getattr(data, "skipped", None) and is_main:
                print(f"data: {data.report}", flush=True)
        self.data = data
        images, labels = self.data.tensors()
        self.images = images.to(device)  # (N, C, H, W) in [-1, 1]
        self.labels = labels.to(device)  # (N,) class indices
        self.net_config = image_net_config(cfg, self.data)
        self.conditional = self.net_config["num_classes"] is not None
        self.sigma_dist = LogNormalSigma(cfg.p_mean, cfg.p_std)
        # the run's settings that the loss weighting takes (EDM's needs sigma_data; snr, v and uniform take none)
        self.weighting_options = WEIGHTINGS[cfg.weighting].options
        self.enter_latent_space(is_main)

    def enter_latent_space(self, is_main: bool = True) -> None:
        """With ``autoencoder = "AE_DIR"``: verify the autoencoder, get ready to encode the images (and their flips)
        once each, and size the network for the latents. Sets ``latent`` (the :class:`LatentSpace`, or None for pixel
        diffusion), ``pixel_shape`` (C, H, W of the images) and ``images_flipped`` (latents of the flipped
        images, or None). Raises ValueError (one line) for a package that is not an autoencoder, images of a size
        the autoencoder's factor does not divide, or of another size than it was trained on."""
        self.latent = self.latent_package = None
        self.latent_cache: dict[bool, tuple[Tensor, Tensor]] = {}
        self.pixel_shape = tuple(int(s) for s in self.images.shape[1:])
        self.example_shape = self.pixel_shape  # (C, H, W) of what is diffused: the images, or their latents
        spec = self.cfg.autoencoder
        if not isinstance(spec, str) or not spec:
            return
        latent, package = LatentSpace.from_autoencoder_package(spec, self.device)
        _, h, w = self.pixel_shape
        f, p = latent.factor, latent.pad
        if (h + 2 * p) % f or (w + 2 * p) % f:
            raise ValueError(f"image size {h}x{w}{f' (padded by {p})' if p else ''} is not divisible by the "
                             f"autoencoder's factor f={f}; {spec} cannot encode {self.cfg.data}")
        if tuple(latent.image_shape) != self.pixel_shape:
            raise ValueError(f"the autoencoder {spec} was trained on {'x'.join(map(str, latent.image_shape))} images "
                             f"and {self.cfg.data} has {'x'.join(map(str, self.pixel_shape))}")
        n = len(self.images)
        # latents are encoded lazily, the first time an image (or its flip) is drawn, and kept: deterministic (the
        # posterior mode), so results do not depend on when; and a budget that sees a fraction of the data set
        # pays only for what it sees (encoding all of it first cost minutes of a 12-minute CPU budget)
        self.latent_cache = {flip: (torch.zeros(n, *latent.latent_shape, device=self.device),
                                    torch.zeros(n, dtype=torch.bool, device=self.device)) for flip in (False, True)}
        if is_main:
            print(f"latent diffusion: images {'x'.join(map(str, self.pixel_shape))} encoded by {spec} to "
                  f"{'x'.join(map(str, latent.latent_shape))} latents (scale factor {latent.scale:.5f}) as they are "
                  "first drawn", flush=True)
        zc, zh, _ = latent.latent_shape
        for key, value in (("image_size", zh), ("in_channels", zc), ("out_channels", zc)):
            if key in self.cfg.model and self.cfg.model[key] != value:
                raise ValueError(f"model.{key} = {self.cfg.model[key]} but the latents have {key.replace('_', ' ')} "
                                 f"{value}; drop model.{key}")
            self.net_config[key] = value
        self.latent, self.latent_package = latent, package
        self.example_shape = tuple(latent.latent_shape)

    def clean(self, batch: dict[str, Tensor], part: slice, idx: Tensor) -> Tensor:
        """The clean examples of the slice ``part`` (images ``idx``): images or latents, flipped where drawn."""
        flip = batch["flip"][part].to(self.device) if "flip" in batch else torch.zeros_like(idx, dtype=torch.bool)
        if self.latent is None:
            x0 = self.images[idx]
            return torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        x0 = torch.empty((len(idx), *self.example_shape), device=self.device)
        for flipped in (False, True):  # each orientation encoded only for the examples drawn in it
            rows = (flip == flipped).nonzero().flatten()
            if len(rows):
                x0[rows] = self.latents(idx[rows], flipped)
        return x0

    def latents(self, idx: Tensor, flipped: bool) -> Tensor:
        """Scaled latents of images ``idx`` (flipped or not), encoded the first time each is asked for, then kept."""
        z, done = self.latent_cache[flipped]
        new = idx[~done[idx]].unique()
        if len(new):
            x = self.images[new]
            z[new] = self.latent.encode(x.flip(-1) if flipped else x)
            done[new] = True
        return z[idx]

    def to_pixels(self, x: Tensor) -> Tensor:
        """Sampled examples as images: latents decoded (latent diffusion), images unchanged."""
        return x if self.latent is None else self.latent.decode(x)

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(the network whose weights are trained and saved, its preconditioned Denoiser that the loss calls)."""
        net = build_net(self.net_config).to(self.device)
        return net, Precond(net, self.cfg.prediction, self.cfg.sigma_data).to(self.device)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Indices (B,), sigma (B,), noise (B, C, H, W), drop (B,) bool and, with hflip, flip (B,) bool."""
        B, g = batch_size, generator
        batch = {
            "idx": torch.randint(len(self.images), (B,), generator=g),
            "sigma": self.sigma_dist(B, generator=g).to(torch.float32),
            "noise": torch.randn((B, *self.example_shape), generator=g),
            "drop": torch.rand(B, generator=g) < self.cfg.cond_dropout,
        }
        if self.cfg.hflip:
            batch["flip"] = torch.rand(B, generator=g) < 0.5
        return batch

    def condition(self, batch: dict[str, Tensor], part: slice, idx: Tensor) -> dict[str, Tensor]:
        """The network's condition keywords for the slice ``part`` (images ``idx``): class labels, dropped to -1."""
        if not self.conditional:
            return {}
        labels = self.labels[idx].clone()
        labels[batch["drop"][part].to(self.device)] = NULL_LABEL
        return {"class_labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], part: slice) -> Tensor:
        """Per-sample weighted denoising loss (B_part,) of the slice ``part``, under :meth:`condition`."""
        idx = batch["idx"][part].to(self.device)
        x0 = self.clean(batch, part, idx)
        cond = self.condition(batch, part, idx)
        options = {k: v for k, v in {"sigma_data": self.cfg.sigma_data}.items() if k in self.weighting_options}
        return denoising_loss(model, x0, batch["sigma"][part].to(self.device), batch["noise"][part].to(self.device),
                              self.cfg.weighting, options, **cond)

    # ---------------------------------------------------------------------------------------- outputs
    def denoiser(self, net: nn.Module) -> Precond:
        """``net`` (e.g. ``state.ema``) as a Denoiser under this run's preconditioning."""
        return Precond(net, self.cfg.prediction, self.cfg.sigma_data)

    def preview(self, state: TrainState, stem: Path, per_class: int = 8) -> Path:
        """A sample grid ``<stem>.png`` from the EMA weights: one labelled row per class, or 8x8 unconditional."""
        d, cfg = self.denoiser(state.ema), self.cfg
        path = Path(stem).with_suffix(".png")
        shape = self.example_shape
        common = {"sampler": cfg.sample_sampler, "steps": cfg.sample_steps, "sigma_min": cfg.sigma_min,
                  "sigma_max": cfg.sigma_max, "device": self.device}
        if self.conditional:
            k = self.net_config["num_classes"]
            labels = torch.arange(k, device=self.device).repeat_interleave(per_class)
            x = sample(d, (len(labels), *shape), seeds=range(len(labels)), guidance_scale=cfg.sample_guidance,
                       uncond={"class_labels": torch.full((1,), NULL_LABEL, device=self.device)},
                       class_labels=labels, **common)
            names = self.data.class_names or [str(i) for i in range(k)]
            return save_grid(self.to_pixels(x), path, nrow=per_class, row_labels=names, title=f"step {state.step}")
        x = sample(d, (64, *shape), seeds=range(64), **common)
        return save_grid(self.to_pixels(x), path, nrow=8, title=f"step {state.step}")

    def export(self, state: TrainState, path: Path) -> Path:
        """Write the model package at ``path`` (see the module docstring); sign it when ``sign_key`` is set.

        A signing failure keeps the written package, unsigned, and raises a one-line error saying how
        to sign it afterwards: the trained weights are never lost to a key problem.
        """
        path = Path(path)
        config = self.model_config(state)
        weights = {k: v.detach().contiguous().cpu() for k, v in state.ema.state_dict().items()}
        extra: dict[str, Any] = {}
        if self.latent is not None:  # the autoencoder goes in as a verified component, its licence in the lineage
            name = self.latent.source["name"]
            extra = {"extra_files": {AUTOENCODER_WEIGHTS: self.latent.weights_bytes(self.latent_package)},
                     "lineage": self.latent_package.lineage_entry(name)}
        write_trained_package(path, config, weights, model_card(config, self.cfg.license),
                              self.provenance(state, config["training"]["code_revision"]),
                              sign_key=self.cfg.sign_key, metadata={"format": "pt", "ebru_kind": "image-diffusion"},
                              **extra)
        return path

    def model_config(self, state: TrainState) -> dict[str, Any]:
        """The package's ``config.json``."""
        cfg, data = self.cfg, self.data
        return {
            "ebru_version": ebru.__version__,
            "kind": "image-diffusion",
            "net": self.net_config,
            "precond": {"prediction": cfg.prediction, "sigma_data": cfg.sigma_data},
            "image_shape": list(data.image_shape),
            **({"latent": self.latent.record()} if self.latent is not None else {}),
            "num_classes": self.net_config.get("num_classes"),
            "class_names": data.class_names if self.conditional else None,
            "sampling": {"sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max, "sampler": cfg.sample_sampler,
                         "steps": cfg.sample_steps, "guidance": cfg.sample_guidance, "schedule": SAMPLING.schedule},
            "training": {"steps": state.step, "images_seen": state.items_seen,
                         "minutes": round(state.elapsed / 60, 2), "final_loss": state.final_loss,
                         "dataset": data.source, "dataset_hash": data.content_hash, "config": cfg.to_dict(),
                         "code_revision": code_revision(), "weights": "ema"},
        }

    def provenance(self, state: TrainState, revision: str | None) -> dict[str, Any]:
        """The training provenance recorded (and signed) in the package manifest (the autoencoder of a latent
        model as a verified component)."""
        if self.latent is not None:
            src = self.latent.source
            return {**self.pixel_provenance(state, revision),
                    "components": {"autoencoder": {"name": src["name"], "digest": src["manifest_sha256"],
                                                   "weights_sha256": src["weights_sha256"]}}}
        return self.pixel_provenance(state, revision)

    def pixel_provenance(self, state: TrainState, revision: str | None) -> dict[str, Any]:
        """The training provenance without components."""
        return {
            "created_by": "ebru train",
            "dataset": self.data.source,
            "dataset_hash": self.data.content_hash,
            "config": self.cfg.to_dict(),
            "code_revision": revision,
            "final_metrics": {"final_loss": state.final_loss, "steps": state.step, "images_seen": state.items_seen,
                              "minutes": round(state.elapsed / 60, 2)},
        }


def model_card(config: dict[str, Any], license_id: str) -> str:
    """``MODEL_CARD.md`` of an image package: YAML front matter (licence, datasets, pipeline tag) and a summary."""
    t = config["training"]
    classes = config.get("class_names")
    text = config.get("conditioning") == "text"
    tag = ("text-to-image" if text else
           "class-conditional-image-generation" if classes else "unconditional-image-generation")
    latent = config.get("latent")
    front = card_front_matter(license_id, t["dataset"], pipeline_tag=tag,
                              intended_use="research and education; generating images like the training set",
                              base_model=[latent["name"]] if latent else ())
    lines = [
        "",
        "# ebru image diffusion model",
        "",
        f"A {config['net']['kind']} denoiser ({config['precond']['prediction']} preconditioning) "
        + (f"in the {'x'.join(map(str, latent['latent_shape']))} latent space of the autoencoder `{latent['name']}` "
           f"(bundled, weights `{latent['weights_sha256']}`; its licence counts as this model's base) "
           if latent else "")
        + "trained by ebru "
        f"{config['ebru_version']} on {t['dataset']} for {t['steps']} steps ({t['images_seen']} images, "
        f"{t['minutes']} minutes). Final training loss "
        f"{'n/a' if t['final_loss'] is None else format(t['final_loss'], '.4f')}. The weights are the EMA.",
        "",
        f"Image shape: {config['image_shape']}. "
        + (f"Conditioned on text through {config['text_encoder']['name']} (weights "
           f"`{config['text_encoder']['digest']}`)." if text else
           f"Classes: {', '.join(classes)}." if classes else "Unconditional."),
        "",
        f"Dataset content SHA-256: `{t['dataset_hash']}`. Code revision: `{t['code_revision']}`.",
        "",
        ("Sample it with `ebru sample <this directory> --prompt \"...\" -n 16 --grid samples.png`." if text else
         "Sample it with `ebru sample <this directory> -n 16 --grid samples.png`."),
        "",
    ]
    return front + "\n".join(lines)
