"""CaptionedImages and load_captioned_folder on tiny folders written with Pillow."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.data import DataMissingError, ImageFolder
from ebru.data.captions import (
    CaptionedImages,
    captioned_content_hash,
    is_captioned_folder,
    load_captioned_folder,
)


def rgb(seed: int, h: int = 6, w: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def jsonl(path: Path, rows: list, *, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + newline
    path.write_bytes(text.encode("utf-8"))
    return path


def quiet(root, **kw) -> CaptionedImages:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder where every image is captioned must not warn
        return load_captioned_folder(root, **kw)


def load_warns(root, **kw) -> tuple[CaptionedImages, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_captioned_folder(root, **kw)
    return ds, [str(w.message) for w in caught]


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)


# ---------------------------------------------------------------- Hugging Face metadata.jsonl


def test_metadata_jsonl_text_and_caption_columns_lists_and_subfolders(tmp_path):
    a, b, c = rgb(1), rgb(2), rgb(3)
    png(tmp_path / "a.png", a)
    png(tmp_path / "b.png", b)
    png(tmp_path / "train" / "c.png", c)
    jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "  a red sneaker "},
        "",
        "   ",
        {"file_name": "b.png", "text": ["a bag", "crimson bag", ""], "extra": 3},
    ], newline="\r\n")
    # a metadata file in a subfolder: file_name is relative to that folder; "caption" column accepted
    jsonl(tmp_path / "train" / "metadata.jsonl", [{"file_name": "./c.png", "caption": "a dress"}])
    ds = quiet(tmp_path)
    assert isinstance(ds, CaptionedImages)
    assert ds.captions == [("a red sneaker",), ("a bag", "crimson bag"), ("a dress",)]
    assert [p.name for p in ds.files] == ["a.png", "b.png", "c.png"]
    assert torch.equal(ds.images_uint8, torch.stack([chw(a), chw(b), chw(c)]))
    assert ds.labels.tolist() == [-1, -1, -1] and ds.num_classes is None and ds.class_names is None
    assert ds.skipped == 0 and ds.left_out == []
    assert ds.report == "data: 3 images, 4 captions"
    assert ds.num_captions == 4
    assert "metadata.jsonl" in ds.source and ".txt" not in ds.source


def test_repeated_file_name_lines_merge_captions_in_order(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "one"},
        {"file_name": "a.png", "text": ["two", "three"]},
        {"file_name": "a.png", "text": "one"},
    ])
    assert quiet(tmp_path).captions == [("one", "two", "three", "one")]


def test_metadata_file_name_may_climb_but_not_leave_the_root(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    # ../a.png from a subfolder's metadata file is root/a.png: inside the root, allowed
    jsonl(tmp_path / "sub" / "metadata.jsonl", [{"file_name": "../a.png", "text": "ok"}])
    assert quiet(tmp_path).captions == [("ok",)]


@pytest.mark.parametrize("name", ["../x.png", "sub/../../x.png", "/etc/x.png", "C:\\x.png"])
def test_file_name_escaping_the_root_is_refused(tmp_path, name):
    png(tmp_path / "root" / "a.png", rgb(1))
    png(tmp_path / "x.png", rgb(2))
    jsonl(tmp_path / "root" / "metadata.jsonl", [{"file_name": "a.png", "text": "ok"},
                                                 {"file_name": name, "text": "sneaky"}])
    refused = r"metadata\.jsonl line 2: file_name .*(absolute|outside the data folder)"
    with pytest.raises(ValueError, match=refused) as e:
        load_captioned_folder(tmp_path / "root")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("line, lineno, why", [
    ('{"file_name": "a.png", "text": "x"', 3, r"not valid JSON \(Expecting ',' delimiter at column \d+\)"),
    ('["a.png", "x"]', 3, r"is a JSON list, not an object"),
    ('{"text": "x"}', 3, r"has no file_name"),
    ('{"file_name": 7, "text": "x"}', 3, r"has file_name 7"),
    ('{"file_name": "b.png", "text": 5}', 3, r"'text' must be a string or a list of strings, got 5"),
    ('{"file_name": "b.png", "caption": ["x", null]}', 3, r"'caption' must be a string or a list of strings"),
])
def test_malformed_metadata_line_names_file_and_line(tmp_path, line, lineno, why):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "b.png", rgb(2))
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}, "", line])
    with pytest.raises(ValueError, match=rf"metadata\.jsonl line {lineno}\b.*{why}") as e:
        load_captioned_folder(tmp_path)
    assert str(tmp_path / "metadata.jsonl") in str(e.value) and "\n" not in str(e.value)


def test_file_name_naming_no_image_is_reported(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}, {"file_name": "gone.png", "text": "y"}])
    ds, warned = load_warns(tmp_path)
    assert ds.report == ("data: 1 image, 1 caption; "
                         "1 file_name entry in metadata.jsonl names no image file (first: gone.png)")
    assert warned == [ds.report]


# ---------------------------------------------------------------- kohya .txt sidecars


def test_txt_sidecars_one_caption_per_nonempty_line(tmp_path):
    a, b, c = rgb(1), rgb(2), rgb(3)
    png(tmp_path / "a.png", a)
    png(tmp_path / "x" / "b.jpg", b)  # JPEG: compare with what ImageFolder decodes below
    png(tmp_path / "x" / "c.PNG", c)
    (tmp_path / "a.txt").write_bytes(b"1girl, red dress, smiling\n")  # tags stay one caption
    (tmp_path / "x" / "b.txt").write_bytes(b"\xef\xbb\xbf  first caption  \r\n\r\n second\r\n \t \r\n")  # BOM, CRLF
    (tmp_path / "x" / "c.txt").write_bytes("caf\u00e9 one\rtwo\n\u4e09".encode())  # lone CR, non-ASCII
    (tmp_path / "notes.txt").write_text("no image of that name", encoding="utf-8")
    ds = quiet(tmp_path)
    assert ds.captions == [
        ("1girl, red dress, smiling",), ("first caption", "second"), ("caf\u00e9 one", "two", "\u4e09"),
    ]
    assert ds.report == "data: 3 images, 6 captions"
    assert ".txt sidecars" in ds.source
    assert torch.equal(ds.images_uint8, ImageFolder(tmp_path).images_uint8)  # same decoding as ImageFolder


def test_metadata_wins_over_sidecar_and_report_says_so(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "b.png", rgb(2))
    png(tmp_path / "c.png", rgb(3))
    (tmp_path / "a.txt").write_text("from the sidecar", encoding="utf-8")
    (tmp_path / "b.txt").write_text("b from the sidecar", encoding="utf-8")
    (tmp_path / "c.txt").write_text("c from the sidecar", encoding="utf-8")
    jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "from the metadata"},
        {"file_name": "b.png", "label": 3},  # no caption column: does not shadow b.txt
        {"file_name": "c.png", "text": None},  # null likewise
    ])
    ds = quiet(tmp_path)
    assert ds.captions == [("from the metadata",), ("b from the sidecar",), ("c from the sidecar",)]
    assert ds.report == "data: 3 images, 3 captions; metadata.jsonl captions used instead of .txt sidecars for 1 image"


# ---------------------------------------------------------------- missing / empty / unreadable


def test_missing_and_empty_captions_counted_in_one_line(tmp_path):
    for i, name in enumerate(["a", "b", "c", "d", "e", "f", "g"]):
        png(tmp_path / f"{name}.png", rgb(i))
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("three", encoding="utf-8")
    (tmp_path / "c.txt").write_text(" \n\n\t\n", encoding="utf-8")  # only empty lines
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "d.png", "text": ["", "  "]},  # only empty: E
                                        {"file_name": "e.png", "text": []}])  # no caption strings at all: E
    # f.png, g.png: no caption anywhere
    ds, warned = load_warns(tmp_path)
    expected = "data: 2 images, 3 captions; 2 without a caption and 3 with only empty captions were left out"
    assert ds.report == expected
    assert warned == [expected]  # warned once, the same line
    assert ds.skipped == 5 and len(ds) == 2
    assert [(Path(p).name, why) for p, why in ds.left_out] == [
        ("c.png", "only empty captions in c.txt"), ("d.png", "only empty captions in metadata.jsonl"),
        ("e.png", "only empty captions in metadata.jsonl"), ("f.png", "no caption"), ("g.png", "no caption"),
    ]


def test_report_singular(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "b.png", rgb(2))
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    ds, _ = load_warns(tmp_path)
    assert ds.report == "data: 1 image, 1 caption; 1 without a caption was left out"


def test_unreadable_captioned_image_is_skipped_and_reported(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("y", encoding="utf-8")
    ds, warned = load_warns(tmp_path)
    assert re.fullmatch(r"data: 1 image, 1 caption; 1 unreadable image file skipped \(bad\.png: \w+Error: .+\)",
                        ds.report)
    assert ds.skipped == 1 and warned == [ds.report]


def test_nothing_left_says_how_to_caption(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "b.png", rgb(2))
    (tmp_path / "b.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no captioned image left in .*1 without a caption and 1 with only empty "
                                         r"captions were left out.*metadata\.jsonl.*file_name.*text.*\.txt") as e:
        load_captioned_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_no_images_and_missing_folder(tmp_path):
    (tmp_path / "x.txt").write_text("a caption without an image", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no image files .* in .*metadata\.jsonl"):
        load_captioned_folder(tmp_path)
    with pytest.raises(DataMissingError, match="not found"):
        load_captioned_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a folder"):
        load_captioned_folder(tmp_path / "x.txt")


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize("content, offset", [
    (b"fine\nbad \xff here\n", 9),
    (b"\xef\xbb\xbfok\n\xc3(", 6),  # BOM counted: offsets are into the file as stored
    (b"caf\xe9", 3),  # Latin-1 e-acute
])
def test_non_utf8_sidecar_names_file_and_offset(tmp_path, content, offset):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "b.png", rgb(2))
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(content)
    with pytest.raises(ValueError, match=rf"b\.txt is not UTF-8 \(invalid byte 0x[0-9a-f]{{2}} at offset {offset}\); "
                                         r"save it as UTF-8") as e:
        load_captioned_folder(tmp_path)
    assert str(tmp_path / "b.txt") in str(e.value) and "\n" not in str(e.value)


def test_non_utf8_metadata_names_file(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl is not UTF-8 \(invalid byte 0xe9 at offset 35\)"):
        load_captioned_folder(tmp_path)


def test_bom_in_metadata_jsonl_is_accepted(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    (tmp_path / "metadata.jsonl").write_bytes(b'\xef\xbb\xbf{"file_name": "a.png", "text": "x"}\r\n')
    assert quiet(tmp_path).captions == [("x",)]


# ---------------------------------------------------------------- content hash


def expected_hash(records) -> str:
    """The documented framing, written out independently of FilesHasher."""
    h = hashlib.sha256()

    def add(rel: str, data: bytes) -> None:
        name = rel.encode("utf-8")
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)

    for rel, data, caps in sorted(records):
        add(rel, data)
        add(rel + "\x00captions", json.dumps(list(caps), ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def test_content_hash_covers_images_and_captions(tmp_path):
    png(tmp_path / "a.png", rgb(1))
    png(tmp_path / "s" / "b.png", rgb(2))
    (tmp_path / "a.txt").write_text("red\nblue", encoding="utf-8")
    (tmp_path / "s" / "b.txt").write_text("caf\u00e9", encoding="utf-8")
    ds = quiet(tmp_path)
    records = [("a.png", (tmp_path / "a.png").read_bytes(), ("red", "blue")),
               ("s/b.png", (tmp_path / "s" / "b.png").read_bytes(), ("caf\u00e9",))]
    assert ds.content_hash == expected_hash(records) == captioned_content_hash(records)
    assert quiet(tmp_path).content_hash == ds.content_hash  # stable

    # the same captions in another format (metadata.jsonl, CRLF, BOM, spaces): same content, same hash
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf red \r\nblue\r\n")
    assert quiet(tmp_path).content_hash == ds.content_hash

    # one caption edited: the hash changes
    (tmp_path / "s" / "b.txt").write_text("cafe", encoding="utf-8")
    edited = quiet(tmp_path).content_hash
    assert edited != ds.content_hash
    # caption order is content too
    (tmp_path / "s" / "b.txt").write_text("caf\u00e9", encoding="utf-8")
    (tmp_path / "a.txt").write_text("blue\nred", encoding="utf-8")
    assert quiet(tmp_path).content_hash not in (ds.content_hash, edited)
    # one pixel changed: the hash changes
    (tmp_path / "a.txt").write_text("red\nblue", encoding="utf-8")
    arr = rgb(1)
    arr[0, 0, 0] ^= 1
    png(tmp_path / "a.png", arr)
    assert quiet(tmp_path).content_hash != ds.content_hash


def test_hash_does_not_confuse_caption_boundaries():
    img = b"\x89PNG"
    assert captioned_content_hash([("a.png", img, ("a", "b"))]) != captioned_content_hash([("a.png", img, ("a\nb",))])
    assert captioned_content_hash([("a.png", img, ("a, b",))]) != captioned_content_hash([("a.png", img, ("a", "b"))])


# ---------------------------------------------------------------- CaptionedImages


def make(captions, **kw) -> CaptionedImages:
    n = len(captions)
    return CaptionedImages(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), captions, content_hash="0" * 64,
                           source="test", **kw)


def test_caption_list_and_table_indices_exact():
    ds = make([("a red shoe", "crimson shoe"), ("a bag",), ("crimson shoe", "a bag", "a red shoe"), "a bag"])
    unique, index = ds.caption_list()
    assert unique == ["a red shoe", "crimson shoe", "a bag"]
    assert [ix.tolist() for ix in index] == [[0, 1], [2], [1, 2, 0], [2]]
    assert all(ix.dtype == torch.long for ix in index)
    u2, table, counts = ds.caption_table()
    assert u2 == unique
    assert table.tolist() == [[0, 1, -1], [2, -1, -1], [1, 2, 0], [2, -1, -1]]
    assert counts.tolist() == [2, 1, 3, 1]
    idx = torch.tensor([0, 2, 3])
    drawn = table[idx, (torch.full((3,), 0.999) * counts[idx]).long()]  # the documented draw, last caption
    assert drawn.tolist() == [1, 0, 2]


def test_constructor_fields_and_checks():
    ds = make(["x", ("y", "z")], labels=[3, 1], class_names=[str(i) for i in range(4)], skipped=2,
              report="line one\nline two")
    assert ds.captions == [("x",), ("y", "z")]
    assert ds.labels.tolist() == [3, 1] and ds.num_classes == 4
    assert ds.skipped == 2 and ds.report == "line one line two"
    assert make(["x"]).labels.tolist() == [-1] and make(["x"]).report == ""
    with pytest.raises(ValueError, match="one entry per image: 2 images, 1 caption entries"):
        CaptionedImages(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [("x",)], content_hash="", source="")
    with pytest.raises(ValueError, match="image 1 has no caption"):
        make([("x",), ()])
    with pytest.raises(ValueError, match=r"image 0: caption ' x' is empty or has surrounding whitespace"):
        make([(" x",)])
    with pytest.raises(ValueError, match=r"image 0: caption '' is empty"):
        make([("",)])
    with pytest.raises(TypeError, match="captions must be strings"):
        make([("x", 3)])
    with pytest.raises(ValueError, match="skipped must be an integer >= 0"):
        make(["x"], skipped=-1)
    with pytest.raises(TypeError, match="uint8 tensor"):
        CaptionedImages(torch.zeros(1, 1, 2, 2), ["x"], content_hash="", source="")


# ---------------------------------------------------------------- image_size / channels


def test_image_size_and_channels_as_imagefolder(tmp_path):
    png(tmp_path / "a.png", rgb(1, 6, 10))
    png(tmp_path / "b.png", rgb(2, 8, 8))
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    (tmp_path / "b.txt").write_text("y", encoding="utf-8")
    ds = quiet(tmp_path, image_size=4, channels=1)
    ref = ImageFolder(tmp_path, image_size=4, channels=1)
    assert ds.image_shape == (1, 4, 4) and torch.equal(ds.images_uint8, ref.images_uint8)
    assert "resized to 4x4" in ds.source
    with pytest.raises(ValueError, match=r"differ in size: a\.png is 10x6, b\.png is 8x8; pass image_size"):
        load_captioned_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        load_captioned_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        load_captioned_folder(tmp_path, image_size=0)


def test_uncaptioned_images_do_not_constrain_size_or_channels(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, size=(5, 5), dtype=np.uint8)
    png(tmp_path / "a.png", g)
    (tmp_path / "a.txt").write_text("gray", encoding="utf-8")
    png(tmp_path / "big_rgb.png", rgb(1, 9, 9))  # no caption: left out before decoding
    ds, _ = load_warns(tmp_path)
    assert ds.image_shape == (1, 5, 5)
    assert torch.equal(ds.images_uint8[0, 0], torch.from_numpy(g))


# ---------------------------------------------------------------- routing


def test_is_captioned_folder(tmp_path):
    assert not is_captioned_folder(tmp_path / "missing")
    png(tmp_path / "plain" / "cls" / "a.png", rgb(1))
    (tmp_path / "plain" / "README.txt").write_text("not a sidecar", encoding="utf-8")
    assert not is_captioned_folder(tmp_path / "plain")
    assert not is_captioned_folder(tmp_path / "plain" / "README.txt")
    png(tmp_path / "kohya" / "10_sks" / "a.png", rgb(1))
    (tmp_path / "kohya" / "10_sks" / "a.txt").write_text("x", encoding="utf-8")
    assert is_captioned_folder(tmp_path / "kohya")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "metadata.jsonl").write_text("", encoding="utf-8")
    assert is_captioned_folder(tmp_path / "hf")
    jsonl(tmp_path / "hf_sub" / "train" / "metadata.jsonl", [])
    assert is_captioned_folder(tmp_path / "hf_sub")
    (tmp_path / "hidden" / ".cache").mkdir(parents=True)
    (tmp_path / "hidden" / ".cache" / "metadata.jsonl").write_text("", encoding="utf-8")
    assert not is_captioned_folder(tmp_path / "hidden")


def test_load_captioned_routes_names_and_folders(tmp_path):
    from ebru.data import load_captioned

    with pytest.raises(ValueError, match=r"unknown captioned data set 'fashion-mnist'.*fashion-scenes"):
        load_captioned("fashion-mnist")  # a data set without captions is not silently used
    with pytest.raises(ValueError, match=r"unknown Fashion scenes preset 'quikstart'.*did you mean 'quickstart'"):
        load_captioned("fashion-scenes:quikstart")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"metadata\.jsonl|caption"):
        load_captioned(tmp_path)  # a folder with no captions at all: how to caption it
