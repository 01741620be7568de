"""Every image ebru writes carries its watermark, a Trusted C2PA manifest and a generation record.

Exact checks: the pipeline's initial noise is the Gaussian Shading noise of its seeds' ids (the unmarked
draw with some signs flipped, nothing else); seeds stay per sample with the watermark on; `ebru sample`'s
files verify Trusted, their manifests and records name the seed and the watermark id the pipeline gives
that seed; `--no-watermark` draws exactly the unmarked images and says so in the manifest and the record;
`ebru watermark detect` reads the id back from the written PNGs (a 28x28 model: 784 noise entries) and
finds nothing in the unmarked ones or with another key.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ebru.cli import main
from ebru.diffusion import sample
from ebru.diffusion.tensors import randn_like, seed_generators
from ebru.nets import build_net
from ebru.pipelines.image import ImagePipeline
from ebru.pipelines.outputs import seed_list
from ebru.provenance import find_by_id, generate_watermark_key, load_watermark_key, verify_file
from ebru.trust import write_package

NET = {"kind": "unet", "image_size": 28, "in_channels": 1, "out_channels": 1, "channels": 8, "channel_mult": [1],
       "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1, "num_classes": None}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG",
                "EBRU_WATERMARK_KEY", "EBRU_C2PA_DIR", "EBRU_PROVENANCE_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 28x28 grey package with small random weights: a smooth ODE that DDIM inverts well."""
    g = torch.Generator().manual_seed(0)
    weights = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in build_net(NET).state_dict().items()}
    config = {"kind": "image-diffusion", "net": NET, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [1, 28, 28], "num_classes": None, "class_names": None,
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "ddim", "steps": 20,
                           "schedule": "karras"}}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# tiny\n"
    return write_package(tmp_path_factory.mktemp("m") / "model", config, weights, card, {"created_by": "tests"})


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_initial_noise_is_the_unmarked_draw_with_signs_set_by_the_seeds_ids(model):
    pipe = ImagePipeline.from_pretrained(model)
    seeds = [3, 11, 4]
    noise = pipe.initial_noise(seeds, 3)
    plain = randn_like(torch.empty(3, 1, 28, 28), seed_generators(seeds))
    torch.testing.assert_close(noise.abs(), plain.abs(), rtol=0, atol=0)  # only signs differ
    ids = pipe.watermark_ids(seeds)
    torch.testing.assert_close(noise, pipe.watermark.noise(seeds, ids), rtol=0, atol=0)
    assert len(set(ids)) == 3 and pipe.watermark_ids(seeds) == ids  # distinct per seed, deterministic
    assert (noise.sign() != plain.sign()).float().mean() > 0.3  # the marks do flip signs
    # and the pipeline samples from exactly that noise
    images = pipe(3, seeds=seeds, num_inference_steps=2)
    want = sample(pipe.denoiser, (3, 1, 28, 28), sampler="ddim", steps=2, schedule="karras", sigma_min=0.002,
                  sigma_max=80.0, seeds=seeds, noise=noise)
    torch.testing.assert_close(images, want, rtol=0, atol=0)


def test_seeds_stay_per_sample_with_the_watermark_on(model):
    pipe = ImagePipeline.from_pretrained(model)
    batch = pipe(4, seeds=[7, 8, 9, 10], num_inference_steps=2)
    alone = pipe(1, seeds=[9], num_inference_steps=2)
    first = pipe(2, seeds=9, num_inference_steps=2)  # a first seed: 9, 10
    # equal up to the float rounding a network's batched convolutions give (1e-8 here); another seed differs by > 1e-3
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch[2:], first, rtol=0, atol=1e-6)
    assert (batch[1:2] - alone).abs().max() > 1e-3  # another seed: far outside that tolerance


def test_ids_depend_on_the_key_and_the_model(model, tmp_path):
    a = ImagePipeline.from_pretrained(model)
    other = load_watermark_key(generate_watermark_key(tmp_path, "other"))
    b = ImagePipeline.from_pretrained(model, watermark=other)
    assert a.watermark.key_id != b.watermark.key_id
    assert a.watermark_ids([0, 1]) != b.watermark_ids([0, 1])
    assert a.watermark.ids_for([0], "model A") != a.watermark.ids_for([0], "model B")
    off = ImagePipeline.from_pretrained(model, watermark=False)
    assert off.watermark is None and off.watermark_ids([0]) is None and off.initial_noise([0], 1) is None
    with pytest.raises(ValueError, match="no watermark"):
        off.initial_noise([0], 1, watermark_ids=[5])
    with pytest.raises(ValueError, match=r"got 1 seeds for 2 images"):
        seed_list([1], 2)


