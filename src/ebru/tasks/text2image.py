"""The text-to-image task: a denoiser conditioned on a frozen text encoder's view of each caption.

Data are captioned images (:func:`ebru.data.load_captioned`: a captioned folder or the Fashion
scenes). Before training, every unique caption and the empty prompt are encoded once by the frozen
encoder (``ebru.encoders``, SHA-256 verified) and cached per (caption, encoder digest), so the
CPU spends its steps on the denoiser. One global batch draws, from the trainer's generator: image
indices, one of each image's captions, EDM's log-normal noise levels, Gaussian noise, and caption
dropout (``cond_dropout``): a dropped caption becomes the empty prompt, whose encoding is the null
condition that classifier-free guidance subtracts (Ho & Salimans 2022; the empty-prompt convention of
Stable Diffusion and diffusers).

The network reads the token states through cross-attention (``encoder_states`` (B, T, D),
``encoder_mask`` (B, T)) and the pooled sentence vector through its noise embedding
(``encoder_pooled`` (B, P)), as Imagen and SDXL do.

The package is an ``image-diffusion`` package whose ``config.json`` adds ``text_encoder`` (the
encoder's spec, digest included) and ``max_tokens``; the manifest's provenance records the encoder as
a verified component. ``ebru.pipelines.TextToImagePipeline`` loads it and refuses an encoder whose
weights differ from the recorded digest.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ebru.data import load_captioned
from ebru.data.grid import save_grid
from ebru.diffusion import WEIGHTINGS, LogNormalSigma, sample
from ebru.encoders import MINILM_DIGEST, TextEncoder, TextEncoding, encode_captions, load_encoder

from .base import TASKS, TrainState
from .image import ImageTask, image_net_config

DEFAULT_ENCODER = {"kind": "minilm", "max_length": 32}


def training_encoder(settings: dict[str, Any]) -> TextEncoder:
    """The encoder a run's ``[encoder]`` table names (default MiniLM, 32 tokens), verified before it loads.

    MiniLM's digest is pinned by ebru; any other encoder (``kind = "hf"``) needs the ``digest`` its user pins.
    """
    spec = {**DEFAULT_ENCODER, **settings}
    if spec.get("kind", spec.get("name")) == "minilm":
        spec.setdefault("digest", MINILM_DIGEST)
    return load_encoder(spec)


def encoding_cache_dir() -> Path:
    """Where caption encodings are cached: ``$EBRU_CACHE/encodings`` (default ``~/.cache/ebru/encodings``)."""
    return Path(os.environ.get("EBRU_CACHE") or Path.home() / ".cache" / "ebru") / "encodings"


def text_condition(enc: TextEncoding) -> dict[str, Tensor]:
    """The keyword arguments a text-conditioned network takes for ``enc``."""
    return {"encoder_states": enc.states, "encoder_mask": enc.mask, "encoder_pooled": enc.pooled}


@TASKS.register("text2image")
class TextToImageTask(ImageTask):
    """Text-conditional EDM denoiser training on captioned images.

    Args:
        cfg: the run's ``TrainConfig``; reads what :class:`ImageTask` reads (``class_conditional`` is
            ignored: the condition is the caption) plus ``encoder`` (an ``ebru.encoders`` spec; default
            MiniLM at 32 tokens) and ``sample_prompts`` (the preview grid's rows).
        device: where the images, the caption encodings and the network live.
        data: a ``CaptionedImages`` to use instead of ``cfg.data``.
        is_main: print the data report and show the encoding progress (main process only).

    Raises ValueError (one line) for data without captions, an encoder that cannot be verified, or a
    ``model`` table that contradicts the encoder's widths.
    """

    name = "text2image"
    unit = "images"

    def __init__(self, cfg: Any, device: torch.device, data: Any = None, is_main: bool = True):
        self.cfg = cfg
        self.device = device
        if data is None:
            with warnings.catch_warnings():  # the skipped-file report is printed once below, as one line
                warnings.simplefilter("ignore", UserWarning)
                data = load_captioned(cfg.data, image_size=cfg.image_size)
            if is_main and getattr(data, "report", None):
                print(data.report, flush=True)  # "data: N images, M captions; ..."
        if not hasattr(data, "caption_table"):
            raise ValueError(f"task 'text2image' needs captioned images; {cfg.data!r} has no captions "
                             "(a folder with metadata.jsonl or .txt caption files, or 'fashion-scenes')")
        self.data = data
        images, _ = data.tensors()
        self.images = images.to(device)  # (N, C, H, W) in [-1, 1]
        self.encoder = training_encoder(cfg.encoder)
        captions, table, counts = data.caption_table()
        # row 0 is the empty prompt: the null condition that caption dropout trains
        # token states kept as float16 (the network reads them as float32): half the memory of large caption sets
        enc = encode_captions(self.encoder, ["", *captions], cache_dir=encoding_cache_dir(), progress=is_main,
                              states_dtype="float16")
        self.encodings = enc.to(device)
        self.caption_table = table + 1  # (N, K) rows of self.encodings (padding -1 -> 0, never drawn)
        self.caption_counts = counts  # (N,) captions per image
        net = image_net_config(cfg, data)
        net["num_classes"] = None
        for key, width in (("cond_dim", self.encoder.dim), ("pooled_dim", self.encoder.pooled_dim)):
            if cfg.model.get(key) not in (None, width):
                raise ValueError(f"model.{key} = {cfg.model[key]} but the text encoder gives width {width}")
            net[key] = width
        self.net_config = net
        self.conditional = True
        self.sigma_dist = LogNormalSigma(cfg.p_mean, cfg.p_std)
        self.weighting_options = WEIGHTINGS[cfg.weighting].options
        self.enter_latent_space(is_main)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """ImageTask's draws plus ``caption`` (B,): the row of ``self.encodings`` each sample is trained on."""
        batch = super().draw(batch_size, generator)
        idx = batch["idx"]
        pick = (torch.rand(batch_size, generator=generator) * self.caption_counts[idx]).long()
        caption = self.caption_table[idx, pick]
        batch["caption"] = torch.where(batch["drop"], torch.zeros_like(caption), caption)
        return batch

    def condition(self, batch: dict[str, Tensor], part: slice, idx: Tensor) -> dict[str, Tensor]:
        """The token states, mask and pooled vector of the captions drawn for the slice ``part``."""
        return text_condition(self.encodings[batch["caption"][part].to(self.device)])

    # ---------------------------------------------------------------------------------------- outputs
    def preview_prompts(self, k: int = 8) -> list[str]:
        """The preview grid's prompts: ``sample_prompts``, else the data's own first ``k`` distinct captions."""
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        if hasattr(self.data, "preview_prompts"):
            return list(self.data.preview_prompts(k))
        captions, _ = self.data.caption_list()
        return list(captions[:k])

    def preview(self, state: TrainState, stem: Path, per_prompt: int = 6) -> Path:
        """A sample grid ``<stem>.png`` from the EMA weights: one row per preview prompt, with guidance."""
        d, cfg = self.denoiser(state.ema), self.cfg
        prompts = self.preview_prompts()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a long preview prompt is truncated as in training
            enc = self.encoder.encode(["", *prompts]).to(self.device)
        rows = torch.arange(1, len(prompts) + 1, device=self.device).repeat_interleave(per_prompt)
        x = sample(d, (len(rows), *self.example_shape), seeds=range(len(rows)), guidance_scale=cfg.sample_guidance,
                   uncond=text_condition(enc[0:1]), sampler=cfg.sample_sampler, steps=cfg.sample_steps,
                   sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, device=self.device,
                   **text_condition(enc[rows]))
        return save_grid(self.to_pixels(x), Path(stem).with_suffix(".png"), nrow=per_prompt, row_labels=prompts,
                         title=f"step {state.step}, guidance {cfg.sample_guidance:g}")

    def model_config(self, state: TrainState) -> dict[str, Any]:
        """ImageTask's ``config.json`` plus the text encoder's spec and the preview prompts."""
        config = super().model_config(state)
        config["class_names"] = None
        config["num_classes"] = None
        config["conditioning"] = "text"
        config["text_encoder"] = self.encoder.spec()
        config["sample_prompts"] = self.preview_prompts()
        return config

    def provenance(self, state: TrainState, revision: str | None) -> dict[str, Any]:
        """ImageTask's provenance plus the text encoder as a verified component (name, digest)."""
        spec = self.encoder.spec()
        return {**super().provenance(state, revision),
                "components": {"text_encoder": {"name": spec["name"], "digest": spec["digest"]}}}
