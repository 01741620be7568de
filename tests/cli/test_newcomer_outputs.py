"""Image outputs a newcomer gets wrong, and interrupted writes: ``--grid`` without an image extension is refused
before sampling (it used to fail only after all the sampling, with "unknown file extension:"), and an image is
written whole or not at all (it used to be written in place, so Ctrl-C mid-save left a truncated PNG)."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from ebru.cli import main
from ebru.data.grid import save_grid
from ebru.pipelines.image import save_images


@pytest.mark.parametrize(("name", "why"), [("grid", "it has no extension"),
                                           ("grid.txt", r"'\.txt' is not an image format"),
                                           ("grid.xbm", r"'\.xbm' is not an image format"),
                                           ("grid.webp", r"'\.webp' is not an image format ebru writes .*signed")])
def test_grid_without_an_image_extension_is_refused_before_loading_or_sampling(capsys, tmp_path, image_model,
                                                                                name, why):
    code = main(["sample", str(image_model()), "--grid", str(tmp_path / name), "-n", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""  # nothing loaded ("model: ..." is printed once loaded)
    assert len(err.splitlines()) == 1 and re.match(r"ebru: error: argument --grid: cannot write the image", err)
    assert re.search(why, err)
    assert not list(tmp_path.glob("*grid*"))


def test_grid_with_another_image_extension_is_written_in_that_format(capsys, tmp_path, image_model):
    code = main(["sample", str(image_model()), "--grid", str(tmp_path / "grid.JPG"), "-n", "2", "--steps", "1"])
    capsys.readouterr()
    assert code == 0
    with Image.open(tmp_path / "grid.JPG") as im:
        assert im.format == "JPEG"


def _interrupt_mid_save(monkeypatch):
    """Make every PIL save write a few bytes and then be interrupted, as Ctrl-C would."""

    def partial_save(self, fp, *args, **kwargs):
        if hasattr(fp, "write"):
            fp.write(b"\x89PNG\r\n")
        else:
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", partial_save)


def test_an_interrupted_grid_leaves_the_previous_file_and_no_temporary(monkeypatch, tmp_path):
    path = tmp_path / "grid.png"
    save_grid(torch.zeros(4, 1, 8, 8), path, nrow=2)
    before = path.read_bytes()
    _interrupt_mid_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_grid(torch.ones(4, 1, 8, 8), path, nrow=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_an_interrupted_save_images_leaves_no_truncated_png(monkeypatch, tmp_path):
    _interrupt_mid_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_images(torch.zeros(2, 1, 8, 8), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
