"""Prompt agreement: closed-world, GenEval-shaped judges of whether a sample shows what its prompt asked for.

GenEval (Ghosh et al., NeurIPS 2023 D&B) scores text-to-image models per task (single object, two
objects, counting, colours, position, colour attribution) with an open-world detector and CLIP. ebru's
Fashion scenes are a closed world: every prompt is generated *from* a :class:`~ebru.data.scenes.Scene`,
so each sample can be checked against its scene with analytic judges and ebru's own Fashion-MNIST
feature network, offline and deterministically (no training, no randomness, and a sample's verdict does
not depend on the other samples judged with it).

**How a sample (3, H, W) in [-1, 1] is read** (:func:`analyse`):

1. *Brightness* ``v`` = max over R, G, B, mapped to [0, 1] (a tinted Fashion-MNIST item's brightness is
   its grey level, since every colour of ``COLOURS`` has a channel at 255). The *canvas level* is the
   image's :data:`CANVAS_QUANTILE` (10 %) quantile of ``v``: the canvas is dark and covers most pixels.
2. *Foreground*: ``v > canvas + FOREGROUND_MARGIN`` (0.1, about 25/255). Its 8-connected components
   (:func:`label_components`, pure torch, numbered as ``scipy.ndimage.label`` numbers them) smaller than
   ``min_area`` pixels (:func:`default_min_area`, 4 at 32x32) are speckles and dropped; components whose
   bounding boxes come within :data:`ITEM_GAP` (1) pixel of each other are parts of one item (a sandal's
   straps, a sneaker's sole: 1-4 % of items fall apart at this threshold, under 0.7 % after grouping;
   the items of a scene are at least 2 px apart).
3. Per item (:class:`Detection`): area, bounding box, centroid, the brightness-weighted mean RGB, its
   HSV saturation, its **colour** (:func:`nearest_colour`: the nearest ``COLOURS`` entry by hue and
   saturation; white is the colourless one) and its **class**: the feature network
   (:mod:`ebru.eval.feature_net`) on :func:`item_crops`, the item divided by its tint and framed the way
   Fashion-MNIST frames its items (Xiao et al. 2017: longest side resized to 28 px, centred).

**The task judges** (:func:`judge_sample`; items largest first):

- ``single_object``: the largest item's class is the prompt's class.
- ``colour``: the largest item's colour is the prompt's colour.
- ``position``: one item: the largest item's centroid lies in the named half of the canvas (strictly);
  two items (a scene with a ``relation``): the two largest, matched to the scene's items by class and
  colour, lie in the named order along the relation's axis.
- ``counting``: the number of items of the expected size (area at least :data:`COUNT_AREA_SHARE` of the
  item's box times its class's typical fill, :data:`ITEM_FILL`) equals the count.
- ``two_objects``: both classes are among the items' classes (argmax of the feature network).
- ``colour_binding``: the two largest items, told apart by the feature network (the pairing with the
  larger joint probability of the two classes), each have their item's colour, and each item's class is
  among its :data:`BINDING_TOP_K` likeliest classes. This asks "is each colour on the right object",
  not "is each class recognised" (that is ``two_objects``), so it is not capped by the classifier's
  accuracy on small crops.

**Ceilings** (what a perfect model scores: the judges on the renders of the evaluation scenes themselves,
Fashion-MNIST test split, 300 scenes per task and preset): colour and position 1.0, counting 0.99-1.0,
colour binding 0.96-0.97, single object 0.87-0.93 and two objects 0.73-0.80 (the feature network reads
resized items at 0.86-0.91, both items of a pair about 0.75); renders made wrong on purpose (colours
permuted or swapped, mirrored, the next class) score 0-0.002. ``tests/eval/test_prompt_agreement.py``
measures these and asserts floors.

:func:`judge` returns per-task accuracies split by seen / held-out phrasings, GenEval's overall score
(the mean of the task accuracies), one bool per sample and the mean colour saturation;
:func:`negated_share` measures negative prompts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebru.checks import finite_number, one_of, positive_int
from ebru.data.scenes import CLASS_NAMES, COLOURS, Scene, ScenePrompt

__all__ = [
    "BINDING_TOP_K",
    "CANVAS_QUANTILE",
    "COUNT_AREA_SHARE",
    "FOREGROUND_MARGIN",
    "ITEM_FILL",
    "ITEM_GAP",
    "TASKS",
    "Detection",
    "analyse",
    "brightness",
    "canvas_level",
    "default_min_area",
    "foreground_mask",
    "format_agreement",
    "item_crops",
    "judge",
    "judge_sample",
    "label_components",
    "nearest_colour",
    "negated_share",
]

TASKS = ("single_object", "colour", "position", "two_objects", "colour_binding", "counting")
FOREGROUND_MARGIN = 0.1   # brightness (max RGB, in [0, 1]) above the canvas level that makes a pixel foreground
CANVAS_QUANTILE = 0.1     # the canvas level is this quantile of an image's brightness
ITEM_GAP = 1              # components whose boxes are at most this many pixels apart are one item
# Median share of an item's (square) box covered by its foreground, per Fashion-MNIST class, measured on
# renders of the test split at 20-37 px (T-shirt 0.54-0.58 ... sandal 0.24-0.29); checked by a test.
ITEM_FILL = (0.55, 0.35, 0.65, 0.4, 0.6, 0.25, 0.6, 0.3, 0.55, 0.45)
COUNT_AREA_SHARE = 0.25   # an item counts when its area is at least this share of its class's typical area
BINDING_TOP_K = 3         # colour binding: each item's class must be among its likeliest BINDING_TOP_K
_CHUNK = 256              # images analysed at once (bounds memory: crops are K x H x W)


# --------------------------------------------------------------------------------------------- pixels
def brightness(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W) in [0, 1]: the max over R, G, B, mapped from [-1, 1] and clamped."""
    return ((images.amax(1) + 1) / 2).clamp(0, 1)


