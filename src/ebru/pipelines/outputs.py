"""What every image ebru writes carries: its watermark, a signed C2PA manifest and a generation record.

The pipelines draw each sample from watermarked noise (:func:`resolve_watermark`: Gaussian Shading under
the default watermark key unless told otherwise), and the writers here put every file on disk through
:func:`ebru.provenance.write_signed_png`, which signs a C2PA manifest (model digest and licence,
generation parameters, the prompt's SHA-256 or the prompt by policy, the watermark id as a soft binding),
appends the generation to the audit log and the local store, and only then renames the file into place:
no output exists without its manifest. Turning the watermark off (``--no-watermark``) is an explicit
exception: each such file's record and manifest say ``"watermark": "off"``.
"""

from __future__ import annotations

import io
import os
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ebru.data.grid import render_grid, to_uint8

PROMPT_POLICIES = ("hash", "full", "omit")


def safe_name(text: str, limit: int = 48) -> str:
    """``text`` as a portable piece of a file name: ASCII letters, digits, ``.``, ``_`` and ``-`` only.

    Accents are dropped (``Écharpe`` -> ``Echarpe``), every other run of characters becomes ``_``
    (``T-shirt/top`` -> ``T-shirt_top``), leading and trailing ``._-`` go, and at most ``limit``
    characters are kept; an empty result is ``_``.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text).strip("._-")[:limit].strip("._-") or "_"


def image_names(n: int, prefix: str = "sample", *, seeds: Sequence[int] | None = None,
                labels: Sequence[str] | None = None) -> list[str]:
    """``<prefix>[-<label>]-seed<seed>.png`` for each of ``n`` images (seeds default 0..n-1, >= 4 digits).

    Raises ``ValueError`` when ``seeds`` or ``labels`` do not have one entry per image.
    """
    seeds = list(range(n)) if seeds is None else list(seeds)
    if len(seeds) != n or (labels is not None and len(labels) != n):
        raise ValueError(f"saving images needs one seed (and label) per image: {n} images, {len(seeds)} "
                         f"seeds, {'no' if labels is None else len(labels)} labels")
    return [f"{prefix}{'' if labels is None else '-' + safe_name(labels[i])}-seed{seeds[i]:04d}.png"
            for i in range(n)]


def seed_list(seeds: Sequence[int] | int, n: int | None = None) -> list[int]:
    """Seeds as a list: a first seed ``s`` with ``n`` images is ``s .. s+n-1``; a list must have ``n`` entries."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if n is None:
            raise ValueError("a first seed needs the number of images")
        return list(range(seeds, seeds + n))
    seeds = list(seeds)
    if n is not None and len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    return seeds


def resolve_watermark(watermark: Any, shape: Sequence[int]) -> Any:
    """The :class:`~ebru.provenance.GaussianShading` scheme for per-sample noise ``shape``, or None.

    ``watermark``: True: the default key (``$EBRU_WATERMARK_KEY``, else created on first use under ebru's
    config directory, with a note); False or None: no watermark; a
    :class:`~ebru.provenance.WatermarkKey`, its 32-byte secret, or a ``.wmkey`` path; or a ready
    ``GaussianShading`` (its shape must be ``shape``). Raises ValueError (one line) for a bad key file
    or a scheme of another shape.
    """
    from ebru.provenance import GaussianShading, WatermarkKey

    if watermark is None or watermark is False:
        return None
    if isinstance(watermark, GaussianShading):
        if tuple(watermark.shape) != tuple(shape):
            raise ValueError(f"the watermark scheme is for samples of shape {watermark.shape}, not {tuple(shape)}")
        return watermark
    if watermark is not True and not isinstance(watermark, WatermarkKey | bytes | str | os.PathLike):
        raise ValueError(f"watermark must be True, False, a WatermarkKey or a .wmkey path, got {watermark!r}")
    return GaussianShading(generation_key(None if watermark is True else watermark), shape)


def generation_key(key: Any = None) -> Any:
    """The watermark key generation marks with: ``key`` (a WatermarkKey, its 32-byte secret or a ``.wmkey`` path),
    or None for the default key (``$EBRU_WATERMARK_KEY``, else created on first use with a note). Raises
    ValueError (one line) for a bad key file."""
    from ebru.provenance import WatermarkKey, default_watermark_key, load_watermark_key

    if key is None:
        return default_watermark_key(create=True)
    if isinstance(key, str | os.PathLike):
        return load_watermark_key(key)
    if isinstance(key, WatermarkKey | bytes):
        return key
    raise ValueError(f"a watermark key must be a WatermarkKey, its secret or a .wmkey path, got {key!r}")


def _license(pipe: Any) -> Any:
    model = getattr(pipe, "model", None)
    if model is None:
        return None
    decision = model.license
    return {"class": decision.cls, "summary": decision.summary(), "obligations": list(decision.obligations)}


