"""The ``[text]`` table of a text training config: which process, tokenizer and context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ebru.checks import finite_number, one_of, positive_int
from ebru.nets.config import DictConfig

from .process import PROCESSES

TOKENIZERS = ("char", "bpe")


@dataclass
class TextConfig(DictConfig):
    """The ``[text]`` table; every value is checked when the config is made (one ``ValueError`` line each).

    ``process`` is a name of ``ebru.text.PROCESSES`` and ``sample_decoder`` one of that process's
    decoders: an unknown name is refused naming the nearest valid one, as unknown keys are.
    """

    process: str = "masked"  # masked | uniform | block | ar (ebru.text.PROCESSES)
    tokenizer: str = "char"  # char | bpe
    bpe_vocab: int = 2048  # vocabulary size of a BPE tokenizer trained on the corpus
    context: int = 256  # tokens per training sequence and the longest generation
    block_size: int = 16  # block diffusion: tokens per block
    eps: float = 1e-3  # diffusion times are drawn on [eps, 1]
    sample_length: int = 200  # previews written under samples/ during training
    sample_steps: int = 50
    sample_decoder: str | None = None  # default: the process's default_decoder (confidence; ar for ar)
    KIND: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        one_of("text.process", self.process, sorted(PROCESSES))
        one_of("text.tokenizer", self.tokenizer, TOKENIZERS)
        for name in ("bpe_vocab", "context", "block_size", "sample_length", "sample_steps"):
            positive_int(f"text.{name}", getattr(self, name))
        eps = finite_number("text.eps", self.eps, positive=True)
        if eps >= 1:
            raise ValueError(f"text.eps must be in (0, 1), got {self.eps!r}")
        if self.sample_decoder is not None:
            one_of("text.sample_decoder", self.sample_decoder, PROCESSES[self.process].decoders)
        if self.tokenizer == "bpe" and self.bpe_vocab < 256:
            raise ValueError("text.bpe_vocab must be >= 256 (the byte alphabet)")
