"""Image grids: tensors in [-1, 1] to a labelled PNG."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .atomic import atomic_open


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def make_grid(images: Tensor, nrow: int, pad: int = 2) -> Tensor:
    """Tile (B, C, H, W) images into one (H', W', C) uint8 array, ``nrow`` images per row."""
    imgs = to_uint8(images)
    b, h, w, c = imgs.shape
    ncol = nrow
    nrows = (b + ncol - 1) // ncol
    grid = torch.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=torch.uint8)
    for i in range(b):
        r, k = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    return grid


LABEL_CHARS = 24  # characters per line of a row label (a prompt wraps onto as many lines as its row holds)


def _wrapped(labels: Sequence[str], row_height: float) -> list[list[str]]:
    """Each label wrapped to ``LABEL_CHARS`` per line, at most as many 12-px lines as a row holds (last one cut)."""
    fit = max(1, int(row_height // 12))
    out = []
    for label in labels:
        lines = textwrap.wrap(str(label), LABEL_CHARS) or [""]
        if len(lines) > fit:
            lines = [*lines[:fit - 1], textwrap.shorten(" ".join(lines[fit - 1:]), LABEL_CHARS, placeholder="...")]
        out.append(lines)
    return out


def save_grid(images: Tensor, path: str | Path, nrow: int, row_labels: Sequence[str] | None = None,
              title: str | None = None, scale: int = 3) -> Path:
    """Save a grid PNG (:func:`render_grid`), whole or not at all. Unsigned: for training previews and
    figures; generated outputs go through ``ebru.pipelines.outputs.write_grid``, which signs them."""
    return save_image_atomically(render_grid(images, nrow, row_labels, title, scale), path)


def render_grid(images: Tensor, nrow: int, row_labels: Sequence[str] | None = None,
                title: str | None = None, scale: int = 3) -> Image.Image:
    """A grid of ``images`` (B, C, H, W) in [-1, 1] as an RGB PIL image, ``nrow`` per row, upscaled ``scale``x.

    With ``row_labels`` (one per row) the rows are labelled on the left; long labels (prompts) wrap onto
    as many lines as the row's height holds, and the label column widens to fit. ``title`` goes on top.
    """
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid.squeeze(-1).numpy() if grid.shape[-1] == 1 else grid.numpy())
    img = img.convert("RGB").resize((img.width * scale, img.height * scale), Image.NEAREST)
    lines = _wrapped(row_labels, img.height / len(row_labels)) if row_labels else []
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max((measure.textlength(line) for label in lines for line in label), default=0)
    left = max(110, int(widest) + 12) if row_labels else 0
    top = 24 if title else 0
    canvas = Image.new("RGB", (img.width + left, img.height + top), "white")
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + 4, 5), title, fill="black")
    if row_labels:
        row_h = img.height / len(row_labels)
        for i, label in enumerate(lines):
            y = top + int(row_h * (i + 0.5)) - 6 * len(label)
            for k, line in enumerate(label):
                draw.text((4, y + 12 * k), line, fill="black")
    return canvas


def save_image_atomically(image: Image.Image, path: str | Path) -> Path:
    """Save a PIL ``image`` to ``path`` (format from its extension) whole or not at all.

    The image is written to a hidden temporary file beside ``path`` and renamed into place, so an
    interruption (Ctrl-C) or a full disk never leaves a truncated image behind, nor destroys a previous
    file of that name. Raises ``ValueError`` for an extension PIL cannot write, ``OSError`` for I/O errors.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write the image {path}: unknown image extension {path.suffix!r}; give FILE.png")
    with atomic_open(path, "wb") as f:
        image.save(f, format=fmt)
    return path
