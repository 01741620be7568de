"""Read the noise watermark of image files against the model suspected to have made them; mark other images.

``detect_files(paths, model_dir)``: each file is read (bounded, one-line refusals:
:func:`ebru.provenance.images.open_image`), brought to the model's size, inverted to its initial noise with
the model's probability-flow ODE (DDIM inversion, unconditional: detection knows neither the prompt nor the
class), and decoded (:class:`ebru.provenance.GaussianShading`): detected or not at the false-positive
target, the p-value under "no watermark of this key", the chip accuracy and the decoded watermark id.
Against the wrong model or key the noise is unrelated and the answer is "not detected", never an error.

``embed_file`` / ``detect_posthoc_files``: the post-hoc mark (:class:`ebru.provenance.PosthocMark`) for images
ebru did not generate (edits, exports, other tools' images, 256x256 and up), read back without a model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebru.checks import finite_number
from ebru.diffusion.defaults import SAMPLING
from ebru.provenance import (
    DEFAULT_FPR,
    GaussianShading,
    default_watermark_key,
    fit_to_shape,
    load_watermark_key,
)
from ebru.provenance.errors import ProvenanceError
from ebru.provenance.images import image_array
from ebru.provenance.watermark import invert_to_noise

from .image import ImagePipeline
from .text2image import TextToImagePipeline

DETECT_SAMPLER = "ddim"  # first-order inversion, as Gaussian Shading and Tree-Ring invert
DETECT_STEPS = 20
# The inversion starts at this noise level, not at the model's sigma_min. A file is never exactly the sampler's
# output (8-bit rounding, and often JPEG, noise or resizing): the ODE's step divides that error by sigma, so an
# inversion from sigma_min = 0.002 amplifies it ~40,000-fold on its way to sigma_max and scrambles the noise
# estimate. From 0.3 the error is treated as noise the model removes. Measured on the quickstart model (64
# images, DDIM 20 steps, soft score; /tmp experiment recorded in docs/results.md): clean 23.7 -> 20.2,
# Gaussian noise 0.05 9.7 -> 12.4, JPEG 75 2.9 -> 5.3, JPEG 50 1.9 -> 3.6; brightness 20.5 -> 16.6.
DETECT_SIGMA_START = 0.3
BATCH = 64


def watermark_key(key: Any = None) -> Any:
    """The watermark key: a ``.wmkey`` path, a WatermarkKey, or None for the default (never created here)."""
    if key is None:
        return default_watermark_key(create=False)
    if isinstance(key, str | os.PathLike):
        return load_watermark_key(key)
    return key


def load_detector(model: Any, device: str = "cpu") -> ImagePipeline:
    """The image or text-to-image pipeline of ``model`` (a package path or a LoadedModel), without a watermark."""
    from .image import load_image_model

    loaded = load_image_model(model)
    cls = TextToImagePipeline if loaded.config.get("text_encoder") else ImagePipeline
    return cls.from_pretrained(loaded, device=device, watermark=False)


def null_condition(pipe: ImagePipeline, batch: int) -> dict[str, Any]:
    """The condition the model was trained to treat as "none": class -1, or the empty prompt's encoding."""
    if isinstance(pipe, TextToImagePipeline):
        from ebru.tasks.text2image import text_condition

        enc = pipe.encoder.encode([""]).to(pipe.device)
        return {k: v.expand(batch, *v.shape[1:]) for k, v in text_condition(enc).items()}
    if pipe.num_classes:
        return {"class_labels": torch.full((batch,), -1, device=pipe.device)}
    return {}