def canvas_level(v: Tensor) -> Tensor:
    """(N, H, W) brightness -> (N,): the :data:`CANVAS_QUANTILE` quantile of each image (its dark canvas)."""
    return torch.quantile(v.flatten(1).float(), CANVAS_QUANTILE, dim=1)


def foreground_mask(images: Tensor, margin: float = FOREGROUND_MARGIN) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W) bool: brightness more than ``margin`` above the canvas level."""
    v = brightness(images)
    return v > canvas_level(v).view(-1, 1, 1) + margin


def default_min_area(height: int, width: int) -> int:
    """Smallest component that is part of an item and not a speckle: ``max(4, H * W // 256)`` pixels."""
    return max(4, (height * width) // 256)


def _union_find(n: int, head: Tensor, tail: Tensor) -> Tensor:
    """Roots of the graph on nodes 0..n-1 with edges (head[i], tail[i]): (n,) int64, each node's smallest
    connected node.

    Vectorised union-find: each round hooks the larger root of every edge whose ends have different roots
    onto the smaller (``scatter_reduce`` amin), then compresses paths fully (``parent = parent[parent]``
    until stable). Parents only decrease and only within a component, so the smallest node of each
    component ends as its root.
    """
    parent = torch.arange(n, dtype=torch.int64)
    while len(head):
        ph, pt = parent[head], parent[tail]
        differ = ph != pt
        if not bool(differ.any()):
            break
        ph, pt = ph[differ], pt[differ]
        parent.scatter_reduce_(0, torch.maximum(ph, pt), torch.minimum(ph, pt), "amin")
        while True:
            up = parent[parent]
            if torch.equal(up, parent):
                break
            parent = up
        keep = differ.nonzero().flatten()  # edges already inside one tree stay so: drop them
        head, tail = head[keep], tail[keep]
    return parent


def label_components(mask: Tensor) -> tuple[Tensor, Tensor]:
    """8-connected components of a batch of masks, in pure torch.

    Args:
        mask: (N, H, W) bool.

    Returns:
        ``(labels, counts)``: labels (N, H, W) int64, 0 on the background and 1..k on the k components of
        each image, numbered in raster order of each component's first pixel (the numbering of
        ``scipy.ndimage.label(mask[i], structure=np.ones((3, 3)))``); counts (N,) int64, k per image.

    Raises:
        ValueError: ``mask`` is not 3-D.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be (N, H, W), got shape {tuple(mask.shape)}")
    mask = mask.bool().cpu()
    n, h, w = mask.shape
    idx = torch.arange(n * h * w, dtype=torch.int64).view(n, h, w)
    heads, tails = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # every undirected 8-neighbour edge once
        rows = slice(0, h - dy)
        cols = slice(max(0, -dx), w - max(0, dx))
        both = mask[:, rows, cols] & mask[:, dy:h, max(0, dx):w + min(0, dx)]
        first = idx[:, rows, cols][both]
        heads.append(first)
        tails.append(first + dy * w + dx)
    parent = _union_find(n * h * w, torch.cat(heads), torch.cat(tails))
    flat = mask.view(-1)
    is_root = flat & (parent == torch.arange(n * h * w))       # first pixel of each component, raster order
    rank = torch.cumsum(is_root.long(), 0)                      # 1-based global component number at roots
    counts = is_root.view(n, -1).sum(1)
    before = torch.cumsum(counts, 0) - counts                   # components in earlier images
    labels = torch.zeros(n * h * w, dtype=torch.int64)
    img = torch.arange(n).repeat_interleave(h * w)
    labels[flat] = rank[parent[flat]] - before[img[flat]]
    return labels.view(n, h, w), counts


# --------------------------------------------------------------------------------------------- colour
def _hue_sat(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """(..., 3) RGB (any non-negative scale) -> HSV hue in [0, 1) and saturation in [0, 1] (0 for black).

    The formulas of :func:`colorsys.rgb_to_hsv` (Smith 1978), batched.
    """
    mx = rgb.amax(-1)
    mn = rgb.amin(-1)
    chroma = mx - mn
    sat = torch.where(mx > 0, chroma / mx.clamp_min(1e-12), torch.zeros_like(mx))
    r, g, b = rgb.unbind(-1)
    c = chroma.clamp_min(1e-12)
    hue = torch.where(mx == r, ((g - b) / c) % 6, torch.where(mx == g, (b - r) / c + 2, (r - g) / c + 4)) / 6
    hue = torch.where(chroma > 0, hue % 1.0, torch.zeros_like(hue))
    return hue, sat


def _chroma_point(hue: Tensor, sat: Tensor) -> Tensor:
    """Hue and saturation as a point of the unit chroma disc: (sat cos 2 pi hue, sat sin 2 pi hue)."""
    ang = 2 * math.pi * hue
    return torch.stack([sat * torch.cos(ang), sat * torch.sin(ang)], -1)


def nearest_colour(rgb: Tensor, colours: dict[str, tuple[int, int, int]] | None = None) -> list[str]:
    """Name each colour by the nearest entry of ``colours`` (default ``ebru.data.scenes.COLOURS``).

    Args:
        rgb: (K, 3) colours, any non-negative scale (a tint times a grey level keeps the tint's hue and
            saturation, so the brightness-weighted mean RGB of a tinted item names its tint).

    Returns:
        K names. The distance is Euclidean in the chroma disc (saturation as the radius, hue as the
        angle): a colour is named by its hue when saturated, and a colour with little saturation goes to
        white (the disc's centre) whatever its hue.
    """
    colours = COLOURS if colours is None else colours
    if rgb.numel() == 0:
        return []
    names = list(colours)
    table = _chroma_point(*_hue_sat(torch.tensor([colours[k] for k in names], dtype=torch.float64) / 255))
    pts = _chroma_point(*_hue_sat(rgb.detach().double().cpu().reshape(-1, 3)))
    return [names[i] for i in torch.cdist(pts, table).argmin(1).tolist()]


# --------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Detection:
    """One item of one sample, as the judges see it.

    Attributes:
        area: foreground pixels.
        box: (x0, y0, x1, y1), x1 and y1 exclusive.
        centroid: (x, y) in pixels from the canvas's top-left corner to pixel centres (pixel i spans
            [i, i + 1), so its centre is i + 0.5).
        rgb: brightness-weighted mean colour, each channel in [0, 1].
        saturation: HSV saturation of ``rgb``.
        colour: the nearest ``COLOURS`` name (:func:`nearest_colour`).
        label: the feature network's class (argmax), -1 when not classified.
        probs: its 10 class probabilities (empty when not classified).
    """

    area: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    rgb: tuple[float, float, float]
    saturation: float
    colour: str
    label: int = -1
    probs: tuple[float, ...] = ()


def item_crops(v: Tensor, labels: Tensor, image_of: Tensor, label_of: Tensor, boxes: Tensor, peaks: Tensor,
               canvas: Tensor) -> Tensor:
    """Feature-network inputs for items: (K, 1, 28, 28) in [-1, 1].

    Args:
        v: (N, H, W) brightness in [0, 1]; labels: (N, H, W) item labels, 0 for the background.
        image_of, label_of: (K,) each item's image and label.
        boxes: (K, 4) (x0, y0, x1, y1), exclusive; peaks: (K,) each item's largest brightness;
        canvas: (N,) canvas levels.

    Each item's brightness above the canvas is divided by its tint's (its peak; every Fashion-MNIST test
    image has a pixel at 254 or 255, so this gives back the grey level), other items' pixels are blanked,
    and the square with the box's longer side, centred on the box and snapped to the pixel grid (as
    Fashion-MNIST centres an item to a whole pixel), is sampled at 28x28 with nearest-neighbour
    sampling. The item's longer side so fills the frame, as in Fashion-MNIST. Nearest beats bilinear
    and bicubic on renders shrunk with Pillow's bilinear filter (feature-network accuracy on 2,000
    test-split renders: 0.86 / 0.74 / 0.81 at 20 px, 0.86 / 0.77 / 0.83 at 23 px, equal at 28 px and
    above): the network was trained on Fashion-MNIST's sharpened items and reads blurred edges badly.
    """
    k = len(image_of)
    if k == 0:
        return torch.zeros(0, 1, 28, 28)
    _, h, w = v.shape
    lab = labels[image_of]                                             # (K, H, W)
    own = (lab == label_of.view(-1, 1, 1)) | (lab == 0)
    base = canvas[image_of].view(-1, 1, 1)
    tint = (peaks.view(-1, 1, 1) - base).clamp_min(1e-6)
    grey = ((v[image_of] - base) / tint).clamp(0, 1) * own             # (K, H, W) grey level in [0, 1]
    x0, y0, x1, y1 = boxes.double().unbind(1)
    side = torch.maximum(x1 - x0, y1 - y0)
    left = torch.round((x0 + x1 - side) / 2)
    top = torch.round((y0 + y1 - side) / 2)
    t = (torch.arange(28, dtype=torch.float64) + 0.5) / 28               # output pixel centres in (0, 1)
    px = left.view(-1, 1) + t.view(1, -1) * side.view(-1, 1)             # source x, pixel-edge units
    py = top.view(-1, 1) + t.view(1, -1) * side.view(-1, 1)
    gx = (2 * px / w - 1).view(k, 1, 28).expand(k, 28, 28)              # align_corners=False: x -> 2x/W - 1
    gy = (2 * py / h - 1).view(k, 28, 1).expand(k, 28, 28)
    grid = torch.stack([gx, gy], -1).float()
    crops = F.grid_sample(grey.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return crops * 2 - 1


@torch.no_grad()
def _classify(net: nn.Module, crops: Tensor, batch: int = 1024) -> Tensor:
    """(K, 10) class probabilities of the crops, on the network's device, returned on the CPU."""
    if len(crops) == 0:
        return torch.zeros(0, len(CLASS_NAMES))
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        outs = [torch.softmax(net(crops[i:i + batch].to(device)).float(), 1).cpu()
                for i in range(0, len(crops), batch)]
    finally:
        net.train(was_training)
    return torch.cat(outs)


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be an (N, 3, H, W) tensor in [-1, 1], got {shape}")
    if len(images) == 0:
        raise ValueError("images is empty: nothing to judge")
    if images.is_complex() or not torch.isfinite(images).all():
        raise ValueError("images contain NaN, infinite or complex values")
    return images.detach().float().cpu()


