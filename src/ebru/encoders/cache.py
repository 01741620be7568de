"""Encode each unique caption once, and keep the result on disk: :func:`encode_captions`.

Training a text-to-image model on a 2-core CPU should spend its time on the denoiser, not on re-running
a frozen encoder over the same few thousand captions every epoch. The cache under ``cache_dir`` holds
one entry per encoder (its ``spec()`` without ``path``: the weight digest, ``max_length``, pooling) and
caption set (the sorted unique captions), two files each:

- ``text-<key>-<set>.json`` — the index: ``{"version", "spec", "captions": [...], "file", "sha256"}``;
  row i of the tensors belongs to ``captions[i]``;
- ``text-<key>-<set>-<sha>.safetensors`` — ``states`` (N, T, D), ``mask`` (N, T), ``pooled`` (N, P).

One entry per caption set, rather than one growing file per encoder, means a small job never reads
(and hashes) the rows of a large one: a quickstart run after the full Fashion-scenes recipe reads its own
few thousand rows, not the full recipe's 87,000 (about 2 GB). A caption set seen before, in any order,
is a cache hit; any other set is encoded whole and stored beside the others.

The tensor file is written first under a content-derived name, then the index is replaced atomically
(:func:`ebru.data.atomic.atomic_open`), so a reader always sees a consistent pair. A cache that cannot be
trusted (unreadable index, digest mismatch, a file the strict safetensors reader refuses, wrong shapes)
is ignored with a warning and rebuilt; it is never used blindly and never stops training.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from ebru.checks import positive_int
from ebru.data.atomic import atomic_open
from ebru.trust import TrustError, load_bytes

from .base import EncoderError, TextEncoder, TextEncoding

VERSION = 2


def cache_key(encoder: TextEncoder) -> str:
    """16 hex digits naming ``encoder``'s outputs: the SHA-256 of its spec without ``path`` (canonical JSON)."""
    spec = {k: v for k, v in encoder.spec().items() if k != "path"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:16]


STATE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _stored(enc: TextEncoding, dtype: torch.dtype) -> TextEncoding:
    """``enc`` with its token states in ``dtype`` (mask and pooled vector unchanged)."""
    return enc if enc.states.dtype == dtype else TextEncoding(enc.states.to(dtype), enc.mask, enc.pooled)


def _encode(encoder: TextEncoder, captions: list[str], batch_size: int, progress: bool,
            dtype: torch.dtype = torch.float32) -> list[TextEncoding]:
    from tqdm.auto import tqdm

    starts = range(0, len(captions), batch_size)
    bar = tqdm(starts, desc=f"encoding {len(captions)} captions", unit="batch", disable=not progress, leave=False)
    return [_stored(encoder.encode(captions[i:i + batch_size]), dtype) for i in bar]


