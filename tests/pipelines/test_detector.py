"""Training the generated-image detector (ebru.pipelines.detector) on a tiny world, end to end.

A synthetic Fashion-MNIST (every item pixel > 0, so an item's silhouette is its whole 28x28 box) feeds the
quickstart's Fashion scenes; the generator is a tiny class-conditional U-Net with random weights. The facts:
masks are the silhouette, its half or a rectangle of the stated size; inpainting keeps every unmasked pixel bit
for bit; the package records the generator's digest and settings, and its threshold is exactly the conformal
order statistic of its own scores on the held-out pictures.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from ebru.data.grid import to_uint8
from ebru.data.scenes import CLASS_NAMES
from ebru.nets import build_net
from ebru.pipelines.detector import (
    DEFAULT_REAL,
    HELDOUT_SEED,
    GeneratorModel,
    Setting,
    build_training_set,
    parse_settings,
    quantise,
    real_images,
    region_masks,
    train_detector,
)
from ebru.provenance.detector import Detector, calibrate_threshold
from ebru.trust import verify, write_package

NET = {"kind": "unet", "image_size": 32, "in_channels": 3, "out_channels": 3, "channels": 8, "channel_mult": [1],
       "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1, "num_classes": 10}


def _idx(arr: np.ndarray) -> bytes:
    return (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


@pytest.fixture(scope="module", autouse=True)
def fashion(tmp_path_factory):
    """A Fashion-MNIST folder, 30 train and 30 other test images (3 per class, every pixel in 1..255)."""
    root = tmp_path_factory.mktemp("fmnist")
    for split, seed in (("train", 1), ("t10k", 2)):
        images = np.random.default_rng(seed).integers(1, 256, size=(30, 28, 28), dtype=np.uint8)
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(30, dtype=np.uint8) % 10)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_FASHION_MNIST", str(root))
        yield root


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    weights = {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in build_net(NET).state_dict().items()}
    config = {"kind": "image-diffusion", "net": NET, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [3, 32, 32], "num_classes": 10, "class_names": list(CLASS_NAMES),
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 2, "guidance": 1.5,
                           "schedule": "karras"}}
    card = "---\nlicense: apache-2.0\nbase_model: null\n---\n# tiny generator\n"
    return write_package(tmp_path_factory.mktemp("gen") / "model", config, weights, card, {"created_by": "tests"})


# ------------------------------------------------------------------------------------------- pieces
def test_settings_parse_and_refuse_in_one_line():
    assert parse_settings("dpmpp_2m:20, euler:10:4") == [Setting("dpmpp_2m", 20), Setting("euler", 10, 4.0)]
    assert str(Setting("euler", 10, 4.0)) == "euler:10:4" and str(Setting("heun", 3)) == "heun:3"
    for bad, pattern in (("eulr:10", r"unknown sampler 'eulr' \(did you mean 'euler'\?\)"),
                         ("euler", r"give SAMPLER:STEPS"), ("euler:0", r"must be a positive integer, got 0"),
                         ("euler:ten", r"must be a positive integer, got 'ten'"), ("euler:4:x", r"must be a number"),
                         ("", r"at least one generator setting")):
        with pytest.raises(ValueError, match=pattern):
            parse_settings(bad)


def test_quantise_is_what_a_saved_png_holds():
    x = torch.tensor([-1.0, -0.2, 0.0, 0.5, 1.0, 1.7]).reshape(1, 1, 2, 3).expand(1, 3, 2, 3)
    assert torch.equal(quantise(x), to_uint8(x).permute(0, 3, 1, 2))
    assert quantise(x)[0, 0].flatten().tolist() == [0, 102, 128, 191, 255, 255]


def test_real_images_and_refusals():
    r = real_images(DEFAULT_REAL, 5, split="test", seed=HELDOUT_SEED)
    assert r.images.shape == (5, 3, 32, 32) and r.images.dtype == torch.uint8 and len(r.captions) == 5
    assert "test split" in r.source
    assert torch.equal(real_images(DEFAULT_REAL, 5, split="test", seed=HELDOUT_SEED).images, r.images)
    with pytest.raises(ValueError, match="unknown real image set 'cifar'"):
        real_images("cifar", 5)
    fm = real_images("fashion-mnist", 7, split="train", seed=3)
    assert fm.images.shape == (7, 1, 28, 28) and fm.captions[0] in CLASS_NAMES
    with pytest.raises(ValueError, match="asked for 31 real images, but the Fashion-MNIST train split has 30"):
        real_images("fashion-mnist", 31)


def test_masks_are_the_silhouette_its_half_or_a_rectangle():
    pictures = real_images(DEFAULT_REAL, 6, split="train").images
    box = torch.zeros(32, 32)
    box[1:31, 1:31] = 1  # the item's 28x28 box at (2, 2), grown by one pixel
    g = torch.Generator().manual_seed(0)
    assert all(torch.equal(m[0], box) for m in region_masks(pictures, g, ("item",)))
    halves = [box.clone() for _ in range(4)]  # the centre of the silhouette is pixel (15.5 -> 16)
    halves[0][16:] = 0
    halves[1][:16] = 0
    halves[2][:, 16:] = 0
    halves[3][:, :16] = 0
    for m in region_masks(pictures, g, ("item-half",)):
        assert any(torch.equal(m[0], h) for h in halves)
    for m in region_masks(pictures, g, ("rectangle",)):
        ys, xs = torch.nonzero(m[0], as_tuple=True)
        h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        assert 5 <= h <= 16 and 5 <= w <= 16 and int(m.sum()) == h * w
        assert 4 * int((m[0] * box).sum()) >= h * w  # over the item, not only the empty canvas
    empty = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)  # no silhouette: a rectangle instead
    assert all(0 < int(m.sum()) <= 256 for m in region_masks(empty, g, ("item",)))
    with pytest.raises(ValueError, match=r"unknown mask kind 'items' \(did you mean 'item'\?\)"):
        region_masks(pictures, g, ("items",))


def test_the_training_set_keeps_real_pixels_outside_the_inpainted_region(generator_dir):
    gen = GeneratorModel(generator_dir, quiet=True)
    real = real_images(DEFAULT_REAL, 12, split="train")
    data = build_training_set([gen], real, parse_settings("euler:2"), n_generated=5, n_inpainted=7, progress=False)
    kinds, images, masks, sources = data["kinds"], data["images"], data["masks"], data["sources"]
    assert kinds == ["real"] * 12 + ["generated"] * 5 + ["inpainted"] * 7
    assert data["labels"].tolist() == [0.0] * 12 + [1.0] * 12 and images.dtype == torch.uint8
    assert torch.equal(images[:12], real.images) and int(masks[:12].sum()) == 0
    assert bool((masks[12:17] == 1).all()) and sources[12:17].tolist() == [-1] * 5
    for i in range(17, 24):
        keep = masks[i].expand(3, -1, -1) == 0
        assert torch.equal(images[i][keep], real.images[sources[i]][keep])  # bit for bit
        assert 0 < int(masks[i].sum()) < 32 * 32
    changed = images[17:] != real.images[sources[17:]]
    assert bool(changed.any()) and not bool((changed & (masks[17:] == 0)).any())


# ------------------------------------------------------------------------------------------- end to end
def test_train_detector_records_what_it_learnt_from_and_calibrates_exactly(tmp_path, generator_dir):
    r = train_detector(generator_dir, tmp_path / "det", minutes=5, steps=3, settings="euler:2,heun:1", n_real=16,
                       n_generated=8, n_inpainted=8, n_calibration=20, fpr=0.1, channels=4, levels=2, batch_size=8,
                       progress=False, log=None, quiet=True)
    assert r["training"]["steps"] == 3 and r["counts"] == {"real": 16, "generated": 8, "inpainted": 8}
    det = Detector.from_pretrained(r["path"], quiet=True)
    gen = verify(generator_dir, quiet=True)
    trained = det.config["trained_on"]
    assert trained["models"] == [{"name": f"{generator_dir.parent.name}/model",
                                  "manifest_sha256": gen.manifest_sha256, "license": "apache-2.0"}]
    assert trained["settings"] == [{"sampler": "euler", "steps": 2, "guidance": None},
                                   {"sampler": "heun", "steps": 1, "guidance": None}]
    assert trained["watermark"].startswith("off")
    held = real_images(DEFAULT_REAL, 20, split="test", seed=HELDOUT_SEED)
    logits, _ = det.logits(held.images)
    assert det.threshold_logit == calibrate_threshold(logits, 0.1)  # k = floor(2.1) - 1 = 1: the 2nd largest
    assert det.config["calibration"]["fpr_on_calibration"] == float((logits > det.threshold_logit).float().mean())
    assert det.config["fpr"] == 0.1 and r["threshold"] == det.threshold
    # the generator is the detector's base model: its licence binds the detector
    assert det.model.card.base_model == (f"{generator_dir.parent.name}/model",)
    assert det.model.lineage[0]["manifest_sha256"] == gen.manifest_sha256
    manifest = json.loads((tmp_path / "det" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["provenance"]["created_by"] == "ebru detector train"