def analyse(images: Tensor, feature_net: nn.Module | None = None, *, classify: bool = True,
            min_area: int | None = None, margin: float = FOREGROUND_MARGIN) -> list[list[Detection]]:
    """The items of each image, largest first (equal areas: in raster order of their first pixel).

    Args:
        images: (N, 3, H, W) in [-1, 1] (values outside are clamped).
        feature_net: the Fashion-MNIST classifier (default the shipped one,
            :func:`~ebru.eval.feature_net.load_feature_net`); used only when ``classify``.
        classify: classify the items (else ``label`` is -1 and ``probs`` empty).
        min_area: smallest component in pixels (default :func:`default_min_area`).
        margin: foreground threshold above the canvas level, in brightness units ([0, 1]).

    Returns:
        N lists of :class:`Detection`.

    Raises:
        ValueError: not an (N, 3, H, W) tensor, empty, not finite; a bad ``min_area`` or ``margin``.
    """
    images = _check_images(images)
    n, _, h, w = images.shape
    min_area = default_min_area(h, w) if min_area is None else positive_int("min_area", min_area)
    margin = finite_number("margin", margin, minimum=0.0, maximum=1.0)
    if classify and feature_net is None:
        from .feature_net import load_feature_net
        feature_net = load_feature_net()
    out: list[list[Detection]] = []
    for s in range(0, n, _CHUNK):
        out.extend(_analyse_chunk(images[s:s + _CHUNK], feature_net if classify else None, min_area, margin))
    return out