def detect_files(paths: Sequence[str | os.PathLike], model: Any, *, key: Any = None, sampler: str = DETECT_SAMPLER,
                 steps: int = DETECT_STEPS, sigma_start: float = DETECT_SIGMA_START, fpr: float = DEFAULT_FPR,
                 candidates: Sequence[int] | str | None = "store", device: str = "cpu") -> list[dict[str, Any]]:
    """Detect the noise watermark in each file; one dict per path, in order.

    Each dict: ``file``, and either ``error`` (the one-line reason the file could not be read) or the fields
    of :class:`~ebru.provenance.watermark.Decoded` (``detected``, ``p_value``, ``log10_p_value``, ``score``,
    ``chip_accuracy``: the fraction of noise entries agreeing with the decoded id's code, ``watermark_id``,
    ``hypotheses``, ``key_id``, ``fpr``, ...), ``resized_from`` (the file's size when it was not the model's).

    ``candidates``: which ids the decoder chooses from. ``"store"`` (default): the ids of the local
    provenance store (:func:`ebru.provenance.known_ids`: every id this installation has written), a
    maximum-likelihood decode whose union bound runs over those ids only, so it detects weaker marks and
    never reports an id no output had; when the store is empty, every id. ``None``: every id (blind:
    each bit by soft majority, union bound over 2**32). Or a list of ids. ``sigma_start``: the noise
    level the inversion starts from (see :data:`DETECT_SIGMA_START`). Raises ValueError (one line) for a
    model ebru refuses, a missing key or bad settings.
    """
    if isinstance(candidates, str):
        if candidates != "store":
            raise ValueError(f"candidates must be 'store', None or a list of ids, got {candidates!r}")
        from ebru.provenance import known_ids

        candidates = known_ids() or None
    pipe = load_detector(model, device)
    wkey = watermark_key(key)
    scheme = GaussianShading(wkey, pipe.noise_shape)  # a latent model's mark is in its latent noise
    tree = tree_ring_for(wkey, pipe.noise_shape)
    sigma_start = finite_number("sigma_start", sigma_start, positive=True)
    channels, height, width = pipe.image_shape
    rows: list[dict[str, Any]] = []
    loaded: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        rows.append({"file": str(path)})
        try:
            arr = image_array(path, channels)
        except ProvenanceError as e:
            rows[-1]["error"] = str(e)
            continue
        if arr.shape[:2] != (height, width):
            rows[-1]["resized_from"] = [int(arr.shape[1]), int(arr.shape[0])]
        loaded.append((i, arr))
    s = {**SAMPLING.to_dict(), **pipe.config.get("sampling", {})}
    for start in range(0, len(loaded), BATCH):
        chunk = loaded[start:start + BATCH]
        # files may differ in size: each is brought to the model's size on its own, then they go as one batch
        x = torch.cat([fit_to_shape(torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1)[None],
                                    pipe.image_shape) for _, arr in chunk]).to(pipe.device)
        with torch.inference_mode():
            denoiser = pipe.denoiser
            if pipe.latent is not None:  # invert the latents: encoded once, then the latent model's ODE backwards
                x, denoiser = pipe.latent.encode(x), pipe.latent.denoiser
            z = invert_to_noise(denoiser, x, scheme.shape, sampler=sampler, steps=steps,
                                schedule=s.get("schedule", SAMPLING.schedule), sigma_min=sigma_start,
                                sigma_max=s["sigma_max"], **null_condition(pipe, len(chunk)))
        results = scheme.decode(z, fpr=fpr, candidates=candidates)
        rings = tree.detect(z, fpr=fpr) if tree is not None else [None] * len(chunk)
        for (i, _), r, ring in zip(chunk, results, rings, strict=True):
            rows[i].update(r.to_dict())
            rows[i]["tree_ring"] = None if ring is None else ring.to_dict()
    return rows


def tree_ring_for(key: Any, shape: Sequence[int]) -> Any:
    """The :class:`~ebru.provenance.treering.TreeRing` detector for ``key`` and noise ``shape``, or None where
    Tree-Ring cannot mark that shape (not (C, H, W), or under 8x8): Tree-Ring is read beside Gaussian Shading
    on the same inverted noise, so that images drawn with ``--tree-ring`` are recognised by it too."""
    from ebru.provenance.treering import TreeRing

    if len(shape) != 3 or min(shape[1:]) < 8:
        return None
    return TreeRing(key, shape)


def describe(row: dict[str, Any]) -> str:
    """One line per file for the CLI."""
    name = Path(row["file"]).name
    if "error" in row:
        return f"{name}: error: {row['error']}"
    verdict = "DETECTED" if row["detected"] else "not detected"
    if row.get("scheme") == "posthoc":
        return f"{name}: {verdict} (p = 10^{row['log10_p_value']:.1f}, id {row['watermark_id']}, post-hoc mark)"
    resized = f", resized from {row['resized_from'][0]}x{row['resized_from'][1]}" if "resized_from" in row else ""
    over = f"of {row['hypotheses']} known ids" if row["hypotheses"] < 1 << row["id_bits"] else "blind"
    ring = row.get("tree_ring")
    ring = (f"; Tree-Ring key DETECTED (p = 10^{ring['log10_p_value']:.1f})" if ring and ring["detected"] else "")
    return (f"{name}: {verdict} (p = 10^{row['log10_p_value']:.1f}, score {row['score']:.1f}, chip accuracy "
            f"{row['chip_accuracy']:.3f}, id {row['watermark_id']} {over}{resized}){ring}")