def _read(index_path: Path, spec: dict[str, Any]) -> tuple[list[str], TextEncoding] | None:
    """The cached captions and rows, or None (with a warning when something was there but is not trustworthy)."""
    if not index_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("version") != VERSION:
            raise ValueError("unknown index format")
        if index.get("spec") != spec:
            raise ValueError("it was written for another encoder")
        captions, name = index["captions"], index["file"]
        if not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            raise ValueError("its caption list is malformed")
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError("its file name is malformed")
        data = (index_path.parent / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != index.get("sha256"):
            raise ValueError(f"{name} does not match the SHA-256 in the index")
        tensors, _ = load_bytes(data, index_path.parent / name)
        if set(tensors) != {"states", "mask", "pooled"}:
            raise ValueError(f"{name} holds tensors {sorted(tensors)}")
        want = STATE_DTYPES[spec.get("states_dtype", "float32")]
        if tensors["states"].dtype != want:
            raise ValueError(f"its states are {tensors['states'].dtype}, not {want}")
        enc = TextEncoding(tensors["states"], tensors["mask"].bool(), tensors["pooled"].float())
        if len(enc) != len(captions) or len(set(captions)) != len(captions):
            raise ValueError(f"{len(enc)} rows for {len(captions)} captions")
        if (enc.states.shape[2], enc.pooled.shape[1]) != (spec.get("dim"), spec.get("pooled_dim")):
            raise ValueError(f"widths {enc.states.shape[2]}/{enc.pooled.shape[1]} differ from the encoder's")
        return captions, enc
    except (OSError, ValueError, KeyError, TypeError, TrustError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        warnings.warn(f"text-encoder cache {index_path} ignored and rebuilt ({msg})", UserWarning, stacklevel=3)
        return None


def caption_set_key(captions: Sequence[str]) -> str:
    """16 hex digits naming a caption set, whatever its order or repeats: SHA-256 of the sorted unique captions."""
    return hashlib.sha256(json.dumps(sorted(set(captions)), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _drop_legacy(cache_dir: Path, key: str) -> None:
    """Remove a version-1 cache of this encoder (one growing ``text-<key>.json`` and its tensor file)."""
    legacy = cache_dir / f"text-{key}.json"
    try:
        name = json.loads(legacy.read_text(encoding="utf-8")).get("file")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(name, str) and Path(name).name == name and name.startswith(f"text-{key}-"):
        (cache_dir / name).unlink(missing_ok=True)
    legacy.unlink(missing_ok=True)


def _write(index_path: Path, spec: dict[str, Any], captions: list[str], enc: TextEncoding) -> None:
    blob = save({"states": enc.states.contiguous(), "mask": enc.mask.contiguous(), "pooled": enc.pooled.contiguous()})
    sha = hashlib.sha256(blob).hexdigest()
    stem = index_path.stem
    name = f"{stem}-{sha[:16]}.safetensors"
    with atomic_open(index_path.parent / name, "wb") as f:
        f.write(blob)
    index = {"version": VERSION, "spec": spec, "captions": captions, "file": name, "sha256": sha}
    with atomic_open(index_path, "w", encoding="utf-8") as f:
        json.dump(index, f, ensure_ascii=False)
    for old in index_path.parent.glob(f"{stem}-*.safetensors"):  # files of earlier indexes
        if old.name != name:
            old.unlink(missing_ok=True)


def encode_captions(encoder: TextEncoder, captions: Sequence[str], *, batch_size: int = 256,
                    cache_dir: str | Path | None = None, progress: bool = False,
                    states_dtype: str = "float32") -> TextEncoding:
    """The encodings of the unique ``captions``, one row each, in first-occurrence order.

    Returns a :class:`TextEncoding` of U rows (U unique captions) padded to the longest of them:
    ``states`` (U, T, D), ``mask`` (U, T), ``pooled`` (U, P); the same values whether or not they came
    from the cache. With ``cache_dir``, a caption set already cached for this encoder (same spec: weight
    digest, ``max_length``, pooling; the same unique captions in any order) is read back instead of
    encoded; any other set is encoded and stored as its own cache entry. To get
    the rows of a list of caption indices, index the result: ``enc[idx]``.

    ``states_dtype``: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``: the token states are kept
    (and cached) in that type, halving memory for large caption sets (the Fashion scenes' full preset has
    about 87,000 distinct captions); the pooled vectors stay float32. Cached and fresh rows agree exactly.

    Raises :class:`EncoderError` for a non-string caption, a bad ``batch_size`` or ``states_dtype``.
    """
    batch_size = positive_int("batch_size", batch_size, error=EncoderError)
    if states_dtype not in STATE_DTYPES:
        raise EncoderError(f"states_dtype must be one of {', '.join(STATE_DTYPES)}, got {states_dtype!r}")
    dtype = STATE_DTYPES[states_dtype]
    if isinstance(captions, str | bytes):
        raise EncoderError("captions must be a list of strings, got a single string")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise EncoderError(f"caption {i} must be a string, got {type(c).__name__}")
    unique = list(dict.fromkeys(captions))
    if not unique:
        return _stored(encoder.encode([]), dtype)
    if cache_dir is None:
        return TextEncoding.cat(_encode(encoder, unique, batch_size, progress, dtype)).trim()

    spec = {k: v for k, v in encoder.spec().items() if k != "path"}
    key = cache_key(encoder)
    if states_dtype != "float32":  # float32 caches keep their original name and spec
        spec["states_dtype"] = states_dtype
        key = f"{key}-{states_dtype}"
    cache_dir = Path(cache_dir)
    index_path = cache_dir / f"text-{key}-{caption_set_key(unique)}.json"
    cached = _read(index_path, spec)
    if cached is not None and set(cached[0]) == set(unique):
        known, rows = cached
    else:
        known, rows = unique, TextEncoding.cat(_encode(encoder, unique, batch_size, progress, dtype))
        _drop_legacy(cache_dir, key)
        _write(index_path, spec, known, rows)
    where = {c: i for i, c in enumerate(known)}
    return rows[torch.tensor([where[c] for c in unique], dtype=torch.long)].trim()