def _group_components(labels: Tensor, counts: Tensor, min_area: int) -> tuple[Tensor, Tensor]:
    """Item labels from component labels: components under ``min_area`` dropped (0), those whose boxes are
    at most :data:`ITEM_GAP` px apart joined. Returns (item labels (N, H, W), items per image (N,)), items
    numbered per image in raster order of their first pixel."""
    n, h, w = labels.shape
    mask = labels > 0
    total = int(counts.sum())
    if total == 0:
        return labels, counts
    before = torch.cumsum(counts, 0) - counts
    img, ys, xs = torch.nonzero(mask, as_tuple=True)
    cid = before[img] + labels[mask] - 1                               # global component id per pixel
    area = torch.bincount(cid, minlength=total)
    x0 = torch.full((total,), w).scatter_reduce(0, cid, xs, "amin")
    y0 = torch.full((total,), h).scatter_reduce(0, cid, ys, "amin")
    x1 = torch.zeros(total, dtype=torch.int64).scatter_reduce(0, cid, xs + 1, "amax")
    y1 = torch.zeros(total, dtype=torch.int64).scatter_reduce(0, cid, ys + 1, "amax")
    comp_img = torch.arange(n).repeat_interleave(counts)
    kept = (area >= min_area).nonzero().flatten()                      # image-major, label order
    heads, tails = [], []
    kimg = comp_img[kept]
    kcount = torch.bincount(kimg, minlength=n)
    kstart = torch.cumsum(kcount, 0) - kcount
    for i in (kcount >= 2).nonzero().flatten().tolist():
        a, b = torch.triu_indices(int(kcount[i]), int(kcount[i]), 1) + kstart[i]
        ca, cb = kept[a], kept[b]
        gap_x = torch.maximum(x0[ca], x0[cb]) - torch.minimum(x1[ca], x1[cb])  # empty columns between (< 0: overlap)
        gap_y = torch.maximum(y0[ca], y0[cb]) - torch.minimum(y1[ca], y1[cb])
        near = (gap_x <= ITEM_GAP) & (gap_y <= ITEM_GAP)
        heads.append(a[near])
        tails.append(b[near])
    head = torch.cat(heads) if heads else torch.zeros(0, dtype=torch.int64)
    tail = torch.cat(tails) if tails else torch.zeros(0, dtype=torch.int64)
    root = _union_find(len(kept), head, tail)                          # over kept components
    is_root = root == torch.arange(len(kept))
    rank = torch.cumsum(is_root.long(), 0)                             # 1-based global item number at roots
    items_per_image = torch.bincount(kimg[is_root], minlength=n)
    item_before = torch.cumsum(items_per_image, 0) - items_per_image
    item_label = torch.zeros(total, dtype=torch.int64)                 # global component id -> item label
    item_label[kept] = rank[root] - item_before[kimg]
    out = torch.zeros_like(labels)
    out[mask] = item_label[cid]
    return out, items_per_image


