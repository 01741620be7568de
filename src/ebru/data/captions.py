"""Captioned images: ``CaptionedImages`` (images + one or more captions each) and captioned folders.

``load_captioned_folder(root)`` reads the two conventions users already have:

1. **Hugging Face imagefolder**: a ``metadata.jsonl`` at the root and/or in any subfolder, one JSON
   object per line, ``{"file_name": "a.png", "text": "a red sneaker"}``; ``file_name`` is relative to
   the folder of the metadata file that lists it and may not leave the root; the caption column is
   ``text`` (or ``caption``), a string or a list of strings. Blank lines are ignored. An image listed
   on several lines (COCO style: one line per caption) gets all their captions, in file order.
2. **kohya sidecars**: ``a.png`` + ``a.txt`` in the same folder; each non-empty line of the ``.txt``
   is one caption, kept whole (comma-separated tag lists stay one caption).

When both give captions for an image, ``metadata.jsonl`` wins (the report says for how many). A
metadata line without a caption column (or with ``null``) does not shadow the image's sidecar.

Text files must be UTF-8 (a leading BOM is accepted and dropped); ``\\r\\n`` and ``\\r`` line ends are
handled; captions are stripped of surrounding whitespace. Images with no caption, or whose captions are
all empty, are left out (they cannot teach text conditioning) and counted in the one-line ``report``;
unreadable image files are skipped and counted the same way. Images are found, decoded, converted and
resized exactly as :class:`ebru.data.ImageFolder` does (same helpers), but a folder is never labelled:
labels are -1.

Errors (one line each; nothing is written by a loader, so nothing is half-written): a text file that is
not UTF-8 (names the file and the byte offset), a malformed ``metadata.jsonl`` line (file and line
number), a ``file_name`` that escapes the root or is absolute, and a folder where no captioned image is
left (says how to caption) raise ``ValueError``; a missing folder raises
:class:`ebru.data.DataMissingError`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import optional_positive_int
from .dataset import ImageDataset
from .errors import DataMissingError

# folder.py's decoding, shared (not copied) so both loaders decode identically.
from .folder import (
    IMAGE_EXTENSIONS,
    PROGRESS_MIN_FILES,
    SameSize,
    _one_line,
    decode_image,
    find_images,
    stack_images,
    utf8_name,
)
from .hashing import FilesHasher

__all__ = [
    "CAPTION_COLUMNS",
    "METADATA_FILE",
    "SIDECAR_EXTENSION",
    "CaptionedImages",
    "captioned_content_hash",
    "is_captioned_folder",
    "load_captioned_folder",
    "read_utf8_text",
]

METADATA_FILE = "metadata.jsonl"
SIDECAR_EXTENSION = ".txt"
CAPTION_COLUMNS = ("text", "caption")  # the first one present on a metadata line is used
_HOW_TO_CAPTION = (
    'caption them with a metadata.jsonl at the root (one line per image: {"file_name": "a.png", '
    '"text": "a caption"}) or a .txt file beside each image (a.png + a.txt, one caption per line)'
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class CaptionedImages(ImageDataset):
    """An in-memory image data set where every image has one or more captions.

    ``ds[i]`` is ``(image (C, H, W) float32 in [-1, 1], label)`` as for every :class:`ImageDataset`;
    the captions are ``ds.captions[i]``. A trainer pre-encodes each unique caption once and draws one of
    an image's captions per step: see :meth:`caption_list` and :meth:`caption_table`.

    Args:
        images_uint8: uint8 tensor (N, C, H, W).
        captions: N entries, each a tuple (or list) of >= 1 non-empty strings without surrounding
            whitespace (a lone ``str`` is taken as a 1-tuple). Repeats within one image are kept (they
            weight the draw).
        labels: (N,) class labels, or ``None`` for unlabelled (all -1).
        class_names: one name per class (index = label), or ``None``.
        content_hash: hex SHA-256 that covers the images AND the captions (see
            :func:`captioned_content_hash`).
        source: one-line description of where the data came from.
        skipped: how many images were left out (no usable caption, unreadable).
        report: one line saying what was used and what was left out (newlines are folded to spaces).

    Raises:
        TypeError / ValueError: wrong image tensor, wrong number of captions or labels, an image with no
            caption, a caption that is not a string, empty, or not stripped, ``skipped`` < 0.
    """

    captions: list[tuple[str, ...]]
    report: str
    skipped: int

    def __init__(
        self,
        images_uint8: Tensor,
        captions: Sequence[Sequence[str] | str],
        *,
        labels: Tensor | Sequence[int] | None = None,
        class_names: list[str] | None = None,
        content_hash: str,
        source: str,
        skipped: int = 0,
        report: str = "",
    ) -> None:
        if not isinstance(images_uint8, Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            what = f"{images_uint8.dtype} {tuple(images_uint8.shape)}" if isinstance(images_uint8, Tensor) else (
                type(images_uint8).__name__)
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {what}")
        n = int(images_uint8.shape[0])
        if len(captions) != n:
            raise ValueError(f"captions must have one entry per image: {n} images, {len(captions)} caption entries")
        checked: list[tuple[str, ...]] = []
        for i, caps in enumerate(captions):
            caps = (caps,) if isinstance(caps, str) else tuple(caps)
            if not caps:
                raise ValueError(f"image {i} has no caption; every image needs at least one")
            for c in caps:
                if not isinstance(c, str):
                    raise TypeError(f"image {i}: captions must be strings, got {type(c).__name__} {c!r}")
                if not c or c != c.strip():
                    raise ValueError(f"image {i}: caption {c!r} is empty or has surrounding whitespace; strip it")
            checked.append(caps)
        if labels is None:
            label_t = torch.full((n,), -1, dtype=torch.long)
        else:
            label_t = torch.as_tensor(labels, dtype=torch.long)
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise ValueError(f"skipped must be an integer >= 0, got {skipped!r}")
        super().__init__(images_uint8, label_t, class_names=class_names, content_hash=content_hash, source=source)
        self.captions = checked
        self.skipped = int(skipped)
        self.report = " ".join(str(report).split())

    @property
    def num_captions(self) -> int:
        """Total number of captions over all images (repeats counted)."""
        return sum(len(c) for c in self.captions)

    def caption_list(self) -> tuple[list[str], list[Tensor]]:
        """The unique captions and, per image, the indices of its captions among them.

        Returns:
            ``(unique, index)``: ``unique`` is every distinct caption once, in first-occurrence order
            (image 0's captions in order, then image 1's new ones, ...); ``index[i]`` is a LongTensor
            (len(captions[i]),) with ``unique[index[i][k]] == captions[i][k]``.
        """
        position: dict[str, int] = {}
        index: list[Tensor] = []
        for caps in self.captions:
            index.append(torch.tensor([position.setdefault(c, len(position)) for c in caps], dtype=torch.long))
        return list(position), index

    def caption_table(self) -> tuple[list[str], Tensor, Tensor]:
        """:meth:`caption_list` as tensors, to draw one caption per image in a batch without a Python loop.

        Returns:
            ``(unique, table, counts)``: ``table`` is LongTensor (N, K) with K the most captions any image
            has, row i holding image i's caption indices then -1 padding; ``counts`` is LongTensor (N,).
            A uniform draw for images ``idx`` is
            ``table[idx, (torch.rand(len(idx)) * counts[idx]).long()]``.
        """
        unique, index = self.caption_list()
        counts = torch.tensor([len(ix) for ix in index], dtype=torch.long)
        table = torch.full((len(index), int(counts.max()) if len(index) else 0), -1, dtype=torch.long)
        for i, ix in enumerate(index):
            table[i, : len(ix)] = ix
        return unique, table, counts


def captioned_content_hash(records: Iterable[tuple[str, bytes, Sequence[str]]]) -> str:
    """Hex SHA-256 over images and their captions: ``(relative path, image bytes, captions)`` records.

    The records are taken in sorted path order (paths must be distinct). The digest is
    :class:`ebru.data.hashing.FilesHasher`'s framing over, per image, the file ``path`` with its bytes,
    followed by a virtual file ``path + "\\x00captions"`` whose content is the captions as a UTF-8 JSON
    list. It therefore changes when a pixel, a file name, or any caption (text, order, count) changes, and
    not when only the caption *files* are reformatted (jsonl vs .txt, spacing, BOM, line ends).
    """
    hasher = FilesHasher()
    for rel, data, caps in sorted(records, key=lambda r: r[0]):
        hasher.add(rel, data)
        hasher.add(rel + "\x00captions", json.dumps(list(caps), ensure_ascii=False).encode("utf-8"))
    return hasher.hexdigest()


def read_utf8_text(path: str | os.PathLike) -> str:
    """A text file's content as ``str``: strict UTF-8, a leading BOM dropped.

    Raises:
        ValueError: one line naming the file and the offset of the first invalid byte.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{utf8_name(str(path))} is not UTF-8 (invalid byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _walk(root: Path) -> Iterable[tuple[str, list[str]]]:
    """``(dirpath, filenames)`` under ``root``, hidden names skipped (as :func:`find_images` does)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, sorted(f for f in filenames if not f.startswith("."))


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sidecar(path: Path) -> Path:
    return path.with_name(os.path.splitext(path.name)[0] + SIDECAR_EXTENSION)


def is_captioned_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with a ``metadata.jsonl`` (at the root or in a subfolder) or an image
    with a ``.txt`` sidecar; False otherwise (including when ``path`` is not a folder). Never raises for a
    missing path, so a caller can fall back to :class:`ebru.data.ImageFolder` and its error."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return False
    if (root / METADATA_FILE).is_file():
        return True
    for _, filenames in _walk(root):
        names = set(filenames)
        if METADATA_FILE in names:
            return True
        if any(_is_image_name(f) and os.path.splitext(f)[0] + SIDECAR_EXTENSION in names for f in filenames):
            return True
    return False


def _captions_value(value: object, where: str, column: str) -> list[str]:
    """A metadata caption cell -> list of raw strings; anything but str / list of str is an error."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(
        f"{where}: {column!r} must be a string or a list of strings, got {json.dumps(value, ensure_ascii=False)[:60]}"
    )


