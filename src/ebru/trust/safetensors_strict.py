"""Strict safetensors reading: every structural rule is checked before a tensor is materialised.

The safetensors format (8-byte little-endian header length N, an N-byte JSON header, then a
byte buffer) is safe by design, but parsers have disagreed on its corners (Trail of Bits audit,
2023: polyglots, overflowing sizes, duplicate keys). This module refuses anything outside the
strict reading of the specification, and only then hands the *same bytes* to the safetensors
library:

- **Content sniffing first.** Pickle streams (``torch.save`` legacy, ``.bin``, ``.ckpt``), ZIP
  archives (``torch.save``, TorchScript) and other container formats are refused by their
  first bytes, whatever the file is called.
- **Header length**: at least 2 bytes, at most :data:`MAX_HEADER_BYTES` (16 MiB, well under the
  library's 100 MB), and inside the file.
- **Header text**: starts with ``{``, padded only with spaces (0x20), strict UTF-8, strict JSON:
  duplicate keys (at any depth) and NaN/Infinity refused; a JSON object of at most
  :data:`MAX_TENSORS` entries.
- **Each tensor**: exactly ``dtype``, ``shape`` and ``data_offsets``; a dtype from
  :data:`DTYPE_SIZES`; a shape of at most :data:`MAX_RANK` non-negative integers; offsets
  ``0 <= begin <= end`` inside the buffer; ``prod(shape) * itemsize`` computed in exact integer
  arithmetic, refused past 2**64 (where a fixed-width parser would wrap) and required to equal
  ``end - begin``.
- **The buffer**: tensors sorted by offset must tile it exactly — no overlap (zero-size tensors
  included), no hole, no trailing byte.
- **Metadata**: ``__metadata__``, if present, maps strings to strings.
- **Polyglots**: a file that is also a valid ZIP archive is refused.

After the library has read the tensors, their names, dtypes and shapes are compared with the
validated header, so the two parsers cannot silently disagree.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import UnsafeFileError
from .files import Stamp, check_stamp
from .strict_json import loads

if TYPE_CHECKING:
    from torch import Tensor

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_RANK = 32

#: bytes per element of every dtype ebru accepts (sub-byte and exotic dtypes are refused).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the validated header describes it; offsets are relative to the byte buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsInfo:
    """A validated safetensors file: tensors in buffer order, metadata, and sizes."""

    header_bytes: int
    data_bytes: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return 8 + self.header_bytes + self.data_bytes


# --------------------------------------------------------------------------- content sniffing


def _zip_kind(f: BinaryIO) -> str:
    """What a ZIP archive holds, from its member names (read from the central directory only)."""
    try:
        f.seek(0)
        names = zipfile.ZipFile(f).namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "a ZIP archive, not safetensors"
    if any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names):
        return "a TorchScript archive (code and pickled constants inside), not safetensors"
    if any(n.endswith("data.pkl") for n in names):
        return "a torch.save ZIP archive (a pickle inside, which can run code when loaded), not safetensors"
    return "a ZIP archive, not safetensors"


def sniff(head: bytes) -> str | None:
    """Name a known non-safetensors format from a file's first bytes, or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle stream (protocol {head[1]}; e.g. a renamed .pt/.bin/.ckpt), which can run code when loaded"
    if head[:4] == b"GGUF":
        return "a GGUF file, not safetensors"
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy file, not safetensors"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file, not safetensors"
    return None


def refuse_unsafe_content(f: BinaryIO, path: str | os.PathLike) -> None:
    """Raise if the file starts like pickle, ZIP/TorchScript or another container format."""
    f.seek(0)
    kind = sniff(f.read(16))
    if kind == "zip":
        kind = _zip_kind(f)
    if kind is not None:
        raise UnsafeFileError(path, f"refused: {kind}")


# --------------------------------------------------------------------------- header validation


