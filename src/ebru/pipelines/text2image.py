"""Text to image: ``TextToImagePipeline.from_pretrained(dir)(prompt, negative_prompt=None, n=1, ...)``.

The call follows diffusers' ``StableDiffusionPipeline`` habits (``prompt``, ``negative_prompt``,
``num_inference_steps``, ``guidance_scale``) on ebru's samplers, with per-sample seeds: image ``i``
with seed ``s`` is the same whatever else is in the batch. Classifier-free guidance (Ho & Salimans
2022) subtracts the encoding of the negative prompt, or of the empty prompt when there is none: the
null condition the model was trained on through caption dropout.

The text encoder is the one recorded in the package's ``config.json``; it is rebuilt through
:func:`ebru.encoders.load_encoder`, which refuses weights whose SHA-256 differs from the recorded digest.

A distilled student (``ebru distill`` of a text-to-image teacher, :mod:`ebru.pipelines.distill`) samples its
own steps, sampler and grid by default, as :class:`~ebru.pipelines.image.ImagePipeline` does. One whose
guidance scale is an input of its network (``distilled.guidance_input``) reads ``guidance_scale`` through that
input, one network call per step, with no classifier-free guidance on top: so it has no unconditional pass
for a negative prompt to replace, and a negative prompt is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ebru.checks import positive_int
from ebru.diffusion import Precond
from ebru.encoders import TextEncoder, load_encoder
from ebru.tasks.text2image import text_condition

from .image import ImagePipeline, build_denoiser, load_image_model, noise_shape
from .outputs import resolve_watermark


def prompt_list(prompt: str | Sequence[str], what: str = "prompt") -> list[str]:
    """``prompt`` as a non-empty list of strings; raises ValueError (one line) for anything else."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{what} must be a string or a non-empty list of strings, got {prompt!r}")
    return list(prompts)


