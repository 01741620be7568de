"""Fashion scenes: tinted Fashion-MNIST items on a dark RGB canvas, captioned from their own specification.

A closed world for text-to-image (issue 13; GenEval-shaped evaluation, Ghosh et al. 2023): every scene
is a :class:`Scene` (items with class, colour and box; a layout), its picture is :func:`render`-ed from
Fashion-MNIST (Xiao et al. 2017, the offline Debian copy read by :class:`~ebru.data.FashionMNIST`), and
its captions are generated *from* the scene through templates and synonyms, so every caption is true of
its picture and every evaluation prompt carries its ground truth.

**Pictures.** The canvas is :data:`CANVAS` (black, like Fashion-MNIST's own background). An item is a
Fashion-MNIST image (grey level g in 0..255) resized with Pillow's bilinear filter (antialiased when
shrinking) to its box and tinted by its colour: channel k is ``(g * rgb[k] + 127) // 255`` (the rounded
product), composited with ``max`` onto the canvas. Every colour of :data:`COLOURS` has a channel at 255,
so an item's brightness (max over R, G, B) is its grey level whatever the colour, and its hue is exactly
its colour's hue. Boxes never overlap and lie inside the canvas.

**Presets** (:data:`PRESETS`): ``"quickstart"``: 32x32, one item at its native 28x28 centred (box
(2, 2, 30, 30)), layout ``"single"``. ``"full"``: 48x48 with four layouts: ``"single"`` (centred, scale
small 28 px, i.e. native, or large 44 px), ``"position"`` (one 28 px item 1 px from the left / right /
top / bottom edge: its centre lies 9 px inside that half), ``"pair"`` (two items of different classes and
colours, left-right or top-bottom, each 23 px filling its half but for a 2 px gap between them) and
``"count"`` (2-4 items of one class and colour, 20 px, in distinct cells of a 2x2 grid, 4 px apart).
``"full64"``: the same at 64x64 (the GPU recipe; 37 / 60, 37, 31 and 28 px). Items are kept as large as
the canvas allows: ebru's Fashion-MNIST judge reads the class of a resized item less well the smaller
it is. Training scenes jitter position boxes by up to 1 px and pair boxes by up to 2 px across their
axis; evaluation scenes use the unjittered boxes.

**Phrasings.** Captions come from per-layout :data:`TEMPLATES` filled with :data:`ITEM_NOUNS`,
:data:`COLOUR_WORDS`, :data:`SIZE_WORDS`, :data:`POSITION_WORDS`, :data:`RELATION_WORDS` and
:data:`COUNT_WORDS`. Each table is split into ``train`` and ``held_out`` phrasings; training captions
use only ``train`` ones, held-out prompts use only held-out templates and, wherever a slot has held-out
synonyms, only those (count words and the horizontal relations have none and are shared). The held-out
synonyms were chosen as words an English speaker uses for the same thing ("jeans", "bootie", "athletic
shoe", "aquamarine", "royal blue", "on the left-hand side", "beneath"), preferring those whose
all-MiniLM-L6-v2 sentence vector lies nearest the class's or colour's training phrasings.

**Determinism.** Scenes, captions and pictures depend only on (preset, n, seed, split) and the
Fashion-MNIST files; no global random state is touched (``random.Random`` streams seeded from strings,
which Python hashes with SHA-512, identically on every run and platform).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..checks import did_you_mean, one_of, positive_int
from .captions import CaptionedImages
from .fashion_mnist import CLASS_NAMES, FashionMNIST

__all__ = [
    "CANVAS",
    "CLASS_NAMES",
    "COLOURS",
    "COLOUR_WORDS",
    "COUNT_WORDS",
    "GENERATOR",
    "ITEM_NOUNS",
    "LAYOUTS",
    "POSITION_WORDS",
    "PRESETS",
    "RELATION_WORDS",
    "SCENE_SPECS",
    "SIZE_WORDS",
    "TASKS",
    "TEMPLATES",
    "FashionScenes",
    "Item",
    "Noun",
    "Phrasings",
    "Preset",
    "Scene",
    "ScenePrompt",
    "caption",
    "clear_cache",
    "eval_prompts",
    "is_scene_spec",
    "load_scenes",
    "render",
]

GENERATOR = "ebru.data.scenes/1"  # bump when scenes, captions or pictures change for the same arguments

# ------------------------------------------------------------------------------------------- vocabulary
# Hues 0, 60, 120, 180, 229, 281 degrees and an unsaturated white: at least 48 degrees between any two
# hues (orange, 30 degrees from red and from yellow, is left out so a hue judge can tell every pair
# apart). Every colour has a channel at 255 (see the module docstring).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 48, 255),
    "purple": (176, 0, 255),
    "white": (255, 255, 255),
}
CANVAS: tuple[int, int, int] = (0, 0, 0)

LAYOUTS = ("single", "position", "pair", "count")
POSITIONS = ("left", "right", "top", "bottom")
RELATIONS = ("left-right", "top-bottom")
SCALES = ("small", "large")


@dataclass(frozen=True)
class Phrasings:
    """Words or templates for one slot: ``train`` ones appear in training captions, ``held_out`` ones never do."""

    train: tuple
    held_out: tuple = ()

    def pick(self, rng: random.Random, held_out: bool):
        """A random entry: from ``held_out`` when asked and there is one, else from ``train``."""
        return rng.choice(self.held_out if held_out and self.held_out else self.train)


@dataclass(frozen=True)
class Noun:
    """A noun for a class: ``singular`` ("sneaker"; ``None`` for plural-only nouns like "trousers") and ``plural``."""

    singular: str | None
    plural: str


def _n(singular: str, plural: str | None = None) -> Noun:
    return Noun(singular, plural or singular + "s")


def _pl(plural: str) -> Noun:
    return Noun(None, plural)


ITEM_NOUNS: tuple[Phrasings, ...] = (  # index = Fashion-MNIST label; "top" is avoided (a position word)
    Phrasings((_n("t-shirt"), _n("tee"), _n("tee shirt")), (_n("short-sleeved tee"),)),
    Phrasings((_pl("trousers"), _pl("pants"), _pl("slacks")), (_pl("jeans"),)),
    Phrasings((_n("pullover"), _n("sweater"), _n("jumper")), (_n("wool sweater"),)),
    Phrasings((_n("dress", "dresses"), _n("frock"), _n("gown")), (_n("summer dress", "summer dresses"),)),
    Phrasings((_n("coat"), _n("jacket"), _n("overcoat")), (_n("raincoat"),)),
    Phrasings((_n("sandal"), _n("strappy sandal"), _n("heeled sandal")), (_n("open-toe sandal"),)),
    Phrasings((_n("shirt"), _n("button-up shirt"), _n("blouse")), (_n("button-down shirt"),)),
    Phrasings((_n("sneaker"), _n("running shoe"), _n("trainer")), (_n("athletic shoe"),)),
    Phrasings((_n("bag"), _n("handbag"), _n("purse")), (_n("shoulder bag"),)),
    Phrasings((_n("ankle boot"), _n("boot"), _n("short boot")), (_n("bootie"),)),
)
COLOUR_WORDS: dict[str, Phrasings] = {
    "red": Phrasings(("red", "crimson", "scarlet"), ("cherry red",)),
    "yellow": Phrasings(("yellow", "lemon yellow"), ("canary yellow",)),
    "green": Phrasings(("green", "emerald"), ("grass green",)),
    "cyan": Phrasings(("cyan", "aqua"), ("aquamarine",)),
    "blue": Phrasings(("blue", "cobalt"), ("royal blue",)),
    "purple": Phrasings(("purple", "violet"), ("deep purple",)),
    "white": Phrasings(("white", "snow-white"), ("pure white",)),
}
SIZE_WORDS: dict[str, Phrasings] = {
    "small": Phrasings(("small", "little"), ("tiny",)),
    "large": Phrasings(("large", "big"), ("huge",)),
}
POSITION_WORDS: dict[str, Phrasings] = {  # an item's centre lies in the named half (the item may cross the middle)
    "left": Phrasings(("on the left", "on the left side", "toward the left"), ("on the left-hand side",)),
    "right": Phrasings(("on the right", "on the right side", "toward the right"), ("on the right-hand side",)),
    "top": Phrasings(("at the top", "near the top", "toward the top"), ("in the upper part",)),
    "bottom": Phrasings(("at the bottom", "near the bottom", "toward the bottom"), ("in the lower part",)),
}
RELATION_WORDS: dict[str, Phrasings] = {  # "<first item> WORD <second item>"
    "left of": Phrasings(("to the left of",)),
    "right of": Phrasings(("to the right of",)),
    "above": Phrasings(("above",), ("over",)),
    "below": Phrasings(("below", "under"), ("beneath",)),
}
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}

# Fields: {thing} "a small red sneaker" / "red trousers"; {a_noun} "a small sneaker" / "trousers";
# {one} "one red sneaker" / "one pair of red trousers"; {colour}; {is} "is" / "are"; {pos} a position
# phrase. Pair: {A}, {B} (things; A is left/top), {pA}, {pB}, {isA}, {isB}, {rAB} "to the left of" /
# "above", {rBA}. Count: {N} "three", {P} "red sneakers" / "pairs of red trousers", {Pn} "sneakers".
TEMPLATES: dict[str, Phrasings] = {
    "single": Phrasings(
        ("{thing}", "a photo of {thing}", "a picture of {thing}", "an image of {thing}",
         "{a_noun}, coloured {colour}", "{a_noun} in {colour}", "{thing} on a dark background",
         "a product shot of {thing}", "{thing}, centred", "{thing} on black"),
        ("an image showing {one}", "a snapshot of {thing}", "{a_noun} that {is} {colour}", "here {is} {thing}",
         "{thing} against a black backdrop"),
    ),
    "position": Phrasings(
        ("{thing} {pos}", "a photo of {thing} {pos}", "a picture of {thing} {pos}", "{pos}, {thing}",
         "{thing} placed {pos}", "{a_noun} in {colour}, {pos}", "{a_noun}, coloured {colour}, {pos}",
         "{thing} {pos} of the image", "{thing} on a dark background, {pos}"),
        ("an image showing {one} {pos}", "{pos} there {is} {thing}", "a snapshot of {thing} {pos}",
         "{thing} positioned {pos}", "{a_noun} that {is} {colour}, {pos}"),
    ),
    "pair": Phrasings(
        ("{A} {pA} and {B} {pB}", "{B} {pB} and {A} {pA}", "{A} {rAB} {B}", "{B} {rBA} {A}",
         "a photo of {A} {pA} and {B} {pB}", "a picture of {A} {rAB} {B}", "{pA}, {A}; {pB}, {B}",
         "two items: {A} {pA} and {B} {pB}", "{B} {rBA} {A}, on a dark background"),
        ("an image showing {A} {pA} and {B} {pB}", "{pA} there {isA} {A}, and {pB} there {isB} {B}",
         "a snapshot of {B} {rBA} {A}", "{A} positioned {rAB} {B}", "{A} {pA}, with {B} {pB}"),
    ),
    "count": Phrasings(
        ("{N} {P}", "a photo of {N} {P}", "a picture of {N} {P}", "{N} {Pn}, coloured {colour}",
         "{N} {Pn} in {colour}", "exactly {N} {P}", "a group of {N} {P}", "{N} {P} on a dark background",
         "a product shot of {N} {P}"),
        ("an image showing {N} {P}", "a snapshot of {N} {P}", "{N} {Pn} that are {colour}", "a set of {N} {P}",
         "here are {N} {P}"),
    ),
}


# ------------------------------------------------------------------------------------------- scenes
def _box_ok(box: object) -> bool:
    return (isinstance(box, tuple) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in box) and box[0] < box[2] and box[1] < box[3])


@dataclass(frozen=True)
class Item:
    """One item of a scene.

    Attributes:
        label: Fashion-MNIST class 0..9 (:data:`CLASS_NAMES`).
        colour: a key of :data:`COLOURS`.
        box: ``(x0, y0, x1, y1)`` pixel box on the canvas the item is drawn into (x1, y1 exclusive).

    Raises ValueError (one line) for a label, colour or box out of range.
    """

    label: int
    colour: str
    box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not 0 <= self.label < len(CLASS_NAMES):
            raise ValueError(f"item label must be a Fashion-MNIST class 0..{len(CLASS_NAMES) - 1}, got {self.label!r}")
        one_of("colour", self.colour, COLOURS)
        if not _box_ok(self.box):
            raise ValueError(f"item box must be a tuple of 4 ints (x0, y0, x1, y1) with x0 < x1, y0 < y1; "
                             f"got {self.box!r}")


@dataclass(frozen=True)
class Scene:
    """A scene specification: what :func:`render` draws and what captions describe.

    Attributes:
        size: canvas side in pixels.
        items: the items (1 for ``"single"`` and ``"position"``, 2 for ``"pair"``, 2-4 for ``"count"``).
        layout: ``"single"`` | ``"position"`` | ``"pair"`` | ``"count"``.
        position: for ``"position"``: ``"left"`` | ``"right"`` | ``"top"`` | ``"bottom"`` (the item's half).
        relation: for ``"pair"``: ``"left-right"`` or ``"top-bottom"`` (``items[0]`` is left / top).
        scale: for ``"single"`` scenes of presets with two item sizes: ``"small"`` | ``"large"``
            (named in the captions); ``None`` otherwise.

    Raises ValueError (one line) when the fields disagree: a box outside the canvas, overlapping boxes,
    the wrong number of items for the layout, a pair of one class or one colour, a count of mixed items,
    or a position / relation / scale given where the layout has none.
    """

    size: int
    items: tuple[Item, ...]
    layout: str
    position: str | None = None
    relation: str | None = None
    scale: str | None = None

    def __post_init__(self) -> None:
        positive_int("scene size", self.size)
        one_of("scene layout", self.layout, LAYOUTS)
        items = self.items
        if not isinstance(items, tuple) or not all(isinstance(it, Item) for it in items):
            raise ValueError("scene items must be a tuple of Item")
        want = {"single": (1, 1), "position": (1, 1), "pair": (2, 2), "count": (2, 4)}[self.layout]
        if not want[0] <= len(items) <= want[1]:
            raise ValueError(f"a {self.layout!r} scene has {want[0]}" + (f"-{want[1]}" if want[1] > want[0] else "")
                             + f" items, got {len(items)}")
        for it in items:
            x0, y0, x1, y1 = it.box
            if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
                raise ValueError(f"item box {it.box} is outside the {self.size}x{self.size} canvas")
        for i, a in enumerate(items):
            for b in items[i + 1:]:
                if a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]:
                    raise ValueError(f"item boxes {a.box} and {b.box} overlap")
        if (self.position is not None) != (self.layout == "position"):
            raise ValueError(f"position is given for (and only for) 'position' scenes; got {self.position!r} "
                             f"for a {self.layout!r} scene")
        if self.position is not None:
            one_of("scene position", self.position, POSITIONS)
        if (self.relation is not None) != (self.layout == "pair"):
            raise ValueError(f"relation is given for (and only for) 'pair' scenes; got {self.relation!r} "
                             f"for a {self.layout!r} scene")
        if self.relation is not None:
            one_of("scene relation", self.relation, RELATIONS)
        if self.scale is not None:
            one_of("scene scale", self.scale, SCALES)
            if self.layout != "single":
                raise ValueError(f"scale is only for 'single' scenes, got scale={self.scale!r} for {self.layout!r}")
        if self.layout == "pair" and (items[0].label == items[1].label or items[0].colour == items[1].colour):
            raise ValueError("the two items of a 'pair' scene differ in class and in colour")
        if self.layout == "count" and len({(it.label, it.colour) for it in items}) != 1:
            raise ValueError("the items of a 'count' scene share one class and one colour")


@dataclass(frozen=True)
class ScenePrompt:
    """An evaluation prompt: ``task`` (one of :data:`TASKS`), the ``prompt`` text, the ground-truth
    ``scene`` a judge checks a sample against, and whether it is phrased with ``held_out`` templates and
    synonyms (never in any training caption)."""

    task: str
    prompt: str
    scene: Scene
    held_out: bool


# ------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A family of scenes: canvas ``size``, layout weights, default size of a data set, evaluation tasks."""

    name: str
    size: int
    layouts: tuple[tuple[str, float], ...]
    default_n: int
    tasks: tuple[str, ...]
    scales: bool  # single items come in two named scales (else one, at the canvas side minus 4 px)


_ALL_TASKS = ("single_object", "colour", "position", "two_objects", "colour_binding", "counting")
_FULL_LAYOUTS = (("single", 0.2), ("position", 0.25), ("pair", 0.35), ("count", 0.2))
PRESETS: dict[str, Preset] = {
    "quickstart": Preset("quickstart", 32, (("single", 1.0),), 20000, ("single_object", "colour"), False),
    "full": Preset("full", 48, _FULL_LAYOUTS, 30000, _ALL_TASKS, True),
    "full64": Preset("full64", 64, _FULL_LAYOUTS, 30000, _ALL_TASKS, True),
}
TASKS: dict[str, tuple[str, ...]] = {name: p.tasks for name, p in PRESETS.items()}
_TASK_LAYOUT = {"single_object": "single", "colour": "single", "position": "position", "two_objects": "pair",
                "colour_binding": "pair", "counting": "count"}
JITTER = 1  # px: position boxes move by up to this much, pair boxes by twice this across their axis


def _single_box(size: int, scale: str | None) -> tuple[int, int, int, int]:
    """A centred box: ``size - 4`` px (one scale, or ``"large"``) or ``round(7 / 12 * size)`` (``"small"``)."""
    side = round(size * 7 / 12) if scale == "small" else size - 4
    o = (size - side) // 2
    return (o, o, o + side, o + side)


def _place(size: int, side: int, where: str, along: int, dx: int, dy: int) -> tuple[int, int, int, int]:
    """A ``side`` px box ``along`` px from the edge named ``where``, centred across that axis, shifted by (dx, dy)."""
    across = (size - side) // 2
    x0, y0 = {"left": (along, across), "right": (size - along - side, across), "top": (across, along),
              "bottom": (across, size - along - side)}[where]
    return (x0 + dx, y0 + dy, x0 + dx + side, y0 + dy + side)


def _position_box(size: int, where: str, dx: int = 0, dy: int = 0) -> tuple[int, int, int, int]:
    """One item toward an edge: ``round(7 / 12 * size)`` px, 1 px from that edge (its centre well inside the half)."""
    return _place(size, round(size * 7 / 12), where, 1, dx, dy)


def _pair_box(size: int, where: str, dx: int = 0, dy: int = 0) -> tuple[int, int, int, int]:
    """One item of a pair, filling its half but for a 2 px gap between the two: ``size // 2 - 1`` px."""
    return _place(size, size // 2 - 1, where, 0, dx, dy)


def _cell_box(size: int, cell: int) -> tuple[int, int, int, int]:
    """The item box in cell 0..3 of the 2x2 grid (row-major): ``size // 2 - 4`` px, 2 px inside the cell."""
    half = size // 2
    side = half - 4
    x0, y0 = (cell % 2) * half + 2, (cell // 2) * half + 2
    return (x0, y0, x0 + side, y0 + side)


def _make_scene(preset: Preset, layout: str, rng: random.Random, jitter: bool, *, label: int | None = None,
                colour: str | None = None, where: str | None = None, relation: str | None = None,
                count: int | None = None, scale: str | None = None) -> Scene:
    """A scene of ``layout``; attributes not given are drawn from ``rng``."""
    size = preset.size

    def j() -> int:
        return rng.randint(-JITTER, JITTER) if jitter else 0

    label = rng.randrange(len(CLASS_NAMES)) if label is None else label
    colour = rng.choice(list(COLOURS)) if colour is None else colour
    if layout == "single":
        if preset.scales:
            scale = rng.choice(SCALES) if scale is None else scale
        return Scene(size, (Item(label, colour, _single_box(size, scale)),), "single", scale=scale)
    if layout == "position":
        where = rng.choice(POSITIONS) if where is None else where
        return Scene(size, (Item(label, colour, _position_box(size, where, j(), j())),), "position", position=where)
    if layout == "pair":
        relation = rng.choice(RELATIONS) if relation is None else relation
        other = rng.choice([c for c in range(len(CLASS_NAMES)) if c != label])
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        first, second = ("left", "right") if relation == "left-right" else ("top", "bottom")
        shifts = [(0, 2 * j()) if relation == "left-right" else (2 * j(), 0) for _ in range(2)]
        items = (Item(label, colour, _pair_box(size, first, *shifts[0])),
                 Item(other, other_colour, _pair_box(size, second, *shifts[1])))
        return Scene(size, items, "pair", relation=relation)
    count = rng.choice(sorted(COUNT_WORDS)) if count is None else count
    cells = sorted(rng.sample(range(4), count))
    return Scene(size, tuple(Item(label, colour, _cell_box(size, c)) for c in cells), "count")


def _random_scene(preset: Preset, rng: random.Random) -> Scene:
    layouts, weights = zip(*preset.layouts)
    layout = rng.choices(layouts, weights)[0] if len(layouts) > 1 else layouts[0]
    return _make_scene(preset, layout, rng, jitter=True)


# ------------------------------------------------------------------------------------------- captions
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _item_fields(item: Item, rng: random.Random, held_out: bool, scale: str | None = None) -> dict[str, str]:
    noun: Noun = ITEM_NOUNS[item.label].pick(rng, held_out)
    colour = COLOUR_WORDS[item.colour].pick(rng, held_out)
    sz = SIZE_WORDS[scale].pick(rng, held_out) + " " if scale else ""
    if noun.singular is None:  # plural-only ("trousers"): no article, plural verb, "pair(s) of" when counted
        return {"thing": f"{sz}{colour} {noun.plural}", "a_noun": f"{sz}{noun.plural}",
                "one": f"one pair of {sz}{colour} {noun.plural}", "colour": colour, "is": "are",
                "P": f"pairs of {colour} {noun.plural}", "Pn": f"pairs of {noun.plural}"}
    return {"thing": _article(f"{sz}{colour} {noun.singular}"), "a_noun": _article(f"{sz}{noun.singular}"),
            "one": f"one {sz}{colour} {noun.singular}", "colour": colour, "is": "is",
            "P": f"{colour} {noun.plural}", "Pn": noun.plural}


def caption(scene: Scene, rng: random.Random, held_out: bool = False) -> str:
    """One caption of ``scene``, true of it, drawn with ``rng``.

    ``held_out=False`` uses only training templates and synonyms; ``held_out=True`` uses held-out
    templates and, for every slot that has them, held-out synonyms (see the module docstring). Every
    caption names every item's class and colour, the scale of a scaled single item, the position of a
    ``"position"`` item, the places or the relation of a pair, and the number of a count.
    """
    template = TEMPLATES[scene.layout].pick(rng, held_out)
    if scene.layout == "pair":
        a, b = scene.items
        first, second = ("left", "right") if scene.relation == "left-right" else ("top", "bottom")
        fa, fb = _item_fields(a, rng, held_out), _item_fields(b, rng, held_out)
        rel_ab, rel_ba = ("left of", "right of") if scene.relation == "left-right" else ("above", "below")
        fields = {"A": fa["thing"], "B": fb["thing"], "isA": fa["is"], "isB": fb["is"],
                  "pA": POSITION_WORDS[first].pick(rng, held_out), "pB": POSITION_WORDS[second].pick(rng, held_out),
                  "rAB": RELATION_WORDS[rel_ab].pick(rng, held_out), "rBA": RELATION_WORDS[rel_ba].pick(rng, held_out)}
    else:
        fields = _item_fields(scene.items[0], rng, held_out, scene.scale)
        if scene.layout == "position":
            fields["pos"] = POSITION_WORDS[scene.position].pick(rng, held_out)
        elif scene.layout == "count":
            fields["N"] = COUNT_WORDS[len(scene.items)]
    return template.format(**fields)


def _captions(scene: Scene, rng: random.Random, k: int) -> tuple[str, ...]:
    """Up to ``k`` distinct training captions of ``scene`` (fewer only if 3k draws give fewer distinct ones)."""
    out: dict[str, None] = {}
    for _ in range(3 * k):
        out.setdefault(caption(scene, rng), None)
        if len(out) == k:
            break
    return tuple(out)


# ------------------------------------------------------------------------------------------- rendering
_LOCK = threading.Lock()
_SOURCES: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
_BUILT: dict[tuple, tuple] = {}
_COLOUR_RGB = {name: np.array(rgb, dtype=np.uint32).reshape(3, 1, 1) for name, rgb in COLOURS.items()}
_CANVAS = np.array(CANVAS, dtype=np.uint8).reshape(3, 1, 1)


def _source(split: str, root: str | os.PathLike | None) -> tuple[FashionMNIST, np.ndarray, list[np.ndarray]]:
    """Fashion-MNIST ``split``, its images as (N, 28, 28) uint8 and the indices of each class (cached)."""
    fm = FashionMNIST(split=split, root=root)
    with _LOCK:
        got = _SOURCES.get(fm.content_hash)
        if got is None:
            labels = fm.labels.numpy()
            got = _SOURCES[fm.content_hash] = (fm.images_uint8[:, 0].numpy(),
                                               [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))])
    return fm, got[0], got[1]


def _draw(canvas: np.ndarray, scene: Scene, seed: int, images: np.ndarray, pools: list[np.ndarray]) -> None:
    """Draw ``scene``'s items into ``canvas`` (3, S, S) uint8, choosing each item's image with ``Random(seed)``."""
    rng = random.Random(seed)
    for it in scene.items:
        pool = pools[it.label]
        if len(pool) == 0:
            raise ValueError(f"this Fashion-MNIST copy has no image of class {it.label} ({CLASS_NAMES[it.label]})")
        grey = images[pool[rng.randrange(len(pool))]]
        x0, y0, x1, y1 = it.box
        if (x1 - x0, y1 - y0) != grey.shape[::-1]:
            grey = np.asarray(Image.fromarray(grey).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        tinted = ((grey.astype(np.uint32) * _COLOUR_RGB[it.colour] + 127) // 255).astype(np.uint8)
        region = canvas[:, y0:y1, x0:x1]
        np.maximum(region, tinted, out=region)


def render(scene: Scene, seed: int, root: str | os.PathLike | None = None, split: str = "train") -> Tensor:
    """The picture of ``scene``: uint8 (3, size, size), deterministic in (scene, seed, Fashion-MNIST files).

    Each item's Fashion-MNIST image is drawn from ``split``'s images of its class by ``random.Random(seed)``
    (one draw per item, in order); see the module docstring for the resize, tint and composite.
    ``FashionScenes(...).images_uint8[i] == render(ds.scenes[i], ds.seeds[i])``.

    Raises:
        DataMissingError: Fashion-MNIST is not installed (one line naming the install).
        ValueError: a bad split, or no image of an item's class.
    """
    one_of("Fashion-MNIST split", split, ("train", "test"))
    _, images, pools = _source(split, root)
    canvas = np.empty((3, scene.size, scene.size), dtype=np.uint8)
    canvas[:] = _CANVAS
    _draw(canvas, scene, seed, images, pools)
    return torch.from_numpy(canvas)


# ------------------------------------------------------------------------------------------- data set
class FashionScenes(CaptionedImages):
    """``n`` Fashion scenes of a preset with their pictures and training captions, deterministic from ``seed``.

    Args:
        preset: a key of :data:`PRESETS` (``"quickstart"``, ``"full"``, ``"full64"``).
        n: number of scenes (default: the preset's, 20000 for quickstart, 30000 for full).
        seed: int >= 0; the same arguments give the same scenes, captions, pictures and hash.
        root: Fashion-MNIST folder (default ``$EBRU_FASHION_MNIST`` or the Debian path).
        split: Fashion-MNIST split the items are drawn from (``"train"``; ``"test"`` for reference pictures).
        captions_per_scene: distinct training captions per scene (the trainer draws one per step).

    Attributes (besides :class:`CaptionedImages`'): ``scenes`` (n :class:`Scene`), ``seeds`` (each scene's
    :func:`render` seed), ``preset``, ``seed``, ``split``, ``spec`` (the JSON-ready arguments that
    rebuild it). ``labels`` are each scene's first item's class; ``class_names`` is :data:`CLASS_NAMES`;
    images are (n, 3, S, S).

    ``content_hash`` is the SHA-256 of: the UTF-8 JSON of ``spec`` plus :data:`GENERATOR` and the
    Fashion-MNIST split's content hash (sorted keys, no spaces), then the raw bytes of the uint8 images
    (n, 3, S, S) in C order, then the UTF-8 JSON list of every scene's caption list. It so names the
    recipe and also changes with any pixel or caption (e.g. a Pillow whose resize differs).

    Built data sets are cached in the process per (arguments, Fashion-MNIST hash): a second construction
    with the same arguments shares the first one's tensors. Building takes about 1.5 s for the 20000
    quickstart scenes and 4-6 s for the 30000 full ones on a busy 2-core CPU (measured; about a third of
    it Pillow's resize). The full preset's captions are combinatorial: 30000 scenes with 4 captions each
    give about 87000 distinct captions (quickstart: about 4500, nearly all its phrasings).

    Raises:
        DataMissingError: Fashion-MNIST is not installed (one line naming the install).
        ValueError: an unknown preset (with the nearest name) or split, ``n`` or ``seed`` out of range.
    """

    def __init__(self, preset: str = "quickstart", n: int | None = None, seed: int = 0,
                 root: str | os.PathLike | None = None, split: str = "train", captions_per_scene: int = 4) -> None:
        p = PRESETS[one_of("Fashion scenes preset", preset, PRESETS)]
        n = p.default_n if n is None else positive_int("n", n)
        seed = positive_int("seed", seed, minimum=0)
        one_of("Fashion-MNIST split", split, ("train", "test"))
        k = positive_int("captions_per_scene", captions_per_scene)
        fm, images, pools = _source(split, root)
        spec = {"preset": p.name, "n": n, "seed": seed, "split": split, "captions_per_scene": k}
        key = (*spec.values(), fm.content_hash)
        with _LOCK:
            built = _BUILT.get(key)
        if built is None:
            built = _build(p, n, seed, k, images, pools, {**spec, "generator": GENERATOR,
                                                           "fashion_mnist": fm.content_hash})
            with _LOCK:
                built = _BUILT.setdefault(key, built)
        pictures, labels, scenes, seeds, caps, digest = built
        n_caps = sum(len(c) for c in caps)
        unique = len({c for cs in caps for c in cs})
        super().__init__(
            pictures, caps, labels=labels, class_names=list(CLASS_NAMES), content_hash=digest,
            source=(f"Fashion scenes {p.name!r} ({n} scenes {p.size}x{p.size}, seed {seed}) drawn from "
                    f"Fashion-MNIST {split} split in {fm.root}"),
            skipped=0,
            report=f"data: {n} Fashion scenes ({p.name}), {n_caps} captions ({unique} distinct); none left out",
        )
        self.scenes: list[Scene] = scenes
        self.seeds: list[int] = seeds
        self.preset = p.name
        self.seed = seed
        self.split = split
        self.spec = spec


def _build(p: Preset, n: int, seed: int, k: int, images: np.ndarray, pools: list[np.ndarray],
           header: dict) -> tuple:
    scene_rng = random.Random(f"ebru.scenes/{p.name}/{seed}/scenes")
    caption_rng = random.Random(f"ebru.scenes/{p.name}/{seed}/captions")
    scenes, seeds, caps = [], [], []
    pictures = np.empty((n, 3, p.size, p.size), dtype=np.uint8)
    pictures[:] = _CANVAS
    for i in range(n):
        scene = _random_scene(p, scene_rng)
        s = scene_rng.getrandbits(63)
        _draw(pictures[i], scene, s, images, pools)
        scenes.append(scene)
        seeds.append(s)
        caps.append(_captions(scene, caption_rng, k))
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    h.update(memoryview(pictures).cast("B"))
    h.update(json.dumps([list(c) for c in caps], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    labels = torch.tensor([sc.items[0].label for sc in scenes], dtype=torch.long)
    return torch.from_numpy(pictures), labels, scenes, seeds, caps, h.hexdigest()


def clear_cache() -> None:
    """Forget the Fashion scenes data sets (and the decoded item sources) built in this process."""
    with _LOCK:
        _BUILT.clear()
        _SOURCES.clear()


# ------------------------------------------------------------------------------------------- evaluation
def _balanced(rng: random.Random, values: Sequence, m: int) -> list:
    """``m`` values cycling through fresh shuffles of ``values`` (each value within one of the others' count)."""
    out: list = []
    while len(out) < m:
        round_ = list(values)
        rng.shuffle(round_)
        out.extend(round_)
    return out[:m]


def eval_prompts(preset: str, n_per_task: int, seed: int = 0) -> list[ScenePrompt]:
    """Evaluation prompts for ``preset``'s tasks (:data:`TASKS`), deterministic from ``seed``.

    Per task, ``ceil(n_per_task / 2)`` scenes are drawn with the task's attribute balanced (the class for
    ``single_object``, the colour for ``colour``, the half for ``position``, the first item's class and
    the relation for ``two_objects`` / ``colour_binding``, the number for ``counting``; the rest at
    random); each is phrased once with training phrasings (``held_out=False``) and the first
    ``n_per_task // 2`` once more with held-out phrasings (``held_out=True``), so both halves ask for the
    same scenes. Quickstart tasks are ``single_object`` and ``colour`` (both a coloured single item);
    full ones add ``position`` (one item in a half), ``two_objects``, ``colour_binding`` (pairs) and
    ``counting``. Scenes carry the unjittered boxes where the items are expected. Order: per task, the
    seen prompts then the held-out ones.

    Raises ValueError (one line) for an unknown preset (with the nearest name) or ``n_per_task`` < 1.
    """
    p = PRESETS[one_of("Fashion scenes preset", preset, PRESETS)]
    n_per_task = positive_int("n_per_task", n_per_task)
    seed = positive_int("seed", seed, minimum=0)
    rng = random.Random(f"ebru.scenes/{p.name}/{seed}/eval")
    out: list[ScenePrompt] = []
    for task in p.tasks:
        m = math.ceil(n_per_task / 2)
        layout = _TASK_LAYOUT[task]
        kw: dict[str, list] = {}
        if task in ("single_object", "two_objects", "colour_binding"):
            kw["label"] = _balanced(rng, range(len(CLASS_NAMES)), m)
        if task == "colour":
            kw["colour"] = _balanced(rng, list(COLOURS), m)
        if layout == "single" and p.scales:
            kw["scale"] = _balanced(rng, SCALES, m)
        if layout == "position":
            kw["where"] = _balanced(rng, POSITIONS, m)
        if layout == "pair":
            kw["relation"] = _balanced(rng, RELATIONS, m)
        if layout == "count":
            kw["count"] = _balanced(rng, sorted(COUNT_WORDS), m)
        scenes = [_make_scene(p, layout, rng, jitter=False, **{k: v[i] for k, v in kw.items()}) for i in range(m)]
        out += [ScenePrompt(task, caption(s, rng), s, False) for s in scenes]
        out += [ScenePrompt(task, caption(s, rng, held_out=True), s, True) for s in scenes[: n_per_task // 2]]
    return out


# ------------------------------------------------------------------------------------------- data specs
SCENE_SPECS = ("fashion-scenes", *(f"fashion-scenes:{name}" for name in PRESETS))
_SPEC_NAMES = ("fashion-scenes", "fashion_scenes", "fashionscenes")


def is_scene_spec(spec: object) -> bool:
    """Whether ``spec`` is a string naming Fashion scenes (``"fashion-scenes"`` or ``"fashion-scenes:<preset>"``)."""
    return isinstance(spec, str) and spec.strip().partition(":")[0].lower() in _SPEC_NAMES


def load_scenes(spec: str, **kw) -> FashionScenes:
    """:class:`FashionScenes` from a data spec: ``"fashion-scenes"`` (quickstart) or ``"fashion-scenes:<preset>"``.

    Keywords go to :class:`FashionScenes` (``n``, ``seed``, ``root``, ``split``, ``captions_per_scene``).

    Raises:
        ValueError: one line for a name that is not Fashion scenes or an unknown preset (with the nearest
            valid one and the list).
        DataMissingError: Fashion-MNIST is not installed.
    """
    name, _, preset = str(spec).strip().partition(":")
    if name.lower() not in _SPEC_NAMES:
        raise ValueError(f"not a Fashion scenes spec: {spec!r}{did_you_mean(name.lower(), _SPEC_NAMES[:1])}; "
                         f"valid: {', '.join(SCENE_SPECS)}")
    preset = preset.strip().lower() or "quickstart"
    if preset not in PRESETS:
        raise ValueError(f"unknown Fashion scenes preset {preset!r} in {spec!r}{did_you_mean(preset, PRESETS)}; "
                         f"valid: {', '.join(SCENE_SPECS)}")
    return FashionScenes(preset, **kw)