def _analyse_chunk(images: Tensor, net: nn.Module | None, min_area: int, margin: float) -> list[list[Detection]]:
    n, _, h, w = images.shape
    x01 = ((images + 1) / 2).clamp(0, 1)
    v = x01.amax(1)
    canvas = canvas_level(v)
    labels, counts = _group_components(*label_components(v > canvas.view(-1, 1, 1) + margin), min_area)
    mask = labels > 0
    total = int(counts.sum())
    before = torch.cumsum(counts, 0) - counts
    img, ys, xs = torch.nonzero(mask, as_tuple=True)
    gid = before[img] + labels[mask] - 1                               # global item id per pixel
    area = torch.bincount(gid, minlength=total)
    weight = v[mask].double()
    wsum = torch.zeros(total, dtype=torch.float64).index_add_(0, gid, weight)
    rgb = torch.zeros(total, 3, dtype=torch.float64).index_add_(0, gid, x01.permute(0, 2, 3, 1)[mask].double()
                                                                * weight[:, None])
    rgb = rgb / wsum.clamp_min(1e-12)[:, None]
    cx = torch.zeros(total, dtype=torch.float64).index_add_(0, gid, xs.double() + 0.5) / area.clamp_min(1)
    cy = torch.zeros(total, dtype=torch.float64).index_add_(0, gid, ys.double() + 0.5) / area.clamp_min(1)
    boxes = torch.stack([torch.full((total,), w).scatter_reduce(0, gid, xs, "amin"),
                         torch.full((total,), h).scatter_reduce(0, gid, ys, "amin"),
                         torch.zeros(total, dtype=torch.int64).scatter_reduce(0, gid, xs + 1, "amax"),
                         torch.zeros(total, dtype=torch.int64).scatter_reduce(0, gid, ys + 1, "amax")], 1)
    peak = torch.zeros(total).scatter_reduce(0, gid, v[mask], "amax")
    _, sat = _hue_sat(rgb)
    image_of = torch.arange(n).repeat_interleave(counts)
    names = nearest_colour(rgb)
    probs = None
    if net is not None and total:
        crops = item_crops(v, labels, image_of, torch.arange(total) - before[image_of] + 1, boxes, peak, canvas)
        probs = _classify(net, crops)
    per_image: list[list[Detection]] = [[] for _ in range(n)]
    for g in range(total):
        per_image[int(image_of[g])].append(Detection(
            area=int(area[g]), box=tuple(boxes[g].tolist()), centroid=(float(cx[g]), float(cy[g])),
            rgb=tuple(rgb[g].tolist()), saturation=float(sat[g]), colour=names[g],
            label=-1 if probs is None else int(probs[g].argmax()),
            probs=() if probs is None else tuple(probs[g].tolist())))
    for dets in per_image:
        dets.sort(key=lambda d: -d.area)  # stable: equal areas keep raster order
    return per_image