@dataclass
class _Metadata:
    """Captions gathered from every metadata.jsonl under a root."""

    captions: dict[str, list[str]] = field(default_factory=dict)  # image rel -> raw captions, file order
    unmatched: list[str] = field(default_factory=list)  # file_name entries naming no image (rel to root)
    files: int = 0


def _read_metadata(root: Path, image_rels: set[str]) -> _Metadata:
    meta = _Metadata()
    for dirpath, filenames in _walk(root):
        if METADATA_FILE not in filenames:
            continue
        meta.files += 1
        path = Path(dirpath) / METADATA_FILE
        shown = utf8_name(str(path))
        base = utf8_name(Path(dirpath).relative_to(root).as_posix())
        base = "" if base == "." else base
        for lineno, line in enumerate(read_utf8_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{shown} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where} is not valid JSON ({e.msg} at column {e.colno}); each line must be one object like "
                    '{"file_name": "a.png", "text": "a caption"}'
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object with file_name and text")
            name = row.get("file_name")
            if not isinstance(name, str) or not name.strip():
                got = "no file_name" if "file_name" not in row else f"file_name {json.dumps(name)}"
                raise ValueError(f"{where} has {got}; each line needs \"file_name\": the image path relative to "
                                 "the metadata file's folder")
            if name.startswith("/") or os.path.isabs(name) or re.match(r"^[A-Za-z]:[\\/]", name):
                raise ValueError(f"{where}: file_name {name!r} is absolute; give a path relative to {base or '.'}/ "
                                 "inside the data folder")
            rel = posixpath.normpath(posixpath.join(base, name))
            if rel == ".." or rel.startswith("../"):
                raise ValueError(f"{where}: file_name {name!r} points outside the data folder {utf8_name(str(root))}; "
                                 "images must lie inside it")
            column = next((c for c in CAPTION_COLUMNS if row.get(c) is not None), None)
            if column is None:
                continue  # no caption on this line: the image may still have a sidecar
            caps = _captions_value(row[column], where, column)
            if rel not in image_rels:
                meta.unmatched.append(rel)
                continue
            meta.captions.setdefault(rel, []).extend(caps)
    return meta


