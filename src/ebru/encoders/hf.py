"""Any transformers text encoder held as a local folder, verified before it loads: :class:`HFTextEncoder`.

The folder is what ``save_pretrained`` writes: ``config.json``, the tokenizer files and the weights as
safetensors (``model.safetensors``). Loading, in order:

1. the weight file is read once and its SHA-256 compared with the pinned ``digest`` (nothing is parsed
   before that; a mismatch is one line naming the file and both digests);
2. the same bytes go through ebru's strict safetensors reader (:func:`ebru.trust.load_bytes`), never
   ``torch.load`` nor transformers' own weight loading;
3. the network is built from ``config.json`` (``AutoConfig`` + ``AutoModel.from_config``, or a named
   transformers class such as ``T5EncoderModel``), with remote code refused, and the tensors loaded with
   ``strict=True`` after mapping a ``"bert."``-style prefix (``base_model_prefix``) either way;
4. the tokenizer is ``AutoTokenizer.from_pretrained(folder)``; the hub is switched off
   (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``) before transformers is imported.

Pooling: ``"mean"`` (mean of the real tokens' states, as sentence-transformers' ``Pooling`` with
``pooling_mode_mean_tokens``), ``"cls"`` (the first token's state) or ``"pooler"`` (the model's own
``pooler_output``, e.g. CLIP's end-of-text state); ``normalize`` divides by the L2 norm afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ebru.checks import one_of, positive_int
from ebru.trust import UnsafeFileError, load_bytes

from .base import ENCODERS, EncoderError, TextEncoding

POOLINGS = ("mean", "cls", "pooler")
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def normalize_digest(digest: Any) -> str:
    """``"sha256:<64 hex>"`` from that form or bare hex; anything else is an :class:`EncoderError`."""
    m = _DIGEST.fullmatch(digest.strip().lower()) if isinstance(digest, str) else None
    if m is None:
        raise EncoderError(f"digest must be 'sha256:' and 64 hex digits, got {digest!r}")
    return f"sha256:{m.group(1)}"


def read_verified(path: Path, digest: str | None) -> bytes:
    """The bytes of ``path`` if their SHA-256 is ``digest``; else one-line :class:`EncoderError`, nothing parsed."""
    expected = None if digest is None else normalize_digest(digest)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise EncoderError(f"{path}: not a regular file")
            data = f.read()
    except FileNotFoundError:
        raise EncoderError(f"{path}: encoder weight file not found") from None
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest is None:
        raise EncoderError(f"{path}: no digest given; pin the file you mean to use with digest={found!r}")
    if found != expected:
        raise EncoderError(f"{path}: SHA-256 mismatch, refused before loading: expected {expected}, found {found}")
    return data


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise EncoderError("transformers is not installed: pip install 'transformers>=4.40'") from None
    return transformers


def _fit_keys(tensors: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Rename ``tensors`` to ``model``'s state-dict keys; refuse missing, unexpected or misshapen ones."""
    expected = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") or ""
    persistent = set(expected)
    transient = {n for n, _ in model.named_buffers()} - persistent  # e.g. BERT's position_ids: rebuilt, not read
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if prefix and key not in persistent:
            if key.startswith(prefix + ".") and key[len(prefix) + 1:] in persistent | transient:
                key = key[len(prefix) + 1:]
            elif f"{prefix}.{key}" in persistent | transient:
                key = f"{prefix}.{key}"
        if key not in transient:
            out[key] = value
    by_tensor: dict[int, list[str]] = {}
    for name, t in expected.items():  # tied weights (one parameter, several names) are saved once
        by_tensor.setdefault(id(t), []).append(name)
    for names in by_tensor.values():
        present = [n for n in names if n in out]
        for n in names:
            if present and n not in out:
                out[n] = out[present[0]]
    missing = sorted(persistent - set(out))
    unexpected = sorted(set(out) - persistent)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (first: {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (first: {unexpected[0]})"] if unexpected else []
        raise EncoderError(f"{path}: its tensors do not fit {type(model).__name__} built from config.json: "
                           + ", ".join(parts))
    for key, value in out.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise EncoderError(f"{path}: tensor {key!r} has shape {list(value.shape)}, "
                               f"{type(model).__name__} expects {list(expected[key].shape)}")
    return out


class HFTextEncoder:
    """A frozen transformers encoder from a local folder, verified against a pinned SHA-256 (module docstring).

    Args:
        path: the folder (``config.json``, tokenizer files, ``weights``).
        digest: ``"sha256:<hex>"`` of the weight file; required (``None`` raises, naming the digest found).
        pooling: ``"mean"``, ``"cls"`` or ``"pooler"``. normalize: L2-normalise the pooled vector.
        max_length: most tokens per prompt, special tokens included; default and upper limit are the
            smaller of the tokenizer's ``model_max_length`` and ``max_position_embeddings``.
        architecture: a transformers class name (e.g. ``"T5EncoderModel"``); default ``AutoModel``.
        name: what ``spec()`` and manifests call it; default the folder's name.

    Raises :class:`EncoderError` (one line) for a missing folder or file, a digest mismatch, weights that
    do not fit the config, or a bad argument.
    """

    kind = "hf"
    limit: int | None = None  # a subclass may cap max_length lower than the model does

    def __init__(self, path: str | os.PathLike, *, digest: str | None, pooling: str = "mean", normalize: bool = True,
                 max_length: int | None = None, architecture: str | None = None, name: str | None = None,
                 weights: str = "model.safetensors"):
        self.path = Path(path)
        self.pooling = one_of("pooling", pooling, POOLINGS, error=EncoderError)
        self.normalize = bool(normalize)
        self.architecture, self.weights = architecture, weights
        if max_length is not None:  # refuse what can be refused before reading 90 MB
            positive_int("max_length", max_length, error=EncoderError)
            if self.limit is not None and max_length > self.limit:
                raise EncoderError(f"max_length must be <= {self.limit} for this encoder, got {max_length}")
        if not (self.path / "config.json").is_file():
            raise EncoderError(f"{self.path}: not an encoder folder (no config.json)")
        data = read_verified(self.path / weights, digest)
        self.digest = normalize_digest(digest)
        try:
            tensors, _ = load_bytes(data, self.path / weights)
        except UnsafeFileError as e:
            raise EncoderError(str(e)) from None
        del data
        tf = _import_transformers()
        config = tf.AutoConfig.from_pretrained(self.path, trust_remote_code=False)
        if architecture is None:
            model = tf.AutoModel.from_config(config, trust_remote_code=False)
        else:
            cls = getattr(tf, architecture, None)
            if not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel)):
                raise EncoderError(f"architecture {architecture!r} is not a transformers model class")
            model = cls(config)
        model.load_state_dict(_fit_keys(tensors, model, self.path / weights), strict=True)
        del tensors
        self.model = model.float().eval().requires_grad_(False)
        self.net = model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model
        self.tokenizer = tf.AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        if self.tokenizer.pad_token is None:
            raise EncoderError(f"{self.path}: the tokenizer has no padding token")
        self.tokenizer.padding_side = "right"
        limits = [n for n in (self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None),
                              self.limit) if isinstance(n, int) and n < 1_000_000]
        cap = min(limits) if limits else None
        if max_length is None and cap is None:
            raise EncoderError(f"{self.path}: the model states no length limit; pass max_length")
        self.max_length = positive_int("max_length", cap if max_length is None else max_length,
                                       minimum=self.tokenizer.num_special_tokens_to_add() + 1, error=EncoderError)
        if cap is not None and self.max_length > cap:
            raise EncoderError(f"max_length must be <= {cap} for this encoder, got {self.max_length}")
        self.name = name or self.path.resolve().name
        probe = self.encode([""])
        self.dim, self.pooled_dim = probe.states.shape[2], probe.pooled.shape[1]

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode B prompts: states (B, T, D) zero on padding, mask (B, T), pooled (B, P); float32, CPU.

        T is the longest prompt's token count (at most ``max_length``). Longer prompts are truncated with one
        ``UserWarning`` per call giving the number of prompts and of dropped tokens. A prompt that is not a
        string raises :class:`EncoderError` (a ``ValueError``).
        """
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
            raise EncoderError(f"prompts must be a list of strings, got {type(prompts).__name__}"
                               + (" (wrap one prompt in a list)" if isinstance(prompts, str) else ""))
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise EncoderError(f"prompt {i} must be a string, got {type(p).__name__}")
        prompts = list(prompts)
        if not prompts:
            d = getattr(self, "dim", 0)
            return TextEncoding(torch.zeros(0, 0, d), torch.zeros(0, 0, dtype=torch.bool),
                                torch.zeros(0, getattr(self, "pooled_dim", d)))
        tok, n = self.tokenizer, self.max_length
        full = tok(prompts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        dropped = [len(ids) - n for ids in full if len(ids) > n]
        if dropped:
            who = "prompt" if len(dropped) == 1 else f"{len(dropped)} of {len(prompts)} prompts"
            warnings.warn(f"{who} truncated to {n} tokens ({sum(dropped)} tokens dropped)", UserWarning,
                          stacklevel=2)
        batch = tok(prompts, padding="longest", truncation=True, max_length=n, return_tensors="pt")
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            out = self.net(**batch)
            states = out.last_hidden_state.float() * mask[..., None]
            if self.pooling == "mean":  # sentence-transformers Pooling: sum / clamp(count, 1e-9)
                pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            elif self.pooling == "cls":
                pooled = states[:, 0]
            else:
                if getattr(out, "pooler_output", None) is None:
                    raise EncoderError(f"{type(self.net).__name__} has no pooler_output; use pooling='mean' or 'cls'")
                pooled = out.pooler_output.float()
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return TextEncoding(states.contiguous(), mask, pooled.contiguous())

    def spec(self) -> dict[str, Any]:
        """JSON-ready description; :func:`ebru.encoders.load_encoder` rebuilds this encoder from it."""
        return {"kind": self.kind, "name": self.name, "digest": self.digest, "dim": self.dim,
                "pooled_dim": self.pooled_dim, "max_length": self.max_length, "path": str(self.path),
                "pooling": self.pooling, "normalize": self.normalize, "architecture": self.architecture,
                "weights": self.weights}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, max_length={self.max_length}, {self.digest[:19]})"


ENCODERS.register("hf", HFTextEncoder,
                  spec_fields=("path", "digest", "pooling", "normalize", "max_length", "architecture", "name",
                               "weights"))
