"""``ebru sample``: what it writes (names, labelled grids), what it refuses before sampling, tuned schedules."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.cli import main
from ebru.cli.image import grid_layout
from ebru.data.grid import to_uint8
from ebru.diffusion import WarpedSchedule
from ebru.pipelines import outputs as outputs_module
from ebru.pipelines.image import ImagePipeline, safe_name, save_images

from .conftest import CLASS_NAMES


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def expected(model_dir, seeds, labels, **kw) -> list[np.ndarray]:
    """What the pipeline draws for these seeds and classes, as the uint8 arrays a PNG holds."""
    pipe = ImagePipeline.from_pretrained(model_dir)
    images = pipe(len(seeds), class_labels=labels, seeds=list(seeds), **kw)
    return [a.squeeze(-1).numpy() for a in to_uint8(images)]


def test_files_are_named_by_class_and_seed_and_hold_that_sample(capsys, tmp_path, image_model):
    model = image_model(classes=True)
    out = tmp_path / "images"
    code, _, err = run(capsys, "sample", str(model), "-n", "4", "--seed", "5", "--steps", "1", "--out-dir", str(out))
    assert code == 0, err
    names = ["sample-T-shirt_top-seed0005.png", "sample-Sneaker-seed0006.png", "sample-Bag-seed0007.png",
             "sample-T-shirt_top-seed0008.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    want = expected(model, range(5, 9), [0, 1, 2, 0], num_inference_steps=1)
    for name, arr in zip(names, want):
        assert np.array_equal(png(out / name), arr), name
    code, _, _ = run(capsys, "sample", str(model), "-n", "2", "--class", "sneaker", "--steps", "1",
                     "--out-dir", str(tmp_path / "sneakers"))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "sneakers").iterdir()) == ["sample-Sneaker-seed0000.png",
                                                                         "sample-Sneaker-seed0001.png"]


def test_unconditional_files_carry_the_seed(capsys, tmp_path, image_model):
    code, _, _ = run(capsys, "sample", str(image_model(classes=False)), "-n", "2", "--seed", "12", "--steps", "1",
                     "--out-dir", str(tmp_path))
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["sample-seed0012.png", "sample-seed0013.png"]


@pytest.mark.parametrize(("text", "safe"), [
    ("T-shirt/top", "T-shirt_top"), ("Écharpe", "Echarpe"), ("../../etc/passwd", "etc_passwd"),
    ("a photo of a cat!", "a_photo_of_a_cat"), ("...", "_"), ("x" * 80, "x" * 48)])
def test_safe_name(text, safe):
    assert safe_name(text) == safe


def test_save_images_refuses_a_seed_count_that_does_not_match(tmp_path):
    with pytest.raises(ValueError, match=r"one seed .* per image: 2 images, 1 seeds"):
        save_images(torch.zeros(2, 1, 4, 4), tmp_path, seeds=[3])


def test_grid_layout_puts_one_class_per_row():
    cells, rows = grid_layout([0, 1, 2, 0, 1, 2, 0], per_row=2)
    assert cells == [0, 3, 6, None, 1, 4, 2, 5]
    assert rows == [0, 0, 1, 2]
    assert grid_layout([4, 4, 4], per_row=3) == ([0, 1, 2], [4])


def test_grid_rows_are_labelled_with_class_names(capsys, tmp_path, image_model, monkeypatch):
    calls = []
    real = outputs_module.render_grid
    monkeypatch.setattr(outputs_module, "render_grid", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    grid = tmp_path / "grid.png"
    code, out, _ = run(capsys, "sample", str(image_model(classes=True)), "-n", "6", "--steps", "1",
                       "--grid", str(grid))
    assert code == 0 and f"grid:   {grid}" in out
    (tiles, nrow), kw = calls[0]
    assert kw["row_labels"] == CLASS_NAMES and nrow == 2 and tiles.shape == (6, 1, 8, 8)
    # 3 rows x 2 columns of 8x8 tiles with 2-pixel padding, scaled 3x, plus the label margin and the title
    assert Image.open(grid).size == (110 + 3 * (2 * 10 + 2), 24 + 3 * (3 * 10 + 2))
    calls.clear()
    code, _, _ = run(capsys, "sample", str(image_model(classes=False)), "-n", "4", "--steps", "1", "--grid", str(grid))
    assert code == 0 and calls[0][1].get("row_labels") is None and calls[0][0][1] == 2


def test_negative_guidance_is_explained_then_used(capsys, tmp_path, image_model):
    model = image_model(classes=True)
    code, _, err = run(capsys, "sample", str(model), "-n", "1", "--steps", "1", "--guidance", "-1",
                       "--out-dir", str(tmp_path))
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("ebru: note: --guidance")]
    assert len(notes) == 1 and re.search(r"--guidance -1 is negative.*away from the class", notes[0])
    [want] = expected(model, [0], [0], num_inference_steps=1, guidance_scale=-1.0)
    assert np.array_equal(png(tmp_path / "sample-T-shirt_top-seed0000.png"), want)
    assert not np.array_equal(want, expected(model, [0], [0], num_inference_steps=1)[0])  # the -1 made a difference


@pytest.mark.parametrize(("classes", "argv", "fact"), [
    (False, ["--guidance", "2", "--grid", "{tmp}/g.png"], r"--guidance .*this model has no"),
    (True, ["--nrow", "3", "--out-dir", "{tmp}"], r"--nrow .*--grid"),
    (True, [], r"--grid .*--out-dir"),
    (True, ["--class", "Sandal", "--out-dir", "{tmp}"], r"unknown class 'Sandal'"),
])
def test_arguments_the_model_would_ignore_are_refused_before_sampling(capsys, tmp_path, image_model, monkeypatch,
                                                                     classes, argv, fact):
    def never(*a, **kw):
        raise AssertionError("sampling started")

    monkeypatch.setattr(ImagePipeline, "__call__", never)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run(capsys, "sample", str(image_model(classes=classes)), *argv)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("ebru: error:")]
    assert len(errors) == 1 and re.search(fact, errors[0]), err


def test_an_unwritable_output_is_refused_before_the_model_is_read(capsys, tmp_path, image_model, monkeypatch):
    import ebru.trust

    def never(*a, **kw):
        raise AssertionError("the model was read")

    monkeypatch.setattr(ebru.trust, "load", never)
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    for flag, path in (("--grid", blocker / "g.png"), ("--out-dir", blocker), ("--grid", tmp_path)):
        code, out, err = run(capsys, "sample", str(image_model()), flag, str(path))
        assert (code, out) == (2, "") and err.count("\n") == 1
        assert re.search(rf"^ebru: error: argument {flag}: .*(not a directory|is a directory)", err)


def test_a_tuned_schedule_file_is_accepted_with_its_sampler_and_steps(capsys, tmp_path, image_model):
    model = image_model(classes=True)
    path = tmp_path / "tuned.json"
    WarpedSchedule([0.0, 0.3, 0.55, 1.0], name="tuned-heun-3", info={"sampler": "heun", "steps": 3}).save(path)
    code, _, err = run(capsys, "sample", str(model), "-n", "2", "--schedule", str(path), "--out-dir",
                       str(tmp_path / "a"))
    assert code == 0, err
    assert re.search(r"note: schedule 'tuned-heun-3' .*sampler heun.* 3 steps", err)
    want = expected(model, [0, 1], [0, 1], sampler="heun", num_inference_steps=3, schedule=WarpedSchedule.load(path))
    assert np.array_equal(png(tmp_path / "a" / "sample-T-shirt_top-seed0000.png"), want[0])
    assert np.array_equal(png(tmp_path / "a" / "sample-Sneaker-seed0001.png"), want[1])
    # given flags win over what the file records, and names still work
    code, _, err = run(capsys, "sample", str(model), "-n", "1", "--schedule", str(path), "--sampler", "euler",
                       "--steps", "3", "--out-dir", str(tmp_path / "b"))
    assert code == 0 and "note: schedule" not in err
    [want] = expected(model, [0], [0], sampler="euler", num_inference_steps=3, schedule=WarpedSchedule.load(path))
    assert np.array_equal(png(tmp_path / "b" / "sample-T-shirt_top-seed0000.png"), want)
    assert run(capsys, "sample", str(model), "-n", "1", "--steps", "3", "--schedule", "log_snr", "--out-dir",
               str(tmp_path / "c"))[0] == 0
    [want] = expected(model, [0], [0], num_inference_steps=3, schedule="log_snr")
    assert np.array_equal(png(tmp_path / "c" / "sample-T-shirt_top-seed0000.png"), want)
    assert not np.array_equal(want, expected(model, [0], [0], num_inference_steps=3)[0])  # not the default schedule
    bad = tmp_path / "bad.json"
    bad.write_text('{"knots": [0, 0.7, 0.5, 1]}', encoding="utf-8")
    code, _, err = run(capsys, "sample", str(model), "--schedule", str(bad), "--out-dir", str(tmp_path / "d"))
    assert code == 2 and re.search(r"argument --schedule: .*knots must increase", err)


def test_an_unsigned_model_is_not_called_verified(capsys, tmp_path, image_model):
    code, out, err = run(capsys, "sample", str(image_model()), "-n", "1", "--steps", "1", "--grid",
                         str(tmp_path / "g.png"))
    assert code == 0
    assert re.search(r"^model: .*\(\d+ files match manifest\.json; origin NOT verified: it is UNSIGNED\)$",
                     out.splitlines()[0])
    assert not re.search(r"^verified", out, re.M) and re.search(r"unsigned .*origin was not checked", err)