# --------------------------------------------------------------------------------------------- judges
def _expected_area(scene: Scene, height: int, width: int) -> float:
    """The smallest typical area of the scene's items, in the sample's pixels (boxes scaled to H x W)."""
    scale = height * width / scene.size ** 2
    return min((x1 - x0) * (y1 - y0) * ITEM_FILL[it.label] * scale
               for it in scene.items for x0, y0, x1, y1 in [it.box])


def _pair(dets: Sequence[Detection], a: Any, b: Any, use_colour: bool) -> tuple[Detection, Detection] | None:
    """The two largest detections as (the one for scene item ``a``, the one for ``b``).

    The pairing chosen is the one with the larger sum of log class probabilities of the assigned classes
    (plus, with ``use_colour``, 10 per matching colour: colour is read far more reliably than class).
    ``None`` when there are fewer than two detections or both pairings score the same.
    """
    if len(dets) < 2:
        return None
    p, q = dets[0], dets[1]

    def score(d: Detection, want: Any) -> float:
        s = 10.0 * (d.colour == want.colour) if use_colour else 0.0
        return s + (math.log(max(d.probs[want.label], 1e-30)) if d.probs else 0.0)

    straight, crossed = score(p, a) + score(q, b), score(p, b) + score(q, a)
    if straight == crossed:
        return None
    return (p, q) if straight > crossed else (q, p)


