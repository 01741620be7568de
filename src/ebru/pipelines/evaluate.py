"""Sample a model package and score it: what ``ebru eval`` runs.

The images are drawn by :class:`ImagePipeline` (seeds ``seed .. seed + n - 1``, classes in turn)
and scored by ``ebru.eval`` (FID, KID, precision/recall, class agreement); ``nll`` and
``nll_bound`` are measured on real data. Every figure carries the sample count, the seeds, the
feature network's SHA-256 and the reference data's content hash.

Time: sampling dominates. At the defaults (2,000 images, 20 dpmpp_2m steps, classifier-free
guidance: two network passes per image and step) on ebru's Fashion-MNIST quickstart model that
is 80,000 image passes, about 12 minutes on a 2-core CPU (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ebru.data import load_dataset
from ebru.eval.evaluate import (
    DATA_METRICS,
    DEFAULT_METRICS,
    TEXT_METRICS,
    bound_on_data,
    check_image_shape,
    check_sample_count,
    evaluate_images,
    nll_on_data,
    parse_metrics,
    resolve_feature_net,
    resolve_reference,
)
from ebru.eval.reference import ReferenceSet

from .image import ImagePipeline
from .text2image import TextToImagePipeline


def evaluate_model(model: Any, *, metrics: Sequence[str] = DEFAULT_METRICS, n: int = 2000,
                   sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                   seed: int = 0, batch: int = 250, feature_net: nn.Module | None = None,
                   reference: str | ReferenceSet = "fashion-mnist:test", nll_images: int = 64,
                   nll_data: str = "fashion-mnist:test", progress: bool = False) -> dict[str, Any]:
    """Sample ``n`` images from ``model`` (a model directory or an ImagePipeline) and score them.

    Images use seeds ``seed .. seed + n - 1``; a class-conditional model is asked
    for classes 0, 1, 2, ... in turn (balanced). ``nll`` is measured on the first
    ``nll_images`` images of ``nll_data`` (conditioned on their labels for a
    class-conditional model).
    """
    metrics = parse_metrics(metrics)
    if "prompt_agreement" in metrics:
        raise ValueError("prompt_agreement scores text-to-image models (evaluate_text_to_image); this is an image "
                         "model: drop it from --metrics")
    if not isinstance(model, ImagePipeline):  # metrics judge the model: no watermark in its samples
        model = ImagePipeline.from_pretrained(model, watermark=False)
    pipe = model
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"-n must be an integer >= 1, got {n!r}")
    if "agreement" in metrics and not pipe.num_classes:
        raise ValueError("agreement needs a class-conditional model; this model has no classes "
                         "(drop agreement from --metrics)")
    if set(DATA_METRICS) & set(metrics) and pipe.latent is not None:
        raise ValueError("nll and nll_bound are likelihoods of pixels under a pixel-space model; this is a latent "
                         "model (its likelihood is of latents): drop them from --metrics")
    sample_metrics = [m for m in metrics if m not in DATA_METRICS]
    net = resolve_feature_net(feature_net) if sample_metrics else None
    if net is not None:
        check_image_shape(net, pipe.image_shape)
        check_sample_count(sample_metrics, n, getattr(net, "feature_dim", None))
        resolve_reference(reference, net, progress)  # fail on a mismatched reference before sampling
    s = pipe.sampling(sampler, steps)
    setting = {"sampler": s["sampler"], "steps": s["steps"],
               "guidance": (s.get("guidance", 1.0) if guidance is None else guidance) if pipe.num_classes else None,
               "schedule": s["schedule"], "seeds": [seed, seed + n - 1]}
    report: dict[str, Any] = {"model": str(getattr(model, "name", model)), "sampling": setting}
    if sample_metrics:
        labels = torch.arange(n) % pipe.num_classes if pipe.num_classes else None
        chunks = []
        for i in tqdm(range(0, n, batch), desc="sampling", disable=not progress):
            k = min(batch, n - i)
            chunks.append(pipe(k, class_labels=None if labels is None else labels[i:i + k].tolist(),
                               num_inference_steps=setting["steps"], guidance_scale=setting["guidance"],
                               sampler=setting["sampler"], seeds=list(range(seed + i, seed + i + k))))
        images = torch.cat(chunks)
        report.update(evaluate_images(images, labels=labels, metrics=sample_metrics, feature_net=net,
                                      reference=reference, progress=progress))
    else:
        report["metrics"] = {}
    if set(DATA_METRICS) & set(metrics):
        data = load_dataset(nll_data)
        imgs = data.images_uint8[:nll_images].to(pipe.device)
        cond = {}
        if pipe.num_classes:
            cond["class_labels"] = data.labels[:nll_images].to(pipe.device)
        lo, hi = s["sigma_min"], s["sigma_max"]
        report["nll"] = {"images": len(imgs), "data": nll_data}
        if "nll" in metrics:
            r = nll_on_data(pipe.denoiser, imgs, sigma_min=lo, sigma_max=hi, seed=seed, progress=progress, **cond)
            report["metrics"].update({"nll_bpd": r["nll_bpd"], "nll_bpd_stderr": r["nll_bpd_stderr"]})
            report["nll"]["pf_ode"] = ("Hutchinson trace (1 Rademacher probe), uniform dequantisation: an estimate "
                                       "of an upper bound on the 8-bit NLL")
        if "nll_bound" in metrics:
            r = bound_on_data(pipe.denoiser, imgs, sigma_min=lo, sigma_max=hi, seed=seed, progress=progress, **cond)
            report["metrics"].update({"nll_bound_bpd": r["bpd"], "nll_bound_bpd_stderr": r["bpd_stderr"]})
            report["nll"]["bound"] = (f"variational bound of the {r['levels']}-level chain geometric in sigma from "
                                      f"{lo:g} to {hi:g}, all terms, discretised Gaussian decoder (8-bit data)")
    return report


def scene_preset(pipe: TextToImagePipeline) -> str:
    """The Fashion scenes preset a text-to-image model was trained on; ValueError for any other data."""
    from ebru.data.scenes import PRESETS, is_scene_spec

    data = pipe.config.get("training", {}).get("config", {}).get("data")
    if not is_scene_spec(data):
        raise ValueError(f"prompt_agreement judges Fashion scenes, and this model was trained on {data!r}: its judges "
                         "know only the closed world of 'fashion-scenes' (item class, colour, position, count)")
    preset = data.partition(":")[2].strip().lower() or "quickstart"
    return preset if preset in PRESETS else "quickstart"


def evaluate_text_to_image(model: Any, *, metrics: Sequence[str] = TEXT_METRICS, n: int = 200,
                           sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                           negative_prompt: str | None = None, seed: int = 0, batch: int = 250,
                           progress: bool = False) -> dict[str, Any]:
    """Sample a text-to-image model on its scenes' evaluation prompts and judge the samples (GenEval-shaped).

    ``n`` prompts per task (half in training phrasings, half in held-out ones, the same scenes; see
    :func:`ebru.data.scenes.eval_prompts`), one image each, seeds ``seed, seed + 1, ...`` in prompt order.
    Returns the report ``ebru eval`` prints: per task the accuracy on seen and held-out phrasings
    (:func:`ebru.eval.prompt_agreement.judge`), the overall score and the mean colour saturation.
    Raises ValueError for metrics other than ``prompt_agreement`` or a model not trained on Fashion scenes.
    """
    from ebru.data.scenes import eval_prompts
    from ebru.eval.prompt_agreement import judge

    metrics = parse_metrics(metrics)
    other = [m for m in metrics if m not in TEXT_METRICS]
    if other:
        raise ValueError(f"{', '.join(other)} score(s) image models against Fashion-MNIST; a text-to-image model is "
                         f"scored with --metrics {','.join(TEXT_METRICS)}")
    if not isinstance(model, TextToImagePipeline):  # metrics judge the model: no watermark in its samples
        model = TextToImagePipeline.from_pretrained(model, watermark=False)
    pipe = model
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"-n (prompts per task) must be an integer >= 2, got {n!r}")
    preset = scene_preset(pipe)
    prompts = eval_prompts(preset, n, seed=seed)
    s = pipe.sampling(sampler, steps)
    setting = {"sampler": s["sampler"], "steps": s["steps"],
               "guidance": s.get("guidance", 1.0) if guidance is None else guidance, "schedule": s["schedule"],
               "negative_prompt": negative_prompt, "seeds": [seed, seed + len(prompts) - 1]}
    chunks = []
    for i in tqdm(range(0, len(prompts), batch), desc="sampling", disable=not progress):
        part = prompts[i:i + batch]
        chunks.append(pipe([p.prompt for p in part], negative_prompt=negative_prompt,
                           num_inference_steps=setting["steps"], guidance_scale=setting["guidance"],
                           sampler=setting["sampler"], seeds=list(range(seed + i, seed + i + len(part)))))
    images = torch.cat(chunks)
    report = judge(images, prompts)
    per_sample = report.pop("per_sample")
    return {"model": str(getattr(model, "name", model)), "sampling": setting, "scenes": preset,
            "prompts": len(prompts), "prompt_agreement": report, "passed": sum(per_sample)}