def load_captioned_folder(
    root: str | os.PathLike,
    image_size: int | None = None,
    channels: int | None = None,
) -> CaptionedImages:
    """Images under ``root`` with their captions (``metadata.jsonl`` and/or ``.txt`` sidecars).

    See the module docstring for the conventions. Images come in sorted relative-path order; labels are -1.

    Args:
        root: the folder.
        image_size: resize the shorter side to this and center-crop to square; ``None`` keeps the original
            size, which must then be the same for every image used.
        channels: 1 (grayscale) or 3 (RGB); ``None`` infers 1 if every image used is grayscale, else 3.

    Returns:
        :class:`CaptionedImages` with extra attributes ``root``, ``files`` (image paths, ``ds[i]`` from
        ``files[i]``) and ``left_out`` (``(path, reason)`` per image left out). ``report`` is one line,
        e.g. ``"data: 120 images, 310 captions; 3 without a caption and 1 with only empty captions were
        left out"``; it is also issued once with ``warnings.warn`` when anything was left out.
        ``content_hash`` is :func:`captioned_content_hash` over the images used and their captions.

    Raises:
        DataMissingError: ``root`` does not exist.
        ValueError: ``root`` is not a folder or holds no image; a text file is not UTF-8; a malformed
            ``metadata.jsonl`` line; a ``file_name`` outside ``root``; images differ in size while
            ``image_size`` is ``None``; no captioned readable image is left.
    """
    root = Path(root).expanduser()
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    image_size = optional_positive_int("image_size", image_size)
    if not root.exists():
        raise DataMissingError(f"captioned image folder not found: {root}", path=root)
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    candidates = find_images(root)
    if not candidates:
        exts = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
        raise ValueError(f"no image files ({exts}) in {utf8_name(str(root))}; {_HOW_TO_CAPTION}")
    by_rel = dict(sorted((utf8_name(p.relative_to(root).as_posix()), p) for p in candidates))
    meta = _read_metadata(root, set(by_rel))

    # Gather every image's captions first: a bad caption file stops the load before any decoding.
    chosen: list[tuple[str, Path, tuple[str, ...]]] = []
    left_out: list[tuple[str, str]] = []
    origins: set[str] = set()
    missing = empty = overridden = 0
    for rel, path in by_rel.items():
        sidecar = _sidecar(path)
        if rel in meta.captions:
            raw = meta.captions[rel]
            overridden += sidecar.is_file()
            origin = METADATA_FILE
        elif sidecar.is_file():
            raw = _LINE_BREAK.split(read_utf8_text(sidecar))
            origin = sidecar.name
        else:
            missing += 1
            left_out.append((str(path), "no caption"))
            continue
        caps = tuple(c for c in (r.strip() for r in raw) if c)
        if not caps:
            empty += 1
            left_out.append((str(path), f"only empty captions in {origin}"))
            continue
        chosen.append((rel, path, caps))
        origins.add(METADATA_FILE if origin == METADATA_FILE else ".txt sidecars")

    records: list[tuple[str, bytes, tuple[str, ...]]] = []
    arrays: list[np.ndarray] = []
    files: list[Path] = []
    unreadable: list[tuple[str, str]] = []
    same_size = SameSize(utf8_name(str(root)))
    bar = tqdm(chosen, desc=f"decoding {root.name or root}", unit="img", disable=len(chosen) <= PROGRESS_MIN_FILES,
               leave=False)
    for rel, path, caps in bar:
        try:
            data = path.read_bytes()
            arr = decode_image(data, channels, image_size)
        except Exception as e:  # a bad file is skipped and reported, never a crash mid-run
            unreadable.append((rel, _one_line(e)))
            left_out.append((str(path), _one_line(e)))
            continue
        if image_size is None:
            try:
                same_size.check(rel, arr)
            except ValueError:
                bar.close()
                raise
        records.append((rel, data, caps))
        arrays.append(arr)
        files.append(path)
    bar.close()

    n_caps = sum(len(r[2]) for r in records)
    line = f"data: {_plural(len(records), 'image')}, {_plural(n_caps, 'caption')}"
    dropped = []
    if missing:
        dropped.append(f"{missing} without a caption")
    if empty:
        dropped.append(f"{empty} with only empty captions")
    if dropped:
        line += f"; {' and '.join(dropped)} {'was' if missing + empty == 1 else 'were'} left out"
    if unreadable:
        shown = "; ".join(f"{r}: {why}" for r, why in unreadable[:3])
        more = f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        line += f"; {_plural(len(unreadable), 'unreadable image file')} skipped ({shown}{more})"
    if overridden:
        line += (f"; {METADATA_FILE} captions used instead of .txt sidecars for "
                 f"{_plural(overridden, 'image')}")
    if meta.unmatched:
        k = len(meta.unmatched)
        line += (f"; {k} file_name {'entry' if k == 1 else 'entries'} in {METADATA_FILE} "
                 f"{'names' if k == 1 else 'name'} no image file (first: {meta.unmatched[0]})")

    if not records:
        raise ValueError(f"no captioned image left in {utf8_name(str(root))} ({line.removeprefix('data: ')}); "
                         f"{_HOW_TO_CAPTION}")

    images = stack_images(arrays, channels)
    del arrays

    kinds = sorted(origins)
    size_note = f", resized to {image_size}x{image_size}" if image_size is not None else ""
    ds = CaptionedImages(
        images,
        [r[2] for r in records],
        content_hash=captioned_content_hash(records),
        source=(f"captioned folder {utf8_name(str(root))} ({_plural(len(records), 'image')}, "
                f"{_plural(n_caps, 'caption')}, {' + '.join(kinds)}{size_note})"),
        skipped=missing + empty + len(unreadable),
        report=line,
    )
    ds.root = root
    ds.files = files
    ds.left_out = left_out
    if ds.skipped or meta.unmatched:
        warnings.warn(ds.report, stacklevel=2)
    return ds