def _top_k(d: Detection, label: int, k: int) -> bool:
    if not d.probs:
        return False
    return sum(p > d.probs[label] for p in d.probs) < k


def judge_sample(dets: Sequence[Detection], prompt: ScenePrompt, height: int, width: int) -> bool:
    """Whether one sample satisfies ``prompt``'s task (see the module docstring for each rule).

    Args:
        dets: the sample's items from :func:`analyse` (largest first, classified).
        prompt: the :class:`~ebru.data.scenes.ScenePrompt` it was drawn for.
        height, width: the sample's size in pixels.

    Raises:
        ValueError: an unknown task, or a scene the task cannot be judged on (a position prompt without a
            position or relation, a binding prompt without two items).
    """
    task = one_of("prompt task", prompt.task, TASKS)
    scene = prompt.scene
    want = scene.items
    if task == "single_object":
        return bool(dets) and dets[0].label == want[0].label
    if task == "colour":
        return bool(dets) and dets[0].colour == want[0].colour
    if task == "position":
        if scene.relation is not None:
            pair = _pair(dets, want[0], want[1], use_colour=True)
            axis = 0 if scene.relation == "left-right" else 1
            return pair is not None and pair[0].centroid[axis] < pair[1].centroid[axis]
        if scene.position not in ("left", "right", "top", "bottom"):
            raise ValueError(f"a position prompt needs a scene with a position or a relation, got {scene.layout!r} "
                             f"scene with position {scene.position!r}")
        if not dets:
            return False
        x, y = dets[0].centroid
        return {"left": x < width / 2, "right": x > width / 2, "top": y < height / 2,
                "bottom": y > height / 2}[scene.position]
    if task == "counting":
        floor = COUNT_AREA_SHARE * _expected_area(scene, height, width)
        return sum(d.area >= floor for d in dets) == len(want)
    if task == "two_objects":
        have = Counter(d.label for d in dets)
        return all(have[c] >= k for c, k in Counter(it.label for it in want).items())
    # colour_binding
    if len(want) != 2:
        raise ValueError(f"a colour_binding prompt needs a scene of two items, got {len(want)}")
    pair = _pair(dets, want[0], want[1], use_colour=False)
    return pair is not None and all(d.colour == it.colour and _top_k(d, it.label, BINDING_TOP_K)
                                    for d, it in zip(pair, want[:2], strict=True))


