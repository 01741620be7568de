"""Fashion scenes: determinism, geometry, exact tints, captions true of their scenes, the held-out split.

Most tests draw items from a tiny synthetic Fashion-MNIST (3 images per class, every pixel > 0, so an
item covers its whole box); the real files are used only where marked (skipped when not installed).
"""

from __future__ import annotations

import colorsys
import gzip
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.data import DataMissingError
from ebru.data.captions import CaptionedImages
from ebru.data.fashion_mnist import DEFAULT_ROOT, FashionMNIST
from ebru.data.scenes import (
    CANVAS,
    CLASS_NAMES,
    COLOUR_WORDS,
    COLOURS,
    COUNT_WORDS,
    ITEM_NOUNS,
    POSITION_WORDS,
    PRESETS,
    RELATION_WORDS,
    SIZE_WORDS,
    TASKS,
    TEMPLATES,
    FashionScenes,
    Item,
    Scene,
    caption,
    clear_cache,
    eval_prompts,
    is_scene_spec,
    load_scenes,
    render,
)

HAVE_REAL = all((Path(DEFAULT_ROOT) / f"{s}-{k}-ubyte.gz").is_file()
                for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
real = pytest.mark.skipif(not HAVE_REAL, reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT}")


# ------------------------------------------------------------------------------------------- fixtures
def _idx(arr: np.ndarray) -> bytes:
    return (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A Fashion-MNIST folder with 3 images per class, all pixels in 1..255: (root, images, labels)."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(7)
    images = rng.integers(1, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return root, images, labels


@pytest.fixture(scope="module")
def full(synth) -> FashionScenes:
    return FashionScenes("full", n=600, seed=0, root=synth[0])


def _tint(grey: np.ndarray, colour: str) -> np.ndarray:
    rgb = np.array(COLOURS[colour], dtype=np.uint32).reshape(3, 1, 1)
    return ((grey.astype(np.uint32) * rgb + 127) // 255).astype(np.uint8)


def _expected_items(item: Item, images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Every picture the item may have: each image of its class, resized to its box and tinted."""
    x0, y0, x1, y1 = item.box
    out = []
    for g in images[labels == item.label]:
        if (x1 - x0, y1 - y0) != (28, 28):
            g = np.asarray(Image.fromarray(g).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        out.append(_tint(g, item.colour))
    return out


# ------------------------------------------------------------------------------------------- parsing
_PHRASES: list[tuple[str, str, object]] = []
for _label, _table in enumerate(ITEM_NOUNS):
    for _noun in _table.train + _table.held_out:
        _PHRASES += [(w, "item", _label) for w in (_noun.singular, _noun.plural) if w]
for _kind, _tables in (("colour", COLOUR_WORDS), ("size", SIZE_WORDS), ("pos", POSITION_WORDS),
                       ("rel", RELATION_WORDS)):
    for _key, _table in _tables.items():
        _PHRASES += [(w, _kind, _key) for w in _table.train + _table.held_out]
_PHRASES += [(w, "count", k) for k, w in COUNT_WORDS.items()]
_PHRASES.sort(key=lambda p: -len(p[0]))


def _phrase_re(phrase: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])")


_PHRASE_RES = [(_phrase_re(w), kind, value) for w, kind, value in _PHRASES]


def mentions(text: str) -> list[tuple[int, str, object]]:
    """(start, kind, value) of every vocabulary phrase in ``text``, longest phrases first, no overlaps."""
    taken = np.zeros(len(text) + 1, dtype=bool)
    found = []
    for rx, kind, value in _PHRASE_RES:
        for m in rx.finditer(text):
            if not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                found.append((m.start(), kind, value))
    return sorted(found, key=lambda t: t[0])


def _kinds(ms, kind):
    return [v for _, k, v in ms if k == kind]


def assert_true_of(text: str, scene: Scene) -> None:
    """Fail unless ``text`` names exactly what ``scene`` shows, read back through the synonym tables."""
    ms = mentions(text)
    where = f"{text!r} for {scene}"
    if scene.layout != "pair":
        it = scene.items[0]
        assert _kinds(ms, "item") == [it.label], where
        assert _kinds(ms, "colour") == [it.colour], where
        assert _kinds(ms, "size") == ([scene.scale] if scene.scale else []), where
        assert _kinds(ms, "pos") == ([scene.position] if scene.layout == "position" else []), where
        assert _kinds(ms, "count") == ([len(scene.items)] if scene.layout == "count" else []), where
        assert _kinds(ms, "rel") == [], where
        return
    a, b = scene.items
    first, second = ("left", "right") if scene.relation == "left-right" else ("top", "bottom")
    assert _kinds(ms, "size") == [] and set(_kinds(ms, "count")) <= {2}, where
    # binding: every item mention directly follows the mention of its own colour
    bound = {(ms[i - 1][2], m[2]) for i, m in enumerate(ms) if m[1] == "item" and i > 0 and ms[i - 1][1] == "colour"}
    assert bound == {(a.colour, a.label), (b.colour, b.label)} and len(_kinds(ms, "item")) == 2, where
    place = {a.label: first, b.label: second}
    for clause in re.split(r",? and |; |, with ", text):
        cm = mentions(clause)
        items, rels, poss = _kinds(cm, "item"), _kinds(cm, "rel"), _kinds(cm, "pos")
        if rels:
            assert len(rels) == 1 and len(items) == 2 and not poss, where
            x, y = items
            want = {"left of": (first, "left"), "above": (first, "top"), "right of": (second, "right"),
                    "below": (second, "bottom")}[rels[0]]
            assert want[1] in (first, second) and place[x] == want[0] and place[y] != want[0], where
        else:
            assert len(items) == 1 and len(poss) == 1 and place[items[0]] == poss[0], where


# ------------------------------------------------------------------------------------------- vocabulary
def test_colours_have_full_brightness_and_distinct_hues():
    hues = {}
    for name, rgb in COLOURS.items():
        assert max(rgb) == 255, name  # an item's brightness (max channel) is its grey level
        h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        if s > 0:
            hues[name] = h * 360
    assert set(COLOURS) >= {"red", "green", "blue", "yellow", "white"}
    assert set(COLOURS) - set(hues) == {"white"}  # the one unsaturated colour
    gaps = [min(abs(hues[p] - hues[q]), 360 - abs(hues[p] - hues[q])) for p in hues for q in hues if p < q]
    assert min(gaps) >= 45
    assert CANVAS == (0, 0, 0)


def test_phrasing_tables_split_and_sized():
    assert len(ITEM_NOUNS) == len(CLASS_NAMES) == 10
    for layout, t in TEMPLATES.items():
        assert len(t.train) >= 8 and len(t.held_out) >= 4, layout
        assert not set(t.train) & set(t.held_out), layout
    tables = [*ITEM_NOUNS, *COLOUR_WORDS.values(), *SIZE_WORDS.values(), *POSITION_WORDS.values(),
              *RELATION_WORDS.values()]
    for t in tables:
        assert not set(t.train) & set(t.held_out)
    for t in [*ITEM_NOUNS, *COLOUR_WORDS.values()]:
        assert t.held_out, t  # every class and every colour has a held-out synonym
    words = [w for w, _, _ in _PHRASES]
    assert len(words) == len(set(words))  # no phrase means two things
    # place words say their place (the read-back below trusts these tables)
    says = {"left": {"left"}, "right": {"right"}, "top": {"top", "upper"}, "bottom": {"bottom", "lower"},
            "left of": {"left"}, "right of": {"right"}, "above": {"above", "over"},
            "below": {"below", "under", "beneath"}}
    for key, t in [*POSITION_WORDS.items(), *RELATION_WORDS.items()]:
        for phrase in t.train + t.held_out:
            named = {k for k, ws in says.items() for w in ws if re.search(rf"\b{w}\b", phrase)}
            assert key in named and all(says[k] & says[key] for k in named), (key, phrase)


# ------------------------------------------------------------------------------------------- scenes
def test_scene_validation_one_line_errors():
    box = (2, 2, 30, 30)
    with pytest.raises(ValueError, match="outside the 32x32 canvas"):
        Scene(32, (Item(0, "red", (10, 10, 40, 20)),), "single")
    with pytest.raises(ValueError, match="overlap"):
        Scene(48, (Item(0, "red", (0, 0, 20, 20)), Item(1, "blue", (19, 0, 40, 20))), "pair", relation="left-right")
    with pytest.raises(ValueError, match="differ in class and in colour"):
        Scene(48, (Item(0, "red", (0, 0, 20, 20)), Item(0, "blue", (24, 0, 44, 20))), "pair", relation="left-right")
    with pytest.raises(ValueError, match=r"unknown colour 'rad' \(did you mean 'red'\?\)"):
        Item(0, "rad", box)
    with pytest.raises(ValueError, match=r"class 0\.\.9"):
        Item(10, "red", box)
    with pytest.raises(ValueError, match="position is given"):
        Scene(32, (Item(0, "red", box),), "single", position="left")
    with pytest.raises(ValueError, match="share one class and one colour"):
        Scene(48, (Item(0, "red", (0, 0, 20, 20)), Item(0, "blue", (24, 0, 44, 20))), "count")


def test_dataset_is_deterministic_and_seeded(synth):
    root = synth[0]
    a = FashionScenes("full", n=80, seed=3, root=root)
    clear_cache()  # rebuilt from scratch, not shared from the cache
    b = FashionScenes("full", n=80, seed=3, root=root)
    assert a.images_uint8 is not b.images_uint8
    assert torch.equal(a.images_uint8, b.images_uint8)
    assert a.captions == b.captions and a.scenes == b.scenes and a.seeds == b.seeds
    assert a.content_hash == b.content_hash and re.fullmatch(r"[0-9a-f]{64}", a.content_hash)
    c = FashionScenes("full", n=80, seed=4, root=root)
    assert c.content_hash != a.content_hash and not torch.equal(c.images_uint8, a.images_uint8)
    assert c.scenes != a.scenes
    d = FashionScenes("full", n=80, seed=3, root=root, captions_per_scene=2)
    assert d.content_hash != a.content_hash  # the hash covers the captions, not just the pictures
    assert FashionScenes("full", n=80, seed=3, root=root).images_uint8 is b.images_uint8  # cached per process


def test_dataset_shape_labels_and_captions(full):
    assert isinstance(full, CaptionedImages)
    assert full.images_uint8.shape == (600, 3, 48, 48) and full.images_uint8.dtype == torch.uint8
    assert full.labels.tolist() == [s.items[0].label for s in full.scenes]
    assert full.class_names == list(CLASS_NAMES) and full.num_classes == 10
    assert all(len(c) == 4 and len(set(c)) == 4 for c in full.captions)
    assert full.skipped == 0 and "600 Fashion scenes" in full.report and "\n" not in full.report
    assert Counter(s.layout for s in full.scenes).keys() == {"single", "position", "pair", "count"}
    assert {len(s.items) for s in full.scenes if s.layout == "count"} == {2, 3, 4}
    x, label = full[5]
    assert x.shape == (3, 48, 48) and x.min() >= -1 and x.max() <= 1 and label == full.scenes[5].items[0].label


def test_quickstart_geometry(synth):
    ds = FashionScenes("quickstart", n=50, root=synth[0])
    assert ds.images_uint8.shape == (50, 3, 32, 32)
    for s in ds.scenes:
        assert s.layout == "single" and s.scale is None and s.size == 32
        assert [it.box for it in s.items] == [(2, 2, 30, 30)]


def test_pictures_equal_render_of_their_scenes(full, synth):
    for i in (0, 1, 2, 3, 50, 599):
        assert torch.equal(full.images_uint8[i], render(full.scenes[i], full.seeds[i], root=synth[0]))


def test_boxes_inside_canvas_and_apart(full):
    def gap(a, b):  # pixels of canvas between two boxes (Chebyshev distance of the rectangles)
        return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])

    for s in full.scenes:
        for it in s.items:
            x0, y0, x1, y1 = it.box
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
            assert min(x1 - x0, y1 - y0) >= 20  # large enough for the judge to classify
        for i, a in enumerate(s.items):
            for b in s.items[i + 1:]:
                assert gap(a.box, b.box) >= (4 if s.layout == "count" else 2)
        if s.layout == "position":  # the item's centre is well inside the named half
            (x0, y0, x1, y1), = [it.box for it in s.items]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert {"left": cx < 18, "right": cx > 30, "top": cy < 18, "bottom": cy > 30}[s.position]
        if s.layout == "pair":
            a, b = (it.box for it in s.items)
            axis = 0 if s.relation == "left-right" else 1
            assert a[axis + 2] <= 24 <= b[axis]  # items[0] left / top, each in its own half


def test_background_is_canvas_and_tint_exact(full, synth):
    _, images, labels = synth
    pics = full.images_uint8.numpy()
    for i, s in enumerate(full.scenes[:200]):
        inside = np.zeros((48, 48), dtype=bool)
        for it in s.items:
            x0, y0, x1, y1 = it.box
            inside[y0:y1, x0:x1] = True
            region = pics[i][:, y0:y1, x0:x1]
            assert any(np.array_equal(region, e) for e in _expected_items(it, images, labels)), (i, it)
            if it.colour == "red":
                assert not region[1:].any() and region[0].min() > 0  # G = B = 0, R = the grey level
        assert (pics[i][:, ~inside] == np.array(CANVAS, dtype=np.uint8)[:, None]).all(), i
        assert pics[i].max(0)[inside].min() > 0  # every item pixel (all > 0 here) is brighter than the canvas


def test_render_seed_and_split(synth):
    scene = Scene(32, (Item(7, "yellow", (2, 2, 30, 30)),), "single")
    a = render(scene, 11, root=synth[0])
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, render(scene, 11, root=synth[0]))
    assert torch.equal(a[0], a[1]) and not a[2].any()  # yellow: R = G = grey, B = 0
    picks = {render(scene, s, root=synth[0])[0].numpy().tobytes() for s in range(20)}
    assert len(picks) == 3  # the seed picks among the class's three images
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        render(scene, 0, root=synth[0], split="val")


# ------------------------------------------------------------------------------------------- captions
def test_training_captions_true_of_their_scenes(full):
    for s, caps in zip(full.scenes, full.captions):
        for c in caps:
            assert_true_of(c, s)


def test_held_out_captions_true_of_their_scenes(full):
    rng = random.Random(0)
    for s in full.scenes:
        for _ in range(3):
            assert_true_of(caption(s, rng, held_out=True), s)


def _template_re(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


_HELD_PHRASES = [w for t in [*COLOUR_WORDS.values(), *SIZE_WORDS.values(), *POSITION_WORDS.values(),
                             *RELATION_WORDS.values()] for w in t.held_out]
_HELD_PHRASES += [w for t in ITEM_NOUNS for n in t.held_out for w in (n.singular, n.plural) if w]
_HELD_TEMPLATES = [_template_re(t) for tp in TEMPLATES.values() for t in tp.held_out]


@pytest.mark.parametrize("preset", ["quickstart", "full"])
def test_held_out_phrasings_never_in_training(preset, synth):
    ds = FashionScenes(preset, n=3000, seed=1, root=synth[0])
    captions = {c for caps in ds.captions for c in caps}
    held = [_phrase_re(w) for w in _HELD_PHRASES]
    for c in captions:
        assert not any(rx.search(c) for rx in held), c
        assert not any(rx.match(c) for rx in _HELD_TEMPLATES), c
    # and the held-out prompts really use them: each matches a held-out template
    prompts = [p for p in eval_prompts(preset, 40) if p.held_out]
    assert all(any(rx.match(p.prompt) for rx in _HELD_TEMPLATES) for p in prompts)
    assert not {p.prompt for p in prompts} & captions


def test_held_out_synonyms_all_reachable():
    rng = random.Random(0)
    seen = " | ".join(p.prompt for p in eval_prompts("full", 400, seed=2) if p.held_out)
    seen += " | " + " | ".join(caption(Scene(48, (Item(c, "red", (2, 2, 46, 46)),), "single", scale="small"), rng,
                                       held_out=True) for c in range(10) for _ in range(20))
    missing = [w for w in _HELD_PHRASES if not _phrase_re(w).search(seen)]
    assert not missing or set(missing) <= {n.plural for t in ITEM_NOUNS for n in t.held_out if n.singular}


# ------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("preset,n", [("quickstart", 10), ("full", 7)])
def test_eval_prompts_tasks_and_halves(preset, n):
    prompts = eval_prompts(preset, n, seed=5)
    assert prompts == eval_prompts(preset, n, seed=5)
    assert [p.prompt for p in prompts] != [p.prompt for p in eval_prompts(preset, n, seed=6)]
    assert tuple(dict.fromkeys(p.task for p in prompts)) == TASKS[preset]
    layout = {"single_object": "single", "colour": "single", "position": "position", "two_objects": "pair",
              "colour_binding": "pair", "counting": "count"}
    for task in TASKS[preset]:
        seen = [p for p in prompts if p.task == task and not p.held_out]
        held = [p for p in prompts if p.task == task and p.held_out]
        assert (len(seen), len(held)) == (math.ceil(n / 2), n // 2)
        assert [p.scene for p in held] == [p.scene for p in seen[: n // 2]]  # the same scenes, rephrased
        for p in seen + held:
            assert p.scene.layout == layout[task] and p.scene.size == PRESETS[preset].size
            assert_true_of(p.prompt, p.scene)
    if preset == "quickstart":
        assert TASKS[preset] == ("single_object", "colour")


def test_eval_prompts_balanced_and_unjittered():
    prompts = eval_prompts("full", 20)
    singles = [p.scene for p in prompts if p.task == "single_object" and not p.held_out]
    assert sorted(s.items[0].label for s in singles) == list(range(10))
    colours = Counter(p.scene.items[0].colour for p in prompts if p.task == "colour" and not p.held_out)
    assert max(colours.values()) - min(colours.values()) <= 1 and len(colours) == 7
    counts = Counter(len(p.scene.items) for p in prompts if p.task == "counting")
    assert set(counts) == {2, 3, 4}
    cells = {(2, 2, 22, 22), (26, 2, 46, 22), (2, 26, 22, 46), (26, 26, 46, 46)}
    pairs = {"left-right": ((0, 12, 23, 35), (25, 12, 48, 35)), "top-bottom": ((12, 0, 35, 23), (12, 25, 35, 48))}
    for p in prompts:
        s = p.scene
        boxes = [it.box for it in s.items]
        if s.layout == "single":
            assert boxes == [{"small": (10, 10, 38, 38), "large": (2, 2, 46, 46)}[s.scale]]
        elif s.layout == "position":
            assert boxes == [{"left": (1, 10, 29, 38), "right": (19, 10, 47, 38), "top": (10, 1, 38, 29),
                              "bottom": (10, 19, 38, 47)}[s.position]]
        elif s.layout == "pair":
            assert tuple(boxes) == pairs[s.relation]
        else:
            assert set(boxes) <= cells and len(set(boxes)) == len(boxes)


def test_eval_prompts_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown Fashion scenes preset 'ful' \(did you mean 'full'\?\)"):
        eval_prompts("ful", 4)
    with pytest.raises(ValueError, match="n_per_task must be a positive integer"):
        eval_prompts("full", 0)


# ------------------------------------------------------------------------------------------- specs, errors
def test_load_scenes_spec(synth):
    root = synth[0]
    assert load_scenes("fashion-scenes", n=5, root=root).preset == "quickstart"
    ds = load_scenes(" Fashion-Scenes:full ", n=5, root=root)
    assert ds.preset == "full" and ds.image_shape == (3, 48, 48) and ds.spec["n"] == 5
    assert is_scene_spec("fashion-scenes:full") and not is_scene_spec("fashion-mnist") and not is_scene_spec(3)
    with pytest.raises(ValueError, match=r"unknown Fashion scenes preset 'ful'.*did you mean 'full'"):
        load_scenes("fashion-scenes:ful")
    with pytest.raises(ValueError, match=r"not a Fashion scenes spec.*did you mean 'fashion-scenes'"):
        load_scenes("fashion-scene:full")


def test_bad_arguments(synth):
    with pytest.raises(ValueError, match=r"did you mean 'quickstart'"):
        FashionScenes("quickstrat", root=synth[0])
    with pytest.raises(ValueError, match="n must be a positive integer"):
        FashionScenes("full", n=0, root=synth[0])
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        FashionScenes("full", n=2, seed=-1, root=synth[0])


def test_missing_fashion_mnist_is_one_line(tmp_path):
    with pytest.raises(DataMissingError) as err:
        FashionScenes("quickstart", n=4, root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and re.search(r"Fashion-MNIST not found.*apt-get install dataset-fashion-mnist", msg)
    with pytest.raises(DataMissingError):
        render(Scene(32, (Item(0, "red", (2, 2, 30, 30)),), "single"), 0, root=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- real data
@real
def test_real_quickstart_known_hash_and_items():
    ds = FashionScenes("quickstart", n=500, seed=0, root=DEFAULT_ROOT)
    # Pinned: a change to the scenes, captions or pictures for the same arguments must bump GENERATOR
    # (and this value). Quickstart items are not resized, so this does not depend on Pillow.
    assert ds.content_hash == "c37f646be89b2f6b93218dc6a2890e028277c2c66040acd9a4f91833559a59b6"
    fm = FashionMNIST("train", root=DEFAULT_ROOT)
    grey = fm.images_uint8[:, 0].numpy()
    for i in range(20):
        it = ds.scenes[i].items[0]
        region = ds.images_uint8[i, :, 2:30, 2:30].numpy()
        same = (grey == region.max(0)).all(axis=(1, 2))  # brightness = the item's own grey level
        assert same.any() and (fm.labels.numpy()[same] == it.label).all()
        assert np.array_equal(region, _tint(region.max(0), it.colour))