def _common(pipe: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(parameters)
    if getattr(pipe, "model", None) is not None:
        params.setdefault("model", str(pipe.model.path))
    if pipe.watermark is None:
        params["watermark"] = "off"
    tree_ring = getattr(pipe, "tree_ring", None)
    if tree_ring is not None:
        params["tree_ring"] = {"radius": tree_ring.radius, "channel": tree_ring.channel, "key_id": tree_ring.key_id}
    return params


def write_images(images: Tensor, out_dir: str | Path, pipe: Any, *, seeds: Sequence[int],
                 parameters: Mapping[str, Any], labels: Sequence[str] | None = None,
                 prompts: Sequence[str] | None = None, negative_prompts: Sequence[str] | None = None,
                 watermark_ids: Sequence[int] | None = None, prompt_policy: str = "hash",
                 prefix: str = "sample") -> list[Path]:
    """Write ``images`` (B, C, H, W) in [-1, 1] as signed PNGs named by :func:`image_names`; returns the paths.

    Args:
        pipe: the pipeline that drew them (its ``model`` gives the digest and licence, its ``watermark``
            the key id and, unless ``watermark_ids`` is given, the ids of ``seeds``).
        seeds: one per image; ``labels``: what each was asked for (class name or prompt), for its name.
        parameters: the generation settings shared by all (sampler, steps, schedule, guidance, ...); each
            file's record adds its seed (and class label, when ``labels`` are given without prompts).
        prompts, negative_prompts: one per image (text-to-image), recorded as ``prompt_policy`` says:
            ``hash`` (default: only SHA-256), ``full`` or ``omit``.
    Raises ValueError for mismatched lengths; the errors of :func:`ebru.provenance.write_signed_png`
    (a file that cannot be signed or recorded is not written).
    """
    from ebru.provenance import write_signed_png

    n = len(images)
    seeds = list(seeds)
    names = image_names(n, prefix, seeds=seeds, labels=labels)
    if watermark_ids is None and pipe.watermark is not None:
        watermark_ids = pipe.watermark_ids(seeds)
    for what, seq in (("prompts", prompts), ("negative prompts", negative_prompts), ("watermark ids", watermark_ids)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {len(seq)} {what} for {n} images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = _common(pipe, parameters)
    license_ = _license(pipe)
    key_id = pipe.watermark.key_id if pipe.watermark is not None else None
    paths = []
    for i, a in enumerate(to_uint8(images)):
        params = {**common, "seed": seeds[i]}
        if labels is not None and prompts is None:
            params["class"] = labels[i]
        write_signed_png(a.numpy(), out / names[i], model_digest=pipe.model_digest, license=license_,
                         parameters=params, prompt=None if prompts is None else prompts[i],
                         negative_prompt=None if negative_prompts is None else negative_prompts[i] or None,
                         prompt_policy=prompt_policy, watermark_id=None if watermark_ids is None else watermark_ids[i],
                         watermark_key_id=key_id)
        paths.append(out / names[i])
    return paths


def write_grid(images: Tensor, path: str | Path, pipe: Any, *, nrow: int, seeds: Sequence[int],
               parameters: Mapping[str, Any], row_labels: Sequence[str] | None = None, title: str | None = None,
               prompts: Sequence[str] | None = None, watermark_ids: Sequence[int] | None = None,
               prompt_policy: str = "hash") -> Path:
    """Write a grid of ``images`` (:func:`ebru.data.grid.render_grid`) as a signed PNG or JPEG with one record.

    The grid's tiles carry their own watermarks (the grid as a whole has no single id): its manifest and
    record list every tile's seed and watermark id, and its prompts by ``prompt_policy`` (joined). Blank
    tiles (``seeds`` shorter than ``images``) are allowed. Raises as :func:`write_images`.
    """
    from ebru.provenance import sign_image

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write the grid {path}: give FILE.png or FILE.jpg (the formats ebru signs)")
    if watermark_ids is None and pipe.watermark is not None:
        watermark_ids = pipe.watermark_ids(seeds)
    params = {**_common(pipe, parameters), "grid": {"seeds": list(seeds), "watermark_ids": watermark_ids}}
    prompt = None
    if prompts:
        prompt = "\n".join(dict.fromkeys(prompts))
    canvas = render_grid(images, nrow, row_labels=row_labels, title=title)
    buf = io.BytesIO()
    canvas.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    sign_image(buf.getvalue(), path, model_digest=pipe.model_digest, license=_license(pipe), parameters=params,
               prompt=prompt, prompt_policy=prompt_policy, watermark_id=None, record=True,
               watermark_key_id=pipe.watermark.key_id if pipe.watermark is not None else None)
    return path


def note_no_watermark() -> None:
    """The one-line notice of ``--no-watermark`` (the records say it too)."""
    print("ebru: note: --no-watermark: these images carry no watermark (their manifests and audit records say "
          "so)", file=sys.stderr)
