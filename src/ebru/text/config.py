"""The ``[text]`` table of a text training config: which process, tokenizer and context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ebru.nets.config import DictConfig

PROCESSES = ("masked", "uniform", "block", "ar")
TOKENIZERS = ("char", "bpe")


@dataclass
class TextConfig(DictConfig):
    process: str = "masked"  # masked | uniform | block | ar
    tokenizer: str = "char"  # char | bpe
    bpe_vocab: int = 2048  # vocabulary size of a BPE tokenizer trained on the corpus
    context: int = 256  # tokens per training sequence and the longest generation
    block_size: int = 16  # block diffusion: tokens per block
    eps: float = 1e-3  # diffusion times are drawn on [eps, 1]
    sample_length: int = 200  # previews written under samples/ during training
    sample_steps: int = 50
    sample_decoder: str | None = None  # default: confidence (diffusion), ar (autoregressive)
    KIND: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.process in PROCESSES, f"text.process must be one of {', '.join(PROCESSES)}, got {self.process!r}")
        need(self.tokenizer in TOKENIZERS,
             f"text.tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        for name in ("bpe_vocab", "context", "block_size", "sample_length", "sample_steps"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"text.{name} must be a positive integer, got {v!r}")
        need(0 < self.eps < 1, f"text.eps must be in (0, 1), got {self.eps!r}")
        need(self.bpe_vocab >= 256 or self.tokenizer != "bpe", "text.bpe_vocab must be >= 256 (the byte alphabet)")