# ------------------------------------------------------------------ the post-hoc mark, for images ebru did not make
POSTHOC_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def embed_file(src: str | os.PathLike, dst: str | os.PathLike, *, key: Any = None, watermark_id: int | None = None,
               jpeg_quality: int = 95) -> dict[str, Any]:
    """Mark the image at ``src`` (>= 256x256) with :class:`~ebru.provenance.PosthocMark` and write it to ``dst``.

    ``watermark_id``: default a fresh random id. ``dst`` is PNG or JPEG (by extension), written whole or not at
    all, with a signed C2PA manifest like every file ebru writes (an *edit* of the source: the source is its
    parent ingredient, the action ``c2pa.watermarked``, the mark's id the soft binding); the marking is
    recorded in the audit log and the local store (id, key id, both files' SHA-256) so that
    ``ebru provenance find --id`` finds it. Returns ``{"file", "watermark_id", "key_id", "psnr_db",
    "sha256", "manifest"}`` (the manifest's label). Raises ValueError (one line) for an unreadable or too small
    image, another extension, or a missing key (the default key is created on first use, as for generation);
    :class:`~ebru.provenance.ProvenanceError` when the manifest cannot be signed (nothing is written then).
    """
    import hashlib
    import io

    from ebru.provenance import PosthocMark, new_watermark_id, psnr, sign_image
    from ebru.provenance.images import open_image

    fmt = POSTHOC_FORMATS.get(Path(dst).suffix.lower())
    if fmt is None:
        raise ValueError(f"{dst}: give an output FILE.png or FILE.jpg")
    wkey = default_watermark_key(create=True) if key is None else watermark_key(key)
    image = open_image(src, "RGB")
    source = np.asarray(image)
    wid = new_watermark_id() if watermark_id is None else watermark_id
    marked = PosthocMark(wkey).embed(source, wid)
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(marked).save(buf, format=fmt, **({"quality": jpeg_quality} if fmt == "JPEG" else {}))
    original = Path(src).read_bytes()
    params = {"kind": "posthoc-watermark", "source": str(Path(src).absolute()),
              "source_sha256": hashlib.sha256(original).hexdigest(), "format": fmt}
    signed = sign_image(buf.getvalue(), dst, model_digest=POSTHOC_MODEL, license=None, parameters=params,
                        watermark_id=wid, watermark_key_id=wkey.key_id, watermark_alg=POSTHOC_ALG, record=True,
                        intent="edit", parent=original)
    return {"file": str(dst), "watermark_id": wid, "key_id": wkey.key_id, "psnr_db": psnr(source, marked),
            "sha256": signed.sha256, "manifest": signed.label}


POSTHOC_ALG = "org.ebru.posthoc-tile.1"
POSTHOC_MODEL = "none: a post-hoc mark on an existing image"  # the record's and manifest's model digest field


def detect_posthoc_files(paths: Sequence[str | os.PathLike], *, key: Any = None,
                         fpr: float = DEFAULT_FPR) -> list[dict[str, Any]]:
    """Detect the post-hoc mark in each file (no model needed); one dict per path, as :func:`detect_files`.

    Each dict: ``file`` and either ``error`` or ``detected``, ``p_value``, ``log10_p_value``,
    ``watermark_id``, ``offset`` (the crop offset found), ``key_id``, ``fpr``.
    """
    from ebru.provenance import PosthocMark
    from ebru.provenance.images import open_image

    wkey = watermark_key(key)
    mark = PosthocMark(wkey)
    rows: list[dict[str, Any]] = []
    for path in paths:
        row: dict[str, Any] = {"file": str(path)}
        try:
            r = mark.detect(np.asarray(open_image(path, "RGB")), fpr=fpr)
        except (ProvenanceError, ValueError) as e:
            row["error"] = str(e)
        else:
            row.update(detected=r.detected, p_value=r.p_value, log10_p_value=r.log10_p, watermark_id=r.watermark_id,
                       offset=list(r.offset), key_id=wkey.key_id, fpr=fpr, scheme="posthoc")
        rows.append(row)
    return rows