class TextToImagePipeline(ImagePipeline):
    """A trained text-conditional image denoiser, its verified text encoder and its sampling defaults.

    Attributes:
        encoder: the :class:`ebru.encoders.TextEncoder` the model was trained with.
        config: the package's ``config.json`` (``text_encoder``, ``sampling``, ``sample_prompts``, ...).
    """

    def __init__(self, denoiser: Precond, config: dict[str, Any], device: torch.device, encoder: TextEncoder,
                 model: Any = None, watermark: Any = None):
        super().__init__(denoiser, config, device, model, watermark)
        self.encoder = encoder

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu", *, watermark: Any = True,
                        **load_options: Any) -> TextToImagePipeline:
        """Verify and load a text-to-image package (``ebru.load``), then its text encoder (digest checked).

        ``watermark``: as :meth:`ImagePipeline.from_pretrained` (default on, under the default key).
        ``load_options`` go to ``ebru.load`` (``policy``, ``trusted_keys``, ``allow_unsigned``, ...).
        Raises ValueError for a package that is not text-conditional (use :class:`ImagePipeline`) and
        ``ebru.encoders.EncoderError`` for a missing encoder package or changed encoder weights.
        """
        model = load_image_model(model_dir, **load_options)
        config = model.config
        if not config.get("text_encoder"):
            kind = "class-conditional" if config.get("num_classes") else "unconditional"
            raise ValueError(f"{model_dir} is a {kind} image model, not a text-to-image one: sample it without "
                             "a prompt (ImagePipeline, or ebru sample with --class)")
        encoder = load_encoder(config["text_encoder"])
        dev = torch.device(device)
        return cls(build_denoiser(model, dev), config, dev, encoder, model,
                   resolve_watermark(watermark, noise_shape(config)))

    def __call__(self, prompt: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None,
                 n: int = 1, *, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, schedule: str | Callable | None = None,
                 seeds: Sequence[int] | int = 0, guidance_interval: tuple[float, float] | None = None,
                 progress: bool = False, callback: Callable[[dict], None] | None = None,
                 class_labels: Any = None, watermark_ids: Sequence[int] | None = None) -> Tensor:
        """Generate ``n`` images per prompt: (len(prompts) * n, C, H, W) in [-1, 1] up to the model's error.

        Args:
            prompt: one prompt or a list; images come prompt by prompt, ``n`` each. The empty prompt
                draws unconditional samples (said once, as a warning). Prompts longer than the encoder's
                ``max_length`` tokens are truncated with a warning that says how many tokens were dropped.
            negative_prompt: one for all prompts, or one per prompt; replaces the empty prompt in the
                unconditional branch of guidance.
            n: images per prompt (>= 1).
            num_inference_steps, sampler, schedule: as ``ImagePipeline``; default the model's own.
            guidance_scale: classifier-free guidance scale (default the model's; 1 = no guidance).
            seeds: one per image, or the first seed (then ``seed, seed+1, ...``).
            guidance_interval: ``(sigma_lo, sigma_hi)``: guide only for sigma in (lo, hi] (Kynkaanniemi et al. 2024).
            progress, callback: a progress bar; a per-step callback (see ``ebru.diffusion.sample``).
            watermark_ids: one per image (default :meth:`~ImagePipeline.watermark_ids` of ``seeds``), when
                the pipeline has a watermark: each image starts from its seed's watermarked noise.

        A distilled student that takes the guidance scale as an input reads ``guidance_scale`` (default: its
        own) through its network, one call per step, and warns outside the scales it was trained on; any
        distilled student warns (one line) when sampled with another sampler, step count or schedule than it
        was made for, and one with a scale distilled into its weights warns when guided on top of it.

        Raises ValueError (one line) for a bad argument, before any sampling: among them a negative prompt (other
        than the empty one, the default) or a guidance interval for a student whose guidance is distilled in (it
        has no unconditional pass; a student with one fixed scale takes them with a guidance scale other than 1,
        guided on top).
        """
        if class_labels is not None:
            raise ValueError("this is a text-to-image model: give a prompt, not a class")
        prompts = prompt_list(prompt)
        n = positive_int("n (images per prompt)", n)
        negatives = [""] * len(prompts) if negative_prompt is None else prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts "
                             "(give one, or one per prompt)")
        if any(not p.strip() for p in prompts):
            warnings.warn("empty prompt: those images are unconditional samples (the model's null condition)",
                          UserWarning, stacklevel=2)
        s = self.config.get("sampling", {})
        guidance = s.get("guidance", 1.0) if guidance_scale is None else guidance_scale
        negative = any(p.strip() for p in negatives)  # "" (the default null condition) is no negative prompt
        scale_input = self.distilled_guidance_checks(guidance, guidance_scale, negative, guidance_interval)
        texts = list(dict.fromkeys([*prompts, *negatives]))  # each distinct text encoded once, in one call
        enc = self.encoder.encode(texts).to(self.device)
        rows = torch.tensor([texts.index(p) for p in prompts], device=self.device).repeat_interleave(n)
        neg_rows = torch.tensor([texts.index(p) for p in negatives], device=self.device).repeat_interleave(n)
        extra: dict[str, Any] = {}
        if scale_input:  # the student's network reads the scale: one call per step, no guidance on top
            extra["guidance"] = torch.full((len(rows),), float(guidance), device=self.device)
            guidance = None
        setting = self.sampling(sampler, num_inference_steps, schedule)
        if (note := self.distilled_warning(setting)) is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
        return self.run_sampler(
            len(rows), sampler=setting["sampler"], steps=setting["steps"],
            schedule=setting["schedule"], sigma_min=setting["sigma_min"], sigma_max=setting["sigma_max"],
            seeds=seeds, device=self.device, guidance_scale=guidance, uncond=text_condition(enc[neg_rows]),
            guidance_interval=guidance_interval, progress=progress, callback=callback,
            noise=self.initial_noise(seeds, len(rows), watermark_ids), **text_condition(enc[rows]), **extra)
