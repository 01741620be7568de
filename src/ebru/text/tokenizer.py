"""Tokenizers saved with a text model: characters, or byte-level BPE trained on the corpus.

Both map text to ids ``0 .. vocab_size-1`` and back. A masked-diffusion model adds its
[MASK] id (``vocab_size``) on top; the tokenizer never produces it. Both are lossless
on text they can encode: ``decode(encode(s)) == s``.

- :class:`CharTokenizer`: one id per character seen in the training text. A character
  outside that vocabulary is an error naming it (no silent [UNK]).
- :class:`BPETokenizer`: byte-level BPE from the ``tokenizers`` library, so any text encodes.

``save(dir)`` writes ``dir/tokenizer.json`` (UTF-8, whatever the locale); :func:`load_tokenizer` reads
either kind back from a directory and :func:`parse_tokenizer` from bytes (a verified package's), and
a file that is not UTF-8 JSON of either kind is one :class:`TextInputError` line naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from ebru.checks import one_of

from .errors import TextInputError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    """What a text model needs of a tokenizer: ids ``0 .. vocab_size-1`` and back, and its ``tokenizer.json``."""

    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids ``ids``."""

    def dumps(self) -> str:
        """The contents of ``tokenizer.json``."""

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` (UTF-8)."""


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
        """Every character that occurs in ``texts``."""
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(seen)

    def encode(self, text: str) -> list[int]:
        """One id per character; :class:`TextInputError` naming the characters outside the vocabulary."""
        try:
            return [self.index[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.index})
            shown = ", ".join(repr(c) for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
            raise TextInputError(f"{len(bad)} character(s) outside this model's vocabulary of {self.vocab_size}: "
                                 f"{shown}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The characters of ``ids``."""
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        """``{"ebru_tokenizer": "char", "chars": ...}``: what ``tokenizer.json`` holds."""
        return {"ebru_tokenizer": "char", "chars": "".join(self.chars)}

    def dumps(self) -> str:
        """The contents of ``tokenizer.json``."""
        return json.dumps(self.to_json(), ensure_ascii=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` as UTF-8; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(self.dumps(), encoding="utf-8")
        return path


class BPETokenizer:
    """Byte-level BPE (the ``tokenizers`` library); decodes whatever it encodes, byte for byte."""

    kind = "bpe"

    def __init__(self, tok):  # a tokenizers.Tokenizer
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> BPETokenizer:
        """Byte-level BPE with at most ``vocab_size`` tokens (the 256 byte symbols included) learnt on ``texts``."""
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
        """Token ids of ``text`` (any text: byte-level)."""
        return self.tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, byte for byte what was encoded."""
        return self.tok.decode([int(i) for i in ids])

    def dumps(self) -> str:
        """The contents of ``tokenizer.json`` (the ``tokenizers`` library's own format)."""
        return self.tok.to_str()

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` as UTF-8; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.write_text(self.dumps(), encoding="utf-8")
        return path


def _chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterable[str]:
    for t in texts:
        for i in range(0, len(t), size):
            yield t[i:i + size]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 2048) -> CharTokenizer | BPETokenizer:
    """A ``char`` or ``bpe`` tokenizer (``vocab_size`` tokens at most) trained on ``texts``.

    Raises ``ValueError`` for another ``kind``, naming the nearest.
    """
    trainers = {"char": lambda: CharTokenizer.train(texts), "bpe": lambda: BPETokenizer.train(texts, vocab_size)}
    return trainers[one_of("tokenizer", kind, trainers)]()


def load_tokenizer(directory: str | Path) -> CharTokenizer | BPETokenizer:
    """The tokenizer saved in ``directory/tokenizer.json`` (see :func:`parse_tokenizer`).

    Raises ``OSError`` naming the file when it cannot be read, :class:`TextInputError` when it is not
    a UTF-8 tokenizer file.
    """
    path = Path(directory) / TOKENIZER_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot read the tokenizer {path}: {e.strerror or e}") from None
    return parse_tokenizer(data, path)


def parse_tokenizer(data: bytes | str, source: str | Path = TOKENIZER_FILE) -> CharTokenizer | BPETokenizer:
    """A tokenizer from the contents of a ``tokenizer.json``: UTF-8 bytes (or text), either kind.

    ``source`` names the file in errors. Raises :class:`TextInputError` (one line naming ``source``)
    for bytes that are not UTF-8, text that is not JSON, or JSON that is not a tokenizer.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise TextInputError(f"{source} is not valid UTF-8 (byte {e.start} is {data[e.start:e.start + 1]!r}): "
                                 "a tokenizer file is UTF-8 JSON") from None
    else:
        text = data
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TextInputError(f"{source} is not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(obj, dict):
        raise TextInputError(f"{source} is not a tokenizer: a JSON object is expected, got {type(obj).__name__}")
    if obj.get("ebru_tokenizer") == "char":
        chars = obj.get("chars")
        if not isinstance(chars, str) or not chars:
            raise TextInputError(f"{source} is not a character tokenizer: 'chars' must be a non-empty string")
        return CharTokenizer(chars)
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return BPETokenizer(HFTokenizer.from_str(text))
    except Exception as e:  # the tokenizers library raises its own exception types
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise TextInputError(f"{source} is not a tokenizer ebru can read: {first}") from None