def judge(images: Tensor, prompts: Sequence[ScenePrompt], feature_net: nn.Module | None = None) -> dict[str, Any]:
    """Prompt agreement of samples with the scenes their prompts were generated from (GenEval-shaped).

    Args:
        images: (N, 3, H, W) in [-1, 1], sample i drawn for ``prompts[i]`` (any H, W: scene boxes are
            scaled to the sample's size).
        prompts: N :class:`~ebru.data.scenes.ScenePrompt` (task, prompt, ground-truth scene, held_out).
        feature_net: the Fashion-MNIST classifier; default the shipped one (:func:`load_feature_net`).

    Returns:
        ``{task: {"seen": acc, "held_out": acc, "n_seen": int, "n_held_out": int}}`` for each task present
        (in :data:`TASKS` order; an accuracy is ``None`` when its count is 0); ``"overall"`` with the same
        keys (GenEval's overall score: the mean of that split's task accuracies; the counts are samples);
        ``"per_sample"``: N bools; ``"mean_saturation"``: the mean over all N samples of the HSV saturation
        of the largest item's brightness-weighted mean colour (0 for a sample with no item; renders of
        balanced colours score 6/7, white being unsaturated; guidance that over-saturates shows here).

    Raises:
        ValueError (one line): no prompts, a count or shape mismatch, an unknown task, images not finite.
    """
    if not prompts:
        raise ValueError("no prompts to judge (the prompt list is empty)")
    images = _check_images(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: judge needs one image per prompt")
    for p in prompts:
        one_of("prompt task", getattr(p, "task", None), TASKS)
    _, _, h, w = images.shape
    dets = analyse(images, feature_net)
    per_sample = [judge_sample(d, p, h, w) for d, p in zip(dets, prompts, strict=True)]
    out: dict[str, Any] = {}
    for task in TASKS:
        rows = [(ok, p.held_out) for ok, p in zip(per_sample, prompts, strict=True) if p.task == task]
        if rows:
            seen = [ok for ok, held in rows if not held]
            held = [ok for ok, held in rows if held]
            out[task] = {"seen": sum(seen) / len(seen) if seen else None,
                         "held_out": sum(held) / len(held) if held else None,
                         "n_seen": len(seen), "n_held_out": len(held)}
    overall: dict[str, Any] = {}
    for split in ("seen", "held_out"):
        accs = [r[split] for r in out.values() if r[split] is not None]
        overall[split] = sum(accs) / len(accs) if accs else None
        overall[f"n_{split}"] = sum(r[f"n_{split}"] for r in out.values())
    out["overall"] = overall
    out["per_sample"] = per_sample
    out["mean_saturation"] = sum(d[0].saturation if d else 0.0 for d in dets) / len(dets)
    return out


def negated_share(images: Tensor, attribute: tuple[str, Any], feature_net: nn.Module | None = None) -> float:
    """Share of samples that still show a negated attribute (for measuring negative prompts).

    Args:
        images: (N, 3, H, W) in [-1, 1].
        attribute: ``("colour", name)`` with a key of ``COLOURS``, or ``("class", label)`` with a
            Fashion-MNIST class index 0..9 or its name in ``CLASS_NAMES``.
        feature_net: for ``"class"``: the classifier (default the shipped one).

    Returns:
        The share of samples with at least one item of that colour (or judged that class), in [0, 1].

    Raises:
        ValueError (one line): an unknown attribute kind, colour or class; images not (N, 3, H, W) or empty.
    """
    if not isinstance(attribute, tuple) or len(attribute) != 2:
        raise ValueError(f"attribute must be ('colour', name) or ('class', label), got {attribute!r}")
    kind, value = attribute
    one_of("negated attribute kind", kind, ("colour", "class"))
    if kind == "colour":
        one_of("colour", value, list(COLOURS))
        hits = [any(d.colour == value for d in dets) for dets in analyse(images, classify=False)]
    else:
        if isinstance(value, str):
            value = list(CLASS_NAMES).index(one_of("class", value, CLASS_NAMES))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(CLASS_NAMES):
            raise ValueError(f"class label must be 0..{len(CLASS_NAMES) - 1} or a class name, got {value!r}")
        hits = [any(d.label == value for d in dets) for dets in analyse(images, feature_net)]
    return sum(hits) / len(hits)


def format_agreement(report: dict[str, Any]) -> str:
    """The prompt-agreement table ``ebru eval`` prints for a :func:`judge` report: one row per task."""
    rows = [f"  {'task':<16}{'seen phrasings':>16}{'held-out phrasings':>20}"]
    for task in (*TASKS, "overall"):
        if task not in report:
            continue
        r = report[task]
        cells = [f"{r[k]:.1%} ({r['n_' + k]})" if r[k] is not None else "-" for k in ("seen", "held_out")]
        rows.append(f"  {task.replace('_', ' '):<16}{cells[0]:>16}{cells[1]:>20}")
    rows.append(f"  mean colour saturation: {report['mean_saturation']:.3f}")
    return "\n".join(rows)
