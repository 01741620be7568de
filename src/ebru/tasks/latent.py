"""The latent space of a latent diffusion run: a verified autoencoder package, and how its denoiser package carries it.

Latent diffusion (Rombach et al. 2022) trains the denoiser on ``z = scale * mode(E(pad(x)))`` instead of the
pixels ``x``. :class:`LatentSpace` is that map for one autoencoder package (``kind = "autoencoder"``, written
by :mod:`ebru.tasks.autoencoder`): its network, its latent scale factor (1 / std of training latents, stored in
its config), the ``pad`` its training data got (Fashion-MNIST 28 -> 32), and where it came from.

A latent model's package bundles the autoencoder as a verified component, so it samples with nothing else at
hand and nothing else can be swapped in:

* ``autoencoder.safetensors``: the autoencoder package's ``model.safetensors``, byte for byte, hashed in the
  latent package's manifest like every file (and signed with it);
* ``config.json``'s ``latent`` record (:meth:`LatentSpace.record`): the autoencoder's network config, scale
  factor, pad, latent shape, the SHA-256 of its weights file and of its manifest, and its name;
* the card's ``base_model`` names the autoencoder and the manifest's lineage carries its licence
  (:meth:`ebru.trust.LoadedModel.lineage_entry`), so ``ebru.load``'s licence walk counts it.

:meth:`LatentSpace.from_package` rebuilds it from a verified latent package, refusing (one line) weights whose
SHA-256 differs from the recorded one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ebru.diffusion.latent import LatentDenoiser
from ebru.nets import Autoencoder, build_net
from ebru.trust import LoadedModel, load_bytes
from ebru.trust.manifest import AUTOENCODER_WEIGHTS, WEIGHTS
from ebru.trust.manifest import CONFIG as MODEL_CONFIG


class LatentSpace:
    """An autoencoder as the latent space of a diffusion model (see the module docstring).

    Args:
        autoencoder: the network (moved to eval mode, gradients off).
        scale: the latent scale factor (> 0).
        pad: background (-1) pixels added on each side of an image before encoding, cropped after decoding.
        source: the record of where it came from (``name``, ``weights_sha256``, ``manifest_sha256``).

    Attributes:
        latent_shape: (C_z, h, w) of one image's latents; image_shape: (C, H, W) of one image (unpadded).
    """

    def __init__(self, autoencoder: Autoencoder, scale: float, pad: int = 0, source: dict[str, Any] | None = None):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = float(scale)
        self.pad = int(pad)
        self.source = dict(source or {})
        c = autoencoder.config
        self.latent_shape = tuple(int(s) for s in c.latent_shape)
        self.image_shape = (int(c.in_channels), c.image_size - 2 * self.pad, c.image_size - 2 * self.pad)
        self.factor = int(c.factor)
        self.codec = LatentDenoiser(None, self.autoencoder, self.scale, pad=self.pad)  # encode / decode only

    # ------------------------------------------------------------------------------------------ making one
    @classmethod
    def from_autoencoder_package(cls, model_dir: str | os.PathLike | LoadedModel, device: str | torch.device = "cpu",
                                 **load_options: Any) -> tuple[LatentSpace, LoadedModel]:
        """Verify (``ebru.load``) an autoencoder package and make its latent space; returns (it, the package).

        Raises ValueError (one line, naming the file) for a package of another kind: a diffusion model given
        where the autoencoder belongs.
        """
        from ebru.trust import load

        model = model_dir if isinstance(model_dir, LoadedModel) else load(model_dir, **load_options)
        config = model.config
        if config.get("kind") != "autoencoder" or not isinstance(config.get("net"), dict):
            kind = config.get("kind", "unknown")
            raise ValueError(f"{model.path / MODEL_CONFIG}: an {kind} package, not an ebru autoencoder (train one "
                             "with 'ebru train autoencoder_fashion_mnist')")
        ae = build_net(config["net"])
        ae.load_state_dict(model.weights)
        weights_sha = model.manifest.files[WEIGHTS].sha256
        source = {"name": package_name(model.path), "weights_sha256": weights_sha,
                  "manifest_sha256": model.manifest_sha256}
        return cls(ae.to(device), config["scale_factor"], config.get("pad", 0), source), model

    @classmethod
    def from_package(cls, model: LoadedModel, device: str | torch.device = "cpu") -> LatentSpace:
        """The latent space a verified latent diffusion package bundles (``config["latent"]``).

        Raises ValueError (one line) when the record is malformed or the bundled weights' SHA-256 is not the one
        the config records (an autoencoder swapped in after the model was made).
        """
        rec = model.config.get("latent")
        where = model.path / MODEL_CONFIG
        if (not isinstance(rec, dict) or not isinstance(rec.get("autoencoder"), dict)
                or not isinstance(rec.get("scale_factor"), int | float) or not isinstance(rec.get("pad", 0), int)):
            raise ValueError(f"{where}: 'latent' must be a record of the bundled autoencoder (autoencoder, "
                             "scale_factor, pad, weights_sha256)")
        data = model.read(AUTOENCODER_WEIGHTS)
        want = rec.get("weights_sha256")
        if hashlib.sha256(data).hexdigest() != want:
            raise ValueError(f"{model.path / AUTOENCODER_WEIGHTS}: its SHA-256 does not match the autoencoder "
                             f"{rec.get('name', '?')!r} recorded in config.json ({str(want)[:16]}...); this latent "
                             "model must be used with the autoencoder it was trained on")
        weights, _ = load_bytes(data, model.path / AUTOENCODER_WEIGHTS)
        ae = build_net(rec["autoencoder"])
        try:
            ae.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{model.path / AUTOENCODER_WEIGHTS}: does not match the autoencoder config "
                             f"({str(e).splitlines()[0]})") from None
        source = {k: rec.get(k) for k in ("name", "weights_sha256", "manifest_sha256")}
        return cls(ae.to(device), rec["scale_factor"], rec.get("pad", 0), source)

    # ----------------------------------------------------------------------------------------- using one
    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def denoiser(self, latent_denoiser: Any) -> LatentDenoiser:
        """``latent_denoiser`` (a Denoiser over scaled latents) with this autoencoder around it."""
        return LatentDenoiser(latent_denoiser, self.autoencoder, self.scale, pad=self.pad)

    @torch.no_grad()
    def encode(self, images: Tensor, batch: int = 500) -> Tensor:
        """Scaled latents (N, *latent_shape) of images (N, C, H, W) in [-1, 1], batch by batch."""
        return torch.cat([self.codec.encode(images[i:i + batch].to(self.device).float())
                          for i in range(0, len(images), batch)])

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images (N, C, H, W) from scaled latents (N, *latent_shape), the padding cropped off."""
        return self.codec.decode(z.to(self.device).float())

    def record(self) -> dict[str, Any]:
        """The ``latent`` record of a latent package's ``config.json`` (module docstring)."""
        return {"autoencoder": self.autoencoder.config.to_dict(), "scale_factor": self.scale, "pad": self.pad,
                "factor": self.factor, "latent_shape": list(self.latent_shape), **self.source}

    def weights_bytes(self, model: LoadedModel) -> bytes:
        """The autoencoder package's ``model.safetensors`` bytes, read from ``model`` (as verified), for bundling."""
        data = Path(model.path, WEIGHTS).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.source["weights_sha256"]:
            raise ValueError(f"{model.path / WEIGHTS}: changed since it was verified; train again")
        return data


def package_name(path: str | os.PathLike) -> str:
    """A package's name in lineage and cards: ``<parent>/<dir>`` of its resolved path (``runs/ae-fmnist/model``
    -> ``ae-fmnist/model``)."""
    p = Path(path).resolve()
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


__all__ = ["AUTOENCODER_WEIGHTS", "LatentSpace", "package_name"]
