"""``evaluate_model`` / ``ebru eval`` end to end on a tiny trained model, and their bad-input lines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebru.cli import main
from ebru.data import ImageDataset
from ebru.eval import ReferenceSet, evaluate_images, format_report, load_feature_net
from ebru.pipelines.evaluate import evaluate_model
from ebru.train import TrainConfig, Trainer

NET = {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
       "num_heads": 1, "dropout": 0.0}


def _model(tmp_path_factory, size: int, classes: int | None) -> str:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(32) % (classes or 1)
    data = ImageDataset(images, labels, class_names=[f"c{i}" for i in range(classes)] if classes else None,
                        content_hash="0" * 64, source="tiny test set")
    cfg = TrainConfig.from_dict(dict(model=dict(NET), steps=2, batch_size=8, warmup_steps=1, log_every=1,
                                     checkpoint_every=2, sample_steps=1, device="cpu",
                                     class_conditional=classes is not None, tensorboard=False, sample_every=0))
    out = tmp_path_factory.mktemp(f"model{size}")
    return str(Trainer(cfg, out, dataset=data, progress=False).fit())


@pytest.fixture(scope="module")
def fmnist():
    try:
        from ebru.data import FashionMNIST

        return FashionMNIST("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def cond_model(tmp_path_factory):
    return _model(tmp_path_factory, 28, 10)


@pytest.fixture(scope="module")
def uncond_model(tmp_path_factory):
    return _model(tmp_path_factory, 28, None)


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: the 10,000 reference features are computed once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_real_test_images_score_like_real_images(fmnist):
    x, y = fmnist.tensors()
    r = evaluate_images(x[:1000], labels=y[:1000], metrics="fid,kid,precision,recall,agreement")
    m = r["metrics"]
    assert m["fid"] < 1.5 * m["fid_real_floor"] + 1.0        # the test set's own images sit at the floor
    assert abs(m["kid"]) < 3 * m["kid_std"] + 1e-3
    assert m["precision"] > 0.6 and m["recall"] > 0.6
    assert m["agreement"] > 0.88
    assert r["n_samples"] == 1000 and r["reference"]["n"] == 10000
    assert r["feature_net"]["sha256"] == load_feature_net().sha256
    noise = evaluate_images(torch.rand(1000, 1, 28, 28) * 2 - 1, metrics="fid,precision", floor=False)
    assert noise["metrics"]["fid"] > 20 * m["fid"] and noise["metrics"]["precision"] < 0.25


def test_reference_features_are_cached_and_bound_to_their_network(fmnist, tmp_path):
    from ebru.eval import reference_set

    net = load_feature_net()
    a = reference_set(net)
    assert a.n == 10000 and a.features.shape == (10000, 256)  # the whole test split, in the network's space
    on_disk = ReferenceSet.load(a.path)  # the cache file holds exactly these features
    assert torch.equal(on_disk.features, a.features) and on_disk.n == a.n
    b = reference_set(net)
    assert torch.equal(a.features, b.features)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300))
    with pytest.raises(ValueError, match="does not match"):
        evaluate_images(fmnist.tensors()[0][:400], metrics="fid", feature_net=other, reference=str(a.path))
    a.path.write_bytes(b"damaged")
    with pytest.raises(ValueError, match="unreadable"):
        ReferenceSet.load(a.path)
    assert torch.equal(reference_set(net).features, a.features)  # a damaged cache entry is recomputed


def test_evaluate_model_reports_every_figure_with_its_provenance(fmnist, cond_model, tmp_path):
    r = evaluate_model(cond_model, metrics="fid,kid,precision,recall,agreement,nll,nll_bound", n=300, sampler="euler",
                       steps=2, batch=150, nll_images=2)
    m = r["metrics"]
    for key in ("fid", "fid_real_floor", "kid", "kid_std", "nll_bpd", "nll_bound_bpd"):
        assert math.isfinite(m[key]), key
    assert m["fid"] >= 0 and m["fid_real_floor"] >= 0 and m["kid_std"] > 0
    for key in ("precision", "recall", "agreement"):  # shares of the 300 samples (agreement) or of balls hit
        assert 0.0 <= m[key] <= 1.0, key
    assert abs(m["agreement"] * 300 - round(m["agreement"] * 300)) < 1e-9  # a count of the 300 samples
    assert r["n_samples"] == 300
    assert r["sampling"]["seeds"] == [0, 299] and r["sampling"]["sampler"] == "euler"
    assert 0.0 < m["nll_bpd"] < 40 and r["nll"]["images"] == 2
    assert m["nll_bound_bpd"] > 0  # a bound on a discrete NLL is positive
    table = format_report(r)
    assert "FID" in table and "biased" in table and r["feature_net"]["sha256"][:16] in table


def test_cli_eval_writes_json_and_refuses_bad_input(fmnist, cond_model, uncond_model, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", cond_model, "-n", "260", "--steps", "1", "--sampler", "euler", "--metrics", "kid,agreement",
                 "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["metrics"]) >= {"kid", "kid_std", "agreement"} and "fid" not in saved["metrics"]
    agree = saved["metrics"]["agreement"]
    assert 0.0 <= agree <= 1.0 and abs(agree * 260 - round(agree * 260)) < 1e-9  # hits among the 260 samples
    assert saved["sampling"]["seeds"] == [0, 259] and saved["sampling"]["steps"] == 1
    capsys.readouterr()
    uncond = ["eval", uncond_model, "--metrics", "agreement", "-n", "300"]
    for argv, msg in [(uncond, "needs a class-conditional model"),
                      (["eval", cond_model, "--metrics", "fid", "-n", "100"], "more samples than feature"),
                      (["eval", cond_model, "--metrics", "fidd"], "unknown metric"),
                      (["eval", str(tmp_path / "none")], "not found")]:
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ebru: error")]
        assert len(errors) == 1 and msg in errors[0], errors


def test_mismatched_image_size_is_one_line(tmp_path_factory, capsys):
    small = _model(tmp_path_factory, 8, 10)
    assert main(["eval", small, "-n", "300"]) == 2
    assert "feature network takes 1x28x28" in capsys.readouterr().err
