"""What every condition encoder returns and promises: :class:`TextEncoding`, :class:`TextEncoder`, the registry.

A text encoder turns B prompts into

- ``states`` (B, T, D) float32: the last hidden states, one row per token, padded to the longest prompt
  of the call with zeros;
- ``mask`` (B, T) bool: True on a real token (special tokens such as [CLS]/[SEP] included);
- ``pooled`` (B, P) float32: one sentence vector per prompt.

This is the split Stable Diffusion-style models condition on: cross-attention over the token states,
and the pooled vector added to the noise embedding (SDXL: Podell et al. 2023, sec. 2.1; Imagen:
Saharia et al. 2022, sec. 2.2). Encoders are frozen, verified components: ``digest`` is the SHA-256 of
the weight file that was checked and loaded, and ``spec()`` is enough for :func:`load_encoder` to
rebuild the same encoder, refusing a file whose digest has changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ebru.checks import unknown_key_message
from ebru.diffusion.registry import Registry, UnknownNameError


class EncoderError(ValueError):
    """A refusal about an encoder, on one line: package missing, digest mismatch, bad spec or input."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class TextEncoding:
    """Token states, their mask and the pooled vector of B prompts (see the module docstring for shapes).

    Raises :class:`EncoderError` when the three tensors disagree on B or T, or have the wrong rank/dtype.
    """

    states: Tensor  # (B, T, D) float
    mask: Tensor  # (B, T) bool, True = real token
    pooled: Tensor  # (B, P) float

    def __post_init__(self):
        s, m, p = self.states, self.mask, self.pooled
        if s.ndim != 3 or m.ndim != 2 or p.ndim != 2:
            raise EncoderError(f"TextEncoding needs states (B, T, D), mask (B, T), pooled (B, P); got shapes "
                               f"{tuple(s.shape)}, {tuple(m.shape)}, {tuple(p.shape)}")
        if m.dtype != torch.bool:
            raise EncoderError(f"TextEncoding mask must be bool, got {m.dtype}")
        if tuple(m.shape) != tuple(s.shape[:2]) or p.shape[0] != s.shape[0]:
            raise EncoderError(f"TextEncoding shapes disagree: states {tuple(s.shape)}, mask {tuple(m.shape)}, "
                               f"pooled {tuple(p.shape)}")

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(B,) int64: the number of real tokens of each row."""
        return self.mask.sum(dim=1)

    def __getitem__(self, idx: int | slice | Tensor | Sequence[int]) -> TextEncoding:
        """The rows ``idx``: an int (kept as a batch of one), a slice, a LongTensor/list of indices or a bool mask."""
        if isinstance(idx, int) and not isinstance(idx, bool):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"row {idx} out of range for a TextEncoding of {n} rows")
            idx = slice(idx % n, idx % n + 1)
        elif not isinstance(idx, slice | Tensor):
            idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(idx, Tensor):
            idx = idx.to(self.states.device)
        return TextEncoding(self.states[idx], self.mask[idx], self.pooled[idx])

    def to(self, device: torch.device | str) -> TextEncoding:
        """The same encoding on ``device`` (dtypes unchanged)."""
        return TextEncoding(self.states.to(device), self.mask.to(device), self.pooled.to(device))

    def pad_to(self, length: int) -> TextEncoding:
        """Pad the token axis to T = ``length``: states with zeros, mask with False. ``length < T`` is refused."""
        b, t, d = self.states.shape
        if isinstance(length, bool) or not isinstance(length, int) or length < t:
            raise EncoderError(f"pad_to length must be an integer >= T = {t}, got {length!r} (use trim() to shorten)")
        if length == t:
            return self
        states = torch.cat([self.states, self.states.new_zeros(b, length - t, d)], dim=1)
        mask = torch.cat([self.mask, self.mask.new_zeros(b, length - t)], dim=1)
        return TextEncoding(states, mask, self.pooled)

    def trim(self) -> TextEncoding:
        """Drop the trailing token columns that are padding in every row (T becomes the longest row's length)."""
        t = int(self.lengths.max()) if len(self) else 0
        return TextEncoding(self.states[:, :t], self.mask[:, :t], self.pooled)

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        """Rows of ``parts`` in order, each padded to the longest T first. Widths D and P must agree."""
        parts = list(parts)
        if not parts:
            raise EncoderError("TextEncoding.cat needs at least one part")
        dims = {(p.states.shape[2], p.pooled.shape[1]) for p in parts}
        if len(dims) > 1:
            raise EncoderError(f"TextEncoding.cat: parts have different widths (D, P): {sorted(dims)}")
        t = max(p.states.shape[1] for p in parts)
        padded = [p.pad_to(t) for p in parts]
        return TextEncoding(torch.cat([p.states for p in padded]), torch.cat([p.mask for p in padded]),
                            torch.cat([p.pooled for p in padded]))


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder: ``encode`` runs under ``torch.no_grad`` in eval mode on the CPU in float32.

    ``max_length`` counts special tokens; longer prompts are truncated with one ``UserWarning`` per call
    saying how many tokens were dropped. ``spec()`` is JSON-ready and rebuilds the encoder through
    :func:`load_encoder` (``name``, ``digest``, ``dim``, ``pooled_dim``, ``max_length`` and the
    registry ``kind``).
    """

    name: str
    dim: int
    pooled_dim: int
    max_length: int
    digest: str

    def encode(self, prompts: Sequence[str]) -> TextEncoding: ...

    def spec(self) -> dict[str, Any]: ...


#: registry kind -> factory(**spec fields) -> TextEncoder. "minilm" and "hf" are registered by their modules.
ENCODERS = Registry("text encoder")

#: spec fields that describe the encoder rather than configure it: checked against the rebuilt encoder.
DESCRIPTIVE = ("name", "dim", "pooled_dim")


def load_encoder(spec: dict[str, Any]) -> TextEncoder:
    """Rebuild the encoder ``spec`` describes (the output of ``encoder.spec()``).

    ``spec["kind"]`` names the factory in :data:`ENCODERS` (without ``kind``, a ``name`` that is registered
    serves); the other fields are its arguments, except ``name``, ``dim`` and ``pooled_dim`` where the
    factory does not take them, which must match the rebuilt encoder. ``spec["digest"]`` is
    required, and the factory refuses a weight file with another SHA-256 before loading it.
    Raises :class:`EncoderError` (unknown kind, missing digest, unknown field, mismatch).
    """
    if not isinstance(spec, dict):
        raise EncoderError(f"an encoder spec must be a dict (from encoder.spec()), got {type(spec).__name__}")
    fields = dict(spec)
    kind = fields.pop("kind", None)
    if kind is None and fields.get("name") in ENCODERS:  # {"name": "hf", ...} or {"name": "all-MiniLM-L6-v2", ...}
        kind = fields.pop("name")
    if kind is None:
        raise EncoderError(f"encoder spec has no 'kind'; valid kinds: {', '.join(sorted(ENCODERS))}")
    try:
        factory = ENCODERS[kind]
    except UnknownNameError as e:
        raise EncoderError(str(e)) from None
    if not fields.get("digest"):
        raise EncoderError(f"encoder spec for {kind!r} has no 'digest'; an encoder is loaded only against a pinned "
                           "SHA-256")
    allowed = getattr(factory, "spec_fields", None)
    described = {k: fields.pop(k) for k in DESCRIPTIVE if k in fields and k not in (allowed or ())}
    if allowed is not None:
        for key in fields:
            if key not in allowed:
                raise EncoderError(unknown_key_message(key, [*allowed, *DESCRIPTIVE, "kind"], "encoder spec"))
    encoder = factory(**fields)
    for key, value in described.items():
        if getattr(encoder, key) != value:
            raise EncoderError(f"encoder spec says {key}={value!r} but the loaded encoder has "
                               f"{key}={getattr(encoder, key)!r}")
    return encoder
