"""``ebru detect`` and ``ebru detector train`` on the command line: results, heat maps, bad files, the note.

A tiny detector package (random weights) is written with ``write_detector``; the command's numbers must be
exactly what :meth:`Detector.predict` gives for the same pixels.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.cli import main
from ebru.cli.app import build_parser
from ebru.cli.detect import TRAIN_OPTIONS
from ebru.pipelines.detector import train_detector
from ebru.provenance.detector import SUPPORTING_SIGNAL, Detector, DetectorNet, write_detector


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    torch.manual_seed(5)
    return write_detector(tmp_path_factory.mktemp("det") / "det", DetectorNet(3, 4, 2), 0.0, image_shape=(3, 16, 16),
                          calibration={"images": 99}, dataset="tests")


def _png(path, seed, size=(16, 16)):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_detect_reports_the_detectors_numbers_writes_maps_and_always_the_note(capsys, tmp_path, detector_dir):
    a = _png(tmp_path / "a.png", 1)
    b = _png(tmp_path / "b.png", 2, size=(20, 12))  # another size: the network is fully convolutional
    code, out, err = run(capsys, "detect", tmp_path / "a.png", tmp_path / "b.png", "--detector", detector_dir,
                         "--json", tmp_path / "r.json", "--map-dir", tmp_path / "maps")
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    det = Detector.from_pretrained(detector_dir, quiet=True)
    for row, arr in zip(rows, (a, b), strict=True):
        pred = det.predict(torch.from_numpy(arr).permute(2, 0, 1)[None])
        assert row["p_generated"] == float(pred.p_generated[0])
        assert row["flagged"] == (row["p_generated"] > row["threshold"]) == bool(pred.flagged[0])
        assert row["map_max"] == float(pred.map[0].max()) and row["size"] == [arr.shape[1], arr.shape[0]]
        assert row["note"] == SUPPORTING_SIGNAL and row["detector"] == det.digest and row["fpr"] == 0.01
    assert row["threshold"] == 0.5  # threshold logit 0
    # the heat maps: the image beside its map, enlarged 8x (16 px -> 128 px) and 11x (12 px -> 132 px)
    with Image.open(rows[0]["map_file"]) as im:
        assert im.size == ((16 + 2 + 16) * 8, 16 * 8)
        assert np.array_equal(np.asarray(im)[::8, ::8][:, :16], a)
    with Image.open(rows[1]["map_file"]) as im:
        assert im.size == ((20 + 2 + 20) * 11, 12 * 11)
    lines = out.splitlines()
    assert lines[0].startswith("a.png: p(generated) ") and lines[1].startswith("b.png: p(generated) ")
    assert re.match(r"\d of 2 image\(s\) flagged as generated or edited \(threshold 0\.500, calibrated at 1 % false "
                    r"positives on held-out real images\)", lines[2])
    assert lines[3] == f"note: {SUPPORTING_SIGNAL}"


def test_a_bad_file_gets_one_line_and_the_others_are_still_read(capsys, tmp_path, detector_dir):
    _png(tmp_path / "good.png", 3)
    (tmp_path / "notes.png").write_text("not an image\n", encoding="utf-8")
    full = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    code, out, _ = run(capsys, "detect", tmp_path / "notes.png", tmp_path / "good.png", tmp_path / "cut.png",
                         "--detector", detector_dir)
    assert code == 2
    lines = out.splitlines()
    assert re.fullmatch(r"notes\.png: error: .*notes\.png: not an image Pillow can read .*", lines[0])
    assert lines[1].startswith("good.png: p(generated) ")
    assert re.fullmatch(r"cut\.png: error: .*cut\.png: the image is damaged or truncated .*", lines[2])
    assert lines[3].startswith("0 of 1 image(s) flagged") or lines[3].startswith("1 of 1 image(s) flagged")
    assert lines[4] == f"note: {SUPPORTING_SIGNAL}" and len(lines) == 5


def test_a_tampered_detector_is_refused_in_one_line(capsys, tmp_path, detector_dir):
    import shutil

    copy = tmp_path / "det"
    shutil.copytree(detector_dir, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    _png(tmp_path / "a.png", 1)
    code, out, err = run(capsys, "detect", tmp_path / "a.png", "--detector", copy)
    assert (code, out) == (2, "")
    assert re.fullmatch(r"ebru: error: .*model\.safetensors: SHA-256 .* does not match the manifest.*\n", err)


def test_detector_train_checks_its_arguments_before_loading_anything(capsys, tmp_path):
    code, out, err = run(capsys, "detector", "train", "--model", tmp_path / "no-such-model", "--out", tmp_path / "d",
                         "--minutes", "0")
    assert (code, out) == (2, "") and re.fullmatch(r"ebru: error: minutes must be > 0, got 0\.0\n", err)
    code, out, err = run(capsys, "detector", "train", "--model", tmp_path / "no-such-model", "--out", tmp_path / "d",
                         "--settings", "eulr:10")
    assert code == 2 and re.search(r"unknown sampler 'eulr' \(did you mean 'euler'\?\)", err)
    code, _, err = run(capsys, "detector")
    assert code == 2 and "train" in err


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def test_detector_train_help_states_the_pipelines_own_defaults():
    parser = _sub(_sub(build_parser(), "detector"), "train")
    defaults = {k: p.default for k, p in inspect.signature(train_detector).parameters.items()}
    for action in parser._actions:
        if action.dest in TRAIN_OPTIONS:
            want = defaults[action.dest]
            shown = ",".join(want) if isinstance(want, tuple) else f"{want:g}" if isinstance(want, float) else want
            assert action.default is None and f"(default {shown})" in action.help, action.dest
    assert {a.dest for a in parser._actions} >= set(TRAIN_OPTIONS)