def test_sample_writes_trusted_recorded_marked_files_that_detect_reads_back(capsys, model, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "sample", model, "-n", 3, "--seed", 5, "--out-dir", out, "--grid",
                            tmp_path / "grid.png", "--allow-unsigned")
    assert code == 0, err
    assert re.search(r"carries: Gaussian Shading watermark \(key [0-9a-f]{16}\), a signed C2PA manifest", stdout)
    pipe = ImagePipeline.from_pretrained(model)
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"sample-seed{s:04d}.png" for s in (5, 6, 7)]
    for seed, f in zip((5, 6, 7), files, strict=True):
        verdict = verify_file(f)
        assert verdict.state == "Trusted", verdict.reasons
        [wid] = pipe.watermark_ids([seed])
        [entry] = find_by_id(wid)
        assert entry.record["parameters"]["seed"] == seed and entry.record["watermark_id"] == wid
        assert entry.record["parameters"]["sampler"] == "ddim" and entry.record["parameters"]["steps"] == 20
    grid = verify_file(tmp_path / "grid.png")
    assert grid.state == "Trusted"
    # the noise watermark reads back from the written (uint8) files, with the right ids
    report = tmp_path / "detect.json"
    code, stdout, err = run(capsys, "watermark", "detect", *files, "--model", model, "--allow-unsigned",
                            "--json", report)
    assert code == 0, err
    rows = json.loads(report.read_text(encoding="utf-8"))
    assert [r["detected"] for r in rows] == [True] * 3
    assert [r["watermark_id"] for r in rows] == pipe.watermark_ids([5, 6, 7])
    assert max(r["log10_p_value"] for r in rows) < -6 and "3 of 3 file(s) carry this key's watermark" in stdout
    # by default the decoder chooses among the store's ids (the 3 files and the grid's 3: 3 distinct ids);
    # --all-ids decodes blind, over 2**32 ids, with a larger p-value for the same score
    assert all(r["hypotheses"] == 3 for r in rows) and "decoded over 3 ids of the local store" in stdout
    code, stdout, err = run(capsys, "watermark", "detect", *files, "--model", model, "--allow-unsigned",
                            "--all-ids", "--json", report)
    blind = json.loads(report.read_text(encoding="utf-8"))
    assert code == 0 and all(r["hypotheses"] == 2**32 for r in blind) and "decoded over every id" in stdout
    assert [r["watermark_id"] for r in blind] == pipe.watermark_ids([5, 6, 7])
    assert all(b["log10_p_value"] > r["log10_p_value"] for b, r in zip(blind, rows, strict=True))
    # with another key: not detected, and no error
    other = generate_watermark_key(tmp_path, "other")
    code, stdout, _ = run(capsys, "watermark", "detect", *files, "--model", model, "--allow-unsigned", "--key", other)
    assert code == 0 and "0 of 3 file(s)" in stdout


def test_no_watermark_draws_the_unmarked_images_and_says_so(capsys, model, tmp_path):
    out = tmp_path / "plain"
    code, stdout, err = run(capsys, "sample", model, "-n", 2, "--out-dir", out, "--no-watermark", "--allow-unsigned")
    assert code == 0, err
    assert "--no-watermark" in err and "carries: no watermark" in stdout
    plain = ImagePipeline.from_pretrained(model, watermark=False)(2, seeds=[0, 1])
    from PIL import Image

    from ebru.data.grid import to_uint8

    for i, f in enumerate(sorted(out.glob("*.png"))):
        with Image.open(f) as im:
            assert np.array_equal(np.asarray(im), to_uint8(plain)[i].squeeze(-1).numpy())
        verdict = verify_file(f)
        assert verdict.state == "Trusted"
        assert verdict.manifest is not None and "off" in json.dumps(verdict.manifest)
    # no key was ever made (nothing was marked): detection says so in one line
    code, _, err = run(capsys, "watermark", "detect", *sorted(out.glob("*.png")), "--model", model,
                       "--allow-unsigned")
    errors = [line for line in err.splitlines() if line.startswith("ebru: error:")]
    assert code == 2 and len(errors) == 1 and re.search(r"no watermark key yet .*ebru keys generate --watermark",
                                                        errors[0]), err
    key = generate_watermark_key(tmp_path, "k")
    code, stdout, _ = run(capsys, "watermark", "detect", *sorted(out.glob("*.png")), "--model", model,
                          "--allow-unsigned", "--key", key)
    assert code == 0 and "0 of 2 file(s)" in stdout


def test_detect_reports_unreadable_files_one_line_each_and_reads_the_rest(capsys, model, tmp_path):
    out = tmp_path / "o"
    run(capsys, "sample", model, "-n", 1, "--out-dir", out, "--allow-unsigned")
    [good] = out.glob("*.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image", encoding="utf-8")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:100])
    code, stdout, _ = run(capsys, "watermark", "detect", good, text, truncated, tmp_path / "missing.png",
                          "--model", model, "--allow-unsigned")
    assert code == 2
    lines = stdout.splitlines()
    assert re.match(r".*seed0000\.png: DETECTED", lines[0])
    assert re.match(r"notes\.png: error: .*not an image", lines[1])
    assert re.match(r"cut\.png: error: .*(damaged|truncated)", lines[2])
    assert re.match(r"missing\.png: error: .*cannot read", lines[3])


