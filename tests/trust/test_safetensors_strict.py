"""The strict safetensors reader against a hostile corpus generated here, each file refused with its reason."""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save

from ebru.trust import UnsafeFileError, load_bytes, validate_bytes, validate_file
from ebru.trust import safetensors_strict as strict


def st(header: dict | bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw text/bytes) and a data buffer."""
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def f32(shape, begin, end) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def torch_legacy() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def torchscript() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated, but its archives are still out there
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


VALID = save({"a": torch.ones(2, 2), "b": torch.arange(3, dtype=torch.int64)}, metadata={"format": "pt"})
EIGHT = bytes(8)

# (case id, file bytes, expected reason). Every file must be refused, whatever it is called.
CORPUS = [
    ("too-short", b"\x05\x00\x00", "too short for a safetensors file"),
    ("header-length-zero", st(b"", length=0), "header length 0 is too small"),
    ("header-length-past-eof", st({"a": f32([1], 0, 4)}, bytes(4), length=4096), "runs past the end of the file"),
    ("header-length-over-cap", st(b"{}", length=strict.MAX_HEADER_BYTES + 1), "exceeds the 16 MiB limit"),
    ("header-not-object", st("[1, 2]"), "header does not start with '{'"),
    ("header-leading-space", st(' {"a": 1}'), "header does not start with '{'"),
    ("header-newline-padding", st("{}\n\n"), "padded only with spaces"),
    ("header-not-utf8", st(b'{"\xff\xfe": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}', bytes(4)),
     "header is not valid UTF-8"),
    ("header-not-json", st('{"a": }'), "header is not valid JSON"),
    ("header-nan", st('{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', bytes(4)),
     "non-standard number NaN"),
    ("huge-integer", st('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}', bytes(4)),
     "header is not acceptable JSON (Exceeds the limit (4300 digits)"),
    ("deep-nesting", st('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), "header is nested too deeply"),
    ("duplicate-same-offsets", st('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                  '"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)),
     "duplicate key 'w'"),
    # The differential from the ToB write-ups: a U8[4] and an F32[1] both covering bytes [0, 4].
    ("duplicate-different-dtype", st('{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
                                     '"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)),
     "duplicate key 'w'"),
    ("duplicate-field", st('{"w": {"dtype": "F32", "dtype": "U8", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)),
     "duplicate key 'dtype'"),
    ("duplicate-metadata", st('{"__metadata__": {}, "__metadata__": {"a": "b"}}'), "duplicate key '__metadata__'"),
    ("unknown-dtype", st({"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
     "tensor 'w': unknown dtype 'F17'"),
    ("dtype-edit", st({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 24]}}, bytes(24)),
     "shape [2, 3] of F16 is 12 bytes but data_offsets [0, 24] span 24"),
    ("shape-edit", st({"w": f32([3, 3], 0, 24)}, bytes(24)), "shape [3, 3] of F32 is 36 bytes but data_offsets"),
    ("negative-shape", st({"w": f32([-1, 4], 0, 0)}), "shape must be a list of at most 32 non-negative integers"),
    ("float-shape", st({"w": f32([1.0], 0, 4)}, bytes(4)), "shape must be a list"),
    ("bool-shape", st({"w": f32([True], 0, 4)}, bytes(4)), "shape must be a list"),
    ("rank-33", st({"w": f32([1] * 33, 0, 4)}, bytes(4)), "shape must be a list of at most 32"),
    # 2**61 * 2**3 elements * 4 bytes = 2**66 bytes, which a 64-bit parser wraps to 0 = the span.
    ("overflowing-shape", st({"w": f32([2**61, 2**3], 0, 0)}), "which overflows 64 bits"),
    ("overflowing-shape-huge", st({"w": f32([2**40, 2**40, 2**40], 0, 0)}), "which overflows 64 bits"),
    ("overlapping-offsets", st({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, bytes(12)),
     "tensors 'a' [0, 8] and 'b' [4, 12] overlap"),
    ("zero-size-inside-another", st({"a": f32([2], 0, 8), "z": f32([0], 4, 4)}, bytes(8)),
     "tensors 'a' [0, 8] and 'z' [4, 4] overlap"),
    ("same-region-twice", st({"a": f32([2], 0, 8), "b": f32([2], 0, 8)}, bytes(8)), "overlap"),
    ("out-of-range-offsets", st({"a": f32([4], 0, 16)}, bytes(8)), "run past the end of the data buffer (8 bytes)"),
    ("begin-after-end", st({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}, bytes(8)),
     "must satisfy 0 <= begin <= end"),
    ("negative-offset", st({"a": f32([1], -4, 0)}, bytes(4)), "must satisfy 0 <= begin <= end"),
    ("three-offsets", st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, bytes(4)),
     "data_offsets must be two integers"),
    ("hole", st({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, bytes(12)),
     "4 unindexed bytes (a hole) at buffer offset 4, before tensor 'b'"),
    ("trailing-bytes", VALID + b"junk", "4 trailing bytes after the last tensor"),
    ("unindexed-buffer", st({}, bytes(16)), "16 trailing bytes"),
    ("metadata-not-strings", st({"__metadata__": {"step": 3}}), "__metadata__ must map strings to strings"),
    ("metadata-not-object", st({"__metadata__": ["a"]}), "__metadata__ must be a JSON object"),
    ("unknown-field", st({"a": {**f32([1], 0, 4), "extra": 1}}, bytes(4)), "tensor 'a': unknown field 'extra'"),
    ("missing-field", st({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), "tensor 'a': missing data_offsets"),
    ("entry-not-object", st({"a": [1, 2]}), "tensor 'a': entry is not a JSON object"),
    ("renamed-pickle-p2", pickle.dumps({"a": 1}, protocol=2), "a pickle stream (protocol 2"),
    ("renamed-pickle-p5", pickle.dumps({"a": 1}, protocol=5), "a pickle stream (protocol 5"),
    ("renamed-torch-legacy", torch_legacy(), "a pickle stream"),
    ("renamed-torch-zip", torch_zip(), "a torch.save ZIP archive (a pickle inside"),
    ("renamed-torchscript", torchscript(), "a TorchScript archive"),
    ("plain-zip", zip_bytes({"readme.txt": b"hi"}), "a ZIP archive, not safetensors"),
    ("zip-first-polyglot", zip_bytes({"x": b"1"}) + VALID, "a ZIP archive, not safetensors"),
    ("safetensors-then-zip", VALID + zip_bytes({"payload.py": b"print(1)"}), "trailing bytes after the last tensor"),
    ("gguf", b"GGUF" + bytes(60), "a GGUF file"),
    ("npy", b"\x93NUMPY\x01\x00" + bytes(60), "a NumPy .npy file"),
]


def zip_inside_tensor() -> bytes:
    """A fully indexed safetensors file whose only tensor is a ZIP archive: valid as both formats."""
    payload = zip_bytes({"evil.py": b"import os"})
    return st({"blob": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}, payload)


CORPUS.append(("polyglot-zip-in-tensor", zip_inside_tensor(), "also a valid ZIP archive (a polyglot)"))


@pytest.mark.parametrize(("case", "data", "reason"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_file_refused_with_reason(case, data, reason, tmp_path):
    with pytest.raises(UnsafeFileError) as e:
        validate_bytes(data, "in-memory.safetensors")
    assert reason in e.value.reason
    assert str(e.value).startswith("in-memory.safetensors: ") and "\n" not in str(e.value)
    # On disk, under the name a loader would trust, the refusal is the same and names the file.
    p = tmp_path / "model.safetensors"
    p.write_bytes(data)
    with pytest.raises(UnsafeFileError) as e2:
        validate_file(p)
    assert e2.value.reason == e.value.reason and e2.value.path == str(p)
    with pytest.raises(UnsafeFileError):
        load_bytes(data, p)


def test_valid_file_round_trips_with_header_facts():
    tensors, info = load_bytes(VALID, "v.safetensors")
    assert torch.equal(tensors["a"], torch.ones(2, 2)) and torch.equal(tensors["b"], torch.arange(3))
    assert info.metadata == {"format": "pt"}
    assert info.file_bytes == len(VALID) and info.data_bytes == 16 + 24
    # In buffer order (the library writes the 8-byte-aligned I64 tensor first).
    assert [(t.name, t.dtype, t.shape, t.begin, t.end) for t in info.tensors] == [
        ("b", "I64", (3,), 0, 24), ("a", "F32", (2, 2), 24, 40)]


def test_empty_zero_rank_and_zero_size_tensors_are_valid():
    data = save({"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "many": torch.zeros(2, 0, dtype=torch.int8)})
    tensors, _ = load_bytes(data)
    assert tensors["scalar"].shape == () and tensors["scalar"].item() == 2.5
    assert tensors["empty"].shape == (0, 3) and tensors["many"].dtype == torch.int8
    assert validate_bytes(st({})).tensors == ()  # no tensors at all: an 8-byte length and "{}"


def test_every_supported_dtype_loads_as_the_header_says():
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.int32,
              torch.float32, torch.int64, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
    # distinct values per element (0, 1, 2 and -3 where signed; True/False for bool), exact in every dtype:
    # the bytes come back as the same numbers, in order, bit for bit
    want = {str(d): (torch.tensor([False, True, False, True]) if d is torch.bool else
                     torch.tensor([0.0, 1.0, 2.0, -3.0 if d.is_signed else 3.0]).to(d)) for d in dtypes}
    tensors, _ = load_bytes(save(want))
    assert {k: v.dtype for k, v in tensors.items()} == {str(d): d for d in dtypes}
    for k, v in want.items():
        assert torch.equal(tensors[k].view(torch.uint8), v.view(torch.uint8)), k


def test_padding_with_spaces_is_accepted():
    header = json.dumps({"a": f32([1], 0, 4)}) + " " * 5
    tensors, info = load_bytes(st(header, struct.pack("<f", 1.5)))
    assert tensors["a"].item() == 1.5 and info.header_bytes == len(header)


def test_too_many_tensors(monkeypatch):
    monkeypatch.setattr(strict, "MAX_TENSORS", 3)
    header = {f"t{i}": f32([1], 4 * i, 4 * i + 4) for i in range(4)}
    with pytest.raises(UnsafeFileError, match=r"4 tensors exceed the limit of 3"):
        validate_bytes(st(header, bytes(16)))


def test_real_oversized_header_refused_before_parsing():
    header = b"{}" + b" " * strict.MAX_HEADER_BYTES  # 16 MiB + 2 bytes of real header
    with pytest.raises(UnsafeFileError, match=rf"header length {len(header)} exceeds"):
        validate_bytes(st(header))


def test_symlink_refused(tmp_path):
    real = tmp_path / "real.safetensors"
    real.write_bytes(VALID)
    link = tmp_path / "model.safetensors"
    link.symlink_to(real)
    with pytest.raises(UnsafeFileError, match=r"is a symbolic link"):
        validate_file(link)


def test_random_single_byte_mutations_are_refused_or_loaded_consistently():
    """A small fuzz run: every mutation either fails with a one-line UnsafeFileError, or loads to tensors
    that agree with the validated header. Structure (dtypes, shapes, offsets) can never change
    unnoticed; what can pass is a change of tensor data, or of a name or metadata text."""
    rng = random.Random(0)
    header_len = struct.unpack("<Q", VALID[:8])[0]
    refused = accepted_in_header = 0
    for _ in range(400):
        data = bytearray(VALID)
        i = rng.randrange(len(data))
        data[i] = rng.choice([b for b in range(256) if b != data[i]])
        try:
            tensors, info = load_bytes(bytes(data))
        except UnsafeFileError as e:
            refused += 1
            assert "\n" not in str(e)
            continue
        assert {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()} == {
            t.name: (getattr(torch, strict._TORCH_DTYPES[t.dtype]), t.shape) for t in info.tensors}
        assert sorted((t.dtype, t.shape, t.begin, t.end) for t in info.tensors) == [
            ("F32", (2, 2), 24, 40), ("I64", (3,), 0, 24)]
        accepted_in_header += i < 8 + header_len
    assert refused > 100 and accepted_in_header < 40


def test_a_file_of_another_kind_is_called_not_a_safetensors_file(tmp_path):
    """A JSON or text file given by mistake: its first 8 bytes read as an absurd length; say what it is instead."""
    wrong = tmp_path / "config.json"
    wrong.write_text('{"kind": "image-diffusion", "net": {}}', encoding="utf-8")
    with pytest.raises(UnsafeFileError, match=r"config.json: not a safetensors file"):
        validate_file(wrong)