def _shape(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        return None
    if not all(type(d) is int and d >= 0 for d in value):
        return None
    return tuple(value)


def _tensor(name: str, entry: object, data_bytes: int, path: str | os.PathLike) -> TensorInfo:
    def refuse(reason: str) -> UnsafeFileError:
        return UnsafeFileError(path, f"tensor {name!r}: {reason}")

    if not isinstance(entry, dict):
        raise refuse("entry is not a JSON object")
    missing = sorted(_TENSOR_FIELDS - entry.keys())
    if missing:
        raise refuse(f"missing {', '.join(missing)}")
    extra = sorted(entry.keys() - _TENSOR_FIELDS)
    if extra:
        raise refuse(f"unknown field {extra[0]!r}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise refuse(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})")
    shape = _shape(entry["shape"])
    if shape is None:
        raise refuse(f"shape must be a list of at most {MAX_RANK} non-negative integers, got {entry['shape']!r}")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise refuse(f"data_offsets must be two integers [begin, end], got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise refuse(f"data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end")
    nbytes = prod(shape) * DTYPE_SIZES[dtype]  # exact: Python integers do not wrap
    if nbytes >= 2**64:
        raise refuse(f"shape {list(shape)} of {dtype} needs {nbytes} bytes, which overflows 64 bits")
    if nbytes != end - begin:
        raise refuse(f"shape {list(shape)} of {dtype} is {nbytes} bytes but data_offsets [{begin}, {end}] "
                     f"span {end - begin}")
    if end > data_bytes:
        raise refuse(f"data_offsets [{begin}, {end}] run past the end of the data buffer ({data_bytes} bytes)")
    return TensorInfo(name, dtype, shape, begin, end)


def _validate(f: BinaryIO, size: int, path: str | os.PathLike) -> SafetensorsInfo:
    refuse_unsafe_content(f, path)
    if size < 8:
        raise UnsafeFileError(path, f"{size} bytes is too short for a safetensors file (8-byte header length first)")
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n < 2:
        raise UnsafeFileError(path, f"header length {n} is too small for a JSON object")
    if n > MAX_HEADER_BYTES or 8 + n > size:
        if f.read(1) != b"{":  # e.g. a JSON or text file given by mistake: its first 8 bytes are no length
            raise UnsafeFileError(path, f"not a safetensors file (its first 8 bytes are not a header length: "
                                        f"{n} for a file of {size} bytes, and no JSON header follows)")
        f.seek(8)
    if n > MAX_HEADER_BYTES:
        raise UnsafeFileError(path, f"header length {n} exceeds the {MAX_HEADER_BYTES // 2**20} MiB limit")
    if 8 + n > size:
        raise UnsafeFileError(path, f"header length {n} runs past the end of the file ({size} bytes)")
    raw = f.read(n)
    if raw[:1] != b"{":
        raise UnsafeFileError(path, "header does not start with '{'")
    if not raw.rstrip(b" ").endswith(b"}"):
        raise UnsafeFileError(path, "header must be one JSON object padded only with spaces (0x20)")
    header = loads(raw, path, "header", UnsafeFileError)
    if not isinstance(header, dict):
        raise UnsafeFileError(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise UnsafeFileError(path, "__metadata__ must be a JSON object of strings")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise UnsafeFileError(path, f"__metadata__ must map strings to strings; {k!r} maps to "
                                        f"{type(v).__name__}")
    if len(header) > MAX_TENSORS:
        raise UnsafeFileError(path, f"{len(header)} tensors exceed the limit of {MAX_TENSORS}")

    data_bytes = size - 8 - n
    tensors = sorted((_tensor(name, entry, data_bytes, path) for name, entry in header.items()),
                     key=lambda t: (t.begin, t.end, t.name))
    covered, previous = 0, None
    for t in tensors:
        if t.begin < covered:
            assert previous is not None
            raise UnsafeFileError(path, f"tensors {previous.name!r} [{previous.begin}, {previous.end}] and "
                                        f"{t.name!r} [{t.begin}, {t.end}] overlap")
        if t.begin > covered:
            raise UnsafeFileError(path, f"{t.begin - covered} unindexed bytes (a hole) at buffer offset {covered}, "
                                        f"before tensor {t.name!r}")
        covered, previous = t.end, t
    if covered != data_bytes:
        raise UnsafeFileError(path, f"{data_bytes - covered} trailing bytes after the last tensor "
                                    f"(tensors cover {covered} of {data_bytes} buffer bytes)")

    f.seek(0)
    if zipfile.is_zipfile(f):
        raise UnsafeFileError(path, "refused: the file is also a valid ZIP archive (a polyglot)")
    return SafetensorsInfo(n, data_bytes, tuple(tensors), dict(metadata))


def validate_bytes(data: bytes, path: str | os.PathLike = "<bytes>") -> SafetensorsInfo:
    """Validate an in-memory safetensors file; raise :class:`UnsafeFileError` naming ``path``."""
    return _validate(io.BytesIO(data), len(data), path)


def validate_file(path: str | os.PathLike, stamp: Stamp | None = None) -> SafetensorsInfo:
    """Validate a safetensors file on disk, reading only its header (and its tail, for ZIP polyglots).

    ``stamp``: the :data:`~ebru.trust.files.Stamp` of the pass that hashed the file; a file replaced
    or written to since then is refused (:class:`~ebru.trust.errors.IntegrityError`), so what is
    validated is what was hashed.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if e.errno == getattr(os, "ELOOP", -1) or p.is_symlink():
            raise UnsafeFileError(p, "is a symbolic link; refused") from None
        raise OSError(e.errno, f"cannot read {p} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(p, "is not a regular file")
        check_stamp(p, f.fileno(), stamp)
        info = _validate(f, st.st_size, p)
        check_stamp(p, f.fileno(), stamp)
        return info


# --------------------------------------------------------------------------- loading

_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
    "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64",
}


def load_bytes(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[dict[str, Tensor], SafetensorsInfo]:
    """Validate ``data`` strictly, then load it with the safetensors library; returns (tensors, info).

    The tensors are compared with the validated header afterwards (names, dtypes, shapes), so a
    parser differential between this module and the library is refused, not silently used.
    """
    import torch
    from safetensors.torch import load

    info = validate_bytes(data, path)
    try:
        tensors = load(data)
    except Exception as e:  # the library's own error types; the header already passed our checks
        raise UnsafeFileError(path, f"the safetensors library refused the file ({e})") from None
    expected = {t.name: t for t in info.tensors}
    if set(tensors) != set(expected):
        raise UnsafeFileError(path, "the safetensors library read different tensor names than the validated header")
    for name, tensor in tensors.items():
        t = expected[name]
        if tuple(tensor.shape) != t.shape or tensor.dtype != getattr(torch, _TORCH_DTYPES[t.dtype]):
            raise UnsafeFileError(path, f"tensor {name!r}: the safetensors library read {tensor.dtype} "
                                        f"{list(tensor.shape)}, the validated header says {t.dtype} {list(t.shape)}")
    return tensors, info


def load_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], SafetensorsInfo]:
    """Read a file once (no symlinks), validate it strictly, and load it; see :func:`load_bytes`."""
    p = Path(path)
    validate_file(p)  # cheap header-only pass: refuses hostile files before reading gigabytes
    with open(p, "rb") as f:
        data = f.read()
    return load_bytes(data, p)