def test_a_resized_copy_is_brought_back_to_the_models_size(capsys, model, tmp_path):
    from PIL import Image

    out = tmp_path / "o"
    run(capsys, "sample", model, "-n", 1, "--out-dir", out, "--allow-unsigned")
    [f] = out.glob("*.png")
    big = tmp_path / "big.png"
    with Image.open(f) as im:
        im.resize((56, 56), Image.NEAREST).save(big)
    code, stdout, _ = run(capsys, "watermark", "detect", big, "--model", model, "--allow-unsigned")
    assert code == 0 and re.search(r"big\.png: DETECTED .*resized from 56x56", stdout)


def test_find_reassociates_a_stripped_recompressed_copy_through_its_watermark(capsys, model, tmp_path):
    from PIL import Image

    out = tmp_path / "o"
    run(capsys, "sample", model, "-n", 2, "--seed", 40, "--out-dir", out, "--allow-unsigned")
    original = out / "sample-seed0041.png"
    copy = tmp_path / "copy.jpg"  # no metadata (a new file), JPEG 75
    with Image.open(original) as im:
        im.convert("L").save(copy, quality=75)
    code, _, err = run(capsys, "provenance", "find", copy)
    assert code == 2 and re.search(r"no generation record .*--model MODEL_DIR", err)
    report = tmp_path / "found.json"
    code, stdout, err = run(capsys, "provenance", "find", copy, "--model", model, "--allow-unsigned", "--json",
                            report)
    assert code == 0, err
    assert re.search(r"noise watermark detected, id \d+", stdout)
    [entry] = json.loads(report.read_text(encoding="utf-8"))
    assert entry["record"]["parameters"]["seed"] == 41 and entry["record"]["path"] == str(original.absolute())


def test_posthoc_embed_then_detect_and_find_without_a_model(capsys, tmp_path):
    from matplotlib import cbook
    from PIL import Image

    src = tmp_path / "photo.png"
    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        im.convert("RGB").crop((0, 0, 300, 280)).save(src)
    marked = tmp_path / "marked.jpg"
    code, stdout, err = run(capsys, "watermark", "embed", src, marked, "--id", 123456)
    assert code == 0, err
    assert re.search(r"marked: .*id 123456, key [0-9a-f]{16}, PSNR (4\d|[5-9]\d)\.\d dB", stdout)
    code, stdout, _ = run(capsys, "watermark", "detect", marked, src)
    assert code == 0
    assert re.search(r"marked\.jpg: DETECTED .*id 123456, post-hoc", stdout)
    assert re.search(r"photo\.png: not detected", stdout)
    code, stdout, err = run(capsys, "provenance", "find", marked)  # found by its exact bytes
    assert code == 0 and "123456" in stdout, err
    # like every file ebru writes, it carries a Trusted manifest: an edit of the photo, the mark its soft binding
    verdict = verify_file(marked)
    assert verdict.state == "Trusted", verdict.reasons
    manifest = json.dumps(verdict.manifest)
    assert "c2pa.watermarked" in manifest and "123456" in manifest and "trainedAlgorithmicMedia" not in manifest
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    code, _, err = run(capsys, "watermark", "embed", small, tmp_path / "x.png")
    assert code == 2 and re.search(r"at least 256x256", err) and not (tmp_path / "x.png").exists()


def test_tree_ring_is_drawn_on_request_recorded_and_read_beside_gaussian_shading(capsys, model, tmp_path):
    out, plain = tmp_path / "ring", tmp_path / "plain"
    code, stdout, err = run(capsys, "sample", model, "-n", 2, "--out-dir", out, "--tree-ring", "--allow-unsigned")
    assert code == 0, err
    assert re.search(r"carries: Gaussian Shading watermark .* and a Tree-Ring key \(radius 4\)", stdout)
    run(capsys, "sample", model, "-n", 2, "--out-dir", plain, "--allow-unsigned")
    pipe = ImagePipeline.from_pretrained(model)
    gs = pipe.initial_noise([0, 1], 2)
    pipe.enable_tree_ring()
    ring = pipe.initial_noise([0, 1], 2)
    torch.testing.assert_close(ring, pipe.tree_ring.apply(gs))  # the ring written over the same seeds' marked noise
    report = tmp_path / "r.json"
    code, stdout, err = run(capsys, "watermark", "detect", *sorted(out.glob("*.png")), *sorted(plain.glob("*.png")),
                            "--model", model, "--allow-unsigned", "--json", report)
    assert code == 0, err
    rows = json.loads(report.read_text(encoding="utf-8"))
    assert [r["detected"] for r in rows] == [True] * 4  # Gaussian Shading survives the ring in all of them
    assert [r["tree_ring"]["detected"] for r in rows] == [True, True, False, False]
    assert stdout.count("Tree-Ring key DETECTED") == 2
    manifest = verify_file(sorted(out.glob("*.png"))[0]).manifest
    ring = manifest["generation"]["parameters"]["tree_ring"]
    assert ring["radius"] == 4 and ring["channel"] == 0
    assert ring["key_id"] == manifest["generation"]["watermark"]["key_id"]
