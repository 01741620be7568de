"""Tokenizers saved with a text model: characters, or byte-level BPE trained on the corpus.

Both map text to ids ``0 .. vocab_size-1`` and back. A masked-diffusion model adds its
[MASK] id (``vocab_size``) on top; the tokenizer never produces it. Both are lossless
on text they can encode: ``decode(encode(s)) == s``.

- :class:`CharTokenizer`: one id per character seen in the training text. A character
  outside that vocabulary is an error naming it (no silent [UNK]).
- :class:`BPETokenizer`: byte-level BPE from the ``tokenizers`` library, so any text encodes.

``save(dir)`` writes ``dir/tokenizer.json``; :func:`load_tokenizer` reads either kind back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from .errors import TextInputError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def dumps(self) -> str: ...
    def save(self, directory: str | Path) -> Path: ...


class CharTokenizer:
    """Characters of the training text, sorted by code point."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("a character tokenizer needs a non-empty set of single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(seen)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.index})
            shown = ", ".join(repr(c) for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
            raise TextInputError(f"{len(bad)} character(s) outside this model's vocabulary of {self.vocab_size}: "
                                 f"{shown}") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"ebru_tokenizer": "char", "chars": "".join(self.chars)}

    def dumps(self) -> str:
        """The contents of ``tokenizer.json``."""
        return json.dumps(self.to_json(), ensure_ascii=False)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(self.dumps())
        return path


class BPETokenizer:
    """Byte-level BPE (the ``tokenizers`` library); decodes whatever it encodes, byte for byte."""

    kind = "bpe"

    def __init__(self, tok):  # a tokenizers.Tokenizer
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_chunks(texts), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def dumps(self) -> str:
        """The contents of ``tokenizer.json`` (the ``tokenizers`` library's own format)."""
        return self.tok.to_str()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(self.dumps())
        return path


def _chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterable[str]:
    for t in texts:
        for i in range(0, len(t), size):
            yield t[i:i + size]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 2048) -> CharTokenizer | BPETokenizer:
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}; valid: char, bpe")


def load_tokenizer(directory: str | Path) -> CharTokenizer | BPETokenizer:
    path = Path(directory) / TOKENIZER_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OSError(f"cannot read the tokenizer {path}: {e}") from None
    if data.get("ebru_tokenizer") == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_str(json.dumps(data)))
